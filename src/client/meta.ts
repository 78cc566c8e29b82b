/**
 * client/meta — calls to the metadata service from a seed list: finds the leader (Metadata.FindLeader,
 * NOT_LEADER hints), moves to another seed when one is unreachable, retries idempotent calls with backoff
 * until the call's deadline, and turns "nobody could answer" into one clear NO_QUORUM/UNAVAILABLE error
 * within that deadline — never a hang.
 */
import { assert } from '../common/assert.js';
import { DogfsError, isRetryable, toDogfsError } from '../wire/errors.js';
import { type MemberGroupView, type MetadataMethods, MetadataService } from '../wire/gen/types.js';
import type { Init } from '../wire/proto.js';
import {
  DEFAULT_TIMEOUT_MS,
  type RequestOf,
  type ResponseOf,
  type RpcChannel,
  RpcChannelPool,
  withRetry,
} from '../wire/rpc.js';
import type { ClientSession } from './session.js';

export type MetadataMethod = keyof MetadataMethods & string;

export interface MetaCallOptions {
  /** Relative timeout for the whole call, retries included; ignored when `deadline` is given. */
  timeoutMs?: number;
  /** Absolute deadline, ms since the epoch. */
  deadline?: number;
  signal?: AbortSignal;
}

/**
 * Whether an attempt on `address` that failed with `e` may have been applied. Known not to have been: any
 * answer of the service refusing it (a state-machine refusal, NOT_LEADER, NO_QUORUM: no leader, so nothing
 * was proposed; a refusal before proposing: electing, transferring leadership, shutting down, load shed,
 * too few chunk servers), and a connection that could not be made. Unknown: no answer (a deadline, a
 * connection lost after the request left: the errors this client's channel makes itself, named by address
 * and method) and a proposal the leader gave up on (leadership lost before it committed; shut down).
 */
function outcomeUnknown(e: DogfsError, address: string, method: string): boolean {
  if (e.code === 'DEADLINE_EXCEEDED' || e.code === 'CANCELLED' || e.code === 'INTERNAL') return true;
  if (e.code !== 'UNAVAILABLE') return false;
  if (e.message.startsWith(`${address} ${method}: `)) return !/ECONNREFUSED/.test(e.message);
  // raftnode/host.ts's answers for a proposal it appended and then gave up on. Every other UNAVAILABLE a
  // server answers is a refusal before proposing (a deny list of those treated a leader's own refusal,
  // such as too few chunk servers, as an unknown outcome).
  return /before the command committed|metadata server is shutting down/.test(e.message);
}

/** What a call's failed attempts say about whether it may have been applied (see mutate). */
interface CallOutcome {
  uncertain: boolean;
}

/**
 * Whether a call's final error `e` leaves an earlier unanswered attempt unsettled. It does unless the
 * service answered the call itself: a state-machine refusal of a retry stamped with the call's session
 * number is the call's one result (the state machine answers a retry of an applied command with its first
 * result). No leader, nothing reachable, a refusal before proposing (too few chunk servers, load shed), the
 * deadline, the caller's cancel, or a fault of the client or server say nothing about that attempt.
 */
function leavesOutcomeOpen(e: DogfsError): boolean {
  return isUnavailability(e.code) || e.code === 'CANCELLED' || e.code === 'INTERNAL';
}

/**
 * Whether an unknown outcome of `method` matters to its caller. Not for a read, nor for OpenSession: a
 * session opened whose answer was lost is only an entry the service lets expire, and the open's failure
 * is reported as that of the call waiting for the session, which was never sent.
 */
function hasVisibleEffects(method: MetadataMethod): boolean {
  return !MetadataService.methods[method].noSideEffects && method !== 'OpenSession';
}

export interface MetadataConnectionOptions {
  /** Metadata server addresses, host:port. */
  seeds: readonly string[];
  /** Default deadline of one call, retries included (10 s). */
  timeoutMs?: number;
  /** Longest a single attempt on one server may take before the next server is tried (5 s). */
  attemptTimeoutMs?: number;
  /** Uniform [0,1) for backoff jitter; injectable for tests. */
  random?: () => number;
}

/** Raft group whose leader serves a method: 0 = cluster, 1 = the (single, for now) namespace group. */
function groupOf(method: MetadataMethod): number {
  switch (method) {
    case 'RegisterChunkServer':
    case 'Heartbeat':
    case 'BlockReport':
    // Shard health (bad shards, what to repair) is soft state of the cluster group's leader.
    case 'ReportBadShard':
    case 'ClusterReport':
    case 'PlanRepair':
    case 'SetSettings':
    case 'SetDraining':
      return 0;
    default:
      return 1;
  }
}

