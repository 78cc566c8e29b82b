/**
 * consensus/raft — the pure Raft replica, in etcd-io/raft's Step/Ready/Advance shape.
 *
 * The host drives it with `step(message)`, `tick()` and the client operations (`propose`, `readIndex`,
 * `proposeConfChange`, `transferLeader`), then repeatedly:
 *   1. `rd = ready()`;
 *   2. persist rd.snapshot (if any; also restore the state machine from it), rd.entries (appending; an entry
 *      whose index is already on disk replaces that entry and everything after it) and rd.hardState — and
 *      fdatasync if rd.mustSync;
 *   3. only then send rd.messages (they may promise what step 2 made durable: votes, appended entries);
 *   4. apply rd.committedEntries in order (skip normal entries with empty data: leader no-ops), answer
 *      rd.readStates once the state machine has applied their index, fail rd.failedReads;
 *   5. `advance(rd)`.
 * `step`/`tick`/proposals may be called between `ready()` and `advance()`; what they produce goes into the
 * next Ready. `ready()` may not be called again before `advance()`.
 *
 * Features: randomized election timeouts (randomness from the caller's `rand`), PreVote, CheckQuorum,
 * pipelined batched replication with a bounded in-flight window per follower, term-skipping conflict
 * hints, §5.4.2 commitment (only current-term entries are committed by counting), ReadIndex on the leader
 * and forwarded from followers, opt-in lease reads, snapshots with compaction and chunked InstallSnapshot,
 * learners and membership change, leadership transfer via TimeoutNow.
 *
 * Membership change: ONE SERVER AT A TIME (add learner, promote learner, add voter, remove), each
 * configuration entry carrying the whole new configuration and taking effect as soon as it is in a log
 * (not when committed), as in Ongaro's dissertation §4.1. Why not joint consensus: single-server changes
 * need no intermediate two-majority configuration, so the quorum code stays one small function and the
 * simulator has one kind of configuration to check; any two consecutive configurations differ by one
 * voter, so their majorities overlap. The known hole in single-server change (a leader of a new term
 * appending a configuration entry while an uncommitted one from an older term survives in other logs) is
 * closed by the dissertation's fix: a leader refuses a configuration change until it has committed an
 * entry of its own term (its election no-op) and until the previous configuration entry is committed.
 *
 * Lease reads (readMode 'lease', requires checkQuorum): the leader answers a read from its commit index
 * without a round trip while its lease holds: a majority answered a heartbeat round sent less than
 * electionTicks - LEASE_DRIFT_MARGIN_TICKS of its ticks ago. Followers refuse votes for electionTicks after
 * hearing from the leader, so no other leader can exist within the lease — PROVIDED every replica's ticks
 * run at the same rate within that margin (bounded clock drift, no long pauses of the follower's clock
 * relative to the leader's). With unbounded pauses (GC, VM freeze, a stopped clock) a lease read can be
 * stale; an expired lease falls back to ReadIndex; 'safe' (the default) has no clock assumption.
 *
 * Limits (all explicit in RaftConfig): entries and bytes per append, in-flight messages and bytes per
 * follower, uncommitted bytes on the leader, snapshot chunk bytes, committed bytes per Ready, pending reads.
 */

import { assert, unreachable } from '../common/assert.js';
import { RaftLog } from './log.js';
import { Progress } from './progress.js';
import { countAtLeast, quorumMatchIndex, tally } from './quorum.js';
import type {
  AppendRequest,
  AppendResponse,
  ConfState,
  Entry,
  HardState,
  Heartbeat,
  LogIndex,
  Message,
  NodeId,
  ReadState,
  Role,
  Snapshot,
  SnapshotChunk,
  SnapshotMeta,
  Term,
  VoteRequest,
} from './types.js';
import { asIndex, asTerm, entryBytes, NO_NODE } from './types.js';

/** Election timeouts a forwarded read may go unanswered before it is failed (expireForwardedReads). */
export const FORWARDED_READ_TIMEOUT_ELECTIONS = 3;

/** Test-only: plant known-wrong behaviour so the simulator can prove it would catch it. */
export interface TestingBugs {
  /** Grant votes without the §5.4.1 "candidate's log is at least as up to date" check. */
  readonly voteWithoutLogCheck?: boolean;
  /** Commit an entry of a previous term once a majority stores it (Figure 8's mistake). */
  readonly commitPreviousTermByCounting?: boolean;
}

export interface RaftConfig {
  readonly id: NodeId;
  /** A follower with no word from a leader for a random duration in [electionTicks, 2*electionTicks) campaigns. */
  readonly electionTicks: number;
  readonly heartbeatTicks: number;
  /** Uniform [0,1) supplied by the host (a seeded PRNG in tests); the only source of randomness. */
  readonly rand: () => number;
  readonly preVote: boolean;
  readonly checkQuorum: boolean;
  readonly readMode: 'safe' | 'lease';
  readonly maxEntriesPerAppend: number;
  readonly maxBytesPerAppend: number;
  readonly maxInflightMsgs: number;
  readonly maxInflightBytes: number;
  /** Proposals are refused with 'overloaded' while this many bytes are appended but uncommitted. */
  readonly maxUncommittedBytes: number;
  readonly maxSnapshotChunkBytes: number;
  /** A snapshot announcing more bytes than this is refused by the receiver. */
  readonly maxSnapshotBytes: number;
  readonly maxCommittedBytesPerReady: number;
  readonly maxPendingReads: number;
  /** Heartbeat rounds without replication progress before a pipelined follower is re-probed. */
  readonly stallHeartbeats: number;
  /**
   * Opt-in (default off): the leader's appends and heartbeats go to Ready.earlyMessages, which the host may
   * send BEFORE persisting the Ready (Raft dissertation §10.2.1: the leader writes its log in parallel with
   * its followers). Safe because the leader counts itself towards a quorum only after advance(), and
   * those messages carry nothing else that depends on this Ready being durable. Off: everything is in
   * Ready.messages and earlyMessages is always empty.
   */
  readonly earlyAppends?: boolean;
  readonly testingBugs?: TestingBugs;
}

export function defaultConfig(id: NodeId, rand: () => number): RaftConfig {
  return {
    id,
    electionTicks: 10,
    heartbeatTicks: 1,
    rand,
    preVote: true,
    checkQuorum: true,
    readMode: 'safe',
    maxEntriesPerAppend: 256,
    maxBytesPerAppend: 1 << 20,
    maxInflightMsgs: 64,
    maxInflightBytes: 16 << 20,
    maxUncommittedBytes: 64 << 20,
    maxSnapshotChunkBytes: 1 << 20,
    maxSnapshotBytes: 1 << 30,
    maxCommittedBytesPerReady: 8 << 20,
    maxPendingReads: 4096,
    stallHeartbeats: 3,
  };
}

/** What a replica starts from: what its disk holds (or a bootstrap snapshot for a brand-new group). */
export interface RaftStorageState {
  readonly hardState: HardState;
  readonly snapshot: Snapshot;
  readonly entries: readonly Entry[];
  /** Index the state machine already reflects (>= snapshot index); defaults to the snapshot index. */
  readonly applied?: LogIndex;
}

