import assert from 'node:assert/strict';
import { createServer, type Socket } from 'node:net';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { operationDeadline } from '../../src/chunk/data-server.js';
import { crc32c } from '../../src/codec/index.js';
import { dataOperationMs, encodeFrame, FrameReader, MAX_SHARD_BYTES } from '../../src/wire/data-transfer.js';
import type { DogfsError } from '../../src/wire/errors.js';
import { ChunkControlService, type DataRequestHeader } from '../../src/wire/gen/types.js';
import { tempDir } from '../helpers/index.js';
import {
  counter,
  newClient,
  type RunningChunk,
  seededBytes,
  seededRandom,
  shardFiles,
  startChunk,
  status,
} from './helpers.js';

const dir = tempDir('dogfs-chunk-');
let chunk: RunningChunk;
const client = newClient();

/** The environment without DOGFS_CHUNK_DIRECT_WRITES: the server's own default applies. */
const { DOGFS_CHUNK_DIRECT_WRITES: _ignored, ...defaultEnv } = process.env;

before(async () => {
  chunk = await startChunk(join(dir.path, 'c1'), ['--scrub-rate', '0'], defaultEnv);
});
after(async () => {
  client.close();
  await chunk.stop();
  dir.remove();
});

const KiB = 1024;
const SIZES = [0, 1, 64 * KiB - 1, 64 * KiB, 64 * KiB + 1, 5 * 1024 * KiB + 123];

/**
 * A fake chunk server: each connection's first request (a DataRequestHeader) is handed to `answer`,
 * which writes what the test wants the server to say.
 */
async function fakeReadServer(
  answer: (socket: Socket, request: DataRequestHeader | undefined) => void,
): Promise<{ address: string; close: () => void }> {
  const fake = createServer((socket) => {
    socket.on('error', () => {});
    new FrameReader(socket)
      .readFrame('dogfs.v1.DataRequestHeader')
      .then((request) => answer(socket, request))
      .catch(() => socket.destroy());
  });
  await new Promise<void>((resolve) => fake.listen(0, '127.0.0.1', resolve));
  return {
    address: `127.0.0.1:${(fake.address() as { port: number }).port}`,
    // Not waited for: the client's pool may keep its connections open until the client closes.
    close: () => fake.close(),
  };
}

test('write then read back shards of sizes 0, 1, 64 KiB ± 1 and several MiB; stat and list them', async () => {
  for (const [i, size] of SIZES.entries()) {
    const shard = { blockGroupId: 1000 + i, index: i % 9, generation: 1 };
    const data = seededBytes(size, 7 + i);
    const result = await client.writeShard(chunk.dataAddr, shard, data);
    assert.equal(result.length, size);
    const back = await client.readShardBytes(chunk.dataAddr, shard);
    assert.equal(back.length, size);
    assert.ok(back.equals(data), `shard of ${size} bytes reads back unchanged`);
    const stat = await chunk.control.call(ChunkControlService, 'StatShard', { shard });
    assert.equal(stat.info?.length, size);
    assert.equal(stat.info?.crc32c, result.crc32c);
  }
  // Paged listing returns every shard once, in id order.
  const seen: number[] = [];
  let startAfter: { blockGroupId: number; index: number; generation: number } | undefined;
  for (let page = 0; page < 10; page++) {
    const list = await chunk.control.call(ChunkControlService, 'ListShards', { startAfter, limit: 4 });
    for (const info of list.shards) seen.push(info.shard!.blockGroupId);
    if (!list.more) break;
    startAfter = list.shards[list.shards.length - 1]!.shard!;
  }
  assert.deepEqual(
    seen,
    SIZES.map((_, i) => 1000 + i),
  );
  // One connection carried all of that, reused from the pool.
  assert.equal(client.idleConnections(chunk.dataAddr), 1);
  assert.equal(counter(await status(chunk), 'data_connections_accepted'), 1);
});

