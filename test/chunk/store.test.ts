/**
 * The shard store alone, on a real directory: what it does when its calls on one shard overlap, and with
 * files on disk it did not expect.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import {
  copyFileSync,
  existsSync,
  mkdirSync,
  readdirSync,
  statSync,
  unlinkSync,
  utimesSync,
  writeFileSync,
} from 'node:fs';
import { basename, dirname, join } from 'node:path';
import { after, test } from 'node:test';
import { ChunkMetrics } from '../../src/chunk/metrics.js';
import { Scrubber } from '../../src/chunk/scrubber.js';
import { ShardStore, STALE_SUFFIX } from '../../src/chunk/store.js';
import { crc32c } from '../../src/codec/index.js';
import { createLogger } from '../../src/common/log.js';
import { DATA_CHUNK_SIZE } from '../../src/wire/data-transfer.js';
import type { ShardId } from '../../src/wire/gen/types.js';
import { tempDir, waitFor } from '../helpers/index.js';
import { seededBytes, shardFiles } from './helpers.js';

const dir = tempDir('dogfs-chunk-store-');
after(() => dir.remove());

/** Writes `data` as `id` through the store's own write path; the path of its file. */
async function put(store: ShardStore, id: ShardId, data: Buffer): Promise<string> {
  const session = await store.beginWrite(id, data.length);
  for (let at = 0; at < data.length; at += DATA_CHUNK_SIZE) {
    const chunk = data.subarray(at, Math.min(at + DATA_CHUNK_SIZE, data.length));
    await session.append([chunk], chunk.length, [crc32c(chunk)]);
  }
  const record = await session.commit(session.crc32c);
  return store.pathFor(id, record).path;
}

/** Sets a file's modification time to `ms` and returns it as the store reads it back (floored). */
function setMtime(path: string, ms: number): number {
  utimesSync(path, ms / 1000, ms / 1000);
  return Math.floor(statSync(path).mtimeMs);
}

test('after a restart, a deletion naming the old time and a claim arriving together: never both, and the file is there iff the claim succeeded', async () => {
  const storeDir = join(dir.path, 'claim-delete');
  const id = { blockGroupId: 4, index: 1, generation: 0 };
  const path = await put(await ShardStore.open({ dir: storeDir }), id, seededBytes(1000, 1));
  // An hour old, so a claim's new time cannot be the same millisecond.
  const old = setMtime(path, Date.now() - 3_600_000);
  // Reopened: the time of every shard is unknown until read from disk.
  const store = await ShardStore.open({ dir: storeDir });
  assert.equal(store.get(id)?.mtimeMs, 0);
  const [deleted, claimed] = await Promise.allSettled([store.delete(id, old), store.claim(id)]);
  assert.ok(
    deleted.status === 'rejected' || claimed.status === 'rejected',
    'a copy the claim answered for was deleted by a deletion decided before it',
  );
  assert.equal(existsSync(path), claimed.status === 'fulfilled', 'the file is there iff the claim succeeded');
  if (claimed.status === 'fulfilled') {
    assert.equal((deleted as PromiseRejectedResult).reason.code, 'FAILED_PRECONDITION');
    assert.ok(claimed.value.mtimeMs > old);
    assert.equal(store.get(id)?.mtimeMs, claimed.value.mtimeMs);
    assert.equal(Math.floor(statSync(path).mtimeMs), claimed.value.mtimeMs, 'the claimed time on disk');
  }
});

test('a deletion needing no time, arriving while a claim writes its time: the claim does not answer for the copy deleted', async () => {
  const storeDir = join(dir.path, 'claim-unconditional');
  const store = await ShardStore.open({ dir: storeDir });
  const id = { blockGroupId: 5, index: 1, generation: 0 };
  const path = await put(store, id, seededBytes(1000, 2));
  const [claimed, deleted] = await Promise.allSettled([store.claim(id), store.delete(id)]);
  assert.equal(deleted.status, 'fulfilled');
  assert.equal(existsSync(path), false);
  assert.equal(claimed.status, 'rejected', 'the claim answered for a copy deleted');
  assert.equal((claimed as PromiseRejectedResult).reason.code, 'NOT_FOUND');
});

test('after a restart, a stat racing a claim leaves the claimed time, in memory as on disk', async () => {
  const storeDir = join(dir.path, 'claim-stat');
  const id = { blockGroupId: 6, index: 1, generation: 0 };
  const path = await put(await ShardStore.open({ dir: storeDir }), id, seededBytes(1000, 3));
  const old = setMtime(path, Date.now() - 3_600_000);
  const store = await ShardStore.open({ dir: storeDir });
  const [, claimed] = await Promise.all([store.stat(id), store.claim(id)]);
  const onDisk = Math.floor(statSync(path).mtimeMs);
  assert.ok(onDisk > old);
  assert.equal(claimed.mtimeMs, onDisk);
  assert.equal(store.get(id)?.mtimeMs, onDisk, 'the time in memory rolled back below the one claimed');
});