export interface SoftState {
  readonly leader: NodeId;
  readonly role: Role;
}

export interface Ready {
  /** Present when term, vote or commit changed since the last Ready. */
  readonly hardState: HardState | undefined;
  /** A snapshot received from the leader: persist it, then restore the state machine from it. */
  readonly snapshot: Snapshot | undefined;
  readonly entries: readonly Entry[];
  readonly committedEntries: readonly Entry[];
  readonly messages: readonly Message[];
  /** Leader appends/heartbeats that may leave before this Ready is persisted (only with earlyAppends). */
  readonly earlyMessages: readonly Message[];
  readonly readStates: readonly ReadState[];
  /**
   * Read contexts that will never get a ReadState (the leadership they were for is over, or a forwarded
   * one went unanswered for an election timeout); answer them with a retryable error.
   */
  readonly failedReads: readonly string[];
  readonly softState: SoftState | undefined;
  /** Whether persisting this Ready needs an fdatasync (entries, snapshot, term or vote changed). */
  readonly mustSync: boolean;
}

export type ProposeError =
  | { readonly ok: false; readonly code: 'not_leader'; readonly leader: NodeId }
  | { readonly ok: false; readonly code: 'transferring' }
  | { readonly ok: false; readonly code: 'overloaded' }
  | { readonly ok: false; readonly code: 'too_large' };
export type ProposeResult =
  | { readonly ok: true; readonly index: LogIndex; readonly term: Term }
  | ProposeError;

export type ConfChange =
  | { readonly type: 'addLearner'; readonly node: NodeId }
  | { readonly type: 'promote'; readonly node: NodeId }
  | { readonly type: 'addVoter'; readonly node: NodeId }
  | { readonly type: 'remove'; readonly node: NodeId };
export type ConfChangeResult =
  | { readonly ok: true; readonly index: LogIndex; readonly term: Term }
  | ProposeError
  | {
      readonly ok: false;
      readonly code: 'not_ready' | 'config_pending' | 'invalid_change';
      readonly detail: string;
    };

export type ReadIndexResult =
  | { readonly ok: true }
  | { readonly ok: false; readonly code: 'no_leader' | 'overloaded' };
export type TransferResult =
  | { readonly ok: true }
  | { readonly ok: false; readonly code: 'not_leader' | 'not_voter'; readonly leader: NodeId };

export interface Status {
  readonly id: NodeId;
  readonly term: Term;
  readonly vote: NodeId;
  readonly role: Role;
  readonly leader: NodeId;
  readonly commit: LogIndex;
  readonly applied: LogIndex;
  readonly firstIndex: LogIndex;
  readonly lastIndex: LogIndex;
  readonly snapshotIndex: LogIndex;
  readonly config: ConfState;
  readonly transferee: NodeId;
}

interface PendingRead {
  readonly seq: number;
  readonly index: LogIndex;
  readonly ctx: string;
  readonly from: NodeId;
}

/** A ReadIndex request this replica forwarded to its leader and has no answer to yet. */
interface ForwardedRead {
  readonly to: NodeId;
  readonly sentAtTick: number;
}

/**
 * A snapshot arriving in chunks: one transfer, from one leader in one term. Chunks of another sender,
 * term or size start a new one: joined, two leaders' bytes of "the same" snapshot (same index and term,
 * not necessarily the same bytes) could make one corrupt image, or overflow the buffer it is assembled in.
 */
interface IncomingSnapshot {
  readonly meta: SnapshotMeta;
  readonly from: NodeId;
  readonly term: Term;
  readonly totalBytes: number;
  readonly parts: Uint8Array[];
  received: number;
}

const EMPTY = new Uint8Array(0);
/** Ticks of an election timeout a lease gives up to tolerate clock drift between replicas. */
const LEASE_DRIFT_MARGIN_TICKS = 2;
const MAX_REMEMBERED_ROUNDS = 1024;
/**
 * A refused snapshot is offered again after one election timeout, doubling with each refusal in a row up
 * to 2^this election timeouts: a follower whose limit is raised (restart) is caught up within that, and one
 * that keeps refusing costs one chunk per interval instead of one per round trip.
 */
const MAX_SNAPSHOT_BACKOFF_DOUBLINGS = 5;

export function bootstrapSnapshot(voters: readonly NodeId[], learners: readonly NodeId[] = []): Snapshot {
  return { meta: { index: asIndex(0), term: asTerm(0), config: { voters, learners } }, data: EMPTY };
}

export function emptyHardState(): HardState {
  return { term: asTerm(0), vote: NO_NODE, commit: asIndex(0) };
}

/** Applies a single-server change to a configuration, or explains why it is not one. */
export function applyConfChange(c: ConfState, change: ConfChange): ConfState | string {
  const isVoter = c.voters.includes(change.node);
  const isLearner = c.learners.includes(change.node);
  switch (change.type) {
    case 'addLearner':
      if (isVoter || isLearner) return `node ${change.node} is already a member`;
      return { voters: c.voters, learners: [...c.learners, change.node] };
    case 'promote':
      if (!isLearner) return `node ${change.node} is not a learner`;
      return { voters: [...c.voters, change.node], learners: c.learners.filter((n) => n !== change.node) };
    case 'addVoter':
      if (isVoter) return `node ${change.node} is already a voter`;
      return { voters: [...c.voters, change.node], learners: c.learners.filter((n) => n !== change.node) };
    case 'remove': {
      if (!isVoter && !isLearner) return `node ${change.node} is not a member`;
      const voters = c.voters.filter((n) => n !== change.node);
      if (voters.length === 0) return 'cannot remove the last voter';
      return { voters, learners: c.learners.filter((n) => n !== change.node) };
    }
    default:
      return unreachable(change, 'conf change type');
  }
}

export class Raft {
  readonly id: NodeId;
  private readonly cfg: RaftConfig;
  private readonly bugs: TestingBugs;
  private term: Term;
  private vote: NodeId;
  private lead: NodeId = NO_NODE;
  private role: Role = 'follower';
  private readonly log: RaftLog;
  private config: ConfState;
  /** Bytes of the snapshot at log.snapshotMeta(), kept to send to lagging followers. */
  private snapshotData: Uint8Array;

  private electionElapsed = 0;
  /**
   * Lease mode: a replica that just (re)started may have acknowledged a leader's heartbeat right before it
   * went down; it honours that lease by refusing votes for one election timeout after boot.
   */
  private leaseEmbargo: boolean;
  private heartbeatElapsed = 0;
  private randomizedElectionTimeout = 0;
  private votes = new Map<NodeId, boolean>();
  private progress = new Map<NodeId, Progress>();
  private leadTransferee: NodeId = NO_NODE;
  private uncommittedBytes = 0;
  private pendingBroadcast = false;

  /**
   * Heartbeat rounds: every heartbeat broadcast is a new round (also used by ReadIndex), and the tick it
   * was sent at is remembered so a lease can be measured from when followers last reset their timers.
   */
  private readSeq = 0;
  private readonly roundSentAt = new Map<number, number>();
  /** Ticks seen by this replica (its only notion of time). */
  private ticks = 0;
  private pendingReads: PendingRead[] = [];
  /** Reads that arrived before this leader committed an entry of its term; served once it has. */
  private readsAwaitingCommit: { ctx: string; from: NodeId }[] = [];
  /**
   * Reads forwarded to the leader, by ctx, in the order sent. Each ends exactly once: answered by the
   * leader it went to, or failed when that leadership is over for this replica (term change, election
   * timeout) or the answer is overdue (a dropped request or answer is never repaired by a retry).
   */
  private readonly forwardedReads = new Map<string, ForwardedRead>();
  private incoming: IncomingSnapshot | undefined;

