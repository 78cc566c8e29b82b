import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { test } from 'node:test';
import fc from 'fast-check';
import {
  ChunkedChecksummer,
  CodecError,
  chunkAlignedRange,
  chunkCount,
  computeChunkChecksums,
  crc32c,
  crc32cImplementation,
  crc32cPortable,
  verifyChunks,
} from '../../src/codec/index.js';

test('crc32c matches the standard check value and known vectors', () => {
  // RFC 3720 B.4 test vectors.
  assert.equal(crc32c(Buffer.from('123456789')), 0xe3069283);
  assert.equal(crc32c(Buffer.alloc(32, 0)), 0x8a9136aa);
  assert.equal(crc32c(Buffer.alloc(32, 0xff)), 0x62a8ab43);
  assert.equal(crc32c(Uint8Array.from({ length: 32 }, (_, i) => i)), 0x46dd794e);
  assert.equal(crc32cPortable(Buffer.from('123456789')), 0xe3069283);
  assert.equal(crc32c(new Uint8Array(0)), 0);
});

test('crc32c uses ISA-L where it is installed, else @node-rs/crc32', () => {
  const isal = ['/usr/lib/x86_64-linux-gnu/libisal.so.2', '/usr/lib/aarch64-linux-gnu/libisal.so.2'].some(
    existsSync,
  );
  assert.equal(crc32cImplementation(), isal ? 'isal' : 'node-rs');
});

test('portable crc32c equals native on random data, and both continue incrementally', () => {
  fc.assert(
    fc.property(fc.uint8Array({ maxLength: 300 }), fc.nat({ max: 300 }), (data, cut) => {
      const split = Math.min(cut, data.length);
      const whole = crc32c(data);
      assert.equal(crc32cPortable(data), whole);
      assert.equal(crc32c(data.subarray(split), crc32c(data.subarray(0, split))), whole);
      assert.equal(crc32cPortable(data.subarray(split), crc32cPortable(data.subarray(0, split))), whole);
    }),
    { numRuns: 300 },
  );
});

for (const forced of ['isal', 'node-rs', 'js'] as const) {
  test(`DOGFS_CRC32C=${forced}: that implementation agrees with the table one, including continuation`, (t) => {
    const script = `import('${new URL('../../src/codec/crc32c.js', import.meta.url).href}').then((m) => {
      const data = Buffer.alloc(200_003);
      for (let i = 0; i < data.length; i++) data[i] = (i * 2654435761) >>> 24;
      const parts = [0, 1, 7, 64, 4096, 65536, 200_003].map((cut) =>
        m.crc32c(data.subarray(cut), m.crc32c(data.subarray(0, cut))));
      process.stdout.write(JSON.stringify({ used: m.crc32cImplementation(), check: m.crc32c(Buffer.from('123456789')),
        parts, expected: m.crc32cPortable(data) }));
    });`;
    const child = spawnSync(process.execPath, ['-e', script], {
      env: { ...process.env, DOGFS_CRC32C: forced },
      encoding: 'utf8',
    });
    assert.equal(child.status, 0, child.stderr);
    const result = JSON.parse(child.stdout) as {
      used: string;
      check: number;
      parts: number[];
      expected: number;
    };
    if (result.used !== forced) {
      assert.notEqual(forced, 'js', 'the table implementation is always available');
      t.diagnostic(`${forced} is not available here (got ${result.used})`);
    }
    assert.equal(result.check, 0xe3069283);
    for (const part of result.parts) assert.equal(part, result.expected);
  });
}

test('chunk checksums cover each chunk exactly, the last one short', () => {
  const data = randomBytes(2 * 1000 + 17);
  const sums = computeChunkChecksums(data, 1000);
  assert.equal(sums.length, 3);
  assert.equal(sums[0], crc32c(data.subarray(0, 1000)));
  assert.equal(sums[2], crc32c(data.subarray(2000)));
  assert.equal(chunkCount(0), 0);
  assert.equal(computeChunkChecksums(new Uint8Array(0)).length, 0);
  assert.equal(chunkCount(65536), 1);
  assert.equal(chunkCount(65537), 2);
});