test('the writer may reuse its bytes as soon as write resolves, whole packets and pieces alike', async () => {
  // Whole packets, and runs of whole chunks of at least half a packet (1.5 MiB: a packet and a half;
  // 700 KiB: 640 KiB direct, the rest copied), go out without a copy; smaller pieces are copied:
  // scribbling over each piece right after `write` resolves must change nothing that was stored, in
  // either case. Pieces of several packets outrun the socket, so some of their packets are still
  // queued when the loop sends the last.
  const MiB = 1024 * KiB;
  const size = 40 * MiB + 5 * KiB + 3;
  const data = seededBytes(size, 1234);
  const shard = { blockGroupId: 1500, index: 2, generation: 1 };
  const writer = await client.openWrite(chunk.dataAddr, shard, size);
  const scratch = Buffer.allocUnsafe(13 * MiB);
  const pieces = [3 * KiB, MiB - 3 * KiB, 12 * MiB, 700 * KiB, 12 * MiB + 324 * KiB, 2 * MiB, 1536 * KiB];
  let offset = 0;
  for (let i = 0; offset < size; i++) {
    const length = Math.min(pieces[i % pieces.length]!, size - offset);
    const piece = scratch.subarray(0, length);
    data.copy(piece, 0, offset, offset + length);
    await writer.write(piece);
    piece.fill(0xee);
    offset += length;
  }
  await writer.finish();
  const back = await client.readShardBytes(chunk.dataAddr, shard);
  assert.ok(back.equals(data), 'bytes stored as they were when written');
});

test('range reads at random offsets return exactly the bytes asked for', async () => {
  const size = 3 * 1024 * KiB + 777;
  const shard = { blockGroupId: 2000, index: 3, generation: 5 };
  const data = seededBytes(size, 99);
  await client.writeShard(chunk.dataAddr, shard, data);
  const random = seededRandom(42);
  for (let i = 0; i < 40; i++) {
    const offset = Math.floor(random() * (size + 1));
    const length = Math.floor(random() * (i % 2 === 0 ? 200 * KiB : size));
    const back = await client.readShardBytes(chunk.dataAddr, shard, { offset, length });
    const expected = data.subarray(offset, Math.min(size, offset + length));
    assert.equal(back.length, expected.length, `read [${offset}, +${length})`);
    assert.ok(back.equals(expected), `bytes of [${offset}, +${length})`);
  }
  // Transient reads: each piece is valid until the next one, so it is copied at once; same bytes.
  for (const [offset, length] of [
    [0, size],
    [100_000, 2 * 1024 * KiB],
    [size - 5, 100],
  ] as const) {
    const pieces: Buffer[] = [];
    for await (const piece of client.readShard(chunk.dataAddr, shard, { offset, length, transient: true })) {
      pieces.push(Buffer.from(piece));
    }
    assert.ok(
      Buffer.concat(pieces).equals(data.subarray(offset, offset + length)),
      `transient [${offset}, +${length})`,
    );
  }
  // Without `transient`, pieces are the caller's: they keep their bytes while the same pooled
  // connection goes on to carry other reads (whose receive memory is reused and scribbled over).
  const other = { blockGroupId: 2001, index: 3, generation: 5 };
  const otherData = seededBytes(size, 100);
  await client.writeShard(chunk.dataAddr, other, otherData);
  const kept: Buffer[] = [];
  for await (const piece of client.readShard(chunk.dataAddr, shard)) kept.push(piece);
  for (let i = 0; i < 3; i++) {
    assert.ok((await client.readShardBytes(chunk.dataAddr, other)).equals(otherData));
    const scribbled: Buffer[] = [];
    for await (const piece of client.readShard(chunk.dataAddr, other, { transient: true })) {
      scribbled.push(Buffer.from(piece));
      piece.fill(0xee);
    }
    assert.ok(Buffer.concat(scribbled).equals(otherData));
  }
  assert.equal(client.idleConnections(chunk.dataAddr), 1, 'one pooled connection carried every read');
  assert.ok(Buffer.concat(kept).equals(data), 'pieces the caller owns keep their bytes');
  // Reading from the very end gives nothing; past it is refused.
  assert.equal((await client.readShardBytes(chunk.dataAddr, shard, { offset: size })).length, 0);
  await assert.rejects(client.readShardBytes(chunk.dataAddr, shard, { offset: size + 1 }), {
    code: 'INVALID_ARGUMENT',
  });
});