  // Ready bookkeeping.
  private msgs: Message[] = [];
  private earlyMsgs: Message[] = [];
  private readStates: ReadState[] = [];
  private failedReads: string[] = [];
  private prevHardState: HardState;
  private prevSoftState: SoftState;
  private snapshotToPersist: Snapshot | undefined;
  /** Highest index handed to the host for applying (in a Ready not necessarily advanced yet). */
  private applying: LogIndex;
  /** Highest index the host has confirmed applied (advanced). */
  private applied: LogIndex;
  private outstanding: Ready | undefined;

  constructor(cfg: RaftConfig, storage: RaftStorageState) {
    assert(cfg.id !== NO_NODE, 'node id must be positive');
    assert(
      cfg.heartbeatTicks > 0 && cfg.electionTicks > cfg.heartbeatTicks,
      'election must outlast heartbeat',
    );
    assert(cfg.readMode === 'safe' || cfg.checkQuorum, 'lease reads require checkQuorum');
    assert(
      cfg.maxEntriesPerAppend > 0 && cfg.maxBytesPerAppend > 0 && cfg.maxSnapshotChunkBytes > 0,
      'limits',
    );
    this.id = cfg.id;
    this.cfg = cfg;
    this.bugs = cfg.testingBugs ?? {};
    const hs = storage.hardState;
    this.log = new RaftLog(storage.snapshot.meta, storage.entries, hs.commit);
    this.snapshotData = storage.snapshot.data;
    this.term = hs.term;
    this.vote = hs.vote;
    this.prevHardState = { term: hs.term, vote: hs.vote, commit: this.log.committed() };
    this.config = this.log.lastConfig().config;
    const applied = storage.applied ?? storage.snapshot.meta.index;
    assert(applied >= storage.snapshot.meta.index && applied <= this.log.committed(), 'applied out of range');
    this.applying = applied;
    this.applied = applied;
    this.prevSoftState = { leader: NO_NODE, role: 'follower' };
    this.leaseEmbargo = cfg.readMode === 'lease';
    this.resetTimers();
  }

  // ---------------------------------------------------------------- public API

  status(): Status {
    return {
      id: this.id,
      term: this.term,
      vote: this.vote,
      role: this.role,
      leader: this.lead,
      commit: this.log.committed(),
      applied: this.applied,
      firstIndex: this.log.firstIndex(),
      lastIndex: this.log.lastIndex(),
      snapshotIndex: this.log.snapshotMeta().index,
      config: this.config,
      transferee: this.leadTransferee,
    };
  }

  /** Read-only view of the log, for hosts' diagnostics and the simulator's invariant checks. */
  logEntry(index: LogIndex): Entry | undefined {
    return this.log.entry(index);
  }
  logTerm(index: LogIndex): Term | undefined {
    return this.log.term(index);
  }
  snapshotMeta(): SnapshotMeta {
    return this.log.snapshotMeta();
  }
  /** The leader's replication state for `peer` (undefined on followers). */
  peerProgress(peer: NodeId): Readonly<Progress> | undefined {
    return this.progress.get(peer);
  }

  tick(): void {
    this.ticks++;
    if (this.role === 'leader') this.tickLeader();
    else this.tickElection();
  }

  propose(data: Uint8Array): ProposeResult {
    return this.proposeEntries([data]);
  }

  /** Appends several commands as one batch (one uncommitted-bytes check, one broadcast). */
  proposeEntries(datas: readonly Uint8Array[]): ProposeResult {
    const refusal = this.refuseProposal();
    if (refusal !== undefined) return refusal;
    let bytes = 0;
    for (const d of datas) bytes += d.byteLength;
    if (bytes > this.cfg.maxBytesPerAppend) return { ok: false, code: 'too_large' };
    if (this.uncommittedBytes > 0 && this.uncommittedBytes + bytes > this.cfg.maxUncommittedBytes) {
      return { ok: false, code: 'overloaded' };
    }
    const entries: Entry[] = datas.map((data, i) => ({
      kind: 'normal',
      term: this.term,
      index: asIndex(this.log.lastIndex() + 1 + i),
      data,
    }));
    this.appendAsLeader(entries);
    const last = entries[entries.length - 1];
    return { ok: true, index: last?.index ?? this.log.lastIndex(), term: this.term };
  }

  proposeConfChange(change: ConfChange): ConfChangeResult {
    const refusal = this.refuseProposal();
    if (refusal !== undefined) return refusal;
    if (!this.committedInCurrentTerm()) {
      return { ok: false, code: 'not_ready', detail: 'leader has not yet committed an entry of its term' };
    }
    const pending = this.log.lastConfig().index;
    if (pending > this.log.committed()) {
      return {
        ok: false,
        code: 'config_pending',
        detail: `configuration at ${pending} is not committed yet`,
      };
    }
    const next = applyConfChange(this.config, change);
    if (typeof next === 'string') return { ok: false, code: 'invalid_change', detail: next };
    const index = asIndex(this.log.lastIndex() + 1);
    this.appendAsLeader([{ kind: 'config', term: this.term, index, config: next }]);
    return { ok: true, index, term: this.term };
  }

  /**
   * Asks for a linearizable read point tagged `ctx` (unique per request). The answer comes as a ReadState
   * in a later Ready (or ctx in failedReads), on this replica, whether it is the leader or a follower.
   */
  readIndex(ctx: string): ReadIndexResult {
    if (this.role === 'leader') return this.leaderReadIndex(ctx, this.id);
    if (this.lead === NO_NODE) return { ok: false, code: 'no_leader' };
    assert(!this.forwardedReads.has(ctx), `read context ${ctx} is already pending`);
    if (this.forwardedReads.size >= this.cfg.maxPendingReads) return { ok: false, code: 'overloaded' };
    this.forwardedReads.set(ctx, { to: this.lead, sentAtTick: this.ticks });
    this.send({ type: 'readIndex', from: this.id, to: this.lead, term: this.term, ctx });
    return { ok: true };
  }

  transferLeader(target: NodeId): TransferResult {
    if (this.role !== 'leader') return { ok: false, code: 'not_leader', leader: this.lead };
    if (target === this.id) return { ok: true };
    if (!this.config.voters.includes(target)) return { ok: false, code: 'not_voter', leader: this.lead };
    this.leadTransferee = target;
    this.electionElapsed = 0;
    const pr = this.progress.get(target)!;
    if (pr.match === this.log.lastIndex()) this.sendTimeoutNow(target);
    else this.sendAppend(target, true);
    return { ok: true };
  }