test('computeChunkChecksums writes into a caller array, and refuses one too small without writing', () => {
  const data = randomBytes(3000);
  const out = new Uint32Array(3);
  assert.equal(computeChunkChecksums(data, 1000, out), out);
  assert.equal(out[1], crc32c(data.subarray(1000, 2000)));
  const small = new Uint32Array(2);
  assert.throws(
    () => computeChunkChecksums(data, 1000, small),
    (e: unknown) => e instanceof CodecError && e.code === 'BUFFER_TOO_SMALL',
  );
  assert.deepEqual([...small], [0, 0]);
});

test('verifyChunks finds the first corrupt chunk of a range, by shard-wide index and offset', () => {
  const shard = randomBytes(5 * 100 + 30);
  const sums = computeChunkChecksums(shard, 100);
  assert.deepEqual(verifyChunks(shard, sums, 0, shard.length, 100), { ok: true });
  const corrupt = Buffer.from(shard);
  corrupt[250] = corrupt[250]! ^ 1;
  corrupt[420] = corrupt[420]! ^ 0x80;
  const result = verifyChunks(corrupt, sums, 0, shard.length, 100);
  assert.equal(result.ok, false);
  assert.ok(!result.ok);
  assert.equal(result.chunkIndex, 2);
  assert.equal(result.offset, 200);
  assert.equal(result.expected, sums[2]);
  assert.equal(result.actual, crc32c(corrupt.subarray(200, 300)));
  // A range that starts past the first corruption reports the next one.
  const tail = verifyChunks(corrupt.subarray(300), sums, 3, shard.length, 100);
  assert.ok(!tail.ok);
  assert.equal(tail.chunkIndex, 4);
  // A range that avoids both is fine, including the short last chunk.
  assert.deepEqual(verifyChunks(corrupt.subarray(500), sums, 5, shard.length, 100), { ok: true });
  assert.deepEqual(verifyChunks(corrupt.subarray(0, 200), sums, 0, shard.length, 100), { ok: true });
});

test('verifyChunks rejects reads that do not line up with chunks', () => {
  const shard = randomBytes(350);
  const sums = computeChunkChecksums(shard, 100);
  const invalid = (e: unknown) => e instanceof CodecError && e.code === 'INVALID_ARGUMENT';
  assert.throws(() => verifyChunks(shard.subarray(0, 150), sums, 0, 350, 100), invalid);
  assert.throws(() => verifyChunks(shard.subarray(0, 100), sums, 4, 350, 100), invalid);
  assert.throws(() => verifyChunks(shard.subarray(0, 100), sums.subarray(1), 0, 350, 100), invalid);
  assert.throws(() => verifyChunks(shard.subarray(300), sums, 2, 350, 100), invalid);
});

test('chunkAlignedRange widens any byte range to whole chunks, and verifyChunks accepts the result', () => {
  fc.assert(
    fc.property(
      fc.integer({ min: 1, max: 2000 }),
      fc.integer({ min: 1, max: 300 }),
      fc.nat(),
      fc.nat(),
      (shardLength, chunkSize, a, b) => {
        const offset = a % (shardLength + 1);
        const length = b % (shardLength - offset + 1);
        const range = chunkAlignedRange(offset, length, shardLength, chunkSize);
        if (length > 0) assert.ok(range.start <= offset && offset + length <= range.end);
        assert.equal(range.start, range.firstChunk * chunkSize);
        assert.ok(range.end <= shardLength);
        if (length > 0) assert.ok(range.end - range.start < length + 2 * chunkSize);
        const shard = new Uint8Array(shardLength).fill(7);
        const sums = computeChunkChecksums(shard, chunkSize);
        const result = verifyChunks(
          shard.subarray(range.start, range.end),
          sums,
          range.firstChunk,
          shardLength,
          chunkSize,
        );
        assert.deepEqual(result, { ok: true });
      },
    ),
    { numRuns: 300 },
  );
});

test('ChunkedChecksummer over arbitrary pieces equals the one-shot checksums', () => {
  fc.assert(
    fc.property(
      fc.array(fc.uint8Array({ maxLength: 700 }), { maxLength: 8 }),
      fc.integer({ min: 1, max: 256 }),
      (pieces, chunkSize) => {
        const summer = new ChunkedChecksummer(chunkSize);
        for (const piece of pieces) summer.update(piece);
        const whole = Buffer.concat(pieces);
        const result = summer.finish();
        assert.deepEqual([...result.chunks], [...computeChunkChecksums(whole, chunkSize)]);
        assert.equal(result.crc32c, crc32c(whole));
        assert.equal(result.length, whole.length);
      },
    ),
    { numRuns: 200 },
  );
});
