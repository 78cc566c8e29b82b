/**
 * metadata/state/result — how a state-machine command ends. A refused command is still a deterministic
 * outcome every replica must agree on, so results are values, never exceptions: `{ ok: true, ... }` or a
 * `Failure` carrying a wire error code (wire/errors.ts) and a message naming the problem.
 */
import type { ErrorCode } from '../../wire/errors.js';

export interface Failure {
  readonly ok: false;
  readonly code: ErrorCode;
  readonly message: string;
}

export function fail(code: ErrorCode, message: string): Failure {
  return { ok: false, code, message };
}
