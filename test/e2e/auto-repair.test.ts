/**
 * Automatic repair through the real cluster (`dogfs up`, 3 metadata servers, 7 chunk servers, rs-3-2,
 * repair after 3 s): a flipped byte in a shard file and a SIGKILLed chunk server are repaired with no
 * command, which `dogfs admin report` shows, and full redundancy is back (M more servers lost afterwards,
 * every file is still read byte-exact).
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, test } from 'node:test';
import { clusterCommands, startCluster, waitFor } from '../helpers/index.js';

const up = startCluster(['--meta', '3', '--chunk', '7', '--ec', 'rs-3-2'], {
  ...process.env,
  // Long enough that the damage, seen at once in the report, is still there when the test looks (a
  // separate process each time) on a busy machine; short enough for a test.
  DOGFS_REPAIR_DELAY_MS: '3000',
  DOGFS_GC_GRACE_MS: '0',
});
const dir = up.dir;
after(() => up.stop());

/** Shard files under a chunk server's directory. */
function shardFiles(root: string): string[] {
  const found: string[] = [];
  const walk = (d: string) => {
    for (const e of readdirSync(d, { withFileTypes: true })) {
      if (e.isDirectory()) walk(join(d, e.name));
      else if (e.name.endsWith('.shard')) found.push(join(d, e.name));
    }
  };
  walk(root);
  return found;
}

test('damage is repaired with no command: a corrupt shard, then a lost server; full redundancy after', async () => {
  const cluster = await up.ready();
  const { dogfs, report, sameBytes } = clusterCommands(up);
  const chunks = cluster.processes.filter((p) => p.role === 'chunk');
  const repaired = (what: string) =>
    waitFor(
      what,
      async () => {
        const r = await report();
        return r.filesWithMissingShardsCount === 0 && r.repairs.length === 0 && r;
      },
      90_000,
      250,
    );

  assert.equal((await dogfs(['admin', 'settings', '--dead-after', '3000'])).status, 0);
  const text = await dogfs(['admin', 'report']);
  assert.match(
    text.stdout,
    /Automatic repair: files damaged for 3 s are rebuilt by chunk servers; 0 in progress/,
  );

  const files = new Map<string, Buffer>([
    ['/small.bin', randomBytes(700_000)],
    ['/big.bin', randomBytes(9 * 1024 * 1024 + 4321)],
    ['/empty.bin', Buffer.alloc(0)],
  ]);
  let smallShards: string[] = [];
  for (const [path, bytes] of files) {
    const local = join(dir.path, path.slice(1));
    writeFileSync(local, bytes);
    const put = await dogfs(['put', local, path]);
    assert.equal(put.status, 0, put.stderr);
    if (path === '/small.bin') smallShards = chunks.flatMap((c) => shardFiles(c.dir));
  }

  // 1. A flipped byte in a shard file: a read finds it and reports it; nobody runs a repair command.
  assert.equal(smallShards.length, 5, '/small.bin is one block group of 3+2 shards');
  const victimShard = smallShards.find((f) => /_i0_/.test(f))!;
  const bytes = readFileSync(victimShard);
  bytes[64 + 1000]! ^= 0x5a; // past the header: shard data
  writeFileSync(victimShard, bytes);
  await sameBytes('/small.bin', files.get('/small.bin')!, 'get over a corrupt shard');
  await waitFor('the corrupt shard reported', async () => (await report()).filesWithMissingShardsCount > 0);
  await repaired('the corrupt shard rebuilt by a chunk server');
  await sameBytes('/small.bin', files.get('/small.bin')!, 'get after the automatic repair');

  // 2. A chunk server SIGKILLed: declared dead after 3 s, its shards rebuilt elsewhere 3 s later.
  const holders = chunks.filter((c) => shardFiles(c.dir).length > 0);
  const victim = holders[0]!;
  process.kill(victim.pid, 'SIGKILL');
  await waitFor(
    'the killed server declared dead and its files damaged',
    async () => {
      const r = await report();
      return (
        r.chunkServers.find((c) => c.id === victim.id)?.state === 'dead' && r.filesWithMissingShardsCount > 0
      );
    },
    30_000,
    200,
  );
  const done = await repaired('the lost shards rebuilt on other servers');
  assert.equal(done.chunkServers.filter((c) => c.state === 'alive').length, 6);

  // Full redundancy: M = 2 more servers lost (the dead one not restarted), every file still whole.
  const alive = new Set(done.chunkServers.filter((c) => c.state === 'alive').map((c) => c.id));
  const more = chunks.filter((c) => c.id !== victim.id && alive.has(c.id)).slice(0, 2);
  for (const c of more) process.kill(c.pid, 'SIGKILL');
  for (const [path, expected] of files) await sameBytes(path, expected, `${path} with three servers lost`);
});
