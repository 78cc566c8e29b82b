/**
 * codec/rs — systematic Reed-Solomon over GF(2^8): K data shards, M parity shards, any K of the K+M
 * recover everything. The matrices are ISA-L's (gf256.cauchyEncodeMatrix), so parity is bit-identical to
 * ISA-L's `ec_encode_data` with `gf_gen_cauchy1_matrix`, whatever backend computes it.
 *
 * Hot-path rules: callers pass every buffer, inputs and outputs; nothing is allocated per call except
 * the first time an erasure pattern is seen (its decode matrix is then cached). Every argument is
 * checked before any byte is written, so a thrown CodecError leaves all outputs untouched.
 */

import { assert } from '../common/assert.js';
import type { CodingBackend, PreparedMatrix } from './backend.js';
import { CodecError } from './errors.js';
import { cauchyEncodeMatrix, gfMul, invertMatrix, splitNibbleTables } from './gf256.js';

/** K+M limit: erasure patterns are kept as 32-bit masks. ISA-L's Cauchy matrix works up to 256. */
export const MAX_TOTAL_SHARDS = 32;
/** Decode matrices kept per codec; past this the cache is cleared (patterns are few in practice). */
const DECODE_CACHE_LIMIT = 4096;

export type ShardList = readonly (Uint8Array | null | undefined)[];

function prepare(matrix: Uint8Array, rows: number, cols: number): PreparedMatrix {
  return { rows, cols, matrix, tables: splitNibbleTables(matrix, rows, cols) };
}

export function checkGeometry(k: number, m: number): void {
  if (!Number.isInteger(k) || !Number.isInteger(m) || k < 1 || m < 1 || k + m > MAX_TOTAL_SHARDS) {
    throw new CodecError(
      'INVALID_ARGUMENT',
      `need integers K ≥ 1, M ≥ 1, K+M ≤ ${MAX_TOTAL_SHARDS}; got K=${k}, M=${m}`,
    );
  }
}

export class ReedSolomon {
  readonly k: number;
  readonly m: number;
  readonly backend: CodingBackend;
  /** (K+M)×K, identity on top. */
  private readonly encodeMatrix: Uint8Array;
  private readonly parityMatrix: PreparedMatrix;
  /** source mask → output mask → prepared decode matrix. */
  private readonly decodeCache = new Map<number, Map<number, PreparedMatrix>>();
  private decodeCacheSize = 0;
  // Reused argument arrays for the synchronous paths (no allocation per call).
  private readonly scratchInputs: Uint8Array[] = [];
  private readonly scratchOutputs: Uint8Array[] = [];
  private verifyScratch = new Uint8Array(0);

  constructor(k: number, m: number, backend: CodingBackend) {
    checkGeometry(k, m);
    this.k = k;
    this.m = m;
    this.backend = backend;
    this.encodeMatrix = cauchyEncodeMatrix(k, m);
    this.parityMatrix = prepare(this.encodeMatrix.slice(k * k), m, k);
  }

  /** The (K+M)×K coding matrix, row-major (a copy). */
  codingMatrix(): Uint8Array {
    return this.encodeMatrix.slice();
  }

  /**
   * Compute M parity shards from K data shards. All data shards must have the same length L; each
   * parity buffer must hold at least L bytes, and its first L bytes are overwritten.
   */
  encode(data: readonly Uint8Array[], parity: readonly Uint8Array[]): void {
    const length = this.checkEncode(data, parity);
    this.backend.apply(this.parityMatrix, data, parity, length);
  }

  /** `encode` off the JavaScript thread (where the backend can); buffers must not change meanwhile. */
  async encodeAsync(data: readonly Uint8Array[], parity: readonly Uint8Array[]): Promise<void> {
    const length = this.checkEncode(data, parity);
    await this.backend.applyAsync(this.parityMatrix, data.slice(), parity.slice(), length);
  }

  /**
   * Rebuild missing shards in place. `shards` has K+M entries (data 0..K-1, then parity); an entry is
   * a buffer holding the shard, or null/undefined if that shard is unavailable and not wanted. `missing`
   * lists the indices to rebuild: their entries are output buffers. The available shards (non-null, not
   * in `missing`) must number at least K and have one length L; outputs must hold at least L bytes.
   */
  reconstruct(shards: ShardList, missing: readonly number[]): void {
    const plan = this.planReconstruct(shards, missing, this.scratchInputs, this.scratchOutputs);
    if (plan === undefined) return;
    this.backend.apply(plan.prepared, this.scratchInputs, this.scratchOutputs, plan.length);
  }