/** Codes meaning "this server cannot serve it now; another server or a later try may". */
function isUnavailability(code: DogfsError['code']): boolean {
  return isRetryable(code) || code === 'DEADLINE_EXCEEDED';
}

const MAX_ATTEMPTS = 1000;

/**
 * What went wrong on each server during one call's attempts, to give one clear reason at the deadline:
 * NO_QUORUM when the servers that answered said so (or could not find a leader while others were
 * unreachable), a server's own refusal (e.g. too few chunk servers) when that is what stood in the way,
 * UNAVAILABLE "cannot reach" when no server answered at all.
 */
class FailureTally {
  /** Per address, the last failure: "unreachable" or the server's message. */
  private readonly last = new Map<string, string>();
  private unreachable = 0;
  private answered = 0;
  private noQuorum: DogfsError | undefined;
  /**
   * What the latest answer said: the call's verdict follows it, not any earlier one (one early "electing"
   * made a busy leader's refusals read as "no quorum").
   */
  private latest: 'noQuorum' | 'noLeader' | 'refusal' | undefined;
  private refusal: DogfsError | undefined;
  private refusalFromLeader = false;

  /** `fromLeader`: the server was believed to lead (so a refusal from it is not a quorum problem). */
  add(address: string, method: string, error: DogfsError, fromLeader: boolean): void {
    // RpcChannel and `attempt` name the address and method in the errors they make themselves. A call cut
    // by the deadline before any answer (the channel still connecting: "Waiting for LB pick") is the same
    // as unreachable: the server said nothing.
    const local =
      (error.code === 'UNAVAILABLE' || error.code === 'DEADLINE_EXCEEDED') &&
      error.message.startsWith(`${address} ${method}: `);
    if (this.last.size < 16 || this.last.has(address)) {
      this.last.set(address, local ? 'unreachable' : error.message.slice(0, 200));
    }
    if (local) {
      this.unreachable++;
      return;
    }
    this.answered++;
    if (error.code === 'NO_QUORUM') {
      this.noQuorum = error;
      this.latest = 'noQuorum';
    } else if (error.code === 'NOT_LEADER' && !error.leaderHint) this.latest = 'noLeader';
    // Still electing when the deadline comes, with every server answering: they cannot reach each other.
    else if (error.code === 'UNAVAILABLE' && /is electing a leader/.test(error.message))
      this.latest = 'noLeader';
    else if (error.code === 'UNAVAILABLE' || error.code === 'RESOURCE_EXHAUSTED') {
      this.refusal = error;
      this.refusalFromLeader = fromLeader;
      // Only a leader's refusal says the group has one again: a follower's (busy) does not undo an
      // earlier "electing" or "no quorum".
      if (fromLeader || this.latest === undefined) this.latest = 'refusal';
    }
  }

  verdict(method: string, seeds: readonly string[], waitedMs: number, last: DogfsError): DogfsError {
    const detail = [...this.last.entries()].map(([address, why]) => `${address}: ${why}`).join('; ');
    if (this.answered === 0) {
      return new DogfsError(
        'UNAVAILABLE',
        `cannot reach any metadata server (${seeds.join(', ')}) for ${method}`,
        {
          cause: last,
        },
      );
    }
    const quorumLost =
      this.latest === 'noQuorum' ||
      this.latest === 'noLeader' ||
      (this.unreachable > 0 && !this.refusalFromLeader);
    if (this.refusal !== undefined && !quorumLost) return this.refusal;
    return new DogfsError(
      'NO_QUORUM',
      `metadata service has no quorum: ${method} not served within ${waitedMs} ms (${detail})`,
      { cause: this.noQuorum ?? last },
    );
  }
}
const MAX_HINT_HOPS = 3;
/** Redos of a mutation on a new session after the service forgot the one it was stamped with. */
const MAX_SESSION_REDOS = 2;

export class MetadataConnection {
  readonly seeds: readonly string[];
  private readonly timeoutMs: number;
  private readonly attemptTimeoutMs: number;
  private readonly random: () => number;
  private readonly channels = new RpcChannelPool();
  /** Last known leader per Raft group. */
  private readonly leaders = new Map<number, string>();
  private seedCursor = 0;
  private closed = false;

  constructor(options: MetadataConnectionOptions) {
    const seeds = [...new Set(options.seeds.map((s) => s.trim()).filter((s) => s !== ''))];
    if (seeds.length === 0) throw new DogfsError('INVALID_ARGUMENT', 'no metadata server addresses given');
    this.seeds = seeds;
    this.timeoutMs = options.timeoutMs ?? DEFAULT_TIMEOUT_MS;
    this.attemptTimeoutMs = options.attemptTimeoutMs ?? 5000;
    this.random = options.random ?? Math.random;
    assert(this.timeoutMs > 0 && this.attemptTimeoutMs > 0, 'timeouts must be positive');
  }

