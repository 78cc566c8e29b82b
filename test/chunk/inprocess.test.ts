/**
 * The store and the data server inside the test process, where faults can be injected: ENOSPC from
 * the disk mid-write, a disk that stalls (back-pressure), server limits (RESOURCE_EXHAUSTED), and the
 * inventory rebuilt from disk with leftover temporary files.
 */
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdirSync, readdirSync, readFileSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { connect } from 'node:net';
import { join } from 'node:path';
import { after, test } from 'node:test';
import { DataServer } from '../../src/chunk/data-server.js';
import { ChunkMetrics } from '../../src/chunk/metrics.js';
import { SCRUB_OPEN_COST_BYTES, Scrubber } from '../../src/chunk/scrubber.js';
import { StagingPool } from '../../src/chunk/shard-file.js';
import { SHARD_HEADER_BYTES, ShardStore, type StoreIo } from '../../src/chunk/store.js';
import { crc32c } from '../../src/codec/index.js';
import { createLogger, type Logger } from '../../src/common/log.js';
import { crc32cCombine, encodeFrame } from '../../src/wire/data-transfer.js';
import type { DogfsError } from '../../src/wire/errors.js';
import type { ShardId } from '../../src/wire/gen/types.js';
import { DataOp } from '../../src/wire/gen/types.js';
import { tempDir, waitFor } from '../helpers/index.js';
import { newClient, seededBytes, shardFiles } from './helpers.js';

const dir = tempDir('dogfs-chunk-inproc-');
const client = newClient();
after(() => {
  client.close();
  dir.remove();
});
const MiB = 1024 * 1024;

/** Both ways of writing shard files (chunk/shard-file.ts); the fault tests run under each. */
const WRITE_MODES = ['direct', 'buffered'] as const;
type WriteMode = (typeof WRITE_MODES)[number];

async function serve(
  name: string,
  io?: StoreIo,
  limits = {},
  mode: WriteMode = 'direct',
  expected: WriteMode = mode,
  log?: Logger,
) {
  const store = await ShardStore.open({ dir: join(dir.path, name), io, directWrites: mode === 'direct' });
  // The test directory's filesystem takes O_DIRECT here (ext4; tmpfs too since Linux 6.6): a store
  // asked for direct writes that fell back would leave the direct path untested, so that fails.
  assert.equal(store.writeMode, expected, `write mode (${store.writeModeWhy})`);
  const metrics = new ChunkMetrics();
  const server = new DataServer(store, metrics, log, limits);
  const port = await server.listen('127.0.0.1', 0);
  return { store, server, metrics, addr: `127.0.0.1:${port}`, dir: join(dir.path, name) };
}

/**
 * Whether a file write carries shard data, not only the header: a buffered write writes the 64-byte
 * header alone first, a direct one holds it and writes it with the first data.
 */
function carriesData(buffers: readonly Uint8Array[]): boolean {
  return buffers.reduce((sum, b) => sum + b.length, 0) > SHARD_HEADER_BYTES;
}

for (const mode of WRITE_MODES)
  test(`ENOSPC from the disk mid-write (${mode}): NO_SPACE, no partial file, reads keep working`, async () => {
    let failWrites = false;
    const io: StoreIo = {
      async writev(handle, buffers, position) {
        if (failWrites && carriesData(buffers)) {
          throw Object.assign(new Error('ENOSPC: no space left on device, write'), { code: 'ENOSPC' });
        }
        await handle.writev(buffers as Uint8Array[], position);
      },
    };
    const { store, server, metrics, addr, dir: storeDir } = await serve(`enospc-${mode}`, io, {}, mode);
    try {
      const kept = { blockGroupId: 1, index: 0, generation: 1 };
      await client.writeShard(addr, kept, seededBytes(3 * MiB, 1));
      failWrites = true;
      await assert.rejects(
        client.writeShard(addr, { blockGroupId: 2, index: 0, generation: 1 }, seededBytes(3 * MiB, 2)),
        {
          code: 'NO_SPACE',
        },
      );
      await waitFor('write released', () => server.activeWrites === 0);
      assert.deepEqual(
        shardFiles(storeDir).filter((f) => !f.includes('b1_')),
        [],
      );
      assert.equal(store.shardCount, 1);
      assert.equal(metrics.get('errors_NO_SPACE'), 1);
      assert.ok((await client.readShardBytes(addr, kept)).equals(seededBytes(3 * MiB, 1)));
      failWrites = false;
      await client.writeShard(addr, { blockGroupId: 2, index: 0, generation: 1 }, seededBytes(3 * MiB, 2));
      assert.equal(store.shardCount, 2);
    } finally {
      await server.close();
    }
  });

