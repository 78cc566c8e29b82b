/**
 * common/pace — holds background work (the scrubber's reads, automatic repair's writes) to a rate in
 * bytes per second, so that it never takes the disk or the network from what users are doing.
 *
 * Each piece waits until the rate allows it to start, then is charged its bytes: the next piece waits
 * until this one's share of the rate has passed, and the time spent doing the work counts towards it.
 * Time left unused is not saved up, so work that was slowed (a busy disk) does not then burst.
 */
import { setTimeout as sleep } from 'node:timers/promises';
import { assert } from './assert.js';

export class Pacer {
  private budgetAtMs = 0;

  constructor(readonly bytesPerSecond: number) {
    assert(Number.isFinite(bytesPerSecond) && bytesPerSecond > 0, 'a rate is positive');
  }

  /** Waits until `bytes` more may go (or `signal` aborts: then at once), and charges them. */
  async pace(bytes: number, signal?: AbortSignal): Promise<void> {
    assert(Number.isFinite(bytes) && bytes >= 0, 'bytes paced are a count');
    const wait = this.budgetAtMs - performance.now();
    if (wait > 0) await sleep(wait, undefined, signal === undefined ? {} : { signal }).catch(() => {});
    this.budgetAtMs = Math.max(this.budgetAtMs, performance.now()) + (bytes / this.bytesPerSecond) * 1000;
  }
}