test('64 concurrent writers and readers', async () => {
  const size = 300 * KiB + 17;
  const shards = Array.from({ length: 64 }, (_, i) => ({
    blockGroupId: 3000 + i,
    index: i % 9,
    generation: 1,
  }));
  await Promise.all(
    shards.map((shard, i) => client.writeShard(chunk.dataAddr, shard, seededBytes(size, 1000 + i))),
  );
  // Now read all 64 back while 64 more are being written.
  const more = shards.map((s) => ({ ...s, generation: 2 }));
  const [reads] = await Promise.all([
    Promise.all(shards.map((shard) => client.readShardBytes(chunk.dataAddr, shard))),
    Promise.all(
      more.map((shard, i) => client.writeShard(chunk.dataAddr, shard, seededBytes(size, 5000 + i))),
    ),
  ]);
  for (const [i, back] of reads.entries()) assert.ok(back.equals(seededBytes(size, 1000 + i)), `shard ${i}`);
  const again = await Promise.all(more.map((shard) => client.readShardBytes(chunk.dataAddr, shard)));
  for (const [i, back] of again.entries())
    assert.ok(back.equals(seededBytes(size, 5000 + i)), `shard ${i} gen 2`);
});

test('a write that stops mid-way leaves nothing; a read can be cancelled', async () => {
  const before = shardFiles(chunk.dir);
  const shard = { blockGroupId: 4000, index: 0, generation: 1 };
  const writer = await client.openWrite(chunk.dataAddr, shard, 4 * 1024 * KiB);
  await writer.write(seededBytes(1024 * KiB + 5, 1));
  writer.abort();
  await assert.rejects(writer.finish(), (error: DogfsError) => error.code === 'CANCELLED');
  // The server notices the closed connection and discards the temporary file.
  const { waitFor } = await import('../helpers/index.js');
  await waitFor('tmp file removed', () => status(chunk).then((s) => s.activeWrites === 0));
  assert.deepEqual(shardFiles(chunk.dir), before);
  await assert.rejects(chunk.control.call(ChunkControlService, 'StatShard', { shard }), {
    code: 'NOT_FOUND',
  });

  // finish is once only (a second trailer would go out on a pooled connection).
  const once = await client.openWrite(chunk.dataAddr, { ...shard, generation: 3 }, 3);
  await once.write(Buffer.alloc(3));
  await once.finish();
  await assert.rejects(once.finish(), { code: 'FAILED_PRECONDITION' });

  // Declaring more bytes than are sent is refused by the writer itself, and leaves nothing either.
  const short = await client.openWrite(chunk.dataAddr, { ...shard, generation: 2 }, 10);
  await short.write(Buffer.alloc(4));
  await assert.rejects(short.finish(), { code: 'INVALID_ARGUMENT' });

  // Cancel a read after its first piece: the server stops and frees the read.
  const big = { blockGroupId: 4001, index: 0, generation: 1 };
  await client.writeShard(chunk.dataAddr, big, seededBytes(8 * 1024 * KiB, 3));
  for await (const piece of client.readShard(chunk.dataAddr, big)) {
    assert.ok(piece.length > 0);
    break;
  }
  await waitFor('read released', () => status(chunk).then((s) => s.activeReads === 0));
  const controller = new AbortController();
  const reading = (async () => {
    for await (const _ of client.readShard(chunk.dataAddr, big, { signal: controller.signal }))
      controller.abort();
  })();
  await assert.rejects(reading, { code: 'CANCELLED' });
  assert.deepEqual(
    shardFiles(chunk.dir).filter((f) => f.endsWith('.tmp')),
    [],
  );
});

