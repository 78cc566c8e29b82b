/**
 * client/session — a client session: an id the metadata service handed out (Metadata.OpenSession) and a
 * per-call increasing sequence number. Every mutating metadata call takes the next number once; its
 * retries reuse it, so the state machine answers a retry with the original result (exactly-once). Each
 * stamp also says below which number every call has been answered (`ackedBelow`), so the server may forget
 * those results.
 *
 * The session is opened before its first call, not by it: a call that opened its own session could, after
 * the service evicted that session, open a fresh one on its retry and be applied twice. One open is shared
 * by the calls that need it meanwhile; each waits for it only as long as its own deadline and signal allow.
 */
import { assert } from '../common/assert.js';
import { DogfsError, isRetryable, toDogfsError } from '../wire/errors.js';
import type { ClientSession as SessionMessage } from '../wire/gen/types.js';

/** Calls of one session in flight at once (a bound, not a tuning knob). */
const MAX_OUTSTANDING = 100_000;
/** Opens one call waits through (a failed open, or a session forgotten again before the call started). */
const MAX_OPENS_PER_CALL = 3;
/**
 * Pause before a call opens again after an open failed fast (one started by a call with a shorter
 * deadline): full jitter over BASE * 2^n, at most MAX, so the calls that joined a failed open do not all
 * open again at the same moment, nor hammer a service that is refusing.
 */
const OPEN_BACKOFF_BASE_MS = 50;
const OPEN_BACKOFF_MAX_MS = 400;
/** The longest delay a Node timer takes as it is (2^31 - 1 ms). */
const MAX_TIMER_MS = 2_147_483_647;
/** What a session id from the service may be: printable ASCII, at most the 128 bytes commands carry. */
const SESSION_ID = /^[\x21-\x7e]{1,128}$/;

/**
 * Opens a session on the service and returns its id, within the deadline of the call that starts it (its
 * failure then says why, as the call's own would: no quorum, nothing reachable) but not its signal: the
 * calls that join it may still want it.
 */
export type SessionOpener = () => Promise<string>;

/** How long one call may wait for the session to open. */
export interface SessionWait {
  readonly deadline: number;
  readonly signal?: AbortSignal | undefined;
}

/** What waitWithin bounds a wait by: a deadline (none: the awaited promise is bounded itself), a signal. */
interface WaitBound {
  readonly deadline?: number | undefined;
  readonly signal?: AbortSignal | undefined;
}

export interface ClientSessionOptions {
  /** Uniform [0,1) for the backoff's jitter; injectable for tests. */
  random?: () => number;
}

export class ClientSession {
  private readonly random: () => number;
  private id: string | undefined;
  /** The open in flight, shared by every call that needs the session meanwhile. */
  private opening: Promise<string> | undefined;
  private seq = 0;
  private readonly outstanding = new Set<number>();

  constructor(options: ClientSessionOptions = {}) {
    this.random = options.random ?? Math.random;
  }

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
  async run<T>(
    open: SessionOpener,
    wait: SessionWait,
    call: (stamp: SessionMessage) => Promise<T>,
  ): Promise<T> {
    const stamp = await this.next(open, wait);
    try {
      return await call(stamp);
    } finally {
      this.done(stamp);
    }
  }

  get lastSeq(): number {
    return this.seq;
  }

