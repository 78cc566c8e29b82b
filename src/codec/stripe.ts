/**
 * codec/stripe — where each byte of a block group lives (DESIGN §4, "Layout").
 *
 * A block group's data is cut into stripes of K·cellSize bytes (at most `stripeSize`, default 1 MiB;
 * cellSize is stripeSize/K rounded down to `cellAlignment`, default 4 KiB, so cells stay page-aligned
 * on disk). Each stripe is split into K equal cells; M parity cells are computed from them; cell i of
 * every stripe is appended to shard i (data shards 0..K-1, parity K..K+M-1). The last stripe may hold
 * less: its cells are ceil(rest/K) bytes, the tail of the last non-empty cell and any cells after it
 * zero-padded, so every shard of a group has the same length and overhead stays (K+M)/K even for tiny
 * files.
 *
 * Because every stripe's cells start at the same offset in every shard, a byte at shard offset p
 * depends only on the bytes at offset p of the other shards: a degraded read of shard range [a, b)
 * needs only range [a, b) of any K other shards (then `ReedSolomon.reconstruct` on those subarrays).
 */

import { CodecError } from './errors.js';
import { MAX_TOTAL_SHARDS } from './rs.js';

export const DEFAULT_STRIPE_SIZE = 1024 * 1024;
export const DEFAULT_CELL_ALIGNMENT = 4096;
/** Shard bytes a block group holds at most by default (so 6 × 256 MiB of data for rs-6-3). */
export const DEFAULT_MAX_SHARD_BYTES = 256 * 1024 * 1024;

export interface StripeLayoutOptions {
  readonly k: number;
  readonly m: number;
  /** Upper bound on a stripe's data bytes. */
  readonly stripeSize?: number;
  /** Full cells are a multiple of this many bytes. */
  readonly cellAlignment?: number;
  /** Upper bound on one shard's bytes in a block group. */
  readonly maxShardBytes?: number;
}

/** One contiguous piece of a data range: `length` bytes at `shardOffset` in `shard`, which are bytes
 * [rangeOffset, rangeOffset + length) of the requested range. */
export interface CellPiece {
  readonly shard: number;
  readonly shardOffset: number;
  readonly rangeOffset: number;
  readonly length: number;
}

/** The bytes to read from one shard for a range: [start, end) (always contiguous). */
export interface ShardSpan {
  readonly shard: number;
  readonly start: number;
  readonly end: number;
}

function checkLength(value: number, what: string): void {
  if (!Number.isSafeInteger(value) || value < 0) {
    throw new CodecError('INVALID_ARGUMENT', `${what} must be a non-negative integer, got ${value}`);
  }
}

export class StripeLayout {
  readonly k: number;
  readonly m: number;
  /** Bytes of each cell of a full stripe. */
  readonly cellSize: number;
  /** Data bytes in a full stripe: K·cellSize. */
  readonly stripeDataSize: number;
  /** Full stripes in a full block group. */
  readonly stripesPerGroup: number;
  /** Data bytes a full block group holds. */
  readonly groupDataSize: number;

  constructor(options: StripeLayoutOptions) {
    const { k, m } = options;
    // M = 0 is a valid layout (striping without parity, e.g. replicate-1); only the codec needs M ≥ 1.
    if (!Number.isInteger(k) || !Number.isInteger(m) || k < 1 || m < 0 || k + m > MAX_TOTAL_SHARDS) {
      throw new CodecError(
        'INVALID_ARGUMENT',
        `need integers K ≥ 1, M ≥ 0, K+M ≤ ${MAX_TOTAL_SHARDS}; got K=${k}, M=${m}`,
      );
    }
    const stripeSize = options.stripeSize ?? DEFAULT_STRIPE_SIZE;
    const alignment = options.cellAlignment ?? DEFAULT_CELL_ALIGNMENT;
    const maxShardBytes = options.maxShardBytes ?? DEFAULT_MAX_SHARD_BYTES;
    for (const [value, what] of [
      [stripeSize, 'stripeSize'],
      [alignment, 'cellAlignment'],
      [maxShardBytes, 'maxShardBytes'],
    ] as const) {
      if (!Number.isSafeInteger(value) || value < 1) {
        throw new CodecError('INVALID_ARGUMENT', `${what} must be a positive integer, got ${value}`);
      }
    }
    const cellSize = Math.floor(stripeSize / k / alignment) * alignment;
    if (cellSize < 1 || cellSize > maxShardBytes) {
      throw new CodecError(
        'INVALID_ARGUMENT',
        `stripeSize ${stripeSize} gives no whole ${alignment}-byte cell for K=${k} within ${maxShardBytes} shard bytes`,
      );
    }
    this.k = k;
    this.m = m;
    this.cellSize = cellSize;
    this.stripeDataSize = k * cellSize;
    this.stripesPerGroup = Math.floor(maxShardBytes / cellSize);
    this.groupDataSize = this.stripesPerGroup * this.stripeDataSize;
  }

  /** Which block group holds file byte `fileOffset`, and where in that group's data. */
  blockGroupOf(fileOffset: number): { readonly group: number; readonly offset: number } {
    checkLength(fileOffset, 'file offset');
    return { group: Math.floor(fileOffset / this.groupDataSize), offset: fileOffset % this.groupDataSize };
  }

  /** Number of stripes in a group holding `dataLength` bytes. */
  stripeCount(dataLength: number): number {
    this.checkGroupLength(dataLength);
    return Math.ceil(dataLength / this.stripeDataSize);
  }

