/**
 * consensus/types — the vocabulary of the Raft core: branded scalars (Term, LogIndex, NodeId), log entries,
 * hard state, snapshots, cluster configuration and the discriminated union of every message a replica can
 * send. Pure data; no behaviour beyond constructors and comparisons.
 */

export type Term = number & { readonly __brand: 'Term' };
export type LogIndex = number & { readonly __brand: 'LogIndex' };
export type NodeId = number & { readonly __brand: 'NodeId' };

export const asTerm = (n: number): Term => n as Term;
export const asIndex = (n: number): LogIndex => n as LogIndex;
export const asNodeId = (n: number): NodeId => n as NodeId;
/** "No node": used for an empty vote and an unknown leader. Real ids are positive integers. */
export const NO_NODE = 0 as NodeId;

/**
 * The voting membership and the learners (non-voting members that receive the log). Each configuration
 * entry in the log carries the whole new configuration, not a delta, so rolling back a truncated suffix of
 * the log is just "use the latest surviving configuration".
 */
export interface ConfState {
  readonly voters: readonly NodeId[];
  readonly learners: readonly NodeId[];
}

export type Entry =
  /** An application command; empty data is the leader's no-op and is not given to the state machine. */
  | { readonly kind: 'normal'; readonly term: Term; readonly index: LogIndex; readonly data: Uint8Array }
  /** A membership change: the full configuration in force from the moment this entry is in a log. */
  | { readonly kind: 'config'; readonly term: Term; readonly index: LogIndex; readonly config: ConfState };

/** What must be durable before any message that depends on it is sent. */
export interface HardState {
  readonly term: Term;
  readonly vote: NodeId;
  readonly commit: LogIndex;
}

export interface SnapshotMeta {
  /** Last log index the snapshot covers (its state includes every entry up to and including it). */
  readonly index: LogIndex;
  readonly term: Term;
  /** Configuration in force at `index`. */
  readonly config: ConfState;
}

export interface Snapshot {
  readonly meta: SnapshotMeta;
  readonly data: Uint8Array;
}

/** A linearizable read point: once the state machine has applied `index`, the read tagged `ctx` may run. */
export interface ReadState {
  readonly index: LogIndex;
  readonly ctx: string;
}

export type Role = 'follower' | 'preCandidate' | 'candidate' | 'leader';

interface Envelope {
  readonly from: NodeId;
  readonly to: NodeId;
  readonly term: Term;
}

/** (Pre)vote request. `transfer` marks a campaign started by TimeoutNow, which overrides leader leases. */
export interface VoteRequest extends Envelope {
  readonly type: 'preVote' | 'vote';
  readonly lastIndex: LogIndex;
  readonly lastTerm: Term;
  readonly transfer: boolean;
}

export interface VoteResponse extends Envelope {
  readonly type: 'preVoteResp' | 'voteResp';
  readonly granted: boolean;
}

export interface AppendRequest extends Envelope {
  readonly type: 'append';
  readonly prevIndex: LogIndex;
  readonly prevTerm: Term;
  readonly entries: readonly Entry[];
  readonly commit: LogIndex;
}

/**
 * Reply to append (and to a completed snapshot install). On success `index` is the last index known to
 * match the leader. On rejection `index` is the rejected prevIndex and (hintIndex, hintTerm) let the leader
 * skip a whole term of conflicting entries at once.
 */
export interface AppendResponse extends Envelope {
  readonly type: 'appendResp';
  readonly reject: boolean;
  readonly index: LogIndex;
  readonly hintIndex: LogIndex;
  readonly hintTerm: Term;
}

/** `readSeq` > 0 asks the follower to confirm this leader for pending ReadIndex requests up to that seq. */
export interface Heartbeat extends Envelope {
  readonly type: 'heartbeat';
  readonly commit: LogIndex;
  readonly readSeq: number;
}

export interface HeartbeatResponse extends Envelope {
  readonly type: 'heartbeatResp';
  readonly readSeq: number;
}

/** One bounded piece of a snapshot; `totalBytes` lets the receiver bound what it buffers. */
export interface SnapshotChunk extends Envelope {
  readonly type: 'snapshotChunk';
  readonly meta: SnapshotMeta;
  readonly totalBytes: number;
  readonly offset: number;
  readonly data: Uint8Array;
}

/**
 * Acknowledges snapshot bytes: the receiver wants `nextOffset` next (0 after a mismatch or restart).
 * `reject`: the receiver will not take this snapshot at all (larger than its maxSnapshotBytes), so
 * sending it again at once would only repeat the refusal; the leader backs off instead.
 */
export interface SnapshotChunkResponse extends Envelope {
  readonly type: 'snapshotChunkResp';
  readonly snapshotIndex: LogIndex;
  readonly nextOffset: number;
  readonly reject: boolean;
}

export interface TimeoutNow extends Envelope {
  readonly type: 'timeoutNow';
}

/** A follower forwarding a ReadIndex request to its leader. */
export interface ReadIndexRequest extends Envelope {
  readonly type: 'readIndex';
  readonly ctx: string;
}

export interface ReadIndexResponse extends Envelope {
  readonly type: 'readIndexResp';
  readonly ctx: string;
  readonly index: LogIndex;
  readonly reject: boolean;
}

export type Message =
  | VoteRequest
  | VoteResponse
  | AppendRequest
  | AppendResponse
  | Heartbeat
  | HeartbeatResponse
  | SnapshotChunk
  | SnapshotChunkResponse
  | TimeoutNow
  | ReadIndexRequest
  | ReadIndexResponse;

export type MessageType = Message['type'];

/** Bytes an entry is charged for flow control and limits: payload plus a fixed header estimate. */
export const ENTRY_OVERHEAD_BYTES = 24;
export function entryBytes(e: Entry): number {
  if (e.kind === 'normal') return e.data.byteLength + ENTRY_OVERHEAD_BYTES;
  return ENTRY_OVERHEAD_BYTES + 8 * (e.config.voters.length + e.config.learners.length);
}

export function sameConfig(a: ConfState, b: ConfState): boolean {
  const eq = (x: readonly NodeId[], y: readonly NodeId[]) =>
    x.length === y.length &&
    [...x].sort((p, q) => p - q).every((v, i) => v === [...y].sort((p, q) => p - q)[i]);
  return eq(a.voters, b.voters) && eq(a.learners, b.learners);
}
