/**
 * A real `dogfs chunk` process under faults: on-disk corruption (reads fail with CORRUPT, the scrubber
 * reports it), SIGKILL in the middle of a write, a full disk (capacity), and hostile wire input.
 */
import assert from 'node:assert/strict';
import { closeSync, mkdirSync, openSync, readdirSync, readSync, writeFileSync, writeSync } from 'node:fs';
import { connect } from 'node:net';
import { join } from 'node:path';
import { after, test } from 'node:test';
import { DATA_CHUNK_SIZE, encodeFrame, FrameReader } from '../../src/wire/data-transfer.js';
import type { DogfsError } from '../../src/wire/errors.js';
import { ChunkControlService, DataOp, type DataResponseHeader } from '../../src/wire/gen/types.js';
import { tempDir, waitFor } from '../helpers/index.js';
import { counter, newClient, seededBytes, shardFiles, startChunk, status } from './helpers.js';

const dir = tempDir('dogfs-chunk-faults-');
const client = newClient();
after(() => {
  client.close();
  dir.remove();
});

const MiB = 1024 * 1024;

function flipByte(path: string, position: number): void {
  const fd = openSync(path, 'r+');
  const byte = Buffer.alloc(1);
  readSync(fd, byte, 0, 1, position);
  byte[0] = byte[0]! ^ 0x40;
  writeSync(fd, byte, 0, 1, position);
  closeSync(fd);
}

function fileOf(chunkDir: string, blockGroupId: number): string {
  const name = shardFiles(chunkDir).find((f) => f.includes(`b${blockGroupId}_`) && f.endsWith('.shard'));
  assert.ok(name, `file of shard ${blockGroupId}`);
  return join(chunkDir, 'shards', name);
}

test('a flipped byte on disk: reads fail with CORRUPT (never wrong bytes) and the scrubber reports it', async () => {
  const chunk = await startChunk(join(dir.path, 'corrupt'), ['--scrub-rate', String(64 * MiB)]);
  try {
    const readMe = { blockGroupId: 11, index: 0, generation: 1 };
    const scrubMe = { blockGroupId: 12, index: 1, generation: 1 };
    const healthy = { blockGroupId: 13, index: 2, generation: 1 };
    for (const shard of [readMe, scrubMe, healthy]) {
      await client.writeShard(chunk.dataAddr, shard, seededBytes(MiB + 100, shard.blockGroupId));
    }
    // 64 header bytes, then data: flip a byte in the third chunk of each.
    flipByte(fileOf(chunk.dir, 11), 64 + 2 * DATA_CHUNK_SIZE + 5);
    flipByte(fileOf(chunk.dir, 12), 64 + 2 * DATA_CHUNK_SIZE + 5);

    // A read of untouched chunks still succeeds; one touching the bad chunk fails, whole or ranged.
    const first = await client.readShardBytes(chunk.dataAddr, readMe, { offset: 0, length: DATA_CHUNK_SIZE });
    assert.ok(first.equals(seededBytes(MiB + 100, 11).subarray(0, DATA_CHUNK_SIZE)));
    await assert.rejects(client.readShardBytes(chunk.dataAddr, readMe), { code: 'CORRUPT' });
    await assert.rejects(
      client.readShardBytes(chunk.dataAddr, readMe, { offset: 2 * DATA_CHUNK_SIZE + 5, length: 1 }),
      { code: 'CORRUPT' },
    );
    // The scrubber finds the one nobody read; the healthy one is never reported.
    const reported = await waitFor('scrubber reports the corrupt shard', async () => {
      const s = await status(chunk);
      return s.corruptShards.some((id) => id.blockGroupId === 12) ? s : undefined;
    });
    assert.deepEqual(reported.corruptShards.map((id) => id.blockGroupId).sort(), [11, 12]);
    assert.ok(counter(reported, 'corrupt_found') >= 2);
    assert.ok(counter(reported, 'errors_CORRUPT') >= 2);
    const back = await client.readShardBytes(chunk.dataAddr, healthy);
    assert.ok(back.equals(seededBytes(MiB + 100, 13)));
    // Deleting a corrupt shard forgets it.
    await chunk.control.call(ChunkControlService, 'DeleteShard', { shard: readMe });
    assert.ok(!(await status(chunk)).corruptShards.some((id) => id.blockGroupId === 11));
  } finally {
    await chunk.stop();
  }
});

