/**
 * common/assert — invariant checks in the TIGER_STYLE sense: an assertion states something that must be
 * true if the program is correct; failing one is a bug, never a user error, and crashes loudly.
 * May import: nothing.
 */

export class AssertionError extends Error {
  override name = 'AssertionError';
}

export function assert(condition: unknown, message = 'assertion failed'): asserts condition {
  if (!condition) throw new AssertionError(message);
}

export function unreachable(value: never, message = 'unreachable'): never {
  throw new AssertionError(`${message}: ${String(value)}`);
}
