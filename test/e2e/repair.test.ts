/**
 * Damage and repair through the real cluster (`dogfs up`, 3 metadata servers, 7 chunk servers, rs-3-2):
 * a chunk server SIGKILLed in the middle of a put, a flipped byte in a shard file, `dogfs admin report`
 * naming the damaged files, `dogfs admin repair` restoring full redundancy (proved by losing M more
 * servers afterwards), garbage shards deleted from disk after `rm`, and a put refused when too few chunk
 * servers are left.
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { existsSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, test } from 'node:test';
import { ClientSession, DogfsClient, MetadataConnection } from '../../src/client/index.js';
import type { DogfsError } from '../../src/wire/errors.js';
import {
  assertOneLineError,
  clusterCommands,
  processAlive,
  runDogfs,
  startCluster,
  waitFor,
} from '../helpers/index.js';

// Garbage shards are deleted as soon as the leader sees them, so the test can watch them go.
const up = startCluster(['--meta', '3', '--chunk', '7', '--ec', 'rs-3-2'], {
  ...process.env,
  DOGFS_GC_GRACE_MS: '0',
});
const dir = up.dir;
after(() => up.stop());

/** Every shard file (and tmp file) under a chunk server's directory. */
function filesUnder(root: string, match: (name: string) => boolean): string[] {
  const found: string[] = [];
  const walk = (d: string) => {
    let entries: import('node:fs').Dirent[];
    try {
      entries = readdirSync(d, { withFileTypes: true });
    } catch {
      return; // removed meanwhile (tmp directories come and go)
    }
    for (const e of entries) {
      if (e.isDirectory()) walk(join(d, e.name));
      else if (match(e.name)) found.push(join(d, e.name));
    }
  };
  walk(root);
  return found;
}

const shardOf = (blockGroupId: number) => (name: string) =>
  name.startsWith(`b${blockGroupId}_`) && name.endsWith('.shard');

