/**
 * `dogfs up`'s status page: what it derives from samples (who leads, how the cluster is, what changed),
 * and the page against a real cluster — a chunk server killed, declared dead, its files damaged and
 * repaired, then two of three metadata servers killed: each shows, and the page answers at once when
 * the metadata service cannot.
 */
import assert from 'node:assert/strict';
import { readdirSync } from 'node:fs';
import { after, test } from 'node:test';
import {
  changesBetween,
  type DashboardStatus,
  groupLeaders,
  healthOf,
  type MemberSample,
  type MetaView,
} from '../../src/cluster/dashboard.js';
import type { ClusterReportJson } from '../../src/wire/report-json.js';
import { clusterCommands, processAlive, putRandomFile, startCluster, waitFor } from '../helpers/index.js';

const view = (id: string, groups: [number, string, number, string][], error = ''): MetaView => ({
  id,
  error,
  groups: groups.map(([group, role, term, leader]) => ({
    group,
    role,
    term,
    leader,
    commitIndex: 10,
    appliedIndex: 10,
  })),
});

const member = (id: string, running = true): MemberSample => ({
  role: id.startsWith('meta') ? 'meta' : 'chunk',
  id,
  addr: `127.0.0.1:${id.length}`,
  pid: 100,
  running,
});

function report(overrides: Partial<ClusterReportJson> = {}): ClusterReportJson {
  return {
    groups: [],
    chunkServers: [
      {
        id: 'chunk-1',
        addr: 'a',
        state: 'alive',
        failureDomain: '',
        capacityBytes: 10,
        usedBytes: 1,
        shardCount: 1,
        lastHeartbeatMs: 0,
        draining: false,
      },
    ],
    filesOnDrainingServers: 0,
    filesWithMissingShards: [],
    filesWithMissingShardsCount: 0,
    codecBackend: '',
    clusterId: '',
    autoRepair: true,
    autoRepairDelayMs: 60_000,
    repairs: [],
    rebalancing: [],
    unfinishedRepairs: [],
    ...overrides,
  };
}

function status(
  views: MetaView[],
  r: ClusterReportJson | null,
  members = [member('meta-1')],
): DashboardStatus {
  return {
    atMs: 0,
    ec: 'rs-6-3',
    health: healthOf(members, views, r, r === null ? 'no leader' : ''),
    members,
    metaViews: views,
    report: r,
    reportError: r === null ? 'no leader' : '',
    events: [],
  };
}

test('the leader of a group is the member that says so at the highest term', () => {
  const leaders = groupLeaders([
    view('meta-1', [[0, 'leader', 3, 'meta-1']]), // cut off, still thinks it leads
    view('meta-2', [[0, 'leader', 5, 'meta-2']]),
    view('meta-3', [[0, 'follower', 5, 'meta-2']]),
  ]);
  assert.deepEqual(leaders.get(0), { id: 'meta-2', term: 5 });
  assert.equal(groupLeaders([view('meta-1', [[1, 'candidate', 9, '']])]).get(1), undefined);
});

test('health: down without a leader or a report, degraded with anything missing, ok otherwise', () => {
  const led = [
    view('meta-1', [
      [0, 'leader', 2, 'meta-1'],
      [1, 'leader', 2, 'meta-1'],
    ]),
  ];
  const ok = healthOf([member('meta-1')], led, report(), '');
  assert.equal(ok.level, 'ok');

  const electing = healthOf(
    [member('meta-1')],
    [
      view('meta-1', [
        [0, 'leader', 2, 'meta-1'],
        [1, 'preCandidate', 2, ''],
      ]),
    ],
    null,
    'x',
  );
  assert.equal(electing.level, 'down');
  assert.match(electing.summary, /no leader for the namespace group/);
  const silent = healthOf([member('meta-1', false)], [view('meta-1', [], 'ECONNREFUSED')], null, 'x');
  assert.deepEqual(silent, { level: 'down', summary: 'no metadata server answers' });

  const damaged = healthOf(
    [member('meta-1'), member('chunk-2', false)],
    led,
    report({
      filesWithMissingShardsCount: 3,
      repairs: [{ path: '/a', chunkServerId: 'chunk-1', sinceMs: 0 }],
    }),
    '',
  );
  assert.equal(damaged.level, 'degraded');
  assert.match(damaged.summary, /stopped: chunk-2/);
  assert.match(damaged.summary, /3 files with missing shards, 1 being repaired/);
});

