/**
 * codec/checksum — fixed-size chunk checksums for shards (DESIGN §4: "every shard is checksummed in
 * fixed chunks"). A shard of length L has ceil(L / chunkSize) chunks; chunk i covers bytes
 * [i·chunkSize, min((i+1)·chunkSize, L)) and its checksum is the CRC-32C of exactly those bytes (the last
 * chunk is short, never padded). A chunk server stores the list next to the shard; a reader verifies only
 * the chunks its range touches, and learns the first bad chunk so it can report it and go degraded.
 */

import { crc32c } from './crc32c.js';
import { CodecError } from './errors.js';

/** Default chunk size: 64 KiB, small enough that a range read verifies little extra. */
export const CHECKSUM_CHUNK_SIZE = 64 * 1024;

function checkChunkSize(chunkSize: number): void {
  if (!Number.isSafeInteger(chunkSize) || chunkSize <= 0) {
    throw new CodecError('INVALID_ARGUMENT', `chunk size must be a positive integer, got ${chunkSize}`);
  }
}

/** Number of chunks a shard of `length` bytes has. */
export function chunkCount(length: number, chunkSize = CHECKSUM_CHUNK_SIZE): number {
  checkChunkSize(chunkSize);
  if (!Number.isSafeInteger(length) || length < 0) {
    throw new CodecError('INVALID_ARGUMENT', `length must be a non-negative integer, got ${length}`);
  }
  return Math.ceil(length / chunkSize);
}

/**
 * CRC-32C of every chunk of `data`. Writes into `out` when given (it must hold chunkCount entries;
 * nothing is written if it does not) and returns it, or a new array.
 */
export function computeChunkChecksums(
  data: Uint8Array,
  chunkSize = CHECKSUM_CHUNK_SIZE,
  out?: Uint32Array,
): Uint32Array {
  const count = chunkCount(data.length, chunkSize);
  if (out && out.length < count) {
    throw new CodecError('BUFFER_TOO_SMALL', `checksum array holds ${out.length}, need ${count}`);
  }
  const result = out ?? new Uint32Array(count);
  for (let i = 0; i < count; i++) {
    const start = i * chunkSize;
    result[i] = crc32c(data.subarray(start, Math.min(start + chunkSize, data.length)));
  }
  return result;
}

export type ChunkVerifyResult =
  | { readonly ok: true }
  | {
      readonly ok: false;
      /** Index of the first bad chunk within the whole shard. */
      readonly chunkIndex: number;
      /** Byte offset of that chunk within the shard. */
      readonly offset: number;
      readonly expected: number;
      readonly actual: number;
    };

/**
 * Verify bytes read from a shard against its stored chunk checksums. `data` must start on a chunk
 * boundary: it holds shard bytes [firstChunk·chunkSize, firstChunk·chunkSize + data.length), and must end
 * on a chunk boundary or at the shard's end (`shardLength`), since a partial chunk cannot be checked.
 * Use `chunkAlignedRange` to turn an arbitrary byte range into such a read.
 * Returns the first chunk whose CRC differs.
 */
export function verifyChunks(
  data: Uint8Array,
  checksums: ArrayLike<number>,
  firstChunk: number,
  shardLength: number,
  chunkSize = CHECKSUM_CHUNK_SIZE,
): ChunkVerifyResult {
  const total = chunkCount(shardLength, chunkSize);
  if (!Number.isSafeInteger(firstChunk) || firstChunk < 0 || (firstChunk >= total && data.length > 0)) {
    throw new CodecError('INVALID_ARGUMENT', `first chunk ${firstChunk} out of range [0, ${total})`);
  }
  if (checksums.length !== total) {
    throw new CodecError(
      'INVALID_ARGUMENT',
      `shard of ${shardLength} bytes has ${total} chunks, but ${checksums.length} checksums were given`,
    );
  }
  const start = firstChunk * chunkSize;
  const end = start + data.length;
  if (end > shardLength || (end !== shardLength && data.length % chunkSize !== 0)) {
    throw new CodecError(
      'INVALID_ARGUMENT',
      `bytes [${start}, ${end}) do not end on a chunk boundary or the shard end (${shardLength})`,
    );
  }
  for (let offset = 0; offset < data.length; offset += chunkSize) {
    const chunkIndex = firstChunk + offset / chunkSize;
    const actual = crc32c(data.subarray(offset, Math.min(offset + chunkSize, data.length)));
    const expected = checksums[chunkIndex]! >>> 0;
    if (actual !== expected) return { ok: false, chunkIndex, offset: start + offset, expected, actual };
  }
  return { ok: true };
}