test('SIGKILL in the middle of a write, then restart: no partial shard visible, no tmp file left', async () => {
  const chunkDir = join(dir.path, 'killed');
  const first = await startChunk(chunkDir, ['--scrub-rate', '0']);
  const complete = { blockGroupId: 21, index: 0, generation: 1 };
  await client.writeShard(first.dataAddr, complete, seededBytes(2 * MiB, 21));
  const partial = { blockGroupId: 22, index: 0, generation: 1 };
  const writer = await client.openWrite(first.dataAddr, partial, 16 * MiB);
  await writer.write(seededBytes(8 * MiB, 22));
  await waitFor('tmp file on disk', () => shardFiles(chunkDir).some((f) => f.endsWith('.tmp')));
  await first.kill();
  // The writer learns that its server went away: its next write (or finish) fails with UNAVAILABLE.
  await waitFor('writer fails', () =>
    writer.write(Buffer.alloc(1)).then(
      () => false,
      (error: DogfsError) => error.code === 'UNAVAILABLE',
    ),
  );

  const second = await startChunk(chunkDir, ['--scrub-rate', '0']);
  try {
    assert.deepEqual(
      shardFiles(chunkDir).filter((f) => f.endsWith('.tmp')),
      [],
    );
    await assert.rejects(second.control.call(ChunkControlService, 'StatShard', { shard: partial }), {
      code: 'NOT_FOUND',
    });
    const list = await second.control.call(ChunkControlService, 'ListShards', {});
    assert.deepEqual(
      list.shards.map((s) => s.shard?.blockGroupId),
      [21],
    );
    const back = await client.readShardBytes(second.dataAddr, complete);
    assert.ok(back.equals(seededBytes(2 * MiB, 21)));
  } finally {
    await second.stop();
  }
});

test('a full disk (capacity reached): NO_SPACE, nothing partial, reads keep working', async () => {
  // It belongs to a cluster (as if registered once): deletes from another are refused below.
  mkdirSync(join(dir.path, 'full'), { recursive: true });
  writeFileSync(join(dir.path, 'full', 'cluster-id'), '11111111-2222-4333-8444-555555555555\n');
  const chunk = await startChunk(join(dir.path, 'full'), [
    '--scrub-rate',
    '0',
    '--capacity',
    String(3 * MiB),
  ]);
  try {
    const kept = { blockGroupId: 31, index: 0, generation: 1 };
    await client.writeShard(chunk.dataAddr, kept, seededBytes(2 * MiB, 31));
    const before = shardFiles(chunk.dir);
    await assert.rejects(
      client.writeShard(
        chunk.dataAddr,
        { blockGroupId: 32, index: 0, generation: 1 },
        seededBytes(2 * MiB, 32),
      ),
      { code: 'NO_SPACE' },
    );
    assert.deepEqual(shardFiles(chunk.dir), before);
    assert.ok((await client.readShardBytes(chunk.dataAddr, kept)).equals(seededBytes(2 * MiB, 31)));
    const s = await status(chunk);
    assert.equal(s.capacityBytes, 3 * MiB);
    assert.ok(s.usedBytes > 2 * MiB && s.usedBytes < 3 * MiB);
    // A delete naming another server (its address on record now answered by this one) is refused and
    // deletes nothing; one naming this server deletes, and space comes back.
    const { id } = await status(chunk);
    await assert.rejects(
      chunk.control.call(ChunkControlService, 'DeleteShard', { shard: kept, chunkServerId: `${id}-other` }),
      { code: 'FAILED_PRECONDITION' },
    );
    // So is one from a cluster this server does not belong to.
    await assert.rejects(
      chunk.control.call(ChunkControlService, 'DeleteShard', {
        shard: kept,
        chunkServerId: id,
        clusterId: '0123456789abcdef',
      }),
      { code: 'FAILED_PRECONDITION' },
    );
    assert.deepEqual(shardFiles(chunk.dir), before);
    await chunk.control.call(ChunkControlService, 'DeleteShard', {
      shard: kept,
      chunkServerId: id,
      clusterId: '11111111-2222-4333-8444-555555555555',
    });
    await client.writeShard(
      chunk.dataAddr,
      { blockGroupId: 32, index: 0, generation: 1 },
      seededBytes(2 * MiB, 32),
    );
  } finally {
    await chunk.stop();
  }
});

