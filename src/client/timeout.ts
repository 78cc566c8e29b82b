/**
 * client/timeout — bounding one step of a stream (a shard write, a shard read) so a silent server is
 * given up on after a while instead of holding the whole transfer until its deadline.
 */
import { DogfsError, type ErrorCode } from '../wire/errors.js';

/** `promise`, or a DogfsError `code` if it has not settled within `ms`. */
export function withStepTimeout<T>(
  promise: Promise<T>,
  ms: number,
  what: string,
  code: ErrorCode,
): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new DogfsError(code, `${what}: no progress in ${ms} ms`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}