for (const [errno, code] of [
  ['EIO', 'UNAVAILABLE'],
  ['EMFILE', 'RESOURCE_EXHAUSTED'],
] as const)
  test(`${errno} from the disk mid-write: ${code} naming it (not INTERNAL), no partial file`, async () => {
    let failWrites = false;
    const io: StoreIo = {
      async writev(handle, buffers, position) {
        if (failWrites && carriesData(buffers))
          throw Object.assign(new Error(`${errno}: injected, write`), { code: errno });
        await handle.writev(buffers as Uint8Array[], position);
      },
    };
    const lines: string[] = [];
    const log = createLogger('info', {}, (line) => lines.push(line));
    const {
      store,
      server,
      metrics,
      addr,
      dir: storeDir,
    } = await serve(`errno-${errno}`, io, {}, 'direct', 'direct', log);
    try {
      failWrites = true;
      await assert.rejects(
        client.writeShard(addr, { blockGroupId: 2, index: 0, generation: 1 }, seededBytes(3 * MiB, 2)),
        (error: DogfsError) => {
          assert.equal(error.code, code);
          assert.match(error.message, new RegExp(`write 2/0@1: ${errno}`));
          return true;
        },
      );
      await waitFor('write released', () => server.activeWrites === 0);
      assert.deepEqual(shardFiles(storeDir), []);
      assert.equal(store.shardCount, 0);
      assert.equal(metrics.get(`errors_${code}`), 1);
      // The client was told with a code; the operator is told in the log.
      const warned = lines.filter((l) => l.includes('"msg":"disk call failed"'));
      assert.equal(warned.length, 1, lines.join('\n'));
      assert.match(warned[0]!, new RegExp(`"errno":"${errno}"`));
      failWrites = false;
      await client.writeShard(addr, { blockGroupId: 2, index: 0, generation: 1 }, seededBytes(3 * MiB, 2));
      assert.equal(store.shardCount, 1);
    } finally {
      await server.close();
    }
  });

test('a read that fails after its header, to a client that stopped reading, is let go at its deadline', async () => {
  const { server, addr, dir: storeDir } = await serve('read-error-unread');
  const shard = { blockGroupId: 3, index: 0, generation: 1 };
  const size = 6 * MiB;
  await client.writeShard(addr, shard, seededBytes(size, 3));
  // A flipped byte in the last chunk: that packet fails its checksum while those before it wait unread.
  const file = join(storeDir, 'shards', shardFiles(storeDir).find((f) => f.endsWith('.shard'))!);
  const bytes = readFileSync(file);
  bytes[SHARD_HEADER_BYTES + size - 1000]! ^= 0x55;
  writeFileSync(file, bytes);
  const socket = connect({ host: '127.0.0.1', port: Number(addr.split(':')[1]) });
  socket.on('error', () => {});
  try {
    await new Promise<void>((resolve) => socket.once('connect', () => resolve()));
    socket.pause(); // never reads
    socket.write(
      encodeFrame('dogfs.v1.DataRequestHeader', {
        op: DataOp.READ_SHARD,
        shard,
        offset: 0,
        length: size,
        packetSize: MiB,
        deadlineMs: Date.now() + 1500,
      }),
    );
    await waitFor('the read to start', () => server.activeReads === 1);
    // Its slot (counted down after its buffers and files are given back) returns soon after the
    // deadline; it was held until the 120 s idle timeout.
    await waitFor('the read to be let go', () => server.activeReads === 0, 5000);
  } finally {
    socket.destroy();
    await server.close();
  }
});

test('a write whose deadline passes while it commits is not kept: the writer was told it failed', async () => {
  let slowTail = false;
  const io: StoreIo = {
    async writev(handle, buffers, position) {
      // The shard's last write (its checksums and footer) takes longer than the write's deadline.
      const bytes = buffers.reduce((sum, b) => sum + b.length, 0);
      if (slowTail && position > SHARD_HEADER_BYTES && bytes < 4096)
        await new Promise((resolve) => setTimeout(resolve, 1500));
      await handle.writev(buffers as Uint8Array[], position);
    },
    async read(handle, buffer, offset, length, position) {
      return (await handle.read(buffer, offset, length, position)).bytesRead;
    },
  };
  const { store, server, addr } = await serve('deadline-in-commit', io, {}, 'buffered');
  try {
    const shard = { blockGroupId: 6, index: 0, generation: 1 };
    slowTail = true;
    await assert.rejects(
      client.writeShard(addr, shard, seededBytes(MiB, 6), { deadline: Date.now() + 800 }),
      { code: 'DEADLINE_EXCEEDED' },
    );
    await waitFor('the write to end on the server', () => server.activeWrites === 0, 5000);
    assert.equal(store.get(shard), undefined, 'not stored');
    slowTail = false;
    await client.writeShard(addr, shard, seededBytes(MiB, 6)); // and may be written again
  } finally {
    await server.close();
  }
});

