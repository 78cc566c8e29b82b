/**
 * wire/errors — the error codes every DogFS boundary speaks. An error that crosses the wire (or leaves
 * the client library) is a DogfsError with a code the caller can act on, never a bare string.
 */

export const ERROR_CODES = [
  'INVALID_ARGUMENT',
  'NOT_FOUND',
  'ALREADY_EXISTS',
  'NOT_A_DIRECTORY',
  'IS_A_DIRECTORY',
  'NOT_EMPTY',
  'FAILED_PRECONDITION',
  'PERMISSION_DENIED',
  'NOT_LEADER',
  'NO_QUORUM',
  'UNAVAILABLE',
  'DEADLINE_EXCEEDED',
  'CANCELLED',
  'RESOURCE_EXHAUSTED',
  // A request or answer over a message-size limit: unlike a busy server's RESOURCE_EXHAUSTED it fails
  // the same way every time, so it is not retried (a retry would run the handler again for an answer
  // that cannot arrive). gRPC callers see RESOURCE_EXHAUSTED, as gRPC says for a message too large.
  'TOO_LARGE',
  'NO_SPACE',
  'CORRUPT',
  'UNIMPLEMENTED',
  'INTERNAL',
] as const;

export type ErrorCode = (typeof ERROR_CODES)[number];

export function isErrorCode(value: string): value is ErrorCode {
  return (ERROR_CODES as readonly string[]).includes(value);
}

export interface DogfsErrorOptions {
  /** NOT_LEADER: the address of the leader, when the server knows it. */
  leaderHint?: string;
  /** CORRUPT found by this process on bytes as they arrived (see DogfsError.inTransit). */
  inTransit?: boolean;
  cause?: unknown;
}

export class DogfsError extends Error {
  override name = 'DogfsError';
  readonly code: ErrorCode;
  readonly leaderHint: string | undefined;
  /**
   * CORRUPT from bytes that failed their checksum on arrival here, though the sender checked them: the
   * damage happened on the way (a link, a NIC, this machine's memory), which says nothing about the
   * copy they came from. Never crosses the wire.
   */
  readonly inTransit: boolean;

  constructor(code: ErrorCode, message: string, options: DogfsErrorOptions = {}) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.code = code;
    this.leaderHint = options.leaderHint;
    this.inTransit = options.inTransit === true;
  }
}

/** Codes after which repeating the same idempotent call may succeed. */
export function isRetryable(code: ErrorCode): boolean {
  return (
    code === 'UNAVAILABLE' || code === 'NOT_LEADER' || code === 'NO_QUORUM' || code === 'RESOURCE_EXHAUSTED'
  );
}

/** Wraps anything thrown into a DogfsError, keeping an existing one as it is. */
export function toDogfsError(error: unknown, fallback: ErrorCode = 'INTERNAL'): DogfsError {
  if (error instanceof DogfsError) return error;
  const message = error instanceof Error ? error.message : String(error);
  return new DogfsError(fallback, message, { cause: error });
}
