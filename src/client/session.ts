/**
 * client/session — a client session: a random client id and a per-call increasing sequence number.
 * Every mutating metadata call takes the next number once; its retries reuse it, so the state machine
 * answers a retry with the original result (exactly-once). Each stamp also says below which number every
 * call has been answered (`ackedBelow`), so the server may forget those results.
 */
import { randomBytes } from 'node:crypto';
import { assert } from '../common/assert.js';
import type { ClientSession as SessionMessage } from '../wire/gen/types.js';

/** Calls of one session in flight at once (a bound, not a tuning knob). */
const MAX_OUTSTANDING = 100_000;

export class ClientSession {
  private id: string;
  private seq = 0;
  private readonly outstanding = new Set<number>();

  constructor(clientId: string = randomBytes(16).toString('hex')) {
    assert(clientId.length > 0 && clientId.length <= 128, 'client id must be 1..128 characters');
    this.id = clientId;
  }

  get clientId(): string {
    return this.id;
  }

  /**
   * Starts a fresh session (new random id, numbers from 1), after the service forgot this one (idle past
   * its time to live). Calls still in flight keep their old stamps.
   */
  renew(): void {
    this.id = randomBytes(16).toString('hex');
    this.seq = 0;
    this.outstanding.clear();
  }

  /** The lowest sequence number not yet answered (the next one when none is in flight). */
  get ackedBelow(): number {
    let lowest = this.seq + 1;
    for (const s of this.outstanding) if (s < lowest) lowest = s;
    return lowest;
  }

  /** The stamp for one new call; retries of that call reuse it. Call `done` once it is answered. */
  next(): SessionMessage {
    assert(this.outstanding.size < MAX_OUTSTANDING, 'too many calls in flight in one session');
    this.seq++;
    assert(Number.isSafeInteger(this.seq), 'session sequence overflow');
    this.outstanding.add(this.seq);
    return { clientId: this.id, seq: this.seq, ackedBelow: this.ackedBelow };
  }

  /** Marks a call answered (or given up on: it is never retried after this). */
  done(stamp: SessionMessage): void {
    if (stamp.clientId === this.id) this.outstanding.delete(stamp.seq);
  }

  /** Runs one call with a fresh stamp, marking it answered whatever the outcome. */
  async run<T>(call: (stamp: SessionMessage) => Promise<T>): Promise<T> {
    const stamp = this.next();
    try {
      return await call(stamp);
    } finally {
      this.done(stamp);
    }
  }

  get lastSeq(): number {
    return this.seq;
  }
}