test('EIO from the disk on a read: CORRUPT naming the I/O error, the shard reported, others still served', async () => {
  let failReadsFrom: number | undefined;
  const io: StoreIo = {
    async writev(handle, buffers, position) {
      await handle.writev(buffers as Uint8Array[], position);
    },
    async read(handle, buffer, offset, length, position) {
      if (
        failReadsFrom !== undefined &&
        position + length > failReadsFrom &&
        position < failReadsFrom + 4096
      ) {
        throw Object.assign(new Error('EIO: i/o error, read'), { code: 'EIO', errno: -5 });
      }
      return (await handle.read(buffer, offset, length, position)).bytesRead;
    },
  };
  const { store, server, metrics, addr } = await serve('eio', io);
  try {
    const bad = { blockGroupId: 1, index: 0, generation: 1 };
    const good = { blockGroupId: 2, index: 0, generation: 1 };
    await client.writeShard(addr, bad, seededBytes(2 * MiB, 1));
    await client.writeShard(addr, good, seededBytes(2 * MiB, 2));
    // A bad sector 1 MiB into the shard files' data (their header is 64 bytes).
    failReadsFrom = SHARD_HEADER_BYTES + MiB;
    await assert.rejects(client.readShardBytes(addr, bad), (error: DogfsError) => {
      assert.equal(error.code, 'CORRUPT');
      assert.match(error.message, /disk I\/O error \(EIO\)/);
      return true;
    });
    assert.deepEqual(store.corruptList(), [bad]);
    assert.equal(metrics.get('corrupt_found'), 0, 'the test store has no onCorrupt hook');
    assert.ok(metrics.get('errors_CORRUPT') >= 1);
    // Bytes before the bad sector still read; the other shard is untouched by the fault.
    assert.ok(
      (await client.readShardBytes(addr, bad, { offset: 0, length: 64 * 1024 })).equals(
        seededBytes(2 * MiB, 1).subarray(0, 64 * 1024),
      ),
    );
    failReadsFrom = undefined;
    assert.ok((await client.readShardBytes(addr, good)).equals(seededBytes(2 * MiB, 2)));
  } finally {
    await server.close();
  }
});

for (const mode of WRITE_MODES)
  test(`a stalled disk stalls the sender (${mode}): bytes accepted stay bounded, nothing piles up in memory`, async () => {
    let release: () => void = () => {};
    let gate: Promise<void> | undefined = new Promise((resolve) => {
      release = resolve;
    });
    let diskWrites = 0;
    const io: StoreIo = {
      async writev(handle, buffers, position) {
        if (carriesData(buffers)) {
          diskWrites++;
          await gate;
        }
        await handle.writev(buffers as Uint8Array[], position);
      },
    };
    const { server, addr } = await serve(`stall-${mode}`, io, {}, mode);
    try {
      const length = 64 * MiB;
      const shard = { blockGroupId: 7, index: 0, generation: 1 };
      const writer = await client.openWrite(addr, shard, length);
      const piece = seededBytes(256 * 1024, 7);
      let accepted = 0;
      const sending = (async () => {
        while (accepted < length) {
          await writer.write(piece);
          accepted += piece.length;
        }
        return writer.finish();
      })();
      // Wait until the disk holds a write and the sender has stopped making progress.
      let previous = -1;
      await waitFor(
        'sender blocked by the stalled disk',
        () => {
          const stalled = diskWrites > 0 && accepted === previous;
          previous = accepted;
          return stalled;
        },
        20_000,
        200,
      );
      // Two packets at the server plus the sockets' buffers: far below the 64 MiB being written.
      assert.ok(accepted < 32 * MiB, `sender got ${accepted} bytes ahead of a stalled disk`);
      release();
      gate = undefined;
      const result = await sending;
      assert.equal(result.length, length);
    } finally {
      release();
      await server.close();
    }
  });

test("a shard write reports progress as each packet is taken by the socket (the client's stall timeout restarts on it)", async () => {
  const { server, addr } = await serve('progress');
  try {
    const length = 3 * MiB + 100;
    let progress = 0;
    const writer = await client.openWrite(addr, { blockGroupId: 9, index: 0, generation: 1 }, length, {
      onProgress: () => progress++,
    });
    const data = seededBytes(length, 9);
    const seen: number[] = [];
    for (let at = 0; at < length; at += 256 * 1024) {
      await writer.write(data.subarray(at, Math.min(length, at + 256 * 1024)));
      seen.push(progress);
    }
    const result = await writer.finish();
    assert.equal(result.length, length);
    // Three whole 1 MiB packets and the short last one.
    assert.equal(progress, 4);
    assert.ok(seen[seen.length - 2]! >= 2, `progress reported while the write went on: ${seen.join(',')}`);
  } finally {
    await server.close();
  }
});