/** Sends raw bytes on a fresh connection and returns the server's first answer. */
async function exchange(address: string, bytes: Buffer[]): Promise<DataResponseHeader> {
  const [host, port] = [
    address.slice(0, address.lastIndexOf(':')),
    Number(address.slice(address.lastIndexOf(':') + 1)),
  ];
  const socket = connect({ host, port });
  socket.on('error', () => {});
  for (const b of bytes) socket.write(b);
  const response = await new FrameReader(socket).readFrame('dogfs.v1.DataResponseHeader');
  socket.destroy();
  assert.ok(response, 'the server answers before closing');
  return response;
}

function frameOfRaw(body: Buffer): Buffer {
  const prefix = Buffer.alloc(4);
  prefix.writeUInt32BE(body.length);
  return Buffer.concat([prefix, body]);
}

test('hostile input: bad ids, huge numbers, oversized messages are refused with INVALID_ARGUMENT and touch nothing', async () => {
  const chunk = await startChunk(join(dir.path, 'hostile'), ['--scrub-rate', '0']);
  try {
    const good = { blockGroupId: 41, index: 0, generation: 1 };
    await client.writeShard(chunk.dataAddr, good, seededBytes(1000, 41));
    const before = shardFiles(chunk.dir);
    const write = (shard: object, extra: object = {}) =>
      encodeFrame('dogfs.v1.DataRequestHeader', { op: DataOp.WRITE_SHARD, shard, length: 10, ...extra });
    const read = (shard: object, extra: object = {}) =>
      encodeFrame('dogfs.v1.DataRequestHeader', { op: DataOp.READ_SHARD, shard, length: 10, ...extra });
    // A string where the id's number belongs: ../../etc/passwd as field 1 (length-delimited).
    const traversal = Buffer.from('../../../../etc/passwd');
    const shardBytes = Buffer.concat([Buffer.from([0x0a, traversal.length]), traversal]);
    const requestBytes = Buffer.concat([Buffer.from([0x08, 0x02, 0x12, shardBytes.length]), shardBytes]);
    const oversized = Buffer.alloc(4);
    oversized.writeUInt32BE(0x7fff_ffff);
    const cases: [string, Buffer[]][] = [
      ['negative block group id', [write({ blockGroupId: -1, index: 0, generation: 1 })]],
      ['huge block group id', [read({ blockGroupId: 2 ** 60, index: 0, generation: 1 })]],
      ['negative index', [read({ blockGroupId: 41, index: -1, generation: 1 })]],
      ['index out of range', [write({ blockGroupId: 41, index: 32, generation: 1 })]],
      ['generation 2^53', [read({ blockGroupId: 41, index: 0, generation: 2 ** 53 })]],
      [
        'generation 2^64-1',
        [frameOfRaw(Buffer.from([0x08, 0x02, 0x12, 0x0d, 0x08, 0x29, 0x18, ...Array(9).fill(0xff), 0x01]))],
      ],
      ['missing shard id', [read(undefined as unknown as object)]],
      ['traversal string as an id', [frameOfRaw(requestBytes)]],
      ['oversized frame', [oversized]],
      ['malformed header bytes', [frameOfRaw(Buffer.from([0xff, 0xff, 0xff, 0xff, 0xff]))]],
      ['unknown op', [encodeFrame('dogfs.v1.DataRequestHeader', { op: 9 as DataOp, shard: good })]],
      ['shard length beyond the limit', [write({ ...good, blockGroupId: 42 }, { length: 2 ** 40 })]],
      ['packet size not whole chunks', [write({ ...good, blockGroupId: 42 }, { packetSize: 1000 })]],
      ['read offset past the end', [read(good, { offset: 5000 })]],
      [
        'packet larger than declared',
        [
          write({ ...good, blockGroupId: 43 }, { length: 8 * MiB, packetSize: DATA_CHUNK_SIZE }),
          encodeFrame('dogfs.v1.DataPacketHeader', { length: 2 * DATA_CHUNK_SIZE, chunkCrc32c: [1, 2] }),
        ],
      ],
      [
        'packet running past the shard',
        [
          write({ ...good, blockGroupId: 44 }, { length: 10 }),
          encodeFrame('dogfs.v1.DataPacketHeader', { length: 20, chunkCrc32c: [1] }),
          Buffer.alloc(20),
        ],
      ],
      [
        'wrong number of chunk checksums',
        [
          write({ ...good, blockGroupId: 45 }, { length: 10 }),
          encodeFrame('dogfs.v1.DataPacketHeader', { length: 10, chunkCrc32c: [] }),
        ],
      ],
    ];
    for (const [what, bytes] of cases) {
      const response = await exchange(chunk.dataAddr, bytes);
      assert.equal(response.code, 'INVALID_ARGUMENT', `${what}: ${response.code} ${response.message}`);
    }
    // A packet whose bytes do not match their checksum is damage, not a bad request.
    const damaged = await exchange(chunk.dataAddr, [
      write({ ...good, blockGroupId: 46 }, { length: 10 }),
      encodeFrame('dogfs.v1.DataPacketHeader', { length: 10, chunkCrc32c: [12345] }),
      Buffer.alloc(10),
    ]);
    assert.equal(damaged.code, 'CORRUPT');
    // Control calls validate the same way.
    for (const shard of [
      { blockGroupId: -5, index: 0, generation: 0 },
      { blockGroupId: 1, index: 1000, generation: 0 },
      { blockGroupId: 2 ** 62, index: 0, generation: 0 },
    ]) {
      await assert.rejects(chunk.control.call(ChunkControlService, 'DeleteShard', { shard }), {
        code: 'INVALID_ARGUMENT',
      });
      await assert.rejects(chunk.control.call(ChunkControlService, 'StatShard', { shard }), {
        code: 'INVALID_ARGUMENT',
      });
    }
    await assert.rejects(chunk.control.call(ChunkControlService, 'DeleteShard', {}), {
      code: 'INVALID_ARGUMENT',
    });
    await assert.rejects(chunk.control.call(ChunkControlService, 'ListShards', { limit: 1_000_000 }), {
      code: 'INVALID_ARGUMENT',
    });
    await waitFor('writes released', () => status(chunk).then((s) => s.activeWrites === 0));
    assert.deepEqual(shardFiles(chunk.dir), before);
    assert.deepEqual(readdirSync(chunk.dir).sort(), ['LOCK', 'identity.json', 'shards']);
    // And the server still serves.
    assert.ok((await client.readShardBytes(chunk.dataAddr, good)).equals(seededBytes(1000, 41)));
  } finally {
    await chunk.stop();
  }
});

