/**
 * metadata/state/result — how a state-machine command ends. A refused command is still a deterministic
 * outcome every replica must agree on, so results are values, never exceptions: `{ ok: true, ... }` or a
 * `Failure` carrying a wire error code (wire/errors.ts) and a message naming the problem.
 */
import { assert } from '../../common/assert.js';
import type { ErrorCode } from '../../wire/errors.js';

export interface Failure {
  readonly ok: false;
  readonly code: ErrorCode;
  readonly message: string;
}

/**
 * A limit of the state (ids, entries, block groups, writes in progress) is FAILED_PRECONDITION, never
 * RESOURCE_EXHAUSTED: clients retry RESOURCE_EXHAUSTED as a server's passing overload, and a retry of an
 * applied command only gets the same answer back (exactly-once), so a user would wait out the whole
 * deadline for a refusal that was final from the start.
 */
export function fail(code: ErrorCode, message: string): Failure {
  assert(code !== 'RESOURCE_EXHAUSTED', 'state-machine limits are FAILED_PRECONDITION (final, not retried)');
  return { ok: false, code, message };
}