test('beyond the concurrent-write or bytes-in-flight limit: RESOURCE_EXHAUSTED, and it passes', async () => {
  const { server, addr } = await serve('limits', undefined, {
    maxConcurrentWrites: 1,
    maxBytesInFlight: 4 * MiB,
  });
  try {
    const first = await client.openWrite(addr, { blockGroupId: 1, index: 0, generation: 1 }, 2 * MiB);
    await first.write(seededBytes(MiB, 1));
    await waitFor('first write admitted', () => server.activeWrites === 1);
    await assert.rejects(
      client.writeShard(addr, { blockGroupId: 2, index: 0, generation: 1 }, seededBytes(MiB, 2)),
      {
        code: 'RESOURCE_EXHAUSTED',
      },
    );
    await first.write(seededBytes(MiB, 3));
    await first.finish();
    await waitFor('first write released', () => server.activeWrites === 0);
    await client.writeShard(addr, { blockGroupId: 2, index: 0, generation: 1 }, seededBytes(MiB, 2));
  } finally {
    await server.close();
  }
  const tight = await serve('inflight', undefined, { maxBytesInFlight: 3 * MiB });
  try {
    const holding = await client.openWrite(tight.addr, { blockGroupId: 1, index: 0, generation: 1 }, 2 * MiB);
    await holding.write(seededBytes(MiB, 1));
    await waitFor('write admitted', () => tight.server.activeWrites === 1);
    await assert.rejects(client.readShardBytes(tight.addr, { blockGroupId: 1, index: 0, generation: 1 }), {
      code: 'RESOURCE_EXHAUSTED',
    });
    holding.abort();
  } finally {
    await tight.server.close();
  }
});

test('the inventory is rebuilt from disk; leftover tmp files are removed; same shard twice is refused', async () => {
  const storeDir = join(dir.path, 'rebuild');
  const first = await ShardStore.open({ dir: storeDir });
  const ids = Array.from({ length: 120 }, (_, i) => ({
    blockGroupId: 2 ** 40 + i,
    index: i % 14,
    generation: i % 3,
  }));
  for (const [i, id] of ids.entries()) {
    const session = await first.beginWrite(id, i);
    const data = seededBytes(i, i);
    if (i > 0) {
      await session.append([data], i, [crc32c(data)]);
    }
    await session.commit(session.crc32c);
  }
  await assert.rejects(first.beginWrite(ids[5]!, 10), { code: 'ALREADY_EXISTS' });
  // A crash mid-write leaves a tmp file; some unrelated file is ignored, not deleted.
  const tmp = await first.beginWrite({ blockGroupId: 99, index: 0, generation: 0 }, 100);
  const leaf = join(storeDir, 'shards', '00', '00');
  mkdirSync(leaf, { recursive: true });
  writeFileSync(join(leaf, 'notes.txt'), 'hello');
  const usedBefore = first.usedBytes;

  const second = await ShardStore.open({ dir: storeDir });
  assert.equal(second.shardCount, ids.length);
  assert.equal(second.usedBytes, usedBefore);
  assert.equal(shardFiles(storeDir).filter((f) => f.endsWith('.tmp')).length, 0);
  assert.ok(readdirSync(leaf).includes('notes.txt'));
  await tmp.abort();
  const listed = second.list(undefined, 1000).shards.map((r) => r.id);
  assert.deepEqual(
    listed,
    [...ids].sort(
      (a, b) => a.blockGroupId - b.blockGroupId || a.index - b.index || a.generation - b.generation,
    ),
  );
  for (const [i, id] of ids.entries()) {
    const record = second.get(id);
    assert.equal(record?.length, i);
  }
  // Fan-out: no directory holds more than a handful of the 120 shards.
  const perDir = new Map<string, number>();
  for (const f of shardFiles(storeDir)) perDir.set(f.slice(0, 5), (perDir.get(f.slice(0, 5)) ?? 0) + 1);
  assert.ok(Math.max(...perDir.values()) < 10);
  const reader = await second.openRead(ids[119]!);
  const { data } = await reader.readChunks(0, 119, Buffer.alloc(119));
  await reader.close();
  assert.ok(data.equals(seededBytes(119, 119)));
});

test('two writes of one shard started at once: the second is ALREADY_EXISTS, and the store reopens', async () => {
  const storeDir = join(dir.path, 'same-shard-at-once');
  // A capacity far below the disk's free space, so free space is capacity minus used and reserved.
  const store = await ShardStore.open({ dir: storeDir, capacityBytes: 1 << 20 });
  const id = { blockGroupId: 77, index: 1, generation: 1 };
  // Both start before either is past its first await (the free-space check).
  const [first, second] = await Promise.allSettled([store.beginWrite(id, 5), store.beginWrite(id, 5)]);
  assert.equal(first.status, 'fulfilled');
  assert.equal(second.status, 'rejected');
  assert.equal((second as PromiseRejectedResult).reason.code, 'ALREADY_EXISTS');
  const session = (first as PromiseFulfilledResult<Awaited<ReturnType<ShardStore['beginWrite']>>>).value;
  const data = seededBytes(5, 5);
  await session.append([data], 5, [crc32c(data)]);
  await session.commit(session.crc32c);
  assert.equal(store.activeWrites, 0);
  assert.equal(store.freeBytes, (1 << 20) - store.usedBytes, 'nothing left reserved');
  const reopened = await ShardStore.open({ dir: storeDir, capacityBytes: 1 << 20 });
  assert.equal(reopened.shardCount, 1);
});

