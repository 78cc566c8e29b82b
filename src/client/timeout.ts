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

/**
 * `step(progress)`, or a DogfsError `code` once `ms` pass without a call of `progress`. A bound on the
 * whole step would cut a server that is slow but moving (a cell of 1-2 MiB over a link of a few
 * hundred KiB/s per shard takes longer than any stall timeout worth having), while what it is for is a
 * server that has stopped: the step calls `progress` whenever some of its bytes move, which restarts
 * the clock.
 */
export function withStallTimeout<T>(
  step: (progress: () => void) => Promise<T>,
  ms: number,
  what: string,
  code: ErrorCode,
): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  let over = false;
  const stalled = new Promise<never>((_, reject) => {
    timer = setTimeout(() => {
      over = true;
      reject(new DogfsError(code, `${what}: no progress in ${ms} ms`));
    }, ms);
  });
  // refresh() would bring a timer that has fired back to life: not once the step is over.
  const progress = (): void => {
    if (!over) timer?.refresh();
  };
  let running: Promise<T>;
  try {
    running = step(progress);
  } catch (error) {
    running = Promise.reject(error);
  }
  return Promise.race([running, stalled]).finally(() => {
    over = true;
    clearTimeout(timer);
  });
}
