/**
 * codec/errors — the one error type the codec throws for bad input. Callers branch on `code`, never on
 * the message. Every function that throws it checks its arguments before writing anything, so a thrown
 * CodecError means no output buffer was touched.
 */

export type CodecErrorCode =
  /** K, M, a length, an offset or an index is out of range or malformed. */
  | 'INVALID_ARGUMENT'
  /** Shards that must be the same length are not. */
  | 'SHARD_LENGTH_MISMATCH'
  /** More shards are missing than there are parity shards: the data cannot be reconstructed. */
  | 'TOO_MANY_MISSING'
  /** An output buffer is smaller than the result that must be written into it. */
  | 'BUFFER_TOO_SMALL'
  /** A requested backend is not available on this machine. */
  | 'BACKEND_UNAVAILABLE';

export class CodecError extends Error {
  override name = 'CodecError';
  readonly code: CodecErrorCode;

  constructor(code: CodecErrorCode, message: string) {
    super(message);
    this.code = code;
  }
}