  /**
   * The application captured its state machine at `index` (<= applied) in `data` and made it durable.
   * Entries through `index` are dropped from memory; the host may now drop them from its log too.
   */
  compact(index: LogIndex, data: Uint8Array): SnapshotMeta {
    assert(index <= this.applied, `compacting to ${index} beyond applied ${this.applied}`);
    const term = this.log.term(index);
    assert(term !== undefined, `compacting to unknown index ${index}`);
    const meta: SnapshotMeta = { index, term, config: this.log.configAt(index) };
    this.log.compact(meta);
    this.snapshotData = data;
    return meta;
  }

  step(m: Message): void {
    assert(m.to === this.id, `message for ${m.to} delivered to ${this.id}`);
    if (m.term > this.term) {
      if (m.type === 'preVote' || m.type === 'vote') {
        const inLease =
          this.cfg.checkQuorum &&
          (this.lead !== NO_NODE || this.leaseEmbargo) &&
          this.electionElapsed < this.cfg.electionTicks;
        // A node that heard from a live leader recently ignores campaigns (unless the leader asked for
        // one via TimeoutNow): this is what stops a partitioned node's rejoin from deposing the leader,
        // and what lease reads rely on.
        if (!m.transfer && inLease) return;
      }
      if (m.type === 'preVote') {
        // Never change term for a pre-vote: it is only a question.
      } else if (m.type === 'preVoteResp' && m.granted) {
        // Our own pre-vote succeeded at term+1; the real campaign changes the term.
      } else if (m.type === 'append' || m.type === 'heartbeat' || m.type === 'snapshotChunk') {
        this.becomeFollower(m.term, m.from);
      } else {
        this.becomeFollower(m.term, NO_NODE);
      }
    } else if (m.term < this.term) {
      if (m.type === 'append' || m.type === 'heartbeat' || m.type === 'snapshotChunk') {
        // Tell a deposed leader about the newer term so it steps down (needed with CheckQuorum/PreVote,
        // where our term may be newer without the old leader ever seeing a vote request).
        this.send(this.appendResponse(m.from, false, asIndex(0)));
      } else if (m.type === 'preVote' || m.type === 'vote') {
        // Refuse with our term so a stale candidate learns it is behind at once.
        const type = m.type === 'vote' ? 'voteResp' : 'preVoteResp';
        this.send({ type, from: this.id, to: m.from, term: this.term, granted: false });
      }
      return;
    }

    switch (m.type) {
      case 'preVote':
      case 'vote':
        this.handleVoteRequest(m);
        return;
      default:
        break;
    }
    switch (this.role) {
      case 'leader':
        this.stepLeader(m);
        return;
      case 'candidate':
      case 'preCandidate':
        this.stepCandidate(m);
        return;
      case 'follower':
        this.stepFollower(m);
        return;
      default:
        unreachable(this.role, 'role');
    }
  }

  hasReady(): boolean {
    if (this.outstanding !== undefined) return false;
    if (this.role === 'leader' && this.pendingBroadcast) return true;
    if (this.msgs.length > 0 || this.earlyMsgs.length > 0) return true;
    if (this.readStates.length > 0 || this.failedReads.length > 0) return true;
    if (this.snapshotToPersist !== undefined) return true;
    if (this.log.stable() < this.log.lastIndex()) return true;
    if (this.applying < this.log.committed()) return true;
    if (!this.sameHardState(this.hardState(), this.prevHardState)) return true;
    return this.prevSoftState.leader !== this.lead || this.prevSoftState.role !== this.role;
  }

  ready(): Ready {
    assert(this.outstanding === undefined, 'ready() called again before advance()');
    if (this.role === 'leader' && this.pendingBroadcast) {
      this.pendingBroadcast = false;
      this.broadcastAppend();
    }
    const hs = this.hardState();
    const hardStateChanged = !this.sameHardState(hs, this.prevHardState);
    const entries = this.log.unstableEntries();
    const committedEntries = this.nextCommittedEntries();
    const soft: SoftState = { leader: this.lead, role: this.role };
    const softChanged = soft.leader !== this.prevSoftState.leader || soft.role !== this.prevSoftState.role;
    const rd: Ready = {
      hardState: hardStateChanged ? hs : undefined,
      snapshot: this.snapshotToPersist,
      entries,
      committedEntries,
      messages: this.msgs,
      earlyMessages: this.earlyMsgs,
      readStates: this.readStates,
      failedReads: this.failedReads,
      softState: softChanged ? soft : undefined,
      mustSync:
        entries.length > 0 ||
        this.snapshotToPersist !== undefined ||
        hs.term !== this.prevHardState.term ||
        hs.vote !== this.prevHardState.vote,
    };
    this.msgs = [];
    this.earlyMsgs = [];
    this.readStates = [];
    this.failedReads = [];
    if (hardStateChanged) this.prevHardState = hs;
    if (softChanged) this.prevSoftState = soft;
    const lastCommitted = committedEntries[committedEntries.length - 1];
    if (lastCommitted !== undefined) this.applying = lastCommitted.index;
    this.outstanding = rd;
    return rd;
  }

  /** The host has persisted, sent and applied everything in `rd`. */
  advance(rd: Ready): void {
    assert(this.outstanding === rd, 'advance() with a Ready that is not the outstanding one');
    this.outstanding = undefined;
    if (rd.snapshot !== undefined) {
      this.log.markSnapshotStable(rd.snapshot.meta);
      if (this.snapshotToPersist === rd.snapshot) this.snapshotToPersist = undefined;
      if (rd.snapshot.meta.index > this.applied) this.applied = rd.snapshot.meta.index;
    }
    const last = rd.entries[rd.entries.length - 1];
    if (last !== undefined) this.log.stableTo(last.index, last.term);
    const lastApplied = rd.committedEntries[rd.committedEntries.length - 1];
    if (lastApplied !== undefined && lastApplied.index > this.applied) this.applied = lastApplied.index;
    if (this.role === 'leader') {
      // The leader counts itself towards a quorum only for entries it has made durable.
      const self = this.progress.get(this.id);
      if (self?.maybeUpdate(this.log.stable()) && this.maybeCommit()) {
        this.pendingBroadcast = true;
      }
    }
  }

  // ---------------------------------------------------------------- roles

  private hardState(): HardState {
    return { term: this.term, vote: this.vote, commit: this.log.committed() };
  }

  private sameHardState(a: HardState, b: HardState): boolean {
    return a.term === b.term && a.vote === b.vote && a.commit === b.commit;
  }

  private promotable(): boolean {
    return this.config.voters.includes(this.id);
  }

  private resetTimers(): void {
    this.electionElapsed = 0;
    this.heartbeatElapsed = 0;
    this.randomizedElectionTimeout =
      this.cfg.electionTicks + Math.floor(this.cfg.rand() * this.cfg.electionTicks);
  }

  private reset(term: Term): void {
    assert(term >= this.term, `term went backwards: ${this.term} -> ${term}`);
    const ledTerm = this.role === 'leader' ? this.term : undefined;
    if (term !== this.term) {
      this.term = term;
      this.vote = NO_NODE;
    }
    this.lead = NO_NODE;
    this.resetTimers();
    this.votes.clear();
    this.progress.clear();
    this.leadTransferee = NO_NODE;
    this.uncommittedBytes = 0;
    this.pendingBroadcast = false;
    this.abortReads(ledTerm);
    this.failForwardedReads();
  }