test('crc32cCombine folds chunk CRCs into the CRC of the whole (any split, any lengths)', () => {
  const data = seededBytes(3 * 64 * 1024 + 12345, 77);
  const whole = crc32c(data);
  for (const split of [0, 1, 100, 64 * 1024, 64 * 1024 + 1, data.length - 1, data.length]) {
    const left = data.subarray(0, split);
    const right = data.subarray(split);
    assert.equal(crc32cCombine(crc32c(left), crc32c(right), right.length), whole, `split at ${split}`);
  }
  let folded = 0;
  for (let offset = 0; offset < data.length; offset += 64 * 1024) {
    const chunk = data.subarray(offset, offset + 64 * 1024);
    folded = crc32cCombine(folded, crc32c(chunk), chunk.length);
  }
  assert.equal(folded, whole);
});

for (const mode of WRITE_MODES)
  test(`deadlines (${mode}): a write stuck on a stalled disk fails with DEADLINE_EXCEEDED and leaves nothing`, async () => {
    let release: () => void = () => {};
    const gate = new Promise<void>((resolve) => {
      release = resolve;
    });
    const io: StoreIo = {
      async writev(handle, buffers, position) {
        if (carriesData(buffers)) await gate;
        await handle.writev(buffers as Uint8Array[], position);
      },
    };
    const { server, addr, dir: storeDir, store } = await serve(`deadline-${mode}`, io, {}, mode);
    try {
      const shard = { blockGroupId: 5, index: 0, generation: 1 };
      await assert.rejects(client.writeShard(addr, shard, seededBytes(8 * MiB, 5), { timeoutMs: 500 }), {
        code: 'DEADLINE_EXCEEDED',
      });
      release();
      await waitFor('write released', () => server.activeWrites === 0);
      assert.deepEqual(shardFiles(storeDir), []);
      assert.equal(store.shardCount, 0);
    } finally {
      release();
      await server.close();
    }
  });

test('a pooled connection the server closed while idle is replaced transparently', async () => {
  const { server, addr } = await serve('idle', undefined, { idleTimeoutMs: 200 });
  try {
    const shard = { blockGroupId: 6, index: 0, generation: 1 };
    await client.writeShard(addr, shard, seededBytes(1000, 6));
    assert.equal(client.idleConnections(addr), 1);
    await waitFor('server closed the idle connection', () => server.openConnections === 0);
    assert.ok((await client.readShardBytes(addr, shard)).equals(seededBytes(1000, 6)));
  } finally {
    await server.close();
  }
});

test('direct and buffered writes make byte-identical shard files, each readable by a store of the other mode', async () => {
  // Lengths around the edges of a direct write: empty, one byte, a chunk ± 1, a file of exactly one
  // 4 MiB staging buffer (64-byte header + 4,193,976 data bytes + 64 checksums + 8-byte footer) and
  // one byte either side of it, and several buffers with a short last one.
  const lengths = [0, 1, 64 * 1024 - 1, 64 * 1024 + 1, 4_193_975, 4_193_976, 4_193_977, 9 * MiB + 12345];
  const stores = {
    direct: await ShardStore.open({ dir: join(dir.path, 'same-direct') }),
    buffered: await ShardStore.open({ dir: join(dir.path, 'same-buffered'), directWrites: false }),
  };
  assert.equal(stores.direct.writeMode, 'direct', stores.direct.writeModeWhy);
  assert.equal(stores.buffered.writeMode, 'buffered');
  const ids = lengths.map((_, i) => ({ blockGroupId: 500 + i, index: 3, generation: 2 }));
  for (const store of Object.values(stores)) {
    for (const [i, length] of lengths.entries()) {
      const data = seededBytes(length, i);
      const session = await store.beginWrite(ids[i]!, length);
      // In packets of up to 1 MiB, whole chunks each, as the data server hands them over.
      for (let offset = 0; offset < length; offset += MiB) {
        const packet = data.subarray(offset, Math.min(length, offset + MiB));
        const crcs: number[] = [];
        for (let at = 0; at < packet.length; at += 64 * 1024) {
          crcs.push(crc32c(packet.subarray(at, Math.min(packet.length, at + 64 * 1024))));
        }
        await session.append([packet], packet.length, crcs);
      }
      const record = await session.commit(crc32c(data));
      assert.equal(record.length, length);
    }
  }
  const files = (store: ShardStore) => shardFiles(store.dir).filter((f) => f.endsWith('.shard'));
  assert.deepEqual(files(stores.direct), files(stores.buffered));
  for (const name of files(stores.direct)) {
    const direct = readFileSync(join(stores.direct.dir, 'shards', name));
    const buffered = readFileSync(join(stores.buffered.dir, 'shards', name));
    assert.ok(direct.equals(buffered), `${name}: same bytes both ways`);
  }
  // Each store's files opened by a store of the other mode: the format is one (no version change).
  const swapped = {
    direct: await ShardStore.open({ dir: stores.buffered.dir }),
    buffered: await ShardStore.open({ dir: stores.direct.dir, directWrites: false }),
  };
  for (const store of Object.values(swapped)) {
    for (const [i, length] of lengths.entries()) {
      const reader = await store.openRead(ids[i]!);
      const { data } = await reader.readChunks(0, length, Buffer.alloc(length));
      await reader.close();
      assert.ok(data.equals(seededBytes(length, i)), `${store.writeMode} store reads shard of ${length}`);
    }
  }
});

