/**
 * client/session — a client session: an id the metadata service handed out (Metadata.OpenSession) and a
 * per-call increasing sequence number. Every mutating metadata call takes the next number once; its
 * retries reuse it, so the state machine answers a retry with the original result (exactly-once). Each
 * stamp also says below which number every call has been answered (`ackedBelow`), so the server may forget
 * those results.
 *
 * The session is opened before its first call, not by it: a call that opened its own session could, after
 * the service evicted that session, open a fresh one on its retry and be applied twice.
 */
import { assert } from '../common/assert.js';
import { DogfsError } from '../wire/errors.js';
import type { ClientSession as SessionMessage } from '../wire/gen/types.js';

/** Calls of one session in flight at once (a bound, not a tuning knob). */
const MAX_OUTSTANDING = 100_000;
/** Opens one call waits through when the session it opened is forgotten again before the call starts. */
const MAX_OPENS_PER_CALL = 3;

/** Opens a session on the service and returns its id. */
export type SessionOpener = () => Promise<string>;

export class ClientSession {
  private id: string | undefined;
  /** The open in flight, shared by every call that needs the session meanwhile. */
  private opening: Promise<string> | undefined;
  private seq = 0;
  private readonly outstanding = new Set<number>();

  /** The open session's id; undefined before the first call and after the service forgot it. */
  get clientId(): string | undefined {
    return this.id;
  }

  /**
   * Drops the session `clientId` after the service forgot it (idle past its time to live, or evicted):
   * the next call opens a new one. Calls still in flight keep their old stamps; a session opened since
   * by another call is kept.
   */
  forget(clientId: string): void {
    if (this.id !== clientId) return;
    this.id = undefined;
    this.seq = 0;
    this.outstanding.clear();
  }

  /** The lowest sequence number not yet answered (the next one when none is in flight). */
  get ackedBelow(): number {
    let lowest = this.seq + 1;
    for (const s of this.outstanding) if (s < lowest) lowest = s;
    return lowest;
  }

  /**
   * Runs one call with a fresh stamp (opening the session first if there is none), marking it answered
   * whatever the outcome; retries inside `call` reuse the stamp.
   */
  async run<T>(open: SessionOpener, call: (stamp: SessionMessage) => Promise<T>): Promise<T> {
    const stamp = await this.next(open);
    try {
      return await call(stamp);
    } finally {
      this.done(stamp);
    }
  }

  get lastSeq(): number {
    return this.seq;
  }

  private async next(open: SessionOpener): Promise<SessionMessage> {
    for (let opens = 0; this.id === undefined; opens++) {
      if (opens === MAX_OPENS_PER_CALL)
        throw new DogfsError(
          'UNAVAILABLE',
          'the metadata service keeps forgetting new client sessions; retry',
        );
      await this.opened(open);
    }
    assert(this.outstanding.size < MAX_OUTSTANDING, 'too many calls in flight in one session');
    this.seq++;
    assert(Number.isSafeInteger(this.seq), 'session sequence overflow');
    this.outstanding.add(this.seq);
    return { clientId: this.id, seq: this.seq, ackedBelow: this.ackedBelow };
  }

  private opened(open: SessionOpener): Promise<string> {
    if (this.opening !== undefined) return this.opening;
    const opening = open().then(
      (id) => {
        if (id === '')
          throw new DogfsError('INTERNAL', 'the metadata service opened a session without an id');
        if (this.opening === opening) {
          this.opening = undefined;
          this.id = id;
          this.seq = 0;
          this.outstanding.clear();
        }
        return id;
      },
      (error: unknown) => {
        if (this.opening === opening) this.opening = undefined;
        throw error;
      },
    );
    this.opening = opening;
    return opening;
  }

  /** Marks a call answered (or given up on: it is never retried after this). */
  private done(stamp: SessionMessage): void {
    if (stamp.clientId === this.id) this.outstanding.delete(stamp.seq);
  }
}