  /**
   * A leader stepping down (`ledTerm`: the term it led) tells each follower whose read it held that the
   * read is over, in that term: a follower still in it fails the read now rather than when its own
   * bookkeeping gives up, and one already in a newer term ignores the stale message (it failed its
   * forwarded reads when its term changed).
   */
  private abortReads(ledTerm: Term | undefined): void {
    const held = [...this.pendingReads, ...this.readsAwaitingCommit];
    for (const r of held) {
      if (r.from === this.id) this.failedReads.push(r.ctx);
      else if (ledTerm !== undefined) this.rejectRead(r.from, r.ctx, ledTerm);
    }
    this.pendingReads = [];
    this.readsAwaitingCommit = [];
    this.readSeq = 0;
    this.roundSentAt.clear();
  }

  /** The leader the forwarded reads went to no longer answers them to us: its answers would be dropped. */
  private failForwardedReads(): void {
    for (const ctx of this.forwardedReads.keys()) this.failedReads.push(ctx);
    this.forwardedReads.clear();
  }

  /**
   * A forwarded read unanswered for three election timeouts is failed: the leader answers within a
   * heartbeat round trip, so its request or answer was dropped, which nothing resends. Without this the
   * entry would stay until the term changes, which in a stable group is never, and fill maxPendingReads.
   * Three, not one: a leader held up by a slow fsync, or a new one before its first commit, answers late
   * but answers, and a failed read is retried at the leader instead.
   */
  private expireForwardedReads(): void {
    for (const [ctx, read] of this.forwardedReads) {
      // Insertion order is sending order, so the first one still in time ends the scan.
      if (this.ticks - read.sentAtTick < FORWARDED_READ_TIMEOUT_ELECTIONS * this.cfg.electionTicks) return;
      this.forwardedReads.delete(ctx);
      this.failedReads.push(ctx);
    }
  }

  private becomeFollower(term: Term, lead: NodeId): void {
    this.reset(term);
    this.role = 'follower';
    this.lead = lead;
  }

  private becomePreCandidate(): void {
    assert(this.role !== 'leader', 'leader cannot become pre-candidate');
    // Keep term and vote: a pre-campaign changes nothing durable.
    this.votes.clear();
    this.progress.clear();
    this.lead = NO_NODE;
    // A (pre)candidate drops read answers (stepCandidate), so its forwarded reads would never end.
    this.failForwardedReads();
    this.role = 'preCandidate';
    this.resetTimers();
  }

  private becomeCandidate(): void {
    assert(this.role !== 'leader', 'leader cannot become candidate');
    this.reset(asTerm(this.term + 1));
    this.vote = this.id;
    this.role = 'candidate';
  }

  private becomeLeader(): void {
    assert(this.role === 'candidate', 'only a candidate becomes leader');
    const term = this.term;
    this.reset(term);
    assert(this.forwardedReads.size === 0, 'a new leader has no reads forwarded to another');
    this.role = 'leader';
    this.lead = this.id;
    this.syncProgress();
    const self = this.progress.get(this.id);
    if (self !== undefined) {
      self.maybeUpdate(this.log.stable());
      self.becomeReplicate();
    }
    // The no-op lets this leader commit (and so learn the commit point) in its own term, which also
    // unlocks ReadIndex and membership changes (see header).
    this.appendAsLeader([{ kind: 'normal', term, index: asIndex(this.log.lastIndex() + 1), data: EMPTY }]);
  }

  private campaign(kind: 'preVote' | 'vote', transfer: boolean): void {
    if (!this.promotable()) return;
    let voteTerm: Term;
    if (kind === 'preVote') {
      this.becomePreCandidate();
      voteTerm = asTerm(this.term + 1);
    } else {
      this.becomeCandidate();
      voteTerm = this.term;
    }
    this.votes.set(this.id, true);
    if (tally(this.config.voters, this.votes) === 'won') {
      if (kind === 'preVote') this.campaign('vote', transfer);
      else this.becomeLeader();
      return;
    }
    for (const v of this.config.voters) {
      if (v === this.id) continue;
      this.send({
        type: kind,
        from: this.id,
        to: v,
        term: voteTerm,
        lastIndex: this.log.lastIndex(),
        lastTerm: this.log.lastTerm(),
        transfer,
      });
    }
  }

  private tickElection(): void {
    this.expireForwardedReads();
    this.electionElapsed++;
    if (this.electionElapsed >= this.cfg.electionTicks) this.leaseEmbargo = false;
    if (this.promotable() && this.electionElapsed >= this.randomizedElectionTimeout) {
      this.electionElapsed = 0;
      this.campaign(this.cfg.preVote ? 'preVote' : 'vote', false);
    }
  }

  private tickLeader(): void {
    this.heartbeatElapsed++;
    this.electionElapsed++;
    if (this.electionElapsed >= this.cfg.electionTicks) {
      this.electionElapsed = 0;
      if (this.cfg.checkQuorum) {
        const active = countAtLeast(
          this.config.voters,
          (v) => v === this.id || !!this.progress.get(v)?.recentActive,
        );
        if (!active) {
          this.becomeFollower(this.term, NO_NODE);
          return;
        }
        for (const [id, pr] of this.progress) if (id !== this.id) pr.recentActive = false;
      }
      if (this.leadTransferee !== NO_NODE) this.leadTransferee = NO_NODE;
    }
    if (this.heartbeatElapsed >= this.cfg.heartbeatTicks) {
      this.heartbeatElapsed = 0;
      this.broadcastHeartbeat();
      this.recoverStalledFollowers();
    }
  }

  private handleVoteRequest(m: VoteRequest): void {
    const canVote =
      this.vote === m.from ||
      (this.vote === NO_NODE && this.lead === NO_NODE) ||
      (m.type === 'preVote' && m.term > this.term);
    const upToDate = this.bugs.voteWithoutLogCheck === true || this.log.isUpToDate(m.lastIndex, m.lastTerm);
    const respType = m.type === 'vote' ? 'voteResp' : 'preVoteResp';
    if (canVote && upToDate) {
      this.send({ type: respType, from: this.id, to: m.from, term: m.term, granted: true });
      if (m.type === 'vote') {
        this.electionElapsed = 0;
        this.vote = m.from;
      }
    } else {
      this.send({ type: respType, from: this.id, to: m.from, term: this.term, granted: false });
    }
  }

  private stepCandidate(m: Message): void {
    switch (m.type) {
      case 'append':
      case 'heartbeat':
      case 'snapshotChunk':
        this.becomeFollower(m.term, m.from);
        this.stepFollower(m);
        return;
      case 'preVoteResp':
      case 'voteResp': {
        const mine = this.role === 'preCandidate' ? 'preVoteResp' : 'voteResp';
        if (m.type !== mine) return;
        this.votes.set(m.from, m.granted);
        const outcome = tally(this.config.voters, this.votes);
        if (outcome === 'won') {
          if (this.role === 'preCandidate') this.campaign('vote', false);
          else this.becomeLeader();
        } else if (outcome === 'lost') {
          this.becomeFollower(this.term, NO_NODE);
        }
        return;
      }
      case 'readIndex':
        this.rejectRead(m.from, m.ctx);
        return;
      default:
        return;
    }
  }