test('more direct writes open than staging buffers: none waits for another, the rest go through the page cache', async () => {
  const store = await ShardStore.open({ dir: join(dir.path, 'many-direct') });
  assert.equal(store.writeMode, 'direct', store.writeModeWhy);
  // Twelve writes open at once, each with 5 MiB appended (more than one staging buffer) and not finished:
  // as twelve clients each sending a stripe to every shard before the next. A write that waited for a
  // buffer another open write holds would hang here until its deadline.
  const writes = 12;
  const length = 5 * MiB + 4321;
  const ids = Array.from({ length: writes }, (_, i) => ({ blockGroupId: 700 + i, index: 1, generation: 0 }));
  const append = async (
    session: Awaited<ReturnType<ShardStore['beginWrite']>>,
    data: Buffer,
    from: number,
    to: number,
  ) => {
    for (let offset = from; offset < to; offset += MiB) {
      const packet = data.subarray(offset, Math.min(to, offset + MiB));
      const crcs: number[] = [];
      for (let at = 0; at < packet.length; at += 64 * 1024)
        crcs.push(crc32c(packet.subarray(at, Math.min(packet.length, at + 64 * 1024))));
      await session.append([packet], packet.length, crcs);
    }
  };
  const sessions = [];
  for (const [i, id] of ids.entries()) {
    const session = await store.beginWrite(id, length);
    await append(session, seededBytes(length, i), 0, 5 * MiB);
    sessions.push(session);
  }
  assert.ok(store.stagingBuffersInUse <= 8, `${store.stagingBuffersInUse} staging buffers held`);
  // Finished in the reverse order: the last opened (buffered) first.
  for (let i = writes - 1; i >= 0; i--) {
    const data = seededBytes(length, i);
    await append(sessions[i]!, data, 5 * MiB, length);
    assert.equal((await sessions[i]!.commit(crc32c(data))).length, length);
  }
  assert.equal(store.stagingBuffersInUse, 0, 'every staging buffer back in the pool');
  for (const [i, id] of ids.entries()) {
    const reader = await store.openRead(id);
    const { data } = await reader.readChunks(0, length, Buffer.alloc(length));
    await reader.close();
    assert.ok(data.equals(seededBytes(length, i)), `shard ${i} reads back`);
  }
});

test('a staging pool allocates prewarmed buffers at once, hands them out without allocating, and never past its size', () => {
  let allocations = 0;
  const pool = new StagingPool(
    3,
    (bytes) => {
      allocations++;
      return Buffer.alloc(bytes);
    },
    8192,
    4096,
  );
  pool.prewarm(2);
  assert.equal(allocations, 2);
  assert.equal(pool.buffersAllocated, 2);
  assert.equal(pool.buffersInUse, 0, 'prewarmed buffers are free');
  const pair = pool.tryAcquirePair();
  assert.ok(pair !== undefined);
  assert.equal(allocations, 2, 'the pair came from the prewarmed buffers');
  pool.prewarm(10);
  assert.equal(allocations, 3, 'prewarming stops at the pool size');
  assert.ok(pool.tryAcquire() !== undefined);
  assert.equal(pool.tryAcquire(), undefined, 'a full pool gives nothing more');
  for (const buffer of pair) pool.release(buffer);
  assert.equal(pool.buffersInUse, 1);
});

test('a filesystem that refuses O_DIRECT (EINVAL at open): the store writes through the page cache instead', async () => {
  let refused = 0;
  const io: StoreIo = {
    async writev(handle, buffers, position) {
      await handle.writev(buffers as Uint8Array[], position);
    },
    async createDirect() {
      refused++;
      throw Object.assign(new Error('EINVAL: invalid argument, open'), { code: 'EINVAL' });
    },
  };
  const { store, server, addr } = await serve('no-direct', io, {}, 'direct', 'buffered');
  try {
    assert.equal(refused, 1, 'probed once at start-up, never tried per shard');
    assert.match(store.writeModeWhy, /EINVAL/);
    const shard = { blockGroupId: 8, index: 1, generation: 1 };
    await client.writeShard(addr, shard, seededBytes(5 * MiB + 3, 8));
    assert.ok((await client.readShardBytes(addr, shard)).equals(seededBytes(5 * MiB + 3, 8)));
    assert.equal(refused, 1);
    assert.deepEqual(
      shardFiles(join(dir.path, 'no-direct')).filter((f) => !f.endsWith('.shard')),
      [],
      'the probe file is gone',
    );
  } finally {
    await server.close();
  }
});