  /** The deadline a call made now with these options gets. */
  deadlineOf(options: MetaCallOptions = {}): number {
    return options.deadline ?? Date.now() + (options.timeoutMs ?? this.timeoutMs);
  }

  /** The leader address currently believed for `group`, if any. */
  knownLeader(group: number): string | undefined {
    return this.leaders.get(group);
  }

  /**
   * One metadata call: to the known leader (else a seed), following NOT_LEADER hints, moving on to the
   * next seed when a server is unreachable, retried (idempotent methods only) until the deadline.
   */
  async call<K extends MetadataMethod>(
    method: K,
    request: Init<RequestOf<MetadataMethods, K>>,
    options: MetaCallOptions = {},
    outcome?: CallOutcome,
  ): Promise<ResponseOf<MetadataMethods, K>> {
    if (this.closed) throw new DogfsError('CANCELLED', 'client is closed');
    const started = Date.now();
    const deadline = this.deadlineOf(options);
    const group = groupOf(method);
    const tally = new FailureTally();
    // Tracked for every call, so a mutation made without a session (SetSettings) says it too.
    const attempts = outcome ?? { uncertain: false };
    try {
      return await withRetry(
        {
          deadline,
          idempotent: MetadataService.methods[method].idempotent,
          maxAttempts: MAX_ATTEMPTS,
          baseDelayMs: 20,
          maxDelayMs: 500,
          signal: options.signal,
          random: this.random,
        },
        async () => {
          let target = this.leaders.get(group) ?? (await this.discover(group, deadline, options.signal));
          for (let hop = 0; ; hop++) {
            // Refused here, not by the channel, so an attempt that was never sent does not count as one
            // whose answer was lost (which would say a mutation may have been applied).
            if (options.signal?.aborted) throw new DogfsError('CANCELLED', `${method}: cancelled`);
            if (Date.now() >= deadline)
              throw new DogfsError('DEADLINE_EXCEEDED', `${method}: deadline exceeded`);
            try {
              return await this.attempt(target, method, request, deadline, options.signal);
            } catch (error) {
              const e = toDogfsError(error);
              tally.add(target, method, e, this.leaders.get(group) === target);
              if (outcomeUnknown(e, target, method)) attempts.uncertain = true;
              if (e.code === 'NOT_LEADER' && e.leaderHint && e.leaderHint !== target && hop < MAX_HINT_HOPS) {
                this.leaders.set(group, e.leaderHint);
                target = e.leaderHint;
                continue;
              }
              if (this.leaders.get(group) === target) this.leaders.delete(group);
              // A server that cannot serve moves the next attempt to the next seed: one cut off from the
              // others answers NO_QUORUM, and asked again would answer it until the deadline though a
              // leader is reachable through another seed.
              if (e.code === 'UNAVAILABLE' || e.code === 'NOT_LEADER' || e.code === 'NO_QUORUM')
                this.seedCursor++;
              throw e;
            }
          }
        },
      );
    } catch (error) {
      const e = toDogfsError(error);
      const final = isUnavailability(e.code) ? tally.verdict(method, this.seeds, Date.now() - started, e) : e;
      // "No quorum", "cannot reach", "deadline exceeded" or "cancelled" read as "not done"; a mutation one
      // of whose attempts got no answer may be applied yet (by a leader that had its entry when the
      // majority came back, or that served it while its answer was lost). Same code: only the text warns.
      if (!attempts.uncertain || !hasVisibleEffects(method) || !leavesOutcomeOpen(final)) throw final;
      throw new DogfsError(
        final.code,
        `${final.message}; an attempt got no answer, so it may or may not have been applied: check before trying again`,
        { cause: final },
      );
    }
  }