test('changes between samples: leaders, answers, chunk server states, damage and repair', () => {
  const before = status(
    [view('meta-1', [[0, 'leader', 2, 'meta-1']]), view('meta-2', [[0, 'follower', 2, 'meta-1']])],
    report(),
  );
  const dead = report({
    chunkServers: [{ ...report().chunkServers[0]!, state: 'dead' }],
    filesWithMissingShardsCount: 2,
    repairs: [{ path: '/a', chunkServerId: 'chunk-1', sinceMs: 0 }],
  });
  const after1 = status(
    [view('meta-1', [], 'connect ECONNREFUSED'), view('meta-2', [[0, 'leader', 3, 'meta-2']])],
    dead,
  );
  const texts = changesBetween(before, after1).map((e) => `${e.level} ${e.text}`);
  assert.deepEqual(texts, [
    'warn meta-1 does not answer: connect ECONNREFUSED',
    'info cluster group: meta-2 leads, term 3',
    'warn chunk-1 declared dead',
    'warn 2 file(s) with missing shards',
    'info automatic repair: 1 file(s) in progress',
  ]);
  const whole = status([view('meta-2', [[0, 'leader', 3, 'meta-2']])], report());
  assert.deepEqual(
    changesBetween(after1, whole).map((e) => e.text),
    ['chunk-1 declared alive', 'every file whole again', 'automatic repair: nothing in progress'],
  );
  const lost = status([view('meta-2', [[0, 'preCandidate', 3, '']])], null);
  assert.deepEqual(
    changesBetween(whole, lost).map((e) => e.text),
    ['cluster group: no leader (was meta-2)', 'cluster report unavailable: no leader'],
  );
  assert.deepEqual(changesBetween(whole, whole), [], 'nothing changed, nothing said');
  // Across an outage: what changed in the report meanwhile is still told, against the last one seen.
  const back = status([view('meta-2', [[0, 'leader', 4, 'meta-2']])], dead);
  assert.deepEqual(
    changesBetween(lost, back, whole.report).map((e) => e.text),
    [
      'cluster group: meta-2 leads, term 4',
      'chunk-1 declared dead',
      '2 file(s) with missing shards',
      'automatic repair: 1 file(s) in progress',
    ],
  );
});