  /** Cell length of stripe `stripe` in a group holding `dataLength` bytes (the last may be short). */
  cellLength(stripe: number, dataLength: number): number {
    const count = this.stripeCount(dataLength);
    if (!Number.isInteger(stripe) || stripe < 0 || stripe >= count) {
      throw new CodecError('INVALID_ARGUMENT', `stripe ${stripe} out of range [0, ${count})`);
    }
    const rest = dataLength - stripe * this.stripeDataSize;
    return rest >= this.stripeDataSize ? this.cellSize : Math.ceil(rest / this.k);
  }

  /** Length of every shard (data and parity) of a group holding `dataLength` bytes. */
  shardLength(dataLength: number): number {
    this.checkGroupLength(dataLength);
    const full = Math.floor(dataLength / this.stripeDataSize);
    const rest = dataLength - full * this.stripeDataSize;
    return full * this.cellSize + Math.ceil(rest / this.k);
  }

  /**
   * The K data cells of one stripe, for encoding: `stripeData` is the stripe's bytes (a full stripe or
   * the group's short last one). Whole cells are views into it (no copy); the cell that runs past the
   * end is copied into `padding` and zero-filled, and cells wholly past the end share a zeroed region
   * of `padding`, which must hold 2·cellLength bytes. Writes K entries into `cells`; returns the cell
   * length.
   */
  splitStripe(stripeData: Uint8Array, cells: Uint8Array[], padding: Uint8Array): number {
    const length = stripeData.length;
    if (length < 1 || length > this.stripeDataSize) {
      throw new CodecError(
        'INVALID_ARGUMENT',
        `stripe of ${length} bytes; must be 1..${this.stripeDataSize}`,
      );
    }
    const cellLength = length === this.stripeDataSize ? this.cellSize : Math.ceil(length / this.k);
    const whole = Math.floor(length / cellLength);
    if (whole < this.k && padding.length < 2 * cellLength) {
      throw new CodecError(
        'BUFFER_TOO_SMALL',
        `padding holds ${padding.length} bytes, need ${2 * cellLength}`,
      );
    }
    cells.length = this.k;
    for (let i = 0; i < whole; i++) cells[i] = stripeData.subarray(i * cellLength, (i + 1) * cellLength);
    if (whole < this.k) {
      const partial = padding.subarray(0, cellLength);
      const zeros = padding.subarray(cellLength, 2 * cellLength);
      zeros.fill(0);
      const tail = stripeData.subarray(whole * cellLength);
      partial.set(tail);
      partial.fill(0, tail.length);
      cells[whole] = partial;
      for (let i = whole + 1; i < this.k; i++) cells[i] = zeros;
    }
    return cellLength;
  }

  /**
   * Where bytes [offset, offset + length) of a group holding `dataLength` bytes are: the cell pieces in
   * range order. Concatenating them gives the range.
   */
  mapRange(offset: number, length: number, dataLength: number): CellPiece[] {
    this.checkRange(offset, length, dataLength);
    const pieces: CellPiece[] = [];
    let position = offset;
    const end = offset + length;
    while (position < end) {
      const stripe = Math.floor(position / this.stripeDataSize);
      const cellLength = this.cellLength(stripe, dataLength);
      const inStripe = position - stripe * this.stripeDataSize;
      const cell = Math.floor(inStripe / cellLength);
      const inCell = inStripe - cell * cellLength;
      const take = Math.min(cellLength - inCell, end - position);
      pieces.push({
        shard: cell,
        shardOffset: stripe * this.cellSize + inCell,
        rangeOffset: position - offset,
        length: take,
      });
      position += take;
    }
    return pieces;
  }

  /** The contiguous byte range to read from each data shard that holds part of the range. */
  shardSpans(offset: number, length: number, dataLength: number): ShardSpan[] {
    const spans = new Map<number, { start: number; end: number }>();
    for (const piece of this.mapRange(offset, length, dataLength)) {
      const span = spans.get(piece.shard);
      const pieceEnd = piece.shardOffset + piece.length;
      if (span) span.end = Math.max(span.end, pieceEnd);
      else spans.set(piece.shard, { start: piece.shardOffset, end: pieceEnd });
    }
    return [...spans.entries()].sort((a, b) => a[0] - b[0]).map(([shard, s]) => ({ shard, ...s }));
  }

  /**
   * The shard byte range that covers a data range in every shard: reading [start, end) from any K
   * shards is enough to rebuild the range when data shards are missing (degraded read).
   */
  degradedSpan(
    offset: number,
    length: number,
    dataLength: number,
  ): { readonly start: number; readonly end: number } {
    const spans = this.shardSpans(offset, length, dataLength);
    if (spans.length === 0) return { start: 0, end: 0 };
    return { start: Math.min(...spans.map((s) => s.start)), end: Math.max(...spans.map((s) => s.end)) };
  }

  private checkGroupLength(dataLength: number): void {
    checkLength(dataLength, 'block group data length');
    if (dataLength > this.groupDataSize) {
      throw new CodecError(
        'INVALID_ARGUMENT',
        `block group holds at most ${this.groupDataSize} bytes, got ${dataLength}`,
      );
    }
  }

  private checkRange(offset: number, length: number, dataLength: number): void {
    this.checkGroupLength(dataLength);
    checkLength(offset, 'offset');
    checkLength(length, 'length');
    if (offset + length > dataLength) {
      throw new CodecError(
        'INVALID_ARGUMENT',
        `range [${offset}, ${offset + length}) past the group's ${dataLength} bytes`,
      );
    }
  }
}