export interface ChunkAlignedRange {
  /** First chunk touched by the range. */
  readonly firstChunk: number;
  /** One past the last chunk touched. */
  readonly endChunk: number;
  /** Shard byte range to read so that every touched chunk can be verified: [start, end). */
  readonly start: number;
  readonly end: number;
}

/** Widen shard byte range [offset, offset+length) to whole chunks (clamped to the shard's end). */
export function chunkAlignedRange(
  offset: number,
  length: number,
  shardLength: number,
  chunkSize = CHECKSUM_CHUNK_SIZE,
): ChunkAlignedRange {
  checkChunkSize(chunkSize);
  if (
    !Number.isSafeInteger(offset) ||
    !Number.isSafeInteger(length) ||
    offset < 0 ||
    length < 0 ||
    offset + length > shardLength
  ) {
    throw new CodecError(
      'INVALID_ARGUMENT',
      `range [${offset}, ${offset + length}) is not within a shard of ${shardLength} bytes`,
    );
  }
  if (length === 0) {
    const chunk = Math.floor(offset / chunkSize);
    return { firstChunk: chunk, endChunk: chunk, start: chunk * chunkSize, end: chunk * chunkSize };
  }
  const firstChunk = Math.floor(offset / chunkSize);
  const endChunk = Math.ceil((offset + length) / chunkSize);
  return {
    firstChunk,
    endChunk,
    start: firstChunk * chunkSize,
    end: Math.min(endChunk * chunkSize, shardLength),
  };
}

/**
 * Incremental chunk checksums for a shard written as a stream of arbitrary-sized pieces (the chunk
 * server's write path): feed `update` in order, then `finish`. Also keeps the CRC-32C of the whole shard,
 * which the metadata records at commit.
 */
export class ChunkedChecksummer {
  private readonly chunkSize: number;
  private readonly done: number[] = [];
  /** CRC of the bytes of the current, incomplete chunk so far. */
  private partialCrc = 0;
  private partialLength = 0;
  private wholeCrc = 0;
  private totalLength = 0;
  private finished = false;

  constructor(chunkSize = CHECKSUM_CHUNK_SIZE) {
    checkChunkSize(chunkSize);
    this.chunkSize = chunkSize;
  }

  update(piece: Uint8Array): void {
    if (this.finished) throw new CodecError('INVALID_ARGUMENT', 'update after finish');
    this.wholeCrc = crc32c(piece, this.wholeCrc);
    this.totalLength += piece.length;
    let offset = 0;
    while (offset < piece.length) {
      const take = Math.min(this.chunkSize - this.partialLength, piece.length - offset);
      this.partialCrc = crc32c(piece.subarray(offset, offset + take), this.partialCrc);
      this.partialLength += take;
      offset += take;
      if (this.partialLength === this.chunkSize) {
        this.done.push(this.partialCrc);
        this.partialCrc = 0;
        this.partialLength = 0;
      }
    }
  }

  /** Ends the stream: the chunk checksums, the whole-shard CRC-32C and the length. */
  finish(): { readonly chunks: Uint32Array; readonly crc32c: number; readonly length: number } {
    if (this.finished) throw new CodecError('INVALID_ARGUMENT', 'finish called twice');
    this.finished = true;
    if (this.partialLength > 0) this.done.push(this.partialCrc);
    return { chunks: Uint32Array.from(this.done), crc32c: this.wholeCrc, length: this.totalLength };
  }
}