  /**
   * A mutating call stamped with the session: one sequence number for the call and all its retries, so
   * the state machine applies it once.
   */
  async mutate<K extends MetadataMethod>(
    session: ClientSession,
    method: K,
    request: Omit<Init<RequestOf<MetadataMethods, K>>, 'session'>,
    options: MetaCallOptions = {},
  ): Promise<ResponseOf<MetadataMethods, K>> {
    const deadline = this.deadlineOf(options);
    const outcome: CallOutcome = { uncertain: false };
    // The open is shared by every call that needs the session meanwhile: the deadline of the call that
    // starts it, no caller's signal; a call that joins waits within its own (ClientSession.run).
    const open = async () => (await this.call('OpenSession', {}, { deadline })).clientId;
    for (let redo = 0; ; redo++) {
      let sessionUsed = '';
      try {
        return await session.run(open, { deadline, signal: options.signal }, (stamp) => {
          sessionUsed = stamp.clientId;
          return this.call(
            method,
            { ...request, session: stamp } as Init<RequestOf<MetadataMethods, K>>,
            { ...options, deadline },
            outcome,
          );
        });
      } catch (error) {
        if (
          !(error instanceof DogfsError) ||
          error.code !== 'FAILED_PRECONDITION' ||
          !/^session expired/.test(error.message)
        )
          throw error;
        // The service forgot the session (idle past its TTL, or evicted) and refused this attempt
        // unapplied. If no earlier attempt may have been applied, a new session may redo the call; if
        // one may (no answer came), the forgotten session took with it the only record of that, and a
        // redo could apply the call twice: the outcome is unknown, and said so (as gRPC's
        // DEADLINE_EXCEEDED says it for a call that may have completed).
        // The old session is gone either way: the next call opens a new one.
        session.forget(sessionUsed);
        if (outcome.uncertain)
          throw new DogfsError(
            'DEADLINE_EXCEEDED',
            `${method}: may or may not have been applied: the metadata service forgot this client's session while the call was retried; check before trying again`,
            { cause: error },
          );
        if (redo === MAX_SESSION_REDOS)
          throw new DogfsError(
            'UNAVAILABLE',
            `${method}: the metadata service forgot this client's session ${redo + 1} times while the call waited (too many clients for its session table?); retry`,
            { cause: error },
          );
      }
    }
  }

  /** One attempt on one server, bounded by the attempt timeout; a timed-out attempt counts as UNAVAILABLE. */
  private async attempt<K extends MetadataMethod>(
    address: string,
    method: K,
    request: Init<RequestOf<MetadataMethods, K>>,
    deadline: number,
    signal: AbortSignal | undefined,
  ): Promise<ResponseOf<MetadataMethods, K>> {
    const attemptDeadline = Math.min(deadline, Date.now() + this.attemptTimeoutMs);
    try {
      return await this.channel(address).call(MetadataService, method, request, {
        deadline: attemptDeadline,
        signal,
      });
    } catch (error) {
      const e = toDogfsError(error);
      if (e.code === 'DEADLINE_EXCEEDED' && attemptDeadline < deadline) {
        throw new DogfsError(
          'UNAVAILABLE',
          `${address} ${method}: no answer in ${this.attemptTimeoutMs} ms`,
          {
            cause: e,
          },
        );
      }
      throw e;
    }
  }

  /**
   * The next seed to try for `group`; asks it (Metadata.FindLeader) who leads, so the call goes straight
   * to the leader. A seed that cannot say is used as it is (it answers NOT_LEADER with a hint, or serves).
   */
  private async discover(group: number, deadline: number, signal: AbortSignal | undefined): Promise<string> {
    const seed = this.seeds[this.seedCursor % this.seeds.length]!;
    try {
      const answer = await this.channel(seed).call(
        MetadataService,
        'FindLeader',
        { group },
        { deadline: Math.min(deadline, Date.now() + Math.min(this.attemptTimeoutMs, 1000)), signal },
      );
      if (answer.leaderAddr !== '') {
        this.leaders.set(group, answer.leaderAddr);
        return answer.leaderAddr;
      }
    } catch {
      // FindLeader is only a shortcut: the real call on this seed reports what is wrong with it.
    }
    return seed;
  }

  private channel(address: string): RpcChannel {
    return this.channels.get(address);
  }

  /**
   * Each seed's own view of its Raft groups, asked of every seed at once (MemberStatus: no read barrier,
   * so a server cut off from the others, or one of a group that lost its quorum, still answers for
   * itself). A seed that does not answer within `timeoutMs` gets its error instead.
   */
  async members(timeoutMs: number): Promise<MemberView[]> {
    if (this.closed) throw new DogfsError('CANCELLED', 'client is closed');
    return Promise.all(
      this.seeds.map(async (addr): Promise<MemberView> => {
        try {
          const answer = await this.channels
            .get(addr)
            .call(MetadataService, 'MemberStatus', {}, { timeoutMs });
          return { addr, groups: answer.groups };
        } catch (error) {
          return { addr, error: toDogfsError(error) };
        }
      }),
    );
  }

  close(): void {
    this.closed = true;
    this.channels.close();
  }
}

/** One metadata server's own view of its groups (`groups`), or why it gave none (`error`). */
export type MemberView =
  | { readonly addr: string; readonly groups: readonly MemberGroupView[]; readonly error?: undefined }
  | { readonly addr: string; readonly groups?: undefined; readonly error: DogfsError };