for (const mode of WRITE_MODES) {
  test(`reads (${mode} store): ${mode === 'direct' ? 'O_DIRECT reads of the blocks around each packet' : 'through the page cache'}, exact bytes at any offset`, async () => {
    let alignedReads = 0;
    let reads = 0;
    const io: StoreIo = {
      async writev(handle, buffers, position) {
        await handle.writev(buffers as Uint8Array[], position);
      },
      async read(handle, buffer, offset, length, position) {
        reads++;
        // Data reads of a buffered store start 64 bytes (the header) past a chunk boundary; direct
        // ones start and end on 4 KiB blocks.
        if (position % 4096 === 0 && length % 4096 === 0 && position > 0) alignedReads++;
        return (await handle.read(buffer, offset, length, position)).bytesRead;
      },
    };
    const { server, addr } = await serve(`reads-${mode}`, io, {}, mode);
    try {
      const shard = { blockGroupId: 11, index: 2, generation: 1 };
      const length = 3 * MiB + 4097;
      const data = seededBytes(length, 11);
      await client.writeShard(addr, shard, data);
      assert.ok((await client.readShardBytes(addr, shard)).equals(data));
      for (const [offset, bytes] of [
        [0, 1],
        [4095, 2],
        [64 * 1024 - 1, 70_000],
        [MiB + 12_345, MiB],
        [length - 5000, 5000],
        [length - 1, 1],
      ] as const) {
        const got = await client.readShardBytes(addr, shard, { offset, length: bytes });
        assert.ok(got.equals(data.subarray(offset, offset + bytes)), `range ${offset}+${bytes}`);
      }
      assert.ok(reads > 0);
      if (mode === 'direct') assert.ok(alignedReads > 0, 'the data was read with direct reads');
      else assert.equal(alignedReads, 0);
    } finally {
      await server.close();
    }
  });
}

/** Disk I/O whose next read fails with `errno` once `failNext()` has been called (writes pass). */
function failingNextRead(errno: string): { io: StoreIo; failNext(): void } {
  let failNextRead = false;
  const io: StoreIo = {
    async writev(handle, buffers, position) {
      await handle.writev(buffers as Uint8Array[], position);
    },
    async read(handle, buffer, offset, length, position) {
      if (failNextRead) {
        failNextRead = false;
        throw Object.assign(new Error(`${errno}: injected, read`), { code: errno });
      }
      return (await handle.read(buffer, offset, length, position)).bytesRead;
    },
  };
  return {
    io,
    failNext: () => {
      failNextRead = true;
    },
  };
}

test('the scrubber goes on past a shard it could not read for a reason other than corruption', async () => {
  const { io, failNext } = failingNextRead('EMFILE');
  const { store, server, addr } = await serve('scrub-errors', io);
  const metrics = new ChunkMetrics();
  const scrubber = new Scrubber(store, metrics, undefined, 1024 * MiB);
  try {
    for (const blockGroupId of [1, 2, 3])
      await client.writeShard(
        addr,
        { blockGroupId, index: 0, generation: 1 },
        seededBytes(MiB, blockGroupId),
      );
    // The first shard's first read (its header, at open) fails; the other two are scrubbed all the same.
    failNext();
    scrubber.start();
    await waitFor('two shards scrubbed after the failed one', () => metrics.get('scrub_shards') >= 2);
    assert.equal(metrics.get('scrub_errors'), 1);
    assert.deepEqual(store.corruptList(), [], 'an error of the system is no corruption');
  } finally {
    await scrubber.stop();
    await server.close();
  }
});

test('corruption found by a read of a copy deleted and written again meanwhile is not held against the new copy', async () => {
  const { io, failNext } = failingNextRead('EIO');
  const { store, server, addr } = await serve('corrupt-copy', io);
  const shard = { blockGroupId: 7, index: 2, generation: 1 };
  const buffer = Buffer.alloc(MiB);
  try {
    await client.writeShard(addr, shard, seededBytes(MiB, 1));
    const old = await store.openRead(shard);
    try {
      // The copy the reader holds goes, and a new one of the same shard takes its place.
      assert.equal(await store.delete(shard), true);
      await client.writeShard(addr, shard, seededBytes(MiB, 2));
      failNext();
      await assert.rejects(old.readChunks(0, MiB, buffer), { code: 'CORRUPT' });
    } finally {
      await old.close();
    }
    assert.deepEqual(store.corruptList(), [], 'the new copy is not reported for the old one');
    // The copy held now failing the same way is reported.
    const current = await store.openRead(shard);
    try {
      failNext();
      await assert.rejects(current.readChunks(0, MiB, buffer), { code: 'CORRUPT' });
    } finally {
      await current.close();
    }
    assert.deepEqual(store.corruptList(), [shard]);
  } finally {
    await server.close();
  }
});