  /** `reconstruct` off the JavaScript thread (where the backend can). */
  async reconstructAsync(shards: ShardList, missing: readonly number[]): Promise<void> {
    const inputs: Uint8Array[] = [];
    const outputs: Uint8Array[] = [];
    const plan = this.planReconstruct(shards, missing, inputs, outputs);
    if (plan === undefined) return;
    await this.backend.applyAsync(plan.prepared, inputs, outputs, plan.length);
  }

  /** True if the M parity shards are exactly what encoding the K data shards gives. */
  verify(shards: readonly Uint8Array[]): boolean {
    if (shards.length !== this.k + this.m) {
      throw new CodecError('INVALID_ARGUMENT', `expected ${this.k + this.m} shards, got ${shards.length}`);
    }
    const length = this.equalLength(shards, 'shard');
    if (this.verifyScratch.length < this.m * length) this.verifyScratch = new Uint8Array(this.m * length);
    const outputs = this.scratchOutputs;
    outputs.length = 0;
    for (let p = 0; p < this.m; p++) outputs.push(this.verifyScratch.subarray(p * length, (p + 1) * length));
    this.backend.apply(this.parityMatrix, shards.slice(0, this.k), outputs, length);
    for (let p = 0; p < this.m; p++) {
      if (Buffer.compare(outputs[p]!, shards[this.k + p]!.subarray(0, length)) !== 0) return false;
    }
    return true;
  }

  private checkEncode(data: readonly Uint8Array[], parity: readonly Uint8Array[]): number {
    if (data.length !== this.k) {
      throw new CodecError('INVALID_ARGUMENT', `expected ${this.k} data shards, got ${data.length}`);
    }
    if (parity.length !== this.m) {
      throw new CodecError('INVALID_ARGUMENT', `expected ${this.m} parity shards, got ${parity.length}`);
    }
    const length = this.equalLength(data, 'data shard');
    for (let p = 0; p < this.m; p++) this.checkOutput(parity[p], length, this.k + p);
    assertSeparate(data, parity, length);
    return length;
  }

  private equalLength(buffers: readonly (Uint8Array | null | undefined)[], what: string): number {
    let length = -1;
    for (let i = 0; i < buffers.length; i++) {
      const buffer = buffers[i];
      if (!(buffer instanceof Uint8Array)) {
        throw new CodecError('INVALID_ARGUMENT', `${what} ${i} is not a Uint8Array`);
      }
      if (length === -1) length = checkedLength(buffer.length);
      else if (buffer.length !== length) {
        throw new CodecError(
          'SHARD_LENGTH_MISMATCH',
          `${what} ${i} has ${buffer.length} bytes, the others ${length}`,
        );
      }
    }
    return Math.max(length, 0);
  }

  private checkOutput(buffer: Uint8Array | null | undefined, length: number, index: number): void {
    if (!(buffer instanceof Uint8Array)) {
      throw new CodecError('INVALID_ARGUMENT', `output shard ${index} is not a Uint8Array`);
    }
    if (buffer.length < length) {
      throw new CodecError(
        'BUFFER_TOO_SMALL',
        `output shard ${index} holds ${buffer.length} bytes, need ${length}`,
      );
    }
  }

  /**
   * Check a reconstruct call and fill `inputs`/`outputs` with the K sources and the buffers to write,
   * both in index order. Returns undefined when there is nothing to do.
   */
  private planReconstruct(
    shards: ShardList,
    missing: readonly number[],
    inputs: Uint8Array[],
    outputs: Uint8Array[],
  ): { prepared: PreparedMatrix; length: number } | undefined {
    const total = this.k + this.m;
    if (shards.length !== total) {
      throw new CodecError('INVALID_ARGUMENT', `expected ${total} shard slots, got ${shards.length}`);
    }
    let outputMask = 0;
    for (const index of missing) {
      if (!Number.isInteger(index) || index < 0 || index >= total) {
        throw new CodecError('INVALID_ARGUMENT', `missing shard index ${index} out of range [0, ${total})`);
      }
      if (outputMask & (1 << index)) {
        throw new CodecError('INVALID_ARGUMENT', `missing shard index ${index} listed twice`);
      }
      outputMask = (outputMask | (1 << index)) >>> 0;
    }
    // Sources: the first K available shards, in index order.
    let sourceMask = 0;
    let available = 0;
    let length = -1;
    for (let i = 0; i < total; i++) {
      const shard = shards[i];
      if (outputMask & (1 << i) || shard === null || shard === undefined) continue;
      if (!(shard instanceof Uint8Array)) {
        throw new CodecError('INVALID_ARGUMENT', `shard ${i} is not a Uint8Array`);
      }
      if (length === -1) length = checkedLength(shard.length);
      else if (shard.length !== length) {
        throw new CodecError(
          'SHARD_LENGTH_MISMATCH',
          `shard ${i} has ${shard.length} bytes, others ${length}`,
        );
      }
      available++;
      if (available <= this.k) sourceMask = (sourceMask | (1 << i)) >>> 0;
    }
    if (available < this.k) {
      throw new CodecError(
        'TOO_MANY_MISSING',
        `only ${available} of ${total} shards available; rs-${this.k}-${this.m} needs ${this.k}`,
      );
    }
    for (let i = 0; i < total; i++) if (outputMask & (1 << i)) this.checkOutput(shards[i], length, i);
    if (outputMask === 0) return undefined;
    inputs.length = 0;
    outputs.length = 0;
    for (let i = 0; i < total; i++) {
      if (sourceMask & (1 << i)) inputs.push(shards[i]!);
      else if (outputMask & (1 << i)) outputs.push(shards[i]!);
    }
    assertSeparate(inputs, outputs, length);
    return { prepared: this.decodeMatrix(sourceMask, outputMask), length };
  }