test('the status page follows a real cluster through a lost chunk server, its repair and a lost quorum', async () => {
  const up = startCluster(['--meta', '3', '--chunk', '5', '--ec', 'rs-2-2']);
  after(() => up.stop());
  const cluster = await up.ready();
  const { dogfs } = clusterCommands(up);
  const page = await fetch(cluster.ui);
  assert.equal(page.status, 200);
  assert.match(await page.text(), /<title>DogFS<\/title>[\s\S]*fetch\("\/status\.json"/);
  assert.equal((await fetch(`${cluster.ui}nope`)).status, 404);
  assert.equal((await fetch(`${cluster.ui}status.json`, { method: 'POST' })).status, 405);

  const sample = async (): Promise<DashboardStatus> => {
    const answer = await fetch(`${cluster.ui}status.json`, { signal: AbortSignal.timeout(10_000) });
    assert.equal(answer.status, 200);
    return (await answer.json()) as DashboardStatus;
  };
  const first = await waitFor('a healthy sample', async () => {
    const s = await sample();
    return s.health.level === 'ok' && s;
  });
  assert.equal(first.members.length, 8);
  assert.equal(first.metaViews.length, 3);
  for (const group of [0, 1])
    assert.equal(
      first.metaViews.filter((v) => v.groups.find((g) => g.group === group)?.role === 'leader').length,
      1,
      `one leader of group ${group}`,
    );
  assert.equal(first.report?.chunkServers.filter((c) => c.state === 'alive').length, 5);
  // One seed is enough to name both groups' leaders: a follower names the leader it follows.
  for (const seed of cluster.meta) {
    const one = await dogfs(['admin', 'members', '--meta', seed]);
    assert.equal(one.status, 0, one.stderr);
    assert.match(one.stdout, /^Group 0 \(cluster\): led by 127\.0\.0\.1:\d+, term \d+$/m, one.stdout);
    assert.match(one.stdout, /^Group 1 \(namespace\): led by 127\.0\.0\.1:\d+, term \d+$/m, one.stdout);
  }
  // The same views from the command line: `dogfs admin members`.
  const members = await dogfs(['admin', 'members', '--json']);
  assert.equal(members.status, 0, members.stderr);
  const views = JSON.parse(members.stdout) as { addr: string; groups?: { group: number; role: string }[] }[];
  assert.deepEqual(views.map((v) => v.addr).sort(), [...cluster.meta].sort());
  for (const group of [0, 1])
    assert.equal(
      views.filter((v) => v.groups?.find((g) => g.group === group)?.role === 'leader').length,
      1,
      `admin members: one leader of group ${group}`,
    );

  assert.equal((await dogfs(['admin', 'settings', '--dead-after', '3000'])).status, 0);
  await putRandomFile(up, '/f', 300_000);
  // rs-2-2 on 5 servers: one holds nothing of the file; the victim holds a shard of it.
  const victim = cluster.processes.find(
    (p) =>
      p.role === 'chunk' && readdirSync(p.dir, { recursive: true }).some((f) => String(f).endsWith('.shard')),
  )!;
  process.kill(victim.pid, 'SIGKILL');
  const damaged = await waitFor(
    `${victim.id} stopped, declared dead and its file damaged`,
    async () => {
      const s = await sample();
      return (
        s.report?.chunkServers.find((c) => c.id === victim.id)?.state === 'dead' &&
        s.report.filesWithMissingShardsCount === 1 &&
        s
      );
    },
    30_000,
    200,
  );
  assert.equal(damaged.health.level, 'degraded');
  assert.equal(
    damaged.health.summary,
    `stopped: ${victim.id}; chunk servers declared dead: ${victim.id}; 1 file with missing shards`,
  );
  assert.equal(damaged.members.find((m) => m.id === victim.id)?.running, false);
  const texts = damaged.events.map((e) => e.text);
  assert.ok(texts.includes(`${victim.id} (pid ${victim.pid}) exited (SIGKILL)`), texts.join('\n'));
  assert.ok(texts.includes(`${victim.id} declared dead`), texts.join('\n'));
  assert.ok(texts.includes('1 file(s) with missing shards'), texts.join('\n'));

  assert.equal((await dogfs(['admin', 'repair', '/f'])).status, 0);
  const repaired = await waitFor('the file whole again', async () => {
    const s = await sample();
    return s.report?.filesWithMissingShardsCount === 0 && s;
  });
  assert.ok(repaired.events.some((e) => e.text === 'every file whole again'));

  // Two of three metadata servers gone: the page says so at once, from what the last one says of itself.
  const metas = cluster.processes.filter((p) => p.role === 'meta');
  for (const m of metas.slice(0, 2)) process.kill(m.pid, 'SIGKILL');
  await waitFor('two metadata servers gone', () => metas.slice(0, 2).every((m) => !processAlive(m.pid)));
  const down = await waitFor(
    'the page to say the metadata service is down',
    async () => {
      const s = await sample();
      // A survivor that led a group says so until CheckQuorum steps it down; meanwhile the page is down
      // for want of the report. Then no group has a leader.
      return s.health.level === 'down' && s.health.summary.includes('no leader') && s;
    },
    30_000,
    200,
  );
  assert.match(down.health.summary, /metadata service unavailable: no leader for the/);
  assert.equal(down.report, null);
  const survivor = down.metaViews.find((v) => v.id === metas[2]!.id)!;
  assert.equal(survivor.error, '');
  assert.ok(
    survivor.groups.every((g) => g.role !== 'leader'),
    'the one left leads nothing',
  );
  assert.ok(down.metaViews.filter((v) => v.error !== '').length === 2);
  const cli = await dogfs(['admin', 'members']);
  assert.equal(cli.status, 0, cli.stderr);
  assert.equal(cli.stdout.match(/no answer: /g)?.length, 2, cli.stdout);
  assert.match(cli.stdout, /^Group 0 \(cluster\): no leader — a majority/m);
  assert.match(cli.stdout, /^Group 1 \(namespace\): no leader — a majority/m);
});
