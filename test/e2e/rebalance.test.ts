/**
 * Rebalancing through the real cluster (`dogfs up`, 3 metadata servers, 3 chunk servers of 64 MiB,
 * rs-2-1, automatic repair on): files fill the three to a quarter each, three empty servers join, and
 * the leader moves shards off the full ones until every server is near the cluster's usage (each copied
 * from its holder, not rebuilt), with every file whole and readable throughout, and nothing left damaged.
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, test } from 'node:test';
import {
  autoRepairTotals,
  clusterCommands,
  memberLog,
  startCluster,
  startDogfs,
  waitFor,
} from '../helpers/index.js';

const CAPACITY = 64 * 1024 * 1024;

interface StatJson {
  blockGroups: { shards: { chunkServer: string }[] }[];
}
const up = startCluster(['--meta', '3', '--chunk', '3', '--ec', 'rs-2-1'], {
  ...process.env,
  DOGFS_CAPACITY: String(CAPACITY),
  DOGFS_REPAIR_DELAY_MS: '1000',
  DOGFS_GC_GRACE_MS: '0',
});
const joined: ReturnType<typeof startDogfs>[] = [];
after(async () => {
  for (const server of joined) server.child.kill('SIGTERM');
  await Promise.all(joined.map((s) => s.exited));
  await up.stop();
});

test('servers that join empty take shards from the full ones until usage is even', async () => {
  const cluster = await up.ready();
  const { dogfs, report, sameBytes } = clusterCommands(up);
  const files = new Map<string, Buffer>();
  for (let i = 0; i < 8; i++) {
    const bytes = randomBytes(4 * 1024 * 1024 + i * 1000);
    const local = join(up.dir.path, `f${i}`);
    writeFileSync(local, bytes);
    const put = await dogfs(['put', local, `/f${i}`]);
    assert.equal(put.status, 0, put.stderr);
    files.set(`/f${i}`, bytes);
  }
  // rs-2-1 on three servers: each holds a shard of every block group, ~16 MiB of 64: 25% each.
  const before = await report();
  assert.deepEqual(before.rebalancing, [], 'even: nothing to move');

  const meta = cluster.meta.join(',');
  for (let i = 1; i <= 3; i++) {
    const dir = join(up.dir.path, `joined-${i}`);
    mkdirSync(dir);
    joined.push(
      startDogfs([
        'chunk',
        '--dir',
        dir,
        '--id',
        `joined-${i}`,
        '--meta',
        meta,
        '--capacity',
        String(CAPACITY),
        // joined-1 and joined-2 in one rack: a group may move one shard there, not two.
        '--failure-domain',
        i === 3 ? 'rack-b' : 'rack-a',
      ]),
    );
  }
  // Six servers, 48 MiB of shards: 12.5% is the cluster's usage, and the first three are twice that.
  await waitFor(
    'the full servers to be found above their share',
    async () => (await report()).rebalancing.length === 3,
    30_000,
    250,
  );
  const settled = await waitFor(
    'shards moved until every server is near the cluster usage',
    async () => {
      const r = await report();
      const servers = r.chunkServers.filter((c) => c.state === 'alive');
      return (
        servers.length === 6 &&
        r.rebalancing.length === 0 &&
        r.filesWithMissingShardsCount === 0 &&
        r.repairs.length === 0 &&
        servers.filter((c) => c.id.startsWith('joined-')).every((c) => c.shardCount > 0) &&
        r
      );
    },
    90_000,
    500,
  );
  const usage = settled.chunkServers.map((c) => c.usedBytes / c.capacityBytes);
  const mean = usage.reduce((a, b) => a + b, 0) / usage.length;
  const shown = settled.chunkServers.map((c, i) => `${c.id} ${(usage[i]! * 100).toFixed(1)}%`).join(', ');
  for (const u of usage) assert.ok(u <= mean + 0.1, `${shown} (mean ${(mean * 100).toFixed(1)}%)`);
  for (const [path, bytes] of files) await sameBytes(path, bytes, `${path} after the moves`);
  // joined-1 and joined-2 share a failure domain: a move never puts a second shard of a group there (it
  // would lower the group's spread over domains); every other server is a domain of its own.
  for (const path of files.keys()) {
    const stat = await dogfs(['stat', '--json', path]);
    assert.equal(stat.status, 0, stat.stderr);
    for (const g of (JSON.parse(stat.stdout) as StatJson).blockGroups) {
      const holders = g.shards.map((x) => x.chunkServer);
      const inRackA = holders.filter((h) => h === 'joined-1' || h === 'joined-2').length;
      assert.ok(inRackA <= 1, `${path}: ${holders.join(', ')}: two shards of one group in rack-a`);
    }
  }

  // Every move copied its shard from the full server (nothing was damaged, so nothing was rebuilt).
  const logs = () => [
    ...cluster.processes.filter((p) => p.role === 'chunk').map(memberLog),
    ...joined.map((j) => j.output.stderr),
  ];
  const moved = await waitFor(
    'the moves in the chunk servers logs',
    () => {
      const t = autoRepairTotals(logs());
      return t.copied > 0 && t;
    },
    10_000,
    100,
  );
  assert.equal(moved.rebuilt, 0, `${moved.copied} copied, ${moved.rebuilt} rebuilt`);

  // A joined server dies: its shards are rebuilt, on any server that can take them (the fuller ones
  // included), and nothing stays damaged.
  assert.equal((await dogfs(['admin', 'settings', '--dead-after', '3000'])).status, 0);
  const victim = joined[0]!;
  victim.child.kill('SIGKILL');
  await victim.exited;
  await waitFor(
    'the dead server declared and every file whole again',
    async () => {
      const r = await report();
      return (
        r.chunkServers.find((c) => c.id === 'joined-1')?.state === 'dead' &&
        r.filesWithMissingShardsCount === 0
      );
    },
    60_000,
    500,
  );
  for (const [path, bytes] of files) await sameBytes(path, bytes, `${path} after the repair`);
});