  private stepFollower(m: Message): void {
    switch (m.type) {
      case 'append':
        this.electionElapsed = 0;
        this.lead = m.from;
        this.handleAppend(m);
        return;
      case 'heartbeat':
        this.electionElapsed = 0;
        this.lead = m.from;
        this.handleHeartbeat(m);
        return;
      case 'snapshotChunk':
        this.electionElapsed = 0;
        this.lead = m.from;
        this.handleSnapshotChunk(m);
        return;
      case 'timeoutNow':
        // The leader asked us to take over: campaign immediately, skipping PreVote, overriding leases.
        this.campaign('vote', true);
        return;
      case 'readIndex':
        this.rejectRead(m.from, m.ctx);
        return;
      case 'readIndexResp': {
        // Only the leader the read went to ends it, and only once: a read already failed here (overdue)
        // keeps that outcome, or its caller would hear two.
        const read = this.forwardedReads.get(m.ctx);
        if (read === undefined || read.to !== m.from) return;
        this.forwardedReads.delete(m.ctx);
        if (m.reject) this.failedReads.push(m.ctx);
        else this.readStates.push({ index: m.index, ctx: m.ctx });
        return;
      }
      default:
        return;
    }
  }

  private stepLeader(m: Message): void {
    const pr = this.progress.get(m.from);
    switch (m.type) {
      case 'appendResp':
        if (pr !== undefined) this.handleAppendResponse(m, pr);
        return;
      case 'heartbeatResp':
        if (pr === undefined) return;
        pr.recentActive = true;
        pr.probeSent = false;
        if (m.readSeq > pr.readSeqAcked) pr.readSeqAcked = m.readSeq;
        this.releaseConfirmedReads();
        if (pr.match < this.log.lastIndex()) this.sendAppend(m.from, false);
        return;
      case 'snapshotChunkResp':
        if (pr === undefined) return;
        pr.recentActive = true;
        if (pr.state !== 'snapshot' || m.snapshotIndex !== pr.pendingSnapshot) return;
        if (m.reject) {
          // Resending now would be refused again, round trip after round trip: wait (recoverStalledFollowers).
          pr.snapshotRefusals++;
          pr.refusedSnapshotBytes = this.snapshotData.byteLength;
          pr.snapshotOffset = 0;
          pr.snapshotRetryTick = this.ticks + this.snapshotBackoffTicks(pr);
          return;
        }
        pr.snapshotRefusals = 0;
        pr.progressedSinceHeartbeat = true;
        pr.snapshotOffset = m.nextOffset;
        this.sendSnapshotChunk(m.from, pr);
        return;
      case 'readIndex': {
        const r = this.leaderReadIndex(m.ctx, m.from);
        if (!r.ok) this.rejectRead(m.from, m.ctx);
        return;
      }
      default:
        return;
    }
  }

  // ---------------------------------------------------------------- replication (leader)

  private refuseProposal(): ProposeError | undefined {
    if (this.role !== 'leader') return { ok: false, code: 'not_leader', leader: this.lead };
    if (this.leadTransferee !== NO_NODE) return { ok: false, code: 'transferring' };
    return undefined;
  }

  private committedInCurrentTerm(): boolean {
    return this.log.term(this.log.committed()) === this.term;
  }

  private appendAsLeader(entries: Entry[]): void {
    for (const e of entries) this.uncommittedBytes += entryBytes(e);
    this.log.appendAfter(entries);
    this.onLogChanged();
    this.pendingBroadcast = true;
  }

  /** Membership follows the log: re-derive it after every append, truncation or snapshot restore. */
  private onLogChanged(): void {
    const next = this.log.lastConfig().config;
    if (next === this.config) return;
    this.config = next;
    if (this.role === 'leader') this.syncProgress();
  }

  private syncProgress(): void {
    const members = new Set<NodeId>([...this.config.voters, ...this.config.learners]);
    for (const id of this.progress.keys()) if (!members.has(id)) this.progress.delete(id);
    for (const id of members) {
      if (!this.progress.has(id)) {
        const pr = new Progress(
          asIndex(this.log.lastIndex() + 1),
          this.cfg.maxInflightMsgs,
          this.cfg.maxInflightBytes,
        );
        pr.recentActive = true;
        this.progress.set(id, pr);
      }
    }
  }

  private maybeCommit(): boolean {
    const candidate = quorumMatchIndex(this.config.voters, (v) => this.progress.get(v)?.match ?? asIndex(0));
    if (candidate <= this.log.committed()) return false;
    // §5.4.2: only an entry of the current term is committed by counting replicas; earlier entries are
    // committed indirectly by it (Figure 8).
    if (this.log.term(candidate) !== this.term && this.bugs.commitPreviousTermByCounting !== true)
      return false;
    const before = this.log.committed();
    this.log.commitTo(candidate);
    for (let i = before + 1; i <= candidate; i++) {
      const e = this.log.entry(asIndex(i));
      if (e !== undefined && e.term === this.term) this.uncommittedBytes -= entryBytes(e);
    }
    if (this.uncommittedBytes < 0) this.uncommittedBytes = 0;
    if (this.committedInCurrentTerm() && this.readsAwaitingCommit.length > 0) {
      const waiting = this.readsAwaitingCommit;
      this.readsAwaitingCommit = [];
      for (const r of waiting) this.leaderReadIndex(r.ctx, r.from);
    }
    if (!this.config.voters.includes(this.id) && this.log.lastConfig().index <= candidate) {
      // Our own removal is committed: stop leading (the remaining voters elect a leader among themselves).
      this.becomeFollower(this.term, NO_NODE);
    }
    return true;
  }

  private handleAppendResponse(m: AppendResponse, pr: Progress): void {
    pr.recentActive = true;
    if (m.reject) {
      let hint = m.hintIndex;
      if (m.hintTerm > 0) hint = this.log.findConflictByTerm(m.hintIndex, m.hintTerm);
      if (pr.maybeDecrTo(m.index, hint)) {
        if (pr.state === 'replicate') pr.becomeProbe();
        this.sendAppend(m.from, false);
      }
      return;
    }
    const wasPaused = pr.isPaused();
    if (!pr.maybeUpdate(m.index)) {
      if (pr.state === 'probe' && pr.match === m.index) pr.probeSent = false;
      else return;
    }
    if (pr.state === 'probe') pr.becomeReplicate();
    else if (pr.state === 'snapshot' && pr.match >= pr.pendingSnapshot) pr.becomeProbe();
    if (this.maybeCommit()) {
      if (this.role !== 'leader') return;
      // The next Ready's broadcast sends what was proposed meanwhile, with the new commit index: one
      // append per follower however many acks moved the commit, and none to a follower that lacks no
      // entry (broadcastAppend says why).
      this.pendingBroadcast = true;
    } else if (wasPaused) {
      this.sendAppend(m.from, false);
    }
    while (this.sendAppend(m.from, false)) {
      // Pipeline: keep sending until the in-flight window is full or nothing is left.
    }
    if (m.from === this.leadTransferee && pr.match === this.log.lastIndex()) this.sendTimeoutNow(m.from);
  }