  /** Rows that compute the shards in `outputMask` from the K shards in `sourceMask`; cached. */
  private decodeMatrix(sourceMask: number, outputMask: number): PreparedMatrix {
    let byOutput = this.decodeCache.get(sourceMask);
    const cached = byOutput?.get(outputMask);
    if (cached) return cached;
    const { k } = this;
    const total = k + this.m;
    const sources: number[] = [];
    const targets: number[] = [];
    for (let i = 0; i < total; i++) {
      if (sourceMask & (1 << i)) sources.push(i);
      else if (outputMask & (1 << i)) targets.push(i);
    }
    // The rows of the coding matrix for the shards we have, inverted, map those shards back to the data.
    const sub = new Uint8Array(k * k);
    sources.forEach((s, row) => {
      sub.set(this.encodeMatrix.subarray(s * k, s * k + k), row * k);
    });
    const inverse = invertMatrix(sub, k);
    assert(inverse !== undefined, 'every square submatrix of a Cauchy matrix is invertible');
    const decode = new Uint8Array(targets.length * k);
    targets.forEach((target, row) => {
      if (target < k) {
        decode.set(inverse.subarray(target * k, target * k + k), row * k);
        return;
      }
      // A parity shard: its coding row times the inverse (re-encode from the recovered data).
      for (let j = 0; j < k; j++) {
        let sum = 0;
        for (let t = 0; t < k; t++) sum ^= gfMul(this.encodeMatrix[target * k + t]!, inverse[t * k + j]!);
        decode[row * k + j] = sum;
      }
    });
    const prepared = prepare(decode, targets.length, k);
    if (this.decodeCacheSize >= DECODE_CACHE_LIMIT) {
      this.decodeCache.clear();
      this.decodeCacheSize = 0;
    }
    if (!byOutput) {
      byOutput = new Map();
      this.decodeCache.set(sourceMask, byOutput);
    }
    byOutput.set(outputMask, prepared);
    this.decodeCacheSize++;
    return prepared;
  }
}

/**
 * Shards a coding call works on are at most this long: the addon reads lengths as 32-bit integers, and
 * one past it wrapped (2^32 + 16 bytes coded as 16).
 */
export const MAX_CODEC_SHARD_BYTES = 2 ** 31 - 1;

function checkedLength(length: number): number {
  if (length > MAX_CODEC_SHARD_BYTES)
    throw new CodecError('INVALID_ARGUMENT', `a shard of ${length} bytes; at most ${MAX_CODEC_SHARD_BYTES}`);
  return length;
}

/**
 * Outputs must not share memory with an input or with each other (their first `length` bytes): the
 * backends write outputs while still reading inputs, so an overlap gave wrong bytes without an error.
 */
function assertSeparate(inputs: readonly Uint8Array[], outputs: readonly Uint8Array[], length: number): void {
  if (length === 0) return;
  const overlaps = (a: Uint8Array, b: Uint8Array) =>
    a.buffer === b.buffer && a.byteOffset < b.byteOffset + length && b.byteOffset < a.byteOffset + length;
  for (let o = 0; o < outputs.length; o++) {
    const out = outputs[o]!;
    for (const input of inputs)
      if (overlaps(out, input))
        throw new CodecError('INVALID_ARGUMENT', 'an output shard shares memory with an input shard');
    for (let other = o + 1; other < outputs.length; other++)
      if (overlaps(out, outputs[other]!))
        throw new CodecError('INVALID_ARGUMENT', 'two output shards share memory');
  }
}
