import assert from 'node:assert/strict';
import { test } from 'node:test';
import fc from 'fast-check';
import { createCodec, type ReedSolomon, StripeLayout } from '../../src/codec/index.js';
import { isCodecError, seededBytes } from './helpers.js';

/** Writes a block group the way a client does: stripe by stripe, cell i appended to shard i. */
function writeGroup(layout: StripeLayout, codec: ReedSolomon, data: Uint8Array): Uint8Array[] {
  const shardLength = layout.shardLength(data.length);
  const shards = Array.from({ length: layout.k + layout.m }, () => new Uint8Array(shardLength));
  const cells: Uint8Array[] = [];
  const padding = new Uint8Array(2 * layout.cellSize);
  const parity = Array.from({ length: layout.m }, () => new Uint8Array(layout.cellSize));
  for (let stripe = 0; stripe < layout.stripeCount(data.length); stripe++) {
    const start = stripe * layout.stripeDataSize;
    const stripeData = data.subarray(start, Math.min(start + layout.stripeDataSize, data.length));
    const cellLength = layout.splitStripe(stripeData, cells, padding);
    assert.equal(cellLength, layout.cellLength(stripe, data.length));
    const parityCells = parity.map((p) => p.subarray(0, cellLength));
    codec.encode(cells, parityCells);
    const at = stripe * layout.cellSize;
    cells.forEach((cell, i) => {
      shards[i]!.set(cell, at);
    });
    parityCells.forEach((cell, i) => {
      shards[layout.k + i]!.set(cell, at);
    });
  }
  return shards;
}

function readRange(
  layout: StripeLayout,
  shards: Uint8Array[],
  offset: number,
  length: number,
  dataLength: number,
) {
  const out = new Uint8Array(length);
  for (const piece of layout.mapRange(offset, length, dataLength)) {
    out.set(
      shards[piece.shard]!.subarray(piece.shardOffset, piece.shardOffset + piece.length),
      piece.rangeOffset,
    );
  }
  return out;
}

test('default layout: rs-6-3 cells are 4 KiB-aligned and a stripe is at most 1 MiB', () => {
  const layout = new StripeLayout({ k: 6, m: 3 });
  assert.equal(layout.cellSize, 172032);
  assert.equal(layout.stripeDataSize, 6 * 172032);
  assert.ok(layout.stripeDataSize <= 1 << 20);
  assert.equal(layout.stripesPerGroup, Math.floor((256 << 20) / 172032));
  assert.equal(new StripeLayout({ k: 4, m: 2 }).cellSize, 256 * 1024);
  assert.deepEqual(layout.blockGroupOf(layout.groupDataSize + 5), { group: 1, offset: 5 });
});

test('a tiny file costs (K+M)/K: 10 bytes in rs-6-3 become nine 2-byte shards', () => {
  const layout = new StripeLayout({ k: 6, m: 3 });
  assert.equal(layout.shardLength(10), 2);
  assert.equal(layout.shardLength(0), 0);
  assert.equal(layout.stripeCount(0), 0);
  const data = Uint8Array.from({ length: 10 }, (_, i) => i + 1);
  const shards = writeGroup(layout, createCodec(6, 3), data);
  assert.deepEqual(
    shards.slice(0, 6).map((s) => [...s]),
    [
      [1, 2],
      [3, 4],
      [5, 6],
      [7, 8],
      [9, 10],
      [0, 0],
    ],
  );
});