/** A store of `count` empty shards (block groups 1..count), and the ids its `openRead` is asked for. */
async function emptyShards(name: string, count: number): Promise<{ store: ShardStore; opened: ShardId[] }> {
  const store = await ShardStore.open({ dir: join(dir.path, name) });
  for (let blockGroupId = 1; blockGroupId <= count; blockGroupId++) {
    const session = await store.beginWrite({ blockGroupId, index: 0, generation: 1 }, 0);
    await session.commit(0);
  }
  const opened: ShardId[] = [];
  const openRead = store.openRead.bind(store);
  store.openRead = (id) => {
    opened.push(id);
    return openRead(id);
  };
  return { store, opened };
}

test('the scrubber charges each shard it opens to its rate: empty shards are not opened at full speed', async () => {
  const { store } = await emptyShards('scrub-open-cost', 40);
  const metrics = new ChunkMetrics();
  // Twenty opens a second; the shards hold no bytes, so only the opens can slow the pass.
  const opensPerSecond = 20;
  const scrubber = new Scrubber(store, metrics, undefined, SCRUB_OPEN_COST_BYTES * opensPerSecond);
  const started = performance.now();
  scrubber.start();
  try {
    await waitFor('eleven shards scrubbed', () => metrics.get('scrub_shards') >= 11);
    const elapsedMs = performance.now() - started;
    // Ten opens paid for before the eleventh: at least half a second (less a timer's rounding).
    assert.ok(elapsedMs >= (10 / opensPerSecond) * 1000 - 20, `${elapsedMs.toFixed(0)} ms`);
  } finally {
    await scrubber.stop();
  }
});

test('a scrub pass goes on after the last shard scrubbed: started again, and in a new scrubber from its cursor file', async () => {
  const { store, opened } = await emptyShards('scrub-resume', 40);
  const cursorPath = join(dir.path, 'scrub-resume-cursor.json');
  const rate = SCRUB_OPEN_COST_BYTES * 50;
  /** Runs `scrubber` until it has opened `count` shards; the shards it opened. */
  const scrubSome = async (scrubber: Scrubber, count: number): Promise<ShardId[]> => {
    const from = opened.length;
    scrubber.start();
    try {
      await waitFor(`${count} shards opened`, () => opened.length >= from + count);
    } finally {
      await scrubber.stop();
    }
    return opened.slice(from);
  };
  const next = (after: ShardId | undefined) => ({
    blockGroupId: (after?.blockGroupId ?? 0) + 1,
    index: 0,
    generation: 1,
  });

  const first = new Scrubber(store, new ChunkMetrics(), undefined, rate, cursorPath);
  assert.deepEqual((await scrubSome(first, 4))[0], next(undefined));
  const stoppedAt = first.cursor;
  assert.ok(stoppedAt !== undefined && stoppedAt.blockGroupId >= 3, 'stopped within the pass');
  // Started again: from the shard after the last one scrubbed, not from the first.
  assert.deepEqual((await scrubSome(first, 4))[0], next(stoppedAt));
  // A new scrubber (as after a restart) reads the position the last one wrote at stop.
  const savedAt = first.cursor;
  assert.deepEqual(JSON.parse(readFileSync(cursorPath, 'utf8')), { after: savedAt });
  const second = new Scrubber(store, new ChunkMetrics(), undefined, rate, cursorPath);
  assert.deepEqual((await scrubSome(second, 2))[0], next(savedAt));
  // A cursor file that holds no position is only a hint gone: a pass from the first shard.
  writeFileSync(cursorPath, '{"after": "b7"}');
  const third = new Scrubber(store, new ChunkMetrics(), undefined, rate, cursorPath);
  assert.deepEqual((await scrubSome(third, 1))[0], next(undefined));
  // Nor is one that is not a small regular file read: a FIFO (opening it to read would wait for a writer
  // for ever) or a link to an endless device.
  for (const make of [
    () => execFileSync('mkfifo', [cursorPath]),
    () => symlinkSync('/dev/zero', cursorPath),
    () => writeFileSync(cursorPath, `{"after": null, "pad": "${'x'.repeat(2000)}"}`),
  ]) {
    rmSync(cursorPath, { force: true });
    make();
    const other = new Scrubber(store, new ChunkMetrics(), undefined, rate, cursorPath);
    assert.deepEqual((await scrubSome(other, 1))[0], next(undefined));
  }
});
