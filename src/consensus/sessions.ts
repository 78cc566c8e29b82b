/**
 * consensus/sessions — client sessions for exactly-once application of commands (Raft dissertation §6.3).
 *
 * A command carries (clientId, seq, time). `time` is assigned by the leader when proposing and travels in
 * the log entry, so every replica sees the same value and expiry is deterministic: no replica ever reads
 * its own clock while applying. A state machine calls `apply` for each command; a retry of an already
 * applied (clientId, seq) gets the original result without executing again. Each client also reports
 * `ackedBelow` (every seq below it has been answered), which lets the table forget old results; results
 * are otherwise kept up to `maxResultsPerClient` per client. Sessions idle for `ttl` (in command time) are
 * expired, as are the least recently used ones beyond `maxSessions`; a command from an expired or unknown
 * session is refused ('session_expired'), since it may already have applied.
 *
 * Sessions are opened explicitly (`open`, the dissertation's RegisterClient) under an id the state machine
 * chose and never hands out again. A command never opens its own session: if one could, a command applied
 * once, whose answer was lost and whose session was then evicted, would open a fresh session on its retry
 * and apply again. `mayOpen` keeps that older rule for commands that were logged under it (their replay
 * must apply as it did) and for callers that accept the gap.
 */

import { assert } from '../common/assert.js';

export interface SessionLimits {
  readonly ttl: number;
  readonly maxSessions: number;
  readonly maxResultsPerClient: number;
}

export interface SessionCommand {
  readonly clientId: string;
  readonly seq: number;
  readonly ackedBelow: number;
  readonly time: number;
  /**
   * The older rule: an unknown session whose command is its first (ackedBelow <= 1) is opened by it. Only
   * for entries logged before sessions were opened explicitly, and for callers that accept the gap above.
   */
  readonly mayOpen: boolean;
}

export type SessionOutcome<R> =
  | { readonly kind: 'applied'; readonly result: R }
  | { readonly kind: 'duplicate'; readonly result: R }
  | { readonly kind: 'session_expired' }
  | { readonly kind: 'result_forgotten' };

interface Session<R> {
  lastActive: number;
  /** seq -> result, for seqs not yet acknowledged by the client. */
  readonly results: Map<number, R>;
  /** Every seq below this was acknowledged or forgotten; a retry of one is refused. */
  floor: number;
  highest: number;
}

export interface SessionsSnapshot<R> {
  readonly latestTime: number;
  readonly sessions: readonly {
    readonly clientId: string;
    readonly lastActive: number;
    readonly floor: number;
    readonly highest: number;
    readonly results: readonly (readonly [number, R])[];
  }[];
}

export class ClientSessions<R> {
  private sessions = new Map<string, Session<R>>();
  private latestTime = 0;

  constructor(private readonly limits: SessionLimits) {
    assert(limits.ttl > 0 && limits.maxSessions > 0 && limits.maxResultsPerClient > 0, 'session limits');
  }

  /**
   * Opens a session under `clientId`, which the caller chose so that no session ever had it before (a
   * reused id could meet retries of its earlier life). Sequence numbers start at 1.
   */
  open(clientId: string, time: number): void {
    this.advance(time);
    assert(!this.sessions.has(clientId), 'a session id is never opened twice');
    this.create(clientId);
  }

  has(clientId: string): boolean {
    return this.sessions.has(clientId);
  }

  /**
   * The result kept for (clientId, seq), if that command was applied and its result is still kept; reads
   * nothing else and changes nothing (a leader answers a retry of an applied command with it, without
   * redoing checks whose inputs have changed since).
   */
  recorded(clientId: string, seq: number): R | undefined {
    return this.sessions.get(clientId)?.results.get(seq);
  }