test('a read or a write aborted while its connection is being made is CANCELLED, not carried out', async () => {
  const shard = { blockGroupId: 4002, index: 0, generation: 1 };
  await client.writeShard(chunk.dataAddr, shard, seededBytes(2 * 1024 * KiB, 4));
  const readAbort = new AbortController();
  const reading = (async () => {
    let bytes = 0;
    for await (const piece of client.readShard(chunk.dataAddr, shard, { signal: readAbort.signal }))
      bytes += piece.length;
    return bytes;
  })();
  readAbort.abort(); // the read is waiting for its connection now
  await assert.rejects(reading, { code: 'CANCELLED' });

  const writeAbort = new AbortController();
  const opening = client.openWrite(chunk.dataAddr, { ...shard, blockGroupId: 4003 }, 10, {
    signal: writeAbort.signal,
  });
  writeAbort.abort();
  const writer = await opening;
  await assert.rejects(
    writer.write(Buffer.alloc(10)).then(() => writer.finish()),
    { code: 'CANCELLED' },
  );
});

test('a server that answers a read with a range short of what was asked is refused, not taken as the end', async () => {
  const chunkBytes = Buffer.alloc(64 * KiB, 7);
  /** A fake chunk server answering every read with `answer`'s header (and one chunk when it has length). */
  const { address, close } = await fakeReadServer((socket, request) => {
    const length = request!.offset === 0 ? 0 : 64 * KiB; // case 1: nothing; case 2: the wrong chunk
    socket.write(
      encodeFrame('dogfs.v1.DataResponseHeader', { code: 'OK', offset: 0, length, shardLength: 200_000 }),
    );
    if (length > 0) {
      socket.write(encodeFrame('dogfs.v1.DataPacketHeader', { length, chunkCrc32c: [crc32c(chunkBytes)] }));
      socket.write(chunkBytes);
    }
  });
  const shard = { blockGroupId: 5, index: 0, generation: 1 };
  try {
    for (const offset of [0, 128 * KiB]) {
      await assert.rejects(
        client.readShardBytes(address, shard, { offset, length: 200_000 - offset }),
        (error: DogfsError) => error.code === 'INTERNAL' && /inconsistent range/.test(error.message),
      );
    }
  } finally {
    close();
  }
});

test("a chunk that fails its checksum on arrival is CORRUPT in transit; the server's own CORRUPT is not", async () => {
  const chunkBytes = Buffer.alloc(64 * KiB, 7);
  /** A fake chunk server: block group 1 arrives damaged (a wrong CRC), block group 2 fails on its disk. */
  const { address, close } = await fakeReadServer((socket, request) => {
    const length = 64 * KiB;
    socket.write(
      encodeFrame('dogfs.v1.DataResponseHeader', { code: 'OK', offset: 0, length, shardLength: length }),
    );
    if (request!.shard!.blockGroupId === 1) {
      socket.write(
        encodeFrame('dogfs.v1.DataPacketHeader', { length, chunkCrc32c: [crc32c(chunkBytes) ^ 1] }),
      );
      socket.write(chunkBytes);
    } else {
      socket.write(
        encodeFrame('dogfs.v1.DataPacketHeader', {
          errorCode: 'CORRUPT',
          errorMessage: 'chunk at offset 0 fails its stored checksum',
        }),
      );
    }
  });
  try {
    await assert.rejects(
      client.readShardBytes(address, { blockGroupId: 1, index: 0, generation: 1 }),
      (error: DogfsError) => error.code === 'CORRUPT' && error.inTransit && /in transit/.test(error.message),
    );
    await assert.rejects(
      client.readShardBytes(address, { blockGroupId: 2, index: 0, generation: 1 }),
      (error: DogfsError) => error.code === 'CORRUPT' && !error.inTransit,
    );
  } finally {
    close();
  }
});