test("fencing: once a namespace leader's term is seen, deletions from an older leader are refused, across restarts", async () => {
  const chunkDir = join(dir.path, 'fenced');
  const shard = { blockGroupId: 61, index: 0, generation: 0 };
  const first = await startChunk(chunkDir, ['--scrub-rate', '0']);
  let second: Awaited<ReturnType<typeof startChunk>> | undefined;
  try {
    await client.writeShard(first.dataAddr, shard, seededBytes(100_000, 61));
    // Unfenced calls (term 0: older metadata servers, group 0's checks) pass as before.
    await first.control.call(ChunkControlService, 'StatShard', { shard });
    // A leader of term 6 verifies the copy (a repair about to commit it)...
    await first.control.call(ChunkControlService, 'StatShard', { shard, namespaceGroup: 1, leaderTerm: 6 });
    // ...so a deletion from the leader of term 5, sent before it stalled, arriving now, is refused.
    await assert.rejects(
      first.control.call(ChunkControlService, 'DeleteShard', { shard, namespaceGroup: 1, leaderTerm: 5 }),
      (error: DogfsError) => error.code === 'FAILED_PRECONDITION' && /stale leader/.test(error.message),
    );
    // Other groups keep their own terms.
    await first.control.call(ChunkControlService, 'StatShard', { shard, namespaceGroup: 2, leaderTerm: 1 });
    // A call meant for another server (a stale address book, another cluster's leader) is refused before
    // its term is taken: it cannot raise the bar for this cluster's leader.
    const { id } = await status(first);
    await assert.rejects(
      first.control.call(ChunkControlService, 'StatShard', {
        shard,
        chunkServerId: `${id}-elsewhere`,
        namespaceGroup: 1,
        leaderTerm: 900,
      }),
      { code: 'FAILED_PRECONDITION' },
    );
    await first.control.call(ChunkControlService, 'StatShard', { shard, namespaceGroup: 1, leaderTerm: 7 });
    await first.stop();
    // The term survives a restart.
    second = await startChunk(chunkDir, ['--scrub-rate', '0']);
    await assert.rejects(
      second.control.call(ChunkControlService, 'DeleteShard', { shard, namespaceGroup: 1, leaderTerm: 5 }),
      { code: 'FAILED_PRECONDITION' },
    );
    assert.equal(
      (await second.control.call(ChunkControlService, 'StatShard', { shard })).info?.length,
      100_000,
    );
    await assert.rejects(
      second.control.call(ChunkControlService, 'DeleteShard', { shard, namespaceGroup: 1, leaderTerm: 6 }),
      { code: 'FAILED_PRECONDITION' },
    );
    await second.control.call(ChunkControlService, 'DeleteShard', {
      shard,
      namespaceGroup: 1,
      leaderTerm: 7,
    });
    await assert.rejects(second.control.call(ChunkControlService, 'StatShard', { shard }), {
      code: 'NOT_FOUND',
    });
  } finally {
    await (second ?? first).stop();
  }
});