  /** Applies `cmd` exactly once: `execute` runs only for a new (clientId, seq) of an open session. */
  apply(cmd: SessionCommand, execute: () => R): SessionOutcome<R> {
    this.advance(cmd.time);
    let s = this.sessions.get(cmd.clientId);
    if (s === undefined) {
      if (!cmd.mayOpen || cmd.ackedBelow > 1 || cmd.seq < 1) return { kind: 'session_expired' };
      s = this.create(cmd.clientId);
    }
    this.touch(cmd.clientId, s);
    if (cmd.ackedBelow > s.floor) {
      for (const seq of s.results.keys()) if (seq < cmd.ackedBelow) s.results.delete(seq);
      s.floor = cmd.ackedBelow;
    }
    if (s.results.has(cmd.seq)) return { kind: 'duplicate', result: s.results.get(cmd.seq) as R };
    // Every applied seq at or above the floor has its result kept, so a seq at or above the floor without
    // one never ran: it may run now even below `highest` (a client's concurrent calls may be proposed out
    // of order, e.g. after one was retried on a new leader).
    if (cmd.seq < s.floor) return { kind: 'result_forgotten' };
    const result = execute();
    if (cmd.seq > s.highest) s.highest = cmd.seq;
    s.results.set(cmd.seq, result);
    while (s.results.size > this.limits.maxResultsPerClient) {
      // The first result kept (nearly always the lowest seq) goes, and the floor rises past it: a seq
      // below the floor that never ran is refused rather than possibly run twice.
      const oldest = s.results.keys().next().value as number;
      s.results.delete(oldest);
      if (oldest >= s.floor) s.floor = oldest + 1;
    }
    return { kind: 'applied', result };
  }

  size(): number {
    return this.sessions.size;
  }

  snapshot(): SessionsSnapshot<R> {
    return {
      latestTime: this.latestTime,
      sessions: [...this.sessions].map(([clientId, s]) => ({
        clientId,
        lastActive: s.lastActive,
        floor: s.floor,
        highest: s.highest,
        results: [...s.results],
      })),
    };
  }

  static restore<R>(limits: SessionLimits, snap: SessionsSnapshot<R>): ClientSessions<R> {
    const out = new ClientSessions<R>(limits);
    out.latestTime = snap.latestTime;
    // The table is kept in order of activity (see touch); a stable sort keeps an ordered snapshot as it is.
    const ordered = [...snap.sessions].sort((a, b) => a.lastActive - b.lastActive);
    for (const s of ordered) {
      out.sessions.set(s.clientId, {
        lastActive: s.lastActive,
        floor: s.floor,
        highest: s.highest,
        results: new Map(s.results),
      });
    }
    return out;
  }

  /** Moves command time forward (never back: a stale leader's clock is clamped) and expires idle sessions. */
  private advance(time: number): void {
    if (time > this.latestTime) this.latestTime = time;
    this.expire();
  }

  private create(clientId: string): Session<R> {
    const s: Session<R> = { lastActive: this.latestTime, results: new Map(), floor: 1, highest: 0 };
    this.sessions.set(clientId, s);
    this.evictBeyondLimit(clientId);
    return s;
  }

  /**
   * Marks a session active now and moves it to the end of the table, which therefore stays ordered by
   * lastActive (command time never runs backwards): expiry and eviction look only at its front instead of
   * scanning every session for every command.
   */
  private touch(clientId: string, s: Session<R>): void {
    s.lastActive = this.latestTime;
    this.sessions.delete(clientId);
    this.sessions.set(clientId, s);
  }

  private expire(): void {
    for (const [id, s] of this.sessions) {
      if (this.latestTime - s.lastActive <= this.limits.ttl) return;
      this.sessions.delete(id);
    }
  }

  private evictBeyondLimit(keep: string): void {
    while (this.sessions.size > this.limits.maxSessions) {
      // The least recently active are at the front; among those tied on time the smallest id goes, so
      // every replica evicts the same session.
      let victim: string | undefined;
      let oldest: number | undefined;
      for (const [id, s] of this.sessions) {
        if (id === keep) continue;
        if (oldest === undefined) oldest = s.lastActive;
        else if (s.lastActive !== oldest) break;
        if (victim === undefined || id < victim) victim = id;
      }
      if (victim === undefined) return;
      this.sessions.delete(victim);
    }
  }
}
