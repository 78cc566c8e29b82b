import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { test } from 'node:test';
import fc from 'fast-check';
import {
  backendByName,
  type CodingBackend,
  cauchyEncodeMatrix,
  createCodec,
  gfInv,
  gfMul,
  invertMatrix,
  type PreparedMatrix,
  ReedSolomon,
} from '../../src/codec/index.js';
import { isCodecError, loadedBackends, seededBytes } from './helpers.js';

interface Vector {
  k: number;
  m: number;
  length: number;
  matrix: string;
  data: string[];
  parity: string[];
}
const vectors: Vector[] = JSON.parse(
  readFileSync(new URL('../../../test/codec/vectors/isal-rs.json', import.meta.url), 'utf8'),
).vectors;
const hex = (s: string) => Uint8Array.from(Buffer.from(s, 'hex'));

test('GF(2^8) arithmetic: 0x11d field, inverses, and the Cauchy matrix ISA-L builds', () => {
  assert.equal(gfMul(2, 0x80), 0x1d);
  assert.equal(gfMul(3, 7), 9);
  for (let a = 1; a < 256; a++) assert.equal(gfMul(a, gfInv(a)), 1);
  for (const v of vectors) assert.deepEqual(cauchyEncodeMatrix(v.k, v.m), hex(v.matrix));
});

test('invertMatrix inverts every K×K choice of rows of the coding matrix (rs-6-3)', () => {
  const k = 6;
  const matrix = cauchyEncodeMatrix(k, 3);
  const chosen = [1, 3, 5, 6, 7, 8];
  const sub = new Uint8Array(k * k);
  chosen.forEach((row, i) => {
    sub.set(matrix.subarray(row * k, row * k + k), i * k);
  });
  const inverse = invertMatrix(sub, k)!;
  for (let i = 0; i < k; i++) {
    for (let j = 0; j < k; j++) {
      let sum = 0;
      for (let t = 0; t < k; t++) sum ^= gfMul(sub[i * k + t]!, inverse[t * k + j]!);
      assert.equal(sum, i === j ? 1 : 0);
    }
  }
  assert.equal(invertMatrix(new Uint8Array([1, 2, 1, 2]), 2), undefined);
});