  private async next(open: SessionOpener, wait: SessionWait): Promise<SessionMessage> {
    let last: DogfsError | undefined;
    for (let opens = 0; this.id === undefined; opens++) {
      // The last open's own failure says why best (no quorum, nothing reachable).
      if (opens === MAX_OPENS_PER_CALL)
        throw last ?? new DogfsError('UNAVAILABLE', `could not open a client session in ${opens} tries`);
      if (wait.signal?.aborted) throw new DogfsError('CANCELLED', 'cancelled while opening a session');
      // The call that starts the open waits for its outcome (bounded by this call's deadline, and a failure
      // names its cause); one that joins another's waits only within its own deadline.
      const starting = this.opening === undefined;
      try {
        await waitWithin(this.opened(open), starting ? { signal: wait.signal } : wait);
      } catch (error) {
        const e = toDogfsError(error);
        // Out of time while joining another call's open, after an open of its own had failed: that failure
        // says why (no quorum, nothing reachable), the bare deadline does not. (After a failed open, the
        // calls pause before opening again, so the one with the least time left may be the one joining.)
        if (!starting && e.code === 'DEADLINE_EXCEEDED' && last !== undefined) throw last;
        last = e;
        // Another call's open that failed for a passing reason: this call may still have time for its own.
        if (!isRetryable(last.code) || Date.now() >= wait.deadline || wait.signal?.aborted) throw last;
        if (opens + 1 < MAX_OPENS_PER_CALL) await this.backoff(opens, wait, last);
      }
    }
    assert(this.outstanding.size < MAX_OUTSTANDING, 'too many calls in flight in one session');
    this.seq++;
    assert(Number.isSafeInteger(this.seq), 'session sequence overflow');
    this.outstanding.add(this.seq);
    return { clientId: this.id, seq: this.seq, ackedBelow: this.ackedBelow };
  }

  /**
   * Waits a short jittered while before this call's next open (the session may be open by then, or
   * another call's open under way to join). A pause that would reach the deadline is not taken: the last
   * open's failure is thrown at once, as the call's reason.
   */
  private async backoff(failedOpens: number, wait: SessionWait, last: DogfsError): Promise<void> {
    const delay = this.random() * Math.min(OPEN_BACKOFF_MAX_MS, OPEN_BACKOFF_BASE_MS * 2 ** failedOpens);
    if (Date.now() + delay >= wait.deadline) throw last;
    await pause(delay, wait.signal);
  }

  private opened(open: SessionOpener): Promise<string> {
    if (this.opening !== undefined) return this.opening;
    const opening = open().then(
      (id) => {
        if (this.opening === opening) this.opening = undefined;
        // A server that answers nonsense gets a clear error, and the next call opens again.
        if (!SESSION_ID.test(id))
          throw new DogfsError(
            'INTERNAL',
            `the metadata service opened a session with an invalid id ${JSON.stringify(id.slice(0, 40))}`,
          );
        if (this.id === undefined) {
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

/** Resolves after `ms`, or rejects CANCELLED when the signal aborts first (its timer cleared then). */
function pause(ms: number, signal: AbortSignal | undefined): Promise<void> {
  return new Promise<void>((resolve, reject) => {
    const onAbort = () => {
      clearTimeout(timer);
      reject(new DogfsError('CANCELLED', 'cancelled while opening a session'));
    };
    const timer = setTimeout(() => {
      signal?.removeEventListener('abort', onAbort);
      resolve();
    }, ms);
    if (signal?.aborted) return onAbort();
    signal?.addEventListener('abort', onAbort, { once: true });
  });
}

/** `promise`, or DEADLINE_EXCEEDED at the deadline, or CANCELLED when the signal aborts: whichever is first. */
function waitWithin<T>(promise: Promise<T>, wait: WaitBound): Promise<T> {
  const { deadline, signal } = wait;
  return new Promise<T>((resolve, reject) => {
    let settled = false;
    let timer: NodeJS.Timeout | undefined;
    const onAbort = () =>
      settle(() => reject(new DogfsError('CANCELLED', 'cancelled while opening a session')));
    function settle(then: () => void): void {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      signal?.removeEventListener('abort', onAbort);
      then();
    }
    // Listened to first, whatever happens next: an open nobody else waits for must not fail unhandled.
    promise.then(
      (value) => settle(() => resolve(value)),
      (error: unknown) => settle(() => reject(error)),
    );
    if (signal?.aborted) return onAbort();
    signal?.addEventListener('abort', onAbort, { once: true });
    if (deadline === undefined) return;
    // Clamped as timers need (a later delay fires at once); a wait that long is bounded by the call's own.
    timer = setTimeout(
      () =>
        settle(() =>
          reject(new DogfsError('DEADLINE_EXCEEDED', 'deadline exceeded while opening a session')),
        ),
      Math.min(MAX_TIMER_MS, Math.max(0, deadline - Date.now())),
    );
  });
}