  /**
   * Sends each follower what it lacks. A follower being replicated to that lacks no entry gets nothing:
   * a commit index that moved reaches it with the next entries or the next heartbeat (both carry it),
   * instead of an empty append per follower per commit that the follower would answer in a round of its
   * own. Under load the next entries follow within a round; idle, a follower learns the commit within a
   * heartbeat interval, and a read on a follower (ReadIndex) is answered only after a heartbeat round,
   * which carries it. A follower still being probed gets its (possibly empty) probe as before.
   */
  private broadcastAppend(): void {
    for (const [id, pr] of this.progress) if (id !== this.id) this.sendAppend(id, pr.state !== 'replicate');
  }

  private broadcastHeartbeat(): void {
    this.readSeq++;
    this.roundSentAt.set(this.readSeq, this.ticks);
    if (this.roundSentAt.size > MAX_REMEMBERED_ROUNDS) {
      const oldest = this.roundSentAt.keys().next().value as number;
      this.roundSentAt.delete(oldest);
    }
    for (const [id, pr] of this.progress) {
      if (id === this.id) continue;
      const hb: Heartbeat = {
        type: 'heartbeat',
        from: this.id,
        to: id,
        term: this.term,
        commit: asIndex(Math.min(pr.match, this.log.committed())),
        readSeq: this.readSeq,
      };
      this.send(hb);
    }
  }

  /** Ticks before a refused snapshot is offered again: see MAX_SNAPSHOT_BACKOFF_DOUBLINGS. */
  private snapshotBackoffTicks(pr: Progress): number {
    assert(pr.snapshotRefusals > 0, 'backing off only after a refusal');
    return this.cfg.electionTicks * 2 ** Math.min(pr.snapshotRefusals - 1, MAX_SNAPSHOT_BACKOFF_DOUBLINGS);
  }

  /** Appends dropped on the wire leave a pipelined follower waiting forever; fall back to probing. */
  private recoverStalledFollowers(): void {
    for (const [id, pr] of this.progress) {
      if (id === this.id) continue;
      if (pr.state === 'snapshot' && pr.snapshotRefusals > 0) {
        // Refused: offered again once per backoff, whether the follower answers (a refusal doubles the
        // backoff) or not (lost, or down: the same backoff again), never on the stall schedule below.
        if (this.ticks >= pr.snapshotRetryTick) {
          pr.snapshotRetryTick = this.ticks + this.snapshotBackoffTicks(pr);
          this.sendSnapshotChunk(id, pr);
        }
        continue;
      }
      if (pr.progressedSinceHeartbeat) {
        pr.progressedSinceHeartbeat = false;
        pr.stalledHeartbeats = 0;
        continue;
      }
      pr.stalledHeartbeats++;
      if (pr.stalledHeartbeats < this.cfg.stallHeartbeats) continue;
      pr.stalledHeartbeats = 0;
      if (pr.state === 'replicate' && pr.inflights.count() > 0) {
        pr.becomeProbe();
      } else if (pr.state === 'snapshot') {
        this.sendSnapshotChunk(id, pr);
      }
    }
  }

  private sendAppend(to: NodeId, sendIfEmpty: boolean): boolean {
    const pr = this.progress.get(to);
    if (pr === undefined || pr.isPaused()) return false;
    const prevIndex = asIndex(pr.next - 1);
    const prevTerm = this.log.term(prevIndex);
    const entries =
      prevTerm === undefined
        ? undefined
        : this.log.slice(
            pr.next,
            this.log.lastIndex(),
            this.cfg.maxEntriesPerAppend,
            this.cfg.maxBytesPerAppend,
          );
    if (prevTerm === undefined || entries === undefined) {
      // What the follower needs is compacted away: it gets the snapshot instead.
      pr.becomeSnapshot(this.log.snapshotMeta().index);
      this.sendSnapshotChunk(to, pr);
      return false;
    }
    if (entries.length === 0 && !sendIfEmpty) return false;
    const msg: AppendRequest = {
      type: 'append',
      from: this.id,
      to,
      term: this.term,
      prevIndex,
      prevTerm,
      entries,
      commit: this.log.committed(),
    };
    this.send(msg);
    const last = entries[entries.length - 1];
    if (pr.state === 'replicate' && last !== undefined) {
      let bytes = 0;
      for (const e of entries) bytes += entryBytes(e);
      pr.next = asIndex(last.index + 1);
      pr.inflights.add(last.index, bytes);
    } else if (pr.state === 'probe') {
      pr.probeSent = true;
    }
    return true;
  }

  private sendSnapshotChunk(to: NodeId, pr: Progress): void {
    const meta = this.log.snapshotMeta();
    // Only the latest snapshot's bytes are kept; if we compacted since this transfer began, start over.
    if (pr.state !== 'snapshot' || pr.pendingSnapshot !== meta.index) pr.becomeSnapshot(meta.index);
    const total = this.snapshotData.byteLength;
    const offset = Math.min(pr.snapshotOffset, total);
    const data = this.snapshotData.subarray(offset, Math.min(total, offset + this.cfg.maxSnapshotChunkBytes));
    const chunk: SnapshotChunk = {
      type: 'snapshotChunk',
      from: this.id,
      to,
      term: this.term,
      meta,
      totalBytes: total,
      offset,
      data,
    };
    this.send(chunk);
  }

  private sendTimeoutNow(to: NodeId): void {
    this.send({ type: 'timeoutNow', from: this.id, to, term: this.term });
  }

  // ---------------------------------------------------------------- reads

  private leaderReadIndex(ctx: string, from: NodeId): ReadIndexResult {
    if (!this.committedInCurrentTerm()) {
      // Our commit index may lag the true one until our no-op commits; wait for it.
      if (this.readsAwaitingCommit.length >= this.cfg.maxPendingReads)
        return { ok: false, code: 'overloaded' };
      this.readsAwaitingCommit.push({ ctx, from });
      return { ok: true };
    }
    const index = this.log.committed();
    const soleVoter = this.config.voters.length === 1 && this.config.voters[0] === this.id;
    if (soleVoter || (this.cfg.readMode === 'lease' && this.leaseValid())) {
      this.releaseRead({ seq: 0, index, ctx, from });
      return { ok: true };
    }
    if (this.pendingReads.length >= this.cfg.maxPendingReads) return { ok: false, code: 'overloaded' };
    // The round broadcast now, after the read arrived, is the one whose quorum of answers confirms it.
    this.broadcastHeartbeat();
    this.pendingReads.push({ seq: this.readSeq, index, ctx, from });
    return { ok: true };
  }

  /**
   * Lease: a majority (counting us) answered a heartbeat round sent at tick T, so each of them reset its
   * election timer at or after T and will not vote for anyone else before T + electionTicks of its own
   * ticks. If ticks run at the same rate everywhere (within LEASE_DRIFT_MARGIN_TICKS over an election
   * timeout), no other leader can exist before then, so our commit index is current until that point.
   */
  private leaseValid(): boolean {
    // A transfer lets the transferee campaign through everyone's lease: no lease while one is pending.
    if (this.leadTransferee !== NO_NODE) return false;
    const sent = this.config.voters
      .map((v) => {
        if (v === this.id) return this.ticks;
        const acked = this.progress.get(v)?.readSeqAcked ?? 0;
        return this.roundSentAt.get(acked) ?? Number.NEGATIVE_INFINITY;
      })
      .sort((a, b) => b - a);
    const leaseStart = sent[Math.floor(this.config.voters.length / 2)] ?? Number.NEGATIVE_INFINITY;
    return this.ticks - leaseStart < this.cfg.electionTicks - LEASE_DRIFT_MARGIN_TICKS;
  }