test('a shard file removed behind the store: the scrubber reports it lost (as corrupt), and the metadata service asking about it ends its record', async () => {
  const storeDir = join(dir.path, 'missing');
  const lost = { blockGroupId: 7, index: 3, generation: 0 };
  const kept = { blockGroupId: 8, index: 3, generation: 0 };
  const first = await ShardStore.open({ dir: storeDir });
  const path = await put(first, lost, seededBytes(100_000, 4));
  await put(first, kept, seededBytes(100_000, 5));
  const reported: ShardId[] = [];
  // Reopened, as after a restart (times unknown), with the corrupt-shard hook the server counts by.
  const store = await ShardStore.open({ dir: storeDir, onCorrupt: (id) => reported.push(id) });
  const keptBytes = store.get(kept)!.fileBytes;
  unlinkSync(path);
  const metrics = new ChunkMetrics();
  const scrubber = new Scrubber(store, metrics, undefined, 1024 * 1024 * 1024);
  scrubber.start();
  try {
    await waitFor('a scrub pass', () => metrics.get('scrub_passes') >= 1);
  } finally {
    await scrubber.stop();
  }
  // What heartbeats name (chunk/reporter.ts), so the metadata service has it rebuilt.
  assert.deepEqual(store.corruptList(), [lost], 'the lost shard is reported');
  assert.deepEqual(reported, [lost]);
  assert.equal(metrics.get('scrub_shards'), 1, 'the other shard is scrubbed as before');
  // After the rebuild elsewhere, the metadata service deletes the replaced copy, asking its time first
  // (StatShard): "not there" ends it here too, where it had stayed listed and counted for good.
  await assert.rejects(store.stat(lost), { code: 'NOT_FOUND' });
  assert.equal(store.get(lost), undefined);
  assert.deepEqual(store.corruptList(), []);
  assert.equal(store.usedBytes, keptBytes);
  // A deletion naming a time of a lost file with its record held: nothing to delete, no error.
  const again = await ShardStore.open({ dir: storeDir });
  unlinkSync(again.pathFor(kept, again.get(kept)!).path);
  assert.equal(await again.delete(kept, 12345), false);
  assert.equal(again.shardCount, 0);
});

test('a restart after a crash that left temp files opens under a low descriptor limit, and removes them', () => {
  const hex = (n: number) => n.toString(16).padStart(2, '0');
  /** A store directory with all its 64 x 64 leaf directories, temp files left in those `withTmp` picks. */
  const layout = (name: string, withTmp: (leaf: number) => boolean): string => {
    const storeDir = join(dir.path, name);
    for (let leaf = 0; leaf < 64 * 64; leaf++) {
      const path = join(storeDir, 'shards', hex(leaf >> 6), hex(leaf & 63));
      mkdirSync(path, { recursive: true });
      if (withTmp(leaf)) writeFileSync(join(path, `b${leaf + 1}_i0_g0.0123456789ab.tmp`), 'x');
    }
    return storeDir;
  };
  const few = layout('tmp-few', (leaf) => leaf % 1500 === 7);
  const every = layout('tmp-every', () => true);
  const store = new URL('../../src/chunk/store.js', import.meta.url).href;
  const script = `import { ShardStore } from ${JSON.stringify(store)};
    for (const dir of process.argv.slice(1)) await ShardStore.open({ dir, directWrites: false });`;
  // 128 descriptors (hard and soft: Node raises its soft limit to the hard one), several times what the
  // store needs at once, a thirtieth of its leaf directories.
  const child = spawnSync(
    'sh',
    [
      '-c',
      'ulimit -n 128 && exec "$0" --input-type=module -e "$1" "$2" "$3"',
      process.execPath,
      script,
      few,
      every,
    ],
    { encoding: 'utf8', timeout: 60_000 },
  );
  assert.equal(child.status, 0, `the store did not open: ${child.stderr}`);
  assert.deepEqual(shardFiles(few), []);
  assert.deepEqual(shardFiles(every), []);
});

test('two files for one shard: the store opens, keeps the newer and sets the older aside, whichever is listed first', async () => {
  const id = { blockGroupId: 9, index: 0, generation: 0 };
  const first = seededBytes(70_000, 11);
  const second = seededBytes(70_000, 13);
  // Each copy as the store writes it (in a store of its own), then both in one store's directory.
  const a = await put(await ShardStore.open({ dir: join(dir.path, 'two-a') }), id, first);
  const b = await put(await ShardStore.open({ dir: join(dir.path, 'two-b') }), id, second);
  assert.notEqual(basename(a), basename(b), 'names differ by checksum');
  for (const [name, newer] of [
    ['two-a-newer', a],
    ['two-b-newer', b],
  ] as const) {
    const storeDir = join(dir.path, name);
    const leaf = join(storeDir, 'shards', basename(dirname(dirname(a))), basename(dirname(a)));
    mkdirSync(leaf, { recursive: true });
    const hour = Date.now() - 3_600_000;
    for (const copy of [a, b]) {
      const path = join(leaf, basename(copy));
      copyFileSync(copy, path);
      setMtime(path, copy === newer ? hour + 60_000 : hour);
    }
    const older = newer === a ? b : a;
    const warnings: string[] = [];
    const log = createLogger('warn', {}, (line) => warnings.push(line));
    const store = await ShardStore.open({ dir: storeDir, log });
    assert.equal(store.shardCount, 1);
    const held = store.get(id)!;
    assert.equal(basename(store.pathFor(id, held).path), basename(newer), 'the newer copy is the shard');
    assert.equal(store.usedBytes, held.fileBytes);
    assert.deepEqual(readdirSync(leaf).sort(), [basename(newer), `${basename(older)}${STALE_SUFFIX}`].sort());
    const warning = warnings.find((line) => line.includes('two files for one shard'));
    assert.ok(
      warning?.includes(basename(newer)) && warning.includes(basename(older)),
      'a warning names both',
    );
    const reader = await store.openRead(id);
    try {
      const { data } = await reader.readChunks(0, 70_000, Buffer.alloc(70_000));
      assert.ok(data.equals(newer === a ? first : second));
    } finally {
      await reader.close();
    }
    // Opened again, the copy set aside is passed over.
    assert.equal((await ShardStore.open({ dir: storeDir })).get(id)?.crc32c, held.crc32c);
  }
});