for (const backend of loadedBackends()) {
  test(`${backend}: ISA-L known-answer vectors give identical parity, and decode from parity`, () => {
    for (const v of vectors) {
      const codec = createCodec(v.k, v.m, { backend });
      const data = v.data.map(hex);
      const parity = v.parity.map(() => new Uint8Array(v.length));
      codec.encode(data, parity);
      parity.forEach((p, i) => {
        assert.deepEqual(p, hex(v.parity[i]!), `rs-${v.k}-${v.m} len ${v.length} parity ${i}`);
      });
      // Lose the first min(K, M) data shards, rebuild them from the rest.
      const shards: (Uint8Array | null)[] = [...data, ...parity];
      const lost = Array.from({ length: Math.min(v.k, v.m) }, (_, i) => i);
      for (const i of lost) shards[i] = new Uint8Array(v.length).fill(0xee);
      codec.reconstruct(shards, lost);
      for (const i of lost) assert.deepEqual(shards[i], data[i]);
      assert.equal(codec.verify([...data, ...parity]), true);
    }
  });

  test(`${backend}: encode → erase up to M → reconstruct returns the original (property)`, () => {
    fc.assert(
      fc.property(
        fc.integer({ min: 1, max: 12 }),
        fc.integer({ min: 1, max: 8 }),
        fc.oneof(fc.constantFrom(0, 1, 15, 16, 17, 31, 33, 63, 64, 65), fc.integer({ min: 0, max: 1200 })),
        fc.integer(),
        fc.array(fc.nat(), { maxLength: 8 }),
        fc.boolean(),
        (k, mRaw, length, seed, picks, dropExtra) => {
          const m = Math.min(mRaw, 20 - k);
          const total = k + m;
          const codec = createCodec(k, m, { backend });
          const data = Array.from({ length: k }, (_, i) => seededBytes(length, seed + i));
          const parity = Array.from({ length: m }, () => new Uint8Array(length));
          codec.encode(data, parity);
          const original = [...data, ...parity].map((s) => Uint8Array.from(s));
          // Erase a random set of up to M distinct shards.
          const erased = [...new Set(picks.map((p) => p % total))].slice(0, m);
          const shards: (Uint8Array | null)[] = original.map((s) => Uint8Array.from(s));
          for (const i of erased) shards[i]!.fill(0xa5);
          // Sometimes also mark one more shard unavailable-and-unwanted, if that still leaves K.
          if (dropExtra && erased.length < m) {
            const extra = [...Array(total).keys()].find((i) => !erased.includes(i));
            if (extra !== undefined) shards[extra] = null;
          }
          codec.reconstruct(shards, erased);
          for (const i of erased) assert.deepEqual(shards[i], original[i], `shard ${i} of rs-${k}-${m}`);
          assert.equal(codec.verify(original), true);
        },
      ),
      { numRuns: backend === 'reference' ? 150 : 300 },
    );
  });

  test(`${backend}: verify notices a flipped bit in any shard`, () => {
    const codec = createCodec(6, 3, { backend });
    const data = Array.from({ length: 6 }, (_, i) => seededBytes(1000, i + 1));
    const parity = Array.from({ length: 3 }, () => new Uint8Array(1000));
    codec.encode(data, parity);
    const shards = [...data, ...parity];
    assert.equal(codec.verify(shards), true);
    for (const index of [0, 5, 6, 8]) {
      const copy = shards.map((s) => Uint8Array.from(s));
      copy[index]![999] = copy[index]![999]! ^ 4;
      assert.equal(codec.verify(copy), false, `corruption in shard ${index}`);
    }
  });

  test(`${backend}: parity goes into larger caller buffers without touching bytes past the length`, async () => {
    const codec = createCodec(4, 2, { backend });
    const data = Array.from({ length: 4 }, (_, i) => seededBytes(100, 40 + i));
    const big = [new Uint8Array(130).fill(9), new Uint8Array(100)];
    codec.encode(data, big);
    const exact = [new Uint8Array(100), new Uint8Array(100)];
    codec.encode(data, exact);
    assert.deepEqual(big[0]!.subarray(0, 100), exact[0]);
    assert.deepEqual(big[0]!.subarray(100), new Uint8Array(30).fill(9));
    const viaAsync = [new Uint8Array(100), new Uint8Array(100)];
    await codec.encodeAsync(data, viaAsync);
    assert.deepEqual(viaAsync, exact);
    const shards: (Uint8Array | null)[] = [
      data[0]!,
      null,
      new Uint8Array(100),
      data[3]!,
      exact[0]!,
      exact[1]!,
    ];
    await codec.reconstructAsync(shards, [2]);
    assert.deepEqual(shards[2], data[2]);
  });

  test(`${backend}: bad input is a typed error and writes nothing`, () => {
    const codec = createCodec(4, 2, { backend });
    const data = Array.from({ length: 4 }, (_, i) => seededBytes(64, i + 7));
    const untouched = () => [new Uint8Array(64).fill(0x5a), new Uint8Array(64).fill(0x5a)];
    const check = (parity: Uint8Array[]) => {
      for (const p of parity)
        assert.ok(
          p.every((b) => b === 0x5a),
          'output was written despite the error',
        );
    };
    let parity = untouched();
    assert.throws(
      () => codec.encode([...data.slice(0, 3), new Uint8Array(63)], parity),
      isCodecError('SHARD_LENGTH_MISMATCH'),
    );
    check(parity);
    parity = [new Uint8Array(64).fill(0x5a), new Uint8Array(63).fill(0x5a)];
    assert.throws(() => codec.encode(data, parity), isCodecError('BUFFER_TOO_SMALL'));
    check(parity);
    parity = untouched();
    assert.throws(() => codec.encode(data.slice(0, 3), parity), isCodecError('INVALID_ARGUMENT'));
    assert.throws(() => codec.encode(data, parity.slice(0, 1)), isCodecError('INVALID_ARGUMENT'));
    check(parity);
    // More than M missing.
    const outs = untouched();
    const shards: (Uint8Array | null)[] = [data[0]!, null, outs[0]!, outs[1]!, null, null];
    assert.throws(() => codec.reconstruct(shards, [2, 3]), isCodecError('TOO_MANY_MISSING'));
    check(outs);
    const three = [...untouched(), new Uint8Array(64).fill(0x5a)];
    assert.throws(
      () => codec.reconstruct([three[0]!, three[1]!, three[2]!, data[3]!, data[0]!, data[1]!], [0, 1, 2]),
      isCodecError('TOO_MANY_MISSING'),
    );
    check(three);
    // Output too small, unequal inputs, bad indices.
    const small = [new Uint8Array(10).fill(0x5a)];
    assert.throws(
      () => codec.reconstruct([small[0]!, ...data.slice(1), data[0]!, null], [0]),
      isCodecError('BUFFER_TOO_SMALL'),
    );
    check(small);
    assert.throws(
      () => codec.reconstruct([outs[0]!, data[1]!, data[2]!, data[3]!, new Uint8Array(65), null], [0]),
      isCodecError('SHARD_LENGTH_MISMATCH'),
    );
    assert.throws(() => codec.reconstruct([...data, null, null], [6]), isCodecError('INVALID_ARGUMENT'));
    assert.throws(
      () => codec.reconstruct([...data, outs[0]!, null], [4, 4]),
      isCodecError('INVALID_ARGUMENT'),
    );
    assert.throws(() => codec.reconstruct([...data, null], [4]), isCodecError('INVALID_ARGUMENT'));
    check(outs);
    assert.throws(() => codec.verify([...data, outs[0]!]), isCodecError('INVALID_ARGUMENT'));
  });
}