test('a deletion naming the copy it saw (if_mtime_ms) never takes a newer copy written there since', async () => {
  const chunkDir = join(dir.path, 'conditional');
  let chunk = await startChunk(chunkDir, ['--scrub-rate', '0']);
  try {
    const shard = { blockGroupId: 51, index: 3, generation: 0 };
    const stated = async () => (await chunk.control.call(ChunkControlService, 'StatShard', { shard })).info!;
    await client.writeShard(chunk.dataAddr, shard, seededBytes(100_000, 51));
    const old = await stated();
    assert.ok(old.mtimeMs > 0);
    // Another modification time: refused, and the copy stays.
    await assert.rejects(
      chunk.control.call(ChunkControlService, 'DeleteShard', { shard, ifMtimeMs: old.mtimeMs + 1 }),
      { code: 'FAILED_PRECONDITION' },
    );
    assert.equal((await stated()).mtimeMs, old.mtimeMs);
    // The old copy goes (as a first deletion would take it), and a repair writes the shard there again,
    // at a later millisecond.
    await chunk.control.call(ChunkControlService, 'DeleteShard', { shard, ifMtimeMs: old.mtimeMs });
    await waitFor('the clock past the old copy', () => Date.now() > old.mtimeMs);
    await client.writeShard(chunk.dataAddr, shard, seededBytes(100_000, 52));
    const fresh = await stated();
    assert.notEqual(fresh.mtimeMs, old.mtimeMs);
    // A late or retried deletion of the old copy: refused; the repair's copy is intact.
    await assert.rejects(
      chunk.control.call(ChunkControlService, 'DeleteShard', { shard, ifMtimeMs: old.mtimeMs }),
      { code: 'FAILED_PRECONDITION' },
    );
    assert.ok((await client.readShardBytes(chunk.dataAddr, shard)).equals(seededBytes(100_000, 52)));
    // A leader verifying the copy for a repair's commit claims it: a new, later time, kept across a
    // restart, and a deletion decided on the copy before the claim is refused.
    const claimed = (await chunk.control.call(ChunkControlService, 'StatShard', { shard, claim: true }))
      .info!;
    assert.ok(claimed.mtimeMs > fresh.mtimeMs);
    assert.equal((await stated()).mtimeMs, claimed.mtimeMs);
    await assert.rejects(
      chunk.control.call(ChunkControlService, 'DeleteShard', { shard, ifMtimeMs: fresh.mtimeMs }),
      { code: 'FAILED_PRECONDITION' },
    );
    await chunk.stop();
    chunk = await startChunk(chunkDir, ['--scrub-rate', '0']);
    const restarted = await stated();
    assert.ok(
      Math.abs(restarted.mtimeMs - claimed.mtimeMs) <= 1,
      `${restarted.mtimeMs} vs ${claimed.mtimeMs}`,
    );
    await assert.rejects(
      chunk.control.call(ChunkControlService, 'DeleteShard', { shard, ifMtimeMs: fresh.mtimeMs }),
      { code: 'FAILED_PRECONDITION' },
    );
    assert.ok((await client.readShardBytes(chunk.dataAddr, shard)).equals(seededBytes(100_000, 52)));
    // The copy as stated now goes; of a shard that is gone, as any deletion: nothing to do.
    await chunk.control.call(ChunkControlService, 'DeleteShard', { shard, ifMtimeMs: restarted.mtimeMs });
    assert.equal(
      (await chunk.control.call(ChunkControlService, 'DeleteShard', { shard, ifMtimeMs: restarted.mtimeMs }))
        .existed,
      false,
    );
  } finally {
    await chunk.stop();
  }
});
