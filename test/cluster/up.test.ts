import assert from 'node:assert/strict';
import { existsSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { join } from 'node:path';
import { after, test } from 'node:test';
import type { ClusterJson } from '../../src/cluster/up.js';
import { HealthService } from '../../src/wire/gen/types.js';
import { RpcChannel } from '../../src/wire/rpc.js';
import {
  assertOneLineError,
  processAlive,
  runDogfs,
  startDogfs,
  tempDir,
  waitFor,
} from '../helpers/index.js';

const dir = tempDir('dogfs-up-');
after(() => dir.remove());
const clusterDir = join(dir.path, 'cluster');
const clusterJsonPath = join(clusterDir, 'cluster.json');

/** The cluster.json of the cluster in `upDir` (the shared one by default), once there is one. */
function readClusterJson(upDir = clusterDir): ClusterJson | undefined {
  const path = join(upDir, 'cluster.json');
  if (!existsSync(path)) return undefined;
  return JSON.parse(readFileSync(path, 'utf8')) as ClusterJson;
}

async function assertAllHealthy(cluster: ClusterJson): Promise<void> {
  for (const p of cluster.processes) {
    assert.ok(processAlive(p.pid), `${p.id} (pid ${p.pid}) is alive`);
    const channel = new RpcChannel(p.addr);
    try {
      const health = await channel.call(HealthService, 'Check', {}, { timeoutMs: 5000 });
      assert.equal(health.id, p.id);
      assert.equal(health.role, p.role);
      assert.equal(health.pid, p.pid);
    } finally {
      channel.close();
    }
  }
}

test('dogfs up starts a whole cluster, refuses a second supervisor, stops cleanly and comes back', async () => {
  // Ports exported for a standalone server must not reach the nine members (all would take the same).
  const first = startDogfs(['up', '--dir', clusterDir, '--meta', '3', '--chunk', '9'], {
    ...process.env,
    DOGFS_DATA_LISTEN: '127.0.0.1:1',
    DOGFS_METRICS_LISTEN: '127.0.0.1:1',
  });
  const cluster = await waitFor('cluster.json', () => readClusterJson(), 30_000);
  assert.equal(cluster.meta.length, 3);
  assert.equal(cluster.processes.filter((p) => p.role === 'meta').length, 3);
  assert.equal(cluster.processes.filter((p) => p.role === 'chunk').length, 9);
  assert.match(cluster.ui, /^http:\/\/127\.0\.0\.1:\d+\/$/);
  for (const addr of cluster.meta) assert.match(addr, /^127\.0\.0\.1:\d+$/);
  await assertAllHealthy(cluster);
  // Leader balancing puts the cluster group and the namespace group on different metadata servers.
  await waitFor(
    'groups 0 and 1 led by different servers',
    async () => {
      const report = await runDogfs(['admin', 'report', '--json'], {
        env: { ...process.env, DOGFS_CLUSTER: clusterJsonPath },
      });
      if (report.status !== 0) return false;
      const groups = (JSON.parse(report.stdout) as { groups: { group: number; leader: string }[] }).groups;
      const leaderOf = (g: number) => groups.find((x) => x.group === g)?.leader ?? '';
      return leaderOf(0) !== '' && leaderOf(1) !== '' && leaderOf(0) !== leaderOf(1);
    },
    20_000,
    500,
  );
  const page = await fetch(cluster.ui);
  assert.equal(page.status, 200);
  const status = (await (await fetch(`${cluster.ui}status.json`)).json()) as { members: { id: string }[] };
  assert.deepEqual(
    status.members.map((m) => m.id),
    cluster.processes.map((p) => p.id),
  );

  const second = await runDogfs(['up', '--dir', clusterDir]);
  assert.notEqual(second.status, 0);
  assert.match(assertOneLineError(second.stderr), /already served by another dogfs up \(pid \d+\)/);
  await assertAllHealthy(cluster); // the refused attempt disturbed nothing

  first.child.kill('SIGINT');
  const exit = await first.exited;
  assert.equal(exit.code, 0);
  await waitFor('every member gone', () => cluster.processes.every((p) => !processAlive(p.pid)), 10_000);
  assert.equal(existsSync(clusterJsonPath), false, 'cluster.json is removed on a clean stop');

  const again = startDogfs(['up', '--dir', clusterDir]);
  const restarted = await waitFor('cluster.json after restart', () => readClusterJson(), 30_000);
  assert.deepEqual(
    restarted.processes.map((p) => p.id),
    cluster.processes.map((p) => p.id),
    'the same identities come back',
  );
  assert.deepEqual(restarted.meta, cluster.meta, 'free ports are reused');
  await assertAllHealthy(restarted);

  // SIGKILL of the supervisor: the members notice their parent is gone and exit (no orphans).
  again.child.kill('SIGKILL');
  await again.exited;
  await waitFor(
    'members exit after the supervisor is killed',
    () => restarted.processes.every((p) => !processAlive(p.pid)),
    10_000,
  );
});

test('dogfs up rejects bad flags with one clear line', async () => {
  const missing = await runDogfs(['up']);
  assert.equal(missing.status, 2);
  assert.match(assertOneLineError(missing.stderr), /^dogfs up: missing --dir/);

  const unknown = await runDogfs(['up', '--dir', join(dir.path, 'x'), '--frobnicate']);
  assert.equal(unknown.status, 2);
  assert.match(assertOneLineError(unknown.stderr), /frobnicate/);

  const badEc = await runDogfs(['up', '--dir', join(dir.path, 'x'), '--ec', 'rs-0-9']);
  assert.equal(badEc.status, 2);
  assert.match(assertOneLineError(badEc.stderr), /unknown EC policy 'rs-0-9'/);

  const tooFew = await runDogfs(['up', '--dir', join(dir.path, 'y'), '--chunk', '3']);
  assert.equal(tooFew.status, 1);
  assert.match(assertOneLineError(tooFew.stderr), /rs-6-3 needs at least 7 chunk servers/);
  assert.equal(existsSync(join(dir.path, 'y', 'up.lock')), false, 'a refused start leaves DIR unlocked');
});

test('the status page moves to a free port if its chosen one is taken while the members start', async () => {
  const upDir = join(dir.path, 'ui-port-taken');
  const membersJson = join(upDir, 'members.json');
  const up = startDogfs(['up', '--dir', upDir, '--meta', '1', '--chunk', '3', '--ec', 'rs-2-1']);
  const squatter = createServer();
  try {
    // members.json names the chosen port before the members are spawned; the page is served only once
    // they are healthy and have elected leaders, seconds later: another process binds the port first.
    const chosen = await waitFor(
      'members.json with the status page port',
      () => {
        if (!existsSync(membersJson)) return undefined;
        const port = (JSON.parse(readFileSync(membersJson, 'utf8')) as { uiPort: number }).uiPort;
        return port > 0 ? port : undefined;
      },
      30_000,
      5,
    );
    await new Promise<void>((resolve, reject) => {
      squatter.once('error', reject);
      squatter.listen(chosen, '127.0.0.1', resolve);
    });
    const cluster = await waitFor('cluster.json', () => readClusterJson(upDir), 30_000);
    const served = Number(new URL(cluster.ui).port);
    assert.notEqual(served, chosen);
    assert.equal((await fetch(cluster.ui)).status, 200);
    const remembered = (JSON.parse(readFileSync(membersJson, 'utf8')) as { uiPort: number }).uiPort;
    assert.equal(remembered, served, 'members.json remembers the port in use');
  } finally {
    squatter.close();
    up.child.kill('SIGINT');
    await up.exited;
  }
});

test('--restart: a member whose restart fails (its directory held by another process) is tried again until it is back', async () => {
  const upDir = join(dir.path, 'restart-again');
  const up = startDogfs(['up', '--dir', upDir, '--meta', '1', '--chunk', '3', '--ec', 'rs-2-1', '--restart']);
  try {
    const cluster = await waitFor('cluster.json', () => readClusterJson(upDir), 30_000);
    const victim = cluster.processes.find((p) => p.role === 'chunk')!;
    // Its directory's lock names a live process (this one) before it dies: its restarts are refused
    // ("in use by another process") until the lock is gone, with no race against the restart's timer.
    const lock = join(victim.dir, 'LOCK');
    writeFileSync(lock, `${process.pid}\n`);
    process.kill(victim.pid, 'SIGKILL');
    await waitFor(
      'a failed restart',
      () => up.output.stdout.includes(`${victim.id} failed to restart`),
      30_000,
    );
    rmSync(lock);
    await waitFor('the victim back', () => up.output.stdout.includes(`${victim.id} restarted`), 30_000);
  } finally {
    up.child.kill('SIGINT');
    await up.exited;
  }
});

test("--ec becomes the cluster's default-EC setting once; admin settings then changes it, and a restart keeps it", async () => {
  const upDir = join(dir.path, 'default-ec');
  const env = { ...process.env, DOGFS_CLUSTER: join(upDir, 'cluster.json') };
  const ecOf = async (path: string) => {
    const touched = await runDogfs(['touch', path], { env });
    assert.equal(touched.status, 0, touched.stderr);
    const stat = await runDogfs(['stat', '--json', path], { env });
    return (JSON.parse(stat.stdout) as { ec: string }).ec;
  };
  const settingsEc = async () => {
    const shown = await runDogfs(['admin', 'settings', '--json'], { env });
    assert.equal(shown.status, 0, shown.stderr);
    return (JSON.parse(shown.stdout) as { defaultEc: string }).defaultEc;
  };
  let up = startDogfs(['up', '--dir', upDir, '--meta', '1', '--chunk', '3', '--ec', 'rs-2-1']);
  try {
    await waitFor('cluster.json', () => readClusterJson(upDir), 30_000);
    assert.equal(await settingsEc(), 'rs-2-1');
    assert.equal(await ecOf('/first'), 'rs-2-1');
    // The metadata servers once ran with --ec, which overrode this setting: it was shown, and ignored.
    const set = await runDogfs(['admin', 'settings', '--default-ec', 'replicate-3'], { env });
    assert.equal(set.status, 0, set.stderr);
    assert.equal(await ecOf('/second'), 'replicate-3');
    up.child.kill('SIGINT');
    await up.exited;
    up = startDogfs(['up', '--dir', upDir]);
    await waitFor('cluster.json after restart', () => readClusterJson(upDir), 30_000);
    assert.equal(await settingsEc(), 'replicate-3', 'a restart does not set --ec again');
    assert.equal(await ecOf('/third'), 'replicate-3');
  } finally {
    up.child.kill('SIGINT');
    await up.exited;
  }
});
