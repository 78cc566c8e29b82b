/**
 * metadata/state-clock — the time a leader stamps into a group's commands. State machines never let
 * their time run back (a stamp behind it is clamped), so a leader whose wall clock was once far ahead
 * (a stepped clock, a bad NTP answer) leaves its time in the state for good. Stamping the plain wall
 * clock after that froze the state's time until the wall caught up: write leases never expired and
 * silent chunk servers were never declared dead, for as long as the clock had been ahead.
 *
 * A StateClock stamps the later of the wall clock and the state's latest time carried forward by the
 * monotonic time since it was seen. While the wall clock is right the two agree (the state's time came
 * from it); after a jump the state's time runs on at the real rate, the way etcd keeps its leases on
 * the leader's monotonic clock. One per group, on the node that stamps (the leader).
 * May import: nothing with I/O (time sources are passed in, so tests drive them).
 */

export class StateClock {
  /** The latest state time seen and the monotonic time when it was seen. */
  private anchorStateMs = Number.NEGATIVE_INFINITY;
  private anchorMonotonicMs = 0;

  constructor(
    private readonly wallMs: () => number = Date.now,
    private readonly monotonicMs: () => number = () => performance.now(),
  ) {}

  /** The time to stamp into a command of a group whose state machine's time is `stateTimeMs`. */
  now(stateTimeMs: number): number {
    const monotonic = this.monotonicMs();
    const carried = this.anchorStateMs + (monotonic - this.anchorMonotonicMs);
    if (stateTimeMs > carried) {
      this.anchorStateMs = stateTimeMs;
      this.anchorMonotonicMs = monotonic;
    }
    return Math.max(this.wallMs(), Math.floor(Math.max(stateTimeMs, carried)));
  }
}