test('K or M out of range is INVALID_ARGUMENT', () => {
  for (const [k, m] of [
    [0, 2],
    [4, 0],
    [30, 3],
    [1.5, 2],
    [-1, 1],
  ] as const) {
    assert.throws(() => createCodec(k, m), isCodecError('INVALID_ARGUMENT'), `K=${k} M=${m}`);
  }
  assert.equal(createCodec(20, 12).k, 20);
});

test('rs-10-4 and rs-17-3 reconstruct four and three lost shards of every kind', () => {
  for (const [k, m] of [
    [10, 4],
    [17, 3],
  ] as const) {
    const codec = createCodec(k, m);
    const data = Array.from({ length: k }, (_, i) => seededBytes(333, 100 + i));
    const parity = Array.from({ length: m }, () => new Uint8Array(333));
    codec.encode(data, parity);
    const original = [...data, ...parity];
    const patterns = [[0, 1, 2, 3].slice(0, m), [k, k + 1, k + 2].slice(0, m), [0, k - 1, k + m - 1]];
    for (const lost of patterns) {
      const shards = original.map((s, i) => (lost.includes(i) ? new Uint8Array(333) : s));
      codec.reconstruct(shards, lost);
      for (const i of lost) assert.deepEqual(shards[i], original[i]);
    }
  }
});

test('decode matrices are built once per erasure pattern and then reused', () => {
  const seen: PreparedMatrix[] = [];
  const reference = backendByName('reference');
  const spy: CodingBackend = {
    ...reference,
    apply(prepared, inputs, outputs, length) {
      seen.push(prepared);
      reference.apply(prepared, inputs, outputs, length);
    },
  };
  const codec = new ReedSolomon(4, 2, spy);
  const data = Array.from({ length: 4 }, (_, i) => seededBytes(50, i + 3));
  const parity = [new Uint8Array(50), new Uint8Array(50)];
  codec.encode(data, parity);
  codec.encode(data, parity);
  assert.equal(seen[0], seen[1], 'the parity matrix is prepared once');
  const lose = (missing: number[]) => {
    const shards = [...data, ...parity].map((s, i) => (missing.includes(i) ? new Uint8Array(50) : s));
    codec.reconstruct(shards, missing);
    missing.forEach((i) => {
      assert.deepEqual(shards[i], [...data, ...parity][i]);
    });
  };
  lose([1, 4]);
  lose([1, 4]);
  lose([4, 1]);
  lose([0, 2]);
  assert.equal(seen[2], seen[3]);
  assert.equal(seen[3], seen[4], 'the order missing shards are listed in does not matter');
  assert.notEqual(seen[4], seen[5]);
});

test('outputs sharing memory with an input or each other are refused; separate slices of one buffer are not', () => {
  const codec = createCodec(3, 2);
  const length = 4096;
  // One buffer cut into five shards, as a writer's stripe memory is: separate slices, fine.
  const memory = seededBytes(5 * length, 9);
  const shards = [0, 1, 2, 3, 4].map((i) => memory.subarray(i * length, (i + 1) * length));
  codec.encode(shards.slice(0, 3), shards.slice(3));
  const expected = shards.map((s) => Uint8Array.from(s));
  // Parity written over a data shard, or over part of one, or both parities into one buffer.
  const data = shards.slice(0, 3);
  for (const parity of [
    [data[0]!, shards[4]!],
    [memory.subarray(length / 2, length / 2 + length), shards[4]!],
    [shards[3]!, shards[3]!],
  ])
    assert.throws(() => codec.encode(data, parity), isCodecError('INVALID_ARGUMENT'));
  // A lost shard rebuilt into memory that is also a source.
  const lost: (Uint8Array | null)[] = [...shards];
  lost[0] = shards[1]!;
  assert.throws(() => codec.reconstruct(lost, [0]), isCodecError('INVALID_ARGUMENT'));
  // Nothing was written by the refused calls.
  for (const [i, s] of shards.entries()) assert.deepEqual(s, expected[i]);
  // A lost shard rebuilt into memory of its own is fine.
  const again: (Uint8Array | null)[] = [...shards];
  again[0] = new Uint8Array(length);
  codec.reconstruct(again, [0]);
  assert.deepEqual(again[0], expected[0]);
});
