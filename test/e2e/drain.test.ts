/**
 * Draining (decommissioning) a chunk server through the real cluster (`dogfs up`, 3 metadata servers, 6
 * chunk servers, rs-3-2, automatic repair's delay left at a minute): `dogfs admin drain ID` moves every
 * shard off the server without waiting for that delay, new files are placed elsewhere, and once it holds
 * nothing it can be stopped, and two more servers lost, with every file still whole; every shard moved
 * was copied from the drained server (one read), not rebuilt from K others. And a drain never
 * leaves a file less repairable: with two holders of a block group dead and a third draining, the lost
 * shards are rebuilt from the draining one.
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, test } from 'node:test';
import {
  assertOneLineError,
  autoRepairTotals,
  clusterCommands,
  memberLog,
  startCluster,
  waitFor,
} from '../helpers/index.js';

const up = startCluster(['--meta', '3', '--chunk', '6', '--ec', 'rs-3-2'], {
  ...process.env,
  DOGFS_REPAIR_DELAY_MS: '60000',
  DOGFS_GC_GRACE_MS: '0',
});
after(() => up.stop());

interface StatJson {
  blockGroups: { shards: { chunkServer: string }[] }[];
}

test('a drained chunk server is emptied at once, gets no new shards, and can then be stopped', async () => {
  const cluster = await up.ready();
  const { dogfs, report, sameBytes } = clusterCommands(up);
  const chunks = cluster.processes.filter((p) => p.role === 'chunk');
  const holdersOf = async (path: string) => {
    const stat = await dogfs(['stat', '--json', path]);
    assert.equal(stat.status, 0, stat.stderr);
    return (JSON.parse(stat.stdout) as StatJson).blockGroups.flatMap((g) =>
      g.shards.map((s) => s.chunkServer),
    );
  };
  const put = async (path: string, bytes: Buffer) => {
    const local = join(up.dir.path, path.slice(1));
    writeFileSync(local, bytes);
    const r = await dogfs(['put', local, path]);
    assert.equal(r.status, 0, r.stderr);
  };

  const files = new Map<string, Buffer>();
  for (let i = 0; i < 6; i++) files.set(`/f${i}`, randomBytes(200_000 + i * 150_000));
  for (const [path, bytes] of files) await put(path, bytes);
  const victim = (await holdersOf('/f0'))[0]!;
  let victimShards = 0;
  for (const path of files.keys()) victimShards += (await holdersOf(path)).filter((h) => h === victim).length;

  // Bad input first: changes nothing.
  const unknown = await dogfs(['admin', 'drain', 'no-such-server']);
  assert.equal(unknown.status, 1);
  assert.match(assertOneLineError(unknown.stderr), /no-such-server.*not registered/);
  assert.equal((await dogfs(['admin', 'drain'])).status, 2, 'no ID: a usage error');
  assert.ok((await report()).chunkServers.every((c) => !c.draining));

  const drain = await dogfs(['admin', 'drain', victim]);
  assert.equal(drain.status, 0, drain.stderr);
  assert.match(drain.stdout, new RegExp(`^${victim}: draining: no new shards go to it`));
  assert.match((await dogfs(['admin', 'drain', victim])).stdout, /draining \(already\)/);
  // (How many are left depends on how far the moving has gone by now.)
  const text = await dogfs(['admin', 'report']);
  assert.match(text.stdout, new RegExp(`${victim} .*\\(draining\\)`));
  assert.match(text.stdout, new RegExp(`draining: ${victim}; files with a shard still on them: \\d+`));

  // Emptied well before the minute automatic repair waits for damage: a drain is not damage to wait on.
  const startedMs = Date.now();
  await waitFor(
    'every shard moved off the drained server',
    async () => {
      const r = await report();
      const server = r.chunkServers.find((c) => c.id === victim);
      return r.filesOnDrainingServers === 0 && r.repairs.length === 0 && server?.shardCount === 0 && r;
    },
    45_000,
    250,
  );
  assert.ok(Date.now() - startedMs < 60_000);
  for (const path of files.keys())
    assert.ok(!(await holdersOf(path)).includes(victim), `${path} has no shard on ${victim}`);
  // Every shard was copied from the drained server (its copies are good), none rebuilt from K others.
  // The workers' log lines may land a moment after the report shows the moves done.
  const totals = await waitFor(
    'the moves in the chunk servers logs',
    () => {
      const t = autoRepairTotals(chunks.map(memberLog));
      return t.copied + t.rebuilt >= victimShards && t;
    },
    10_000,
    100,
  );
  assert.deepEqual({ copied: totals.copied, rebuilt: totals.rebuilt }, { copied: victimShards, rebuilt: 0 });

  // New files go elsewhere.
  const late = randomBytes(300_000);
  await put('/late', late);
  files.set('/late', late);
  assert.ok(!(await holdersOf('/late')).includes(victim));

  // Stopped for good, and two more servers lost: every file still whole (full redundancy was kept).
  const byId = new Map(chunks.map((c) => [c.id, c]));
  process.kill(byId.get(victim)!.pid, 'SIGKILL');
  for (const c of chunks.filter((c) => c.id !== victim).slice(0, 2)) process.kill(c.pid, 'SIGKILL');
  for (const [path, expected] of files) await sameBytes(path, expected, `${path} with three servers gone`);

  const cancel = await dogfs(['admin', 'drain', '--cancel', victim]);
  assert.equal(cancel.status, 0, cancel.stderr);
  assert.match(cancel.stdout, new RegExp(`^${victim}: no longer draining\\n$`));
});

test('with more than M shards of a block group lost or draining, the draining one is read to rebuild the lost', async () => {
  // Chunk servers that take no repair work: the repair below is the test's own, run when it chooses.
  const second = startCluster(['--meta', '3', '--chunk', '7', '--ec', 'rs-3-2'], {
    ...process.env,
    DOGFS_CHUNK_REPAIRS: 'off',
    DOGFS_REPAIR_DELAY_MS: '600000', // on (a drain is refused without it), but no server takes the work
    DOGFS_GC_GRACE_MS: '0',
  });
  try {
    const cluster = await second.ready();
    const { dogfs, report, sameBytes } = clusterCommands(second);
    assert.equal((await dogfs(['admin', 'settings', '--dead-after', '3000'])).status, 0);
    const bytes = randomBytes(900_000);
    const local = join(second.dir.path, 'g');
    writeFileSync(local, bytes);
    assert.equal((await dogfs(['put', local, '/g'])).status, 0);
    const stat = await dogfs(['stat', '--json', '/g']);
    const holders = (JSON.parse(stat.stdout) as StatJson).blockGroups[0]!.shards.map((s) => s.chunkServer);
    assert.equal(holders.length, 5);
    const pid = (id: string) => cluster.processes.find((p) => p.id === id)!.pid;
    process.kill(pid(holders[0]!), 'SIGKILL');
    process.kill(pid(holders[1]!), 'SIGKILL');
    await waitFor(
      'both declared dead',
      async () => (await report()).chunkServers.filter((c) => c.state === 'dead').length === 2,
      30_000,
      200,
    );
    assert.equal((await dogfs(['admin', 'drain', holders[2]!])).status, 0);
    // Three of five shards gone or going, K = 3 needed: the two lost ones are rebuilt on the two servers
    // that hold none of the group, read from the two survivors and the draining server; the drained
    // shard has nowhere left to go, and says so.
    const repair = await dogfs(['admin', 'repair', '/g']);
    assert.match(repair.stdout, /\/g: rebuilt 2 shard\(s\)/, repair.stdout + repair.stderr);
    assert.equal(repair.status, 1, 'one shard could not be moved');
    assert.match(repair.stderr, /1 shard\(s\) could not be repaired/);
    assert.equal((await report()).filesWithMissingShardsCount, 0);
    process.kill(pid(holders[2]!), 'SIGKILL');
    await sameBytes('/g', bytes, 'with the draining server gone too');
  } finally {
    await second.stop();
  }
});

test('a drain that cannot finish says why in the report', async () => {
  // Five chunk servers under rs-3-2: every block group is on all five, so a drained shard has nowhere to go.
  const third = startCluster(['--meta', '3', '--chunk', '5', '--ec', 'rs-3-2'], {
    ...process.env,
    DOGFS_REPAIR_DELAY_MS: '60000',
  });
  try {
    const cluster = await third.ready();
    const { dogfs, report } = clusterCommands(third);
    const local = join(third.dir.path, 'h');
    writeFileSync(local, randomBytes(300_000));
    assert.equal((await dogfs(['put', local, '/h'])).status, 0);
    const victim = cluster.processes.find((p) => p.role === 'chunk')!.id;
    assert.equal((await dogfs(['admin', 'drain', victim])).status, 0);
    // Waited for by its reason: a passing failure (a source busy) may be said first.
    const reason = /no live chunk server outside the block group's holders/;
    const stuck = await waitFor(
      'the unfinished repair in the report',
      async () => {
        const r = await report();
        return r.unfinishedRepairs.some((u) => reason.test(u.reason)) && r;
      },
      30_000,
      250,
    );
    assert.deepEqual(
      stuck.unfinishedRepairs.map((u) => u.path),
      ['/h'],
    );
    assert.equal(stuck.filesOnDrainingServers, 1);
    const text = await dogfs(['admin', 'report']);
    assert.match(text.stdout, /could not finish \(tried again later\): 1\n {2}\/h \(chunk-\d\): shard \d/);
  } finally {
    await third.stop();
  }
});