test('a server whose copy has another length than committed: the read is CORRUPT before any byte', async () => {
  const chunkBytes = Buffer.alloc(64 * KiB, 7);
  /** A fake chunk server holding a self-consistent copy of 128 KiB, asked for one of 64 KiB. */
  const { address, close } = await fakeReadServer((socket) => {
    const length = 64 * KiB;
    socket.write(
      encodeFrame('dogfs.v1.DataResponseHeader', {
        code: 'OK',
        offset: 0,
        length,
        shardLength: 2 * length,
      }),
    );
    socket.write(encodeFrame('dogfs.v1.DataPacketHeader', { length, chunkCrc32c: [crc32c(chunkBytes)] }));
    socket.write(chunkBytes);
  });
  const shard = { blockGroupId: 3, index: 0, generation: 1 };
  try {
    const yielded: number[] = [];
    await assert.rejects(
      (async () => {
        for await (const piece of client.readShard(address, shard, {
          length: 64 * KiB,
          shardLength: 64 * KiB,
        }))
          yielded.push(piece.length);
      })(),
      (error: DogfsError) =>
        error.code === 'CORRUPT' &&
        !error.inTransit &&
        /holds 131072 bytes, 65536 were committed/.test(error.message),
    );
    assert.deepEqual(yielded, [], 'no byte of the other copy');
    // Without an expected length the same answer is taken: nothing to hold the copy to.
    const bytes = await client.readShardBytes(address, shard, { length: 64 * KiB });
    assert.equal(bytes.length, 64 * KiB);
  } finally {
    close();
  }
});

test('dogfs chunk writes with O_DIRECT by default; DOGFS_CHUNK_DIRECT_WRITES=0 goes through the page cache', async () => {
  // The test directory's filesystem takes O_DIRECT (ext4 here; inprocess.test.ts relies on it too).
  assert.equal(chunk.writeMode, 'direct');
  const buffered = await startChunk(join(dir.path, 'buffered'), ['--scrub-rate', '0'], {
    ...defaultEnv,
    DOGFS_CHUNK_DIRECT_WRITES: '0',
  });
  try {
    assert.equal(buffered.writeMode, 'buffered');
  } finally {
    await buffered.stop();
  }
  const { runDogfs } = await import('../helpers/index.js');
  const refused = await runDogfs(['chunk', '--dir', join(dir.path, 'bad-env')], {
    env: { ...defaultEnv, DOGFS_CHUNK_DIRECT_WRITES: 'off' },
  });
  assert.notEqual(refused.status, 0);
  assert.match(refused.stderr, /DOGFS_CHUNK_DIRECT_WRITES must be 0 \(page cache\) or 1/);
});

test('dogfs chunk flags: bad --capacity, --scrub-rate or --data-listen give one usage line', async () => {
  const { runDogfs, assertOneLineError } = await import('../helpers/index.js');
  const cases: [string[], RegExp][] = [
    [['--capacity', 'lots'], /^dogfs chunk: --capacity must be a whole number/],
    [['--scrub-rate=-1'], /^dogfs chunk: --scrub-rate must be a whole number/],
    [['--data-listen', 'nowhere'], /^dogfs chunk: invalid --data-listen 'nowhere'/],
  ];
  for (const [args, pattern] of cases) {
    const result = await runDogfs(['chunk', '--dir', join(dir.path, 'flags'), ...args]);
    assert.equal(result.status, 2, result.stderr);
    assert.match(assertOneLineError(result.stderr), pattern);
  }
});

test('an operation gets the deadline it asks for, up to 30 min or its bytes at 64 KiB/s', () => {
  const now = 1_000_000;
  const minute = 60_000;
  assert.equal(operationDeadline(0, 1 << 20, now), now + minute, 'none asked: a minute');
  assert.equal(operationDeadline(now + 5 * minute, 1 << 20, now), now + 5 * minute);
  // A small operation: at most 30 minutes, however long it asks for.
  assert.equal(operationDeadline(now + 10 * 60 * minute, 1 << 20, now), now + 30 * minute);
  // A whole 1 GiB shard written over a slow link: 16,384 s, not 30 minutes (puts over links slower
  // than ~146 KB/s per shard failed at 30 minutes).
  assert.equal(dataOperationMs(MAX_SHARD_BYTES), 16_384_000);
  assert.equal(operationDeadline(now + 10 * 60 * minute, MAX_SHARD_BYTES, now), now + 16_384_000);
});