  /** A read is safe once a majority answered a heartbeat sent after it arrived, in this term. */
  private releaseConfirmedReads(): void {
    while (this.pendingReads.length > 0) {
      const head = this.pendingReads[0]!;
      const confirmed = countAtLeast(
        this.config.voters,
        (v) => v === this.id || (this.progress.get(v)?.readSeqAcked ?? 0) >= head.seq,
      );
      if (!confirmed) return;
      this.pendingReads.shift();
      this.releaseRead(head);
    }
  }

  private releaseRead(r: PendingRead): void {
    if (r.from === this.id) {
      this.readStates.push({ index: r.index, ctx: r.ctx });
    } else {
      this.send({
        type: 'readIndexResp',
        from: this.id,
        to: r.from,
        term: this.term,
        ctx: r.ctx,
        index: r.index,
        reject: false,
      });
    }
  }

  // ---------------------------------------------------------------- follower handlers

  private appendResponse(
    to: NodeId,
    reject: boolean,
    index: LogIndex,
    hintIndex = asIndex(0),
    hintTerm = asTerm(0),
  ): AppendResponse {
    return { type: 'appendResp', from: this.id, to, term: this.term, reject, index, hintIndex, hintTerm };
  }

  private handleAppend(m: AppendRequest): void {
    const committed = this.log.committed();
    if (m.prevIndex < committed) {
      this.send(this.appendResponse(m.from, false, committed));
      return;
    }
    if (this.log.matchTerm(m.prevIndex, m.prevTerm)) {
      const lastNew = asIndex(m.prevIndex + m.entries.length);
      // Skip entries we already hold; truncate only at a real conflict (an older, duplicated append must
      // never cut off entries that a later append added).
      let firstNew = m.entries.length;
      for (let i = 0; i < m.entries.length; i++) {
        const e = m.entries[i]!;
        if (this.log.term(e.index) !== e.term) {
          firstNew = i;
          break;
        }
      }
      if (firstNew < m.entries.length) {
        this.log.appendAfter(m.entries.slice(firstNew));
        this.onLogChanged();
      }
      this.log.commitTo(asIndex(Math.min(m.commit, lastNew)));
      this.send(this.appendResponse(m.from, false, lastNew));
      return;
    }
    // Reject with a hint: the largest index <= prevIndex whose term is <= prevTerm, so the leader can skip
    // over a whole conflicting term instead of one entry per round trip.
    const hintIndex = this.log.findConflictByTerm(
      asIndex(Math.min(m.prevIndex, this.log.lastIndex())),
      m.prevTerm,
    );
    const hintTerm = this.log.term(hintIndex) ?? asTerm(0);
    this.send(this.appendResponse(m.from, true, m.prevIndex, hintIndex, hintTerm));
  }

  private handleHeartbeat(m: Heartbeat): void {
    // The leader sends min(our match, its commit), so this never exceeds what we hold.
    if (m.commit > this.log.committed() && m.commit <= this.log.lastIndex()) this.log.commitTo(m.commit);
    this.send({ type: 'heartbeatResp', from: this.id, to: m.from, term: this.term, readSeq: m.readSeq });
  }

  private handleSnapshotChunk(m: SnapshotChunk): void {
    const chunkResp = (nextOffset: number, reject = false) =>
      this.send({
        type: 'snapshotChunkResp',
        from: this.id,
        to: m.from,
        term: this.term,
        snapshotIndex: m.meta.index,
        nextOffset,
        reject,
      });
    if (m.meta.index <= this.log.committed()) {
      this.incoming = undefined;
      this.send(this.appendResponse(m.from, false, this.log.committed()));
      return;
    }
    if (m.totalBytes > this.cfg.maxSnapshotBytes || m.offset + m.data.byteLength > m.totalBytes) {
      // Not ours to accept: say so, and the leader offers it again only after a backoff (and reports
      // the refusal); an operator must raise the limit or shrink the state.
      this.incoming = undefined;
      chunkResp(0, true);
      return;
    }
    const inc = this.incoming;
    const sameTransfer =
      inc !== undefined &&
      inc.meta.index === m.meta.index &&
      inc.meta.term === m.meta.term &&
      inc.from === m.from &&
      inc.term === m.term &&
      inc.totalBytes === m.totalBytes;
    if (!sameTransfer) {
      this.incoming = undefined;
      if (m.offset !== 0) {
        chunkResp(0);
        return;
      }
      this.incoming = {
        meta: m.meta,
        from: m.from,
        term: m.term,
        totalBytes: m.totalBytes,
        parts: [],
        received: 0,
      };
    }
    const cur = this.incoming!;
    assert(
      m.offset !== cur.received || cur.received + m.data.byteLength <= cur.totalBytes,
      'a snapshot chunk fits its transfer (checked against its total above)',
    );
    if (m.offset !== cur.received) {
      chunkResp(cur.received);
      return;
    }
    cur.parts.push(m.data.slice());
    cur.received += m.data.byteLength;
    if (cur.received < cur.totalBytes) {
      chunkResp(cur.received);
      return;
    }
    this.incoming = undefined;
    const data = new Uint8Array(cur.totalBytes);
    let at = 0;
    for (const p of cur.parts) {
      data.set(p, at);
      at += p.byteLength;
    }
    if (this.log.matchTerm(cur.meta.index, cur.meta.term)) {
      // We already hold the snapshot's last entry: just learn that it is committed.
      this.log.commitTo(cur.meta.index);
      this.send(this.appendResponse(m.from, false, this.log.committed()));
      return;
    }
    this.log.restore(cur.meta);
    this.snapshotData = data;
    this.snapshotToPersist = { meta: cur.meta, data };
    this.applying = cur.meta.index;
    this.onLogChanged();
    this.send(this.appendResponse(m.from, false, cur.meta.index));
  }

  private rejectRead(to: NodeId, ctx: string, term: Term = this.term): void {
    this.send({
      type: 'readIndexResp',
      from: this.id,
      to,
      term,
      ctx,
      index: asIndex(0),
      reject: true,
    });
  }

  private send(m: Message): void {
    if (this.cfg.earlyAppends === true && (m.type === 'append' || m.type === 'heartbeat'))
      this.earlyMsgs.push(m);
    else this.msgs.push(m);
  }

  private nextCommittedEntries(): Entry[] {
    const out: Entry[] = [];
    let bytes = 0;
    const hi = this.log.committed();
    for (let i = this.applying + 1; i <= hi; i++) {
      const e = this.log.entry(asIndex(i));
      assert(e !== undefined, `committed entry ${i} missing from the log`);
      const size = entryBytes(e);
      if (out.length > 0 && bytes + size > this.cfg.maxCommittedBytesPerReady) break;
      out.push(e);
      bytes += size;
    }
    return out;
  }
}