test('kill during put, corruption, report, repair, garbage collection, too few servers', async () => {
  const cluster = await up.ready();
  const { env, dogfs, report, sameBytes } = clusterCommands(up);
  const chunks = cluster.processes.filter((p) => p.role === 'chunk');

  // Silent chunk servers are declared dead after 3 s instead of 10.
  const fast = await dogfs(['admin', 'settings', '--dead-after', '3000']);
  assert.equal(fast.status, 0, fast.stderr);

  // 1. A flipped byte in a shard file: the get still returns the right bytes and the shard is reported.
  const small = randomBytes(700_000);
  writeFileSync(join(dir.path, 'small.bin'), small);
  assert.equal((await dogfs(['put', join(dir.path, 'small.bin'), '/small.bin'])).status, 0);
  const smallShards = chunks.flatMap((c) => filesUnder(c.dir, (n) => n.endsWith('.shard')));
  assert.equal(smallShards.length, 5, 'one block group of 3+2 shards');
  const victimShard = smallShards.find((f) => /_i0_/.test(f))!;
  const smallGroup = Number(/\/b(\d+)_i0_/.exec(victimShard)![1]);
  const bytes = readFileSync(victimShard);
  bytes[64 + 1000]! ^= 0x5a; // past the 64-byte header: shard data
  writeFileSync(victimShard, bytes);
  await sameBytes('/small.bin', small, 'get over a corrupt shard');
  const afterCorruption = await waitFor('the corrupt shard in the report', async () => {
    const r = await report();
    return r.filesWithMissingShards.includes('/small.bin') && r;
  });
  assert.equal(afterCorruption.filesWithMissingShardsCount, 1);

  const missing = await dogfs(['admin', 'repair', '/nope.bin']);
  assert.equal(missing.status, 1);
  assert.match(assertOneLineError(missing.stderr), /^dogfs: \/nope\.bin: No such file or directory$/);
  const directory = await dogfs(['admin', 'repair', '/']);
  assert.equal(directory.status, 1);
  assert.match(assertOneLineError(directory.stderr), /^dogfs: \/: Is a directory$/);
  // At a terminal the rebuild also shows its progress (bytes written, rate) on stderr.
  const fixSmall = await runDogfs(['admin', 'repair', '/small.bin'], {
    env,
    timeoutMs: 120_000,
    terminal: true,
  });
  assert.equal(fixSmall.status, 0, fixSmall.stdout + fixSmall.stderr);
  assert.match(fixSmall.stdout, /\/small\.bin: rebuilt 1 shard\(s\) in 1 of 1 damaged block group/);
  assert.match(fixSmall.stdout, /repair \/small\.bin \d+(\.\d+)? (B|KiB|MiB) +\S+ (B|KiB|MiB|GiB)\/s/);
  const afterFix = await report();
  assert.deepEqual(afterFix.filesWithMissingShards, [], JSON.stringify(afterFix.chunkServers));
  // The corrupt copy is deleted once the new location is committed.
  await waitFor('the corrupt copy deleted', () => !existsSync(victimShard), 20_000);
  await sameBytes('/small.bin', small, 'get after repairing the corrupt shard');

  // A repairer that lies is refused and changes nothing: a shard "moved" to a server that does not hold
  // it, or onto the server it already is on (whose copy would then be deleted as replaced).
  {
    const meta = new MetadataConnection({ seeds: cluster.meta });
    const session = new ClientSession();
    try {
      const before = (await meta.call('Stat', { path: '/small.bin' })).inode!;
      const bg = before.blockGroups[0]!;
      const holder = bg.shards.find((s) => s.index === 0)!;
      const stranger = chunks.find((c) => !bg.shards.some((s) => s.chunkServerId === c.id))!;
      const lie = (chunkServerId: string) =>
        meta
          .mutate(session, 'CommitRepair', {
            path: '/small.bin',
            inodeId: before.id,
            blockGroupId: bg.id,
            shards: [
              {
                index: 0,
                chunkServerId,
                replaces: holder.chunkServerId,
                length: holder.length,
                crc32c: holder.crc32c,
              },
            ],
          })
          .then(
            () => 'OK',
            (e: DogfsError) => e.code,
          );
      assert.equal(await lie(stranger.id), 'FAILED_PRECONDITION');
      assert.equal(await lie(holder.chunkServerId), 'INVALID_ARGUMENT');
      const after = (await meta.call('Stat', { path: '/small.bin' })).inode!;
      assert.deepEqual(
        after.blockGroups[0]!.shards.map((s) => s.chunkServerId),
        bg.shards.map((s) => s.chunkServerId),
      );
    } finally {
      meta.close();
    }
  }

  // 2. A chunk server SIGKILLed while a put streams to it: the put succeeds with K+1 durable shards.
  // The writer is held half way (one block group of known size: no shard can be finished before the
  // end), so the kill lands mid-shard whatever the machine's speed.
  const big = randomBytes(48 * 1024 * 1024 + 12_345);
  writeFileSync(join(dir.path, 'big.bin'), big);
  const client = new DogfsClient({ meta: cluster.meta });
  let victim: (typeof chunks)[number];
  try {
    const stream = client.createWriteStream('/big.bin', { size: big.length });
    const stored = new Promise<void>((resolve, reject) => {
      stream.once('finish', resolve);
      stream.once('error', reject);
    });
    const half = big.length >> 1;
    await new Promise<void>((resolve, reject) =>
      stream.write(big.subarray(0, half), (error) => (error ? reject(error) : resolve())),
    );
    victim = await waitFor(
      'a chunk server receiving a shard',
      () => chunks.find((c) => filesUnder(c.dir, (n) => n.endsWith('.tmp')).length > 0),
      60_000,
    );
    process.kill(victim.pid, 'SIGKILL');
    stream.end(big.subarray(half));
    await stored;
    assert.ok(
      stream.blockGroups.every((g) => g.shards.filter((s) => s.durable).length === 4),
      'K+1 durable',
    );
  } finally {
    client.close();
  }
  await sameBytes('/big.bin', big, 'get after a server died during the put');
  assert.ok((await report()).filesWithMissingShards.includes('/big.bin'), 'the gap is reported at once');
  // Once the leader declares the server dead, every file with a shard on it is damaged too.
  await waitFor(
    'the killed server declared dead',
    async () => (await report()).chunkServers.find((c) => c.id === victim.id)?.state === 'dead',
    30_000,
    200,
  );

  // 3. admin repair (every damaged file) restores full redundancy...
  const repair = await dogfs(['admin', 'repair']);
  assert.equal(repair.status, 0, repair.stderr);
  assert.equal(repair.stderr, '', 'no progress shown when stderr is not a terminal');
  assert.match(repair.stdout, /\/big\.bin: rebuilt [1-9]\d* shard\(s\)/);
  assert.match(repair.stdout, /repair: [12] damaged file\(s\)/);
  const afterRepair = await report();
  assert.deepEqual(
    afterRepair.filesWithMissingShards,
    [],
    `after admin repair printed:\n${repair.stdout}${repair.stderr}\nchunk servers: ${JSON.stringify(afterRepair.chunkServers.map((c) => [c.id, c.state]))}`,
  );
  const again = await dogfs(['admin', 'repair', '/big.bin']);
  assert.equal(again.status, 0, again.stderr);
  assert.match(again.stdout, /\/big\.bin: no missing shards/);

  // ...so that losing M = 2 more chunk servers still loses nothing.
  const alive = chunks.filter((c) => c !== victim);
  for (const c of alive.slice(0, 2)) process.kill(c.pid, 'SIGKILL');
  await waitFor('servers gone', () => alive.slice(0, 2).every((c) => !processAlive(c.pid)));
  await sameBytes('/big.bin', big, 'get with 3 chunk servers down after repair');
  await sameBytes('/small.bin', small, 'small file with 3 chunk servers down after repair');

  // 4. rm: the file's shards are deleted from the chunk servers that are alive.
  const survivors = alive.slice(2);
  const smallOnSurvivors = () => survivors.flatMap((c) => filesUnder(c.dir, shardOf(smallGroup)));
  const before = smallOnSurvivors().length;
  assert.ok(before > 0, 'the small file has shards on the surviving servers');
  assert.equal((await dogfs(['rm', '/small.bin'])).status, 0);
  await waitFor('garbage shards deleted', () => smallOnSurvivors().length === 0, 30_000);

  // 5. Too few chunk servers for rs-3-2 (4 needed): once the cluster knows, a put is refused at once with
  // one clear line, and nothing appears.
  process.kill(survivors[0]!.pid, 'SIGKILL');
  await waitFor(
    'only 3 chunk servers alive',
    async () => (await report()).chunkServers.filter((c) => c.state === 'alive').length === 3,
    30_000,
    200,
  );
  const tooFew = await dogfs(['put', join(dir.path, 'big.bin'), '/never.bin']);
  assert.equal(tooFew.status, 1);
  assert.match(assertOneLineError(tooFew.stderr), /3 usable chunk servers .*need at least 4/);
  const stat = await dogfs(['stat', '/never.bin']);
  assert.notEqual(stat.status, 0);
  assert.match(stat.stderr, /No such file or directory/);
});