test('layout property: write a group, read any range back, and rebuild it degraded from any K shards', () => {
  fc.assert(
    fc.property(
      fc.integer({ min: 1, max: 8 }),
      fc.integer({ min: 1, max: 4 }),
      fc.integer({ min: 1, max: 16 }),
      fc.integer({ min: 2, max: 12 }),
      fc.integer({ min: 0, max: 3000 }),
      fc.nat(),
      fc.nat(),
      fc.array(fc.nat(), { maxLength: 4 }),
      (k, m, alignment, cellsPerStripe, dataLength, a, b, lostPicks) => {
        const layout = new StripeLayout({
          k,
          m,
          cellAlignment: alignment,
          stripeSize: k * alignment * cellsPerStripe,
        });
        const codec = createCodec(k, m);
        const data = seededBytes(dataLength, dataLength + k * 31 + m);
        const shards = writeGroup(layout, codec, data);
        for (const shard of shards) assert.equal(shard.length, layout.shardLength(dataLength));
        assert.ok(layout.shardLength(dataLength) * k - dataLength < k + (dataLength > 0 ? 0 : 1));
        const offset = a % (dataLength + 1);
        const length = b % (dataLength - offset + 1);
        assert.deepEqual(
          readRange(layout, shards, offset, length, dataLength),
          data.subarray(offset, offset + length),
        );
        // Each shard's pieces fall inside its one contiguous span.
        const spans = layout.shardSpans(offset, length, dataLength);
        for (const piece of layout.mapRange(offset, length, dataLength)) {
          const span = spans.find((s) => s.shard === piece.shard)!;
          assert.ok(span.start <= piece.shardOffset && piece.shardOffset + piece.length <= span.end);
        }
        assert.equal(spans.reduce((sum, s) => sum + s.end - s.start, 0) >= length, true);
        // Degraded: lose up to M shards, rebuild only the span from the same span of the survivors.
        const lost = [...new Set(lostPicks.map((p) => p % (k + m)))].slice(0, m);
        const { start, end } = layout.degradedSpan(offset, length, dataLength);
        const views: Uint8Array[] = shards.map((s, i) =>
          lost.includes(i) ? new Uint8Array(end - start) : s.subarray(start, end),
        );
        codec.reconstruct(views, lost);
        const rebuilt = shards.map((s, i) => {
          const copy = Uint8Array.from(s);
          if (lost.includes(i)) {
            copy.fill(0xff);
            copy.set(views[i]!, start);
          }
          return copy;
        });
        assert.deepEqual(
          readRange(layout, rebuilt, offset, length, dataLength),
          data.subarray(offset, offset + length),
        );
      },
    ),
    { numRuns: 200 },
  );
});

test('layout rejects impossible geometry and out-of-range requests', () => {
  const invalid = isCodecError('INVALID_ARGUMENT');
  assert.throws(() => new StripeLayout({ k: 6, m: 3, stripeSize: 4096 }), invalid);
  assert.throws(() => new StripeLayout({ k: 0, m: 3 }), invalid);
  assert.throws(() => new StripeLayout({ k: 4, m: -1 }), invalid);
  assert.equal(new StripeLayout({ k: 1, m: 0 }).shardLength(10), 10, 'M = 0: striping without parity');
  assert.throws(() => new StripeLayout({ k: 4, m: 2, cellAlignment: 0 }), invalid);
  const layout = new StripeLayout({ k: 4, m: 2, stripeSize: 64, cellAlignment: 4, maxShardBytes: 64 });
  assert.equal(layout.groupDataSize, 256);
  assert.throws(() => layout.shardLength(257), invalid);
  assert.throws(() => layout.mapRange(10, 20, 25), invalid);
  assert.throws(() => layout.cellLength(2, 40), invalid);
  assert.throws(() => layout.splitStripe(new Uint8Array(0), [], new Uint8Array(64)), invalid);
  assert.throws(() => layout.splitStripe(new Uint8Array(65), [], new Uint8Array(64)), invalid);
  const cells: Uint8Array[] = [];
  assert.throws(
    () => layout.splitStripe(new Uint8Array(10), cells, new Uint8Array(5)),
    isCodecError('BUFFER_TOO_SMALL'),
  );
  assert.equal(cells.length, 0);
});

test('splitStripe hands out views of a full stripe without copying', () => {
  const layout = new StripeLayout({ k: 4, m: 2, stripeSize: 64, cellAlignment: 4 });
  const stripe = seededBytes(64, 3);
  const cells: Uint8Array[] = [];
  assert.equal(layout.splitStripe(stripe, cells, new Uint8Array(0)), 16);
  cells.forEach((cell, i) => {
    assert.equal(cell.buffer, stripe.buffer);
    assert.equal(cell.byteOffset, stripe.byteOffset + i * 16);
  });
});
