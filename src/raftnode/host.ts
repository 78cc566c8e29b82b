/**
 * raftnode/host — one process's replicas of many Raft groups (multi-Raft), driven by one event loop:
 *
 *   ticks, peer messages, proposals ──▶ cores ──▶ one Ready round for every group that has one:
 *     stage each group's snapshot/entries/hard state ─▶ ONE storage sync for all groups (group commit)
 *     ─▶ send messages, batched per peer ─▶ apply committed entries, answer proposals and reads ─▶ advance
 *   now and then: snapshot a group's state machine and compact its log (streamed snapshots are drained a
 *   slice at a time, and that group's committed entries wait for them to be applied)
 *
 * Proposals that arrive while a sync is in flight wait for the next round, so under load one fdatasync
 * covers many commands of many groups. The core is pure (src/consensus); this file owns time (a tick
 * timer), randomness (a seeded PRNG per group), the transport (RaftTransport over the wire layer) and the
 * state machines' application.
 */
import { randomBytes, randomInt } from 'node:crypto';
import { assert } from '../common/assert.js';
import type { Logger } from '../common/log.js';
import {
  asIndex,
  bootstrapSnapshot,
  type ConfChange,
  defaultConfig,
  type Entry,
  emptyHardState,
  type LogIndex,
  type Message,
  NO_NODE,
  type NodeId,
  Prng,
  Raft,
  type RaftConfig,
  type Ready,
  type Term,
} from '../consensus/index.js';
import { DogfsError } from '../wire/errors.js';
import { type RaftBatch, RaftTransportService } from '../wire/gen/types.js';
import { RpcChannel, type RpcServer } from '../wire/rpc.js';
import { encodeBatchFrame, encodeWireMessage, messageFromWire, splitBatches } from './messages.js';
import type { HostStorage } from './storage.js';
import { FramePeer, FrameServer, MAX_FRAME_BYTES } from './transport.js';

/** A deterministic state machine: every replica applies the same commands in the same order. */
export interface StateMachine {
  /**
   * Applies one committed command. Its result is handed, in memory, to the proposer on this node (the
   * proposer is always local), so it is never serialised.
   */
  apply(index: LogIndex, command: Uint8Array): unknown;
  snapshot(): Uint8Array;
  /**
   * Optional: the same snapshot, of the state at this call, as a stream of chunks that stays valid while
   * later commands are applied (copy-on-write, or whatever the machine chooses). The host drains it a
   * slice at a time between other work (heartbeats, replication, log writes, applying), so a large state
   * costs neither a long stall of the event loop nor a pause in answering commands. Without it, a
   * snapshot is taken in one call, which at a million files would hold every other duty of the process
   * for seconds: long enough for the followers to elect another leader.
   */
  streamSnapshot?(): SnapshotStream;
  restore(data: Uint8Array): void;
}

/** A snapshot being read out of a state machine (StateMachine.streamSnapshot). */
export interface SnapshotStream {
  next(): IteratorResult<Uint8Array, undefined>;
  /** Gives the stream up before its end: the machine drops what it kept for it. */
  close(): void;
}

export interface PeerInfo {
  readonly nodeId: NodeId;
  /** Address of the peer's gRPC server (RaftTransport and the client-facing services). */
  readonly addr: string;
}

export interface RaftHostOptions {
  readonly nodeId: NodeId;
  /** Every voter, this node included. */
  readonly peers: readonly PeerInfo[];
  readonly storage: HostStorage;
  readonly log: Logger;
  /** Milliseconds per core tick. Election timeout is electionTicks..2*electionTicks ticks. */
  readonly tickMs?: number;
  readonly configure?: (config: RaftConfig) => RaftConfig;
  /** Applied entries beyond the last snapshot after which a group snapshots its state machine. */
  readonly snapshotEvery?: number;
  /**
   * This node joins groups that already run elsewhere: a group without stored state starts with no
   * members (it never campaigns) and is brought up to date by the leader's snapshot once the leader adds
   * it (changeMembership addLearner, then promote). Without it, a new group is bootstrapped with every
   * peer as voter.
   */
  readonly joining?: boolean;
  /**
   * Spread leadership of the hosted groups over the voters: a node leading at least two groups more
   * than some voter hands one to it (TimeoutNow), at most one transfer per balance interval, so a
   * process hosting many groups does not do every group's leader work alone. Off by default.
   */
  readonly balanceLeaders?: boolean;
  /**
   * Gather leadership of every hosted group on this voter while it is up and replicating: a host leading
   * a group hands it to the preferred node (TimeoutNow), one transfer per balance interval. The opposite
   * of balanceLeaders, for machines where the processes share too few cores: there, every group's rounds
   * then fall on one leader's rounds (one write and one frame per peer for all groups), where spread
   * leaders make each process write and send for each group at its own time (bench:raft measures both).
   * Takes precedence over balanceLeaders. Every node must be given the same value: two nodes preferring
   * different leaders would hand groups back and forth every interval.
   */
  readonly preferredLeader?: NodeId;
}

export interface GroupStatus {
  readonly group: number;
  readonly role: string;
  readonly leader: NodeId;
  readonly leaderAddr: string;
  readonly term: Term;
  readonly commit: LogIndex;
  readonly applied: LogIndex;
  readonly members: readonly NodeId[];
}

interface PendingProposal {
  readonly term: Term;
  readonly resolve: (result: unknown) => void;
  readonly reject: (error: DogfsError) => void;
  /** ms since the epoch; the tick's sweep (expireProposals) rejects the proposal once it has passed. */
  readonly deadline: number;
}

interface PendingRead {
  index: LogIndex | undefined;
  readonly resolve: () => void;
  readonly reject: (error: DogfsError) => void;
  readonly timer: NodeJS.Timeout;
}

interface Group {
  readonly id: number;
  readonly raft: Raft;
  readonly machine: StateMachine;
  applied: LogIndex;
  readonly proposals: Map<LogIndex, PendingProposal>;
  readonly reads: Map<string, PendingRead>;
  /** When this replica last knew a leader (ms), for telling "election in progress" from "no quorum". */
  lastLeaderSeenMs: number;
  /** Command bytes applied since the last snapshot, and that snapshot's size (maybeSnapshot's rule). */
  appliedBytesSinceSnapshot: number;
  lastSnapshotBytes: number;
  /** A snapshot being drained from the state machine (streamSnapshot), if one is. */
  snapshotting: SnapshotInProgress | undefined;
  /** Whether a snapshot taken here is still being written to storage (in the background). */
  snapshotWriting: boolean;
  /** When this node, leading, last reported each follower's refusal of its snapshot (ms). */
  readonly refusalsReportedMs: Map<NodeId, number>;
}

interface SnapshotInProgress {
  /** The last entry applied when the stream was taken: what the snapshot covers. */
  readonly index: LogIndex;
  /** appliedBytesSinceSnapshot then: the bytes the snapshot covers (entries applied since stay counted). */
  readonly coveredBytes: number;
  readonly stream: SnapshotStream;
  readonly parts: Uint8Array[];
  readonly startedMs: number;
}

/** A log write at least this long is logged: the process did nothing else meanwhile. */
const SLOW_SYNC_MS = 200;
const SLOW_SYNC_LOG_INTERVAL_MS = 10_000;
/** A follower that keeps refusing the snapshot is reported at most this often, per group and follower. */
const SNAPSHOT_REFUSAL_LOG_INTERVAL_MS = 30_000;
const MAX_MESSAGES_PER_BATCH = 4096;
/**
 * Bytes of messages one batch frame carries at most. Batches are cut by bytes as well as by count: the
 * transport drops a frame over MAX_FRAME_BYTES whole (with every heartbeat and other group's message in
 * it), and one round's appends to a follower catching up can pass it (the in-flight window is counted in
 * entries' bytes, up to 16 MiB, before the frame's); dropped, they came back only after re-probes, ~1 MiB
 * per 400 ms.
 */
const MAX_BATCH_BYTES = MAX_FRAME_BYTES - 64 * 1024;
/**
 * A group snapshots once it has applied snapshotEvery entries and, of command bytes, at least this fraction
 * of its last snapshot's size: serialising the state then costs at most this many bytes per byte of
 * commands, however large the state grows (with a fixed count alone, a namespace of a million files would
 * spend more time snapshotting than applying), while the log and the entries held in memory stay within
 * this fraction of the state (so a restart replays at most half a state's worth of commands after
 * loading the snapshot). It was 8: at ~12,000 creates/s each replica then re-serialised a 20-37 MB
 * namespace every ~3 s, 0.6-1.8 s per capture, with the buffer churn showing as major GCs; at 2,
 * bench:meta with 300,000 files did 15,974-16,386 creates/s against 11,515-11,747 and p99 11-18 ms
 * against 37-40 (two interleaved pairs, 2026-11-27).
 */
const SNAPSHOT_GROWTH_DIVISOR = 2;
/**
 * How long one slice of a streamed snapshot may hold the event loop. Commands go on meanwhile, and each
 * turn of the loop a command's round trip crosses may wait up to one slice: short slices keep that small.
 */
const SNAPSHOT_SLICE_MS = 2;
/** Ticks between leader-balance checks (with the default 50 ms tick, 2 s): transfers never thrash. */
const BALANCE_EVERY_TICKS = 40;

export class RaftHost {
  readonly nodeId: NodeId;
  private readonly options: RaftHostOptions;
  private readonly groups = new Map<number, Group>();
  private readonly channels = new Map<NodeId, RpcChannel>();
  private readonly peers = new Map<NodeId, FramePeer>();
  private frames: FrameServer | undefined;
  private readonly addrOf = new Map<NodeId, string>();
  private readonly log: Logger;
  /** Slow log writes since the last warning, and when that was. */
  private slowSyncs = 0;
  private slowSyncLoggedMs = 0;
  private readonly tickMs: number;
  private ticker: NodeJS.Timeout | undefined;
  private roundScheduled = false;
  private roundRunning = false;
  private roundAgain = false;
  private readSeq = 0;
  /**
   * In every read's id: a restarted process numbers its reads from 1 again, and a leader's late answer to
   * the previous run's read k (queued while the connection came back) would be taken for this run's read
   * k, in the same term, at an index older than this read began.
   */
  private readonly readNonce = randomBytes(4).toString('hex');
  private closed = false;
  private maxElectionTicks = 0;
  private ticksSinceBalance = 0;
  private balancing: boolean;
  /** When a message from each peer last arrived (ms): the balancer transfers only to peers heard lately. */
  private readonly lastHeardFrom = new Map<NodeId, number>();
  /** Counters for dashboards and benchmarks; monotonically increasing. */
  readonly counters = {
    rounds: 0,
    syncs: 0,
    syncMs: 0,
    roundMs: 0,
    proposals: 0,
    applied: 0,
    messagesSent: 0,
    batchesSent: 0,
    batchesDropped: 0,
    connects: 0,
    messagesReceived: 0,
  };

  constructor(options: RaftHostOptions) {
    assert(
      options.peers.some((p) => p.nodeId === options.nodeId),
      'this node is one of the peers',
    );
    this.options = options;
    this.nodeId = options.nodeId;
    this.log = options.log;
    this.tickMs = options.tickMs ?? 50;
    this.balancing = options.balanceLeaders ?? false;
    for (const peer of options.peers) this.addrOf.set(peer.nodeId, peer.addr);
  }

  /** Hosts a replica of `groupId`, restoring it from storage or bootstrapping it with every peer as voter. */
  addGroup(groupId: number, machine: StateMachine): void {
    assert(!this.groups.has(groupId), `group ${groupId} hosted twice`);
    const storage = this.options.storage.group(groupId);
    let state = storage.load();
    if (state === undefined) {
      const snapshot = bootstrapSnapshot(this.options.joining ? [] : this.options.peers.map((p) => p.nodeId));
      storage.saveSnapshot(snapshot);
      storage.setHardState(emptyHardState());
      state = { hardState: emptyHardState(), snapshot, entries: [] };
    }
    if (state.snapshot.data.byteLength > 0) machine.restore(state.snapshot.data);
    const prng = new Prng(randomInt(0, 2 ** 31) ^ (groupId * 7919));
    let config: RaftConfig = { ...defaultConfig(this.nodeId, () => prng.next()), earlyAppends: true };
    if (this.options.configure) config = this.options.configure(config);
    this.maxElectionTicks = Math.max(this.maxElectionTicks, config.electionTicks);
    const raft = new Raft(config, state);
    this.groups.set(groupId, {
      id: groupId,
      raft,
      machine,
      applied: state.snapshot.meta.index,
      proposals: new Map(),
      reads: new Map(),
      lastLeaderSeenMs: Date.now(),
      appliedBytesSinceSnapshot: 0,
      lastSnapshotBytes: state.snapshot.data.byteLength,
      snapshotting: undefined,
      snapshotWriting: false,
      refusalsReportedMs: new Map(),
    });
    this.scheduleRound();
  }

  /**
   * Serves RaftTransport on `server` (Send: batches over gRPC; Endpoint: the port of the framed transport,
   * which listens on the host of this node's peer address) and starts ticking.
   */
  start(server: RpcServer): void {
    const own = this.addrOf.get(this.nodeId)!;
    const frames = new FrameServer(
      own.slice(0, own.lastIndexOf(':')),
      (batch) => this.receive(batch),
      this.log,
    );
    this.frames = frames;
    server.addService(RaftTransportService, {
      Send: (batch) => this.receive(batch),
      Endpoint: async () => ({ port: await frames.port }),
    });
    this.ticker = setInterval(() => this.tick(), this.tickMs);
  }

  private tick(): void {
    for (const group of this.groups.values()) {
      group.raft.tick();
      this.reportSnapshotRefusals(group);
    }
    this.expireProposals();
    const preferred = this.options.preferredLeader;
    if ((this.balancing || preferred !== undefined) && ++this.ticksSinceBalance >= BALANCE_EVERY_TICKS) {
      this.ticksSinceBalance = 0;
      if (preferred !== undefined) this.gatherLeaders(preferred);
      else this.balanceLeaders();
    }
    this.scheduleRound();
  }

  /**
   * One step towards an even spread of leaders: counts who leads each hosted group (as this node knows
   * it) and, if this node leads at least two more groups than the voter leading the fewest, transfers its
   * highest-numbered group to that voter. Every node runs the same rule, so the spread converges; a group
   * without a known leader (an election) postpones balancing to the next interval.
   */
  private balanceLeaders(): void {
    const led = new Map<NodeId, number>();
    const mine: Group[] = [];
    for (const group of this.groups.values()) {
      const s = group.raft.status();
      if (s.leader === NO_NODE || s.transferee !== NO_NODE) return;
      for (const v of s.config.voters) if (!led.has(v)) led.set(v, 0);
      led.set(s.leader, (led.get(s.leader) ?? 0) + 1);
      if (s.leader === this.nodeId) mine.push(group);
    }
    if (mine.length === 0) return;
    const group = mine.reduce((a, b) => (b.id > a.id ? b : a));
    const voters = group.raft.status().config.voters;
    let target: NodeId | undefined;
    for (const v of voters) {
      if (v === this.nodeId || !this.transferable(group, v)) continue;
      const count = led.get(v) ?? 0;
      if (target === undefined || count < (led.get(target) ?? 0) || (count === led.get(target) && v < target))
        target = v;
    }
    if (target === undefined || mine.length - (led.get(target) ?? 0) < 2) return;
    this.log.info('raft leader balance', { group: group.id, to: target, leading: mine.length });
    group.raft.transferLeader(target);
  }

  /**
   * Rejects the proposals whose deadline has passed. One sweep per tick rather than a timer per proposal
   * (a timer set and cleared per command costs more, at thousands of commands a second); a deadline is thus
   * noticed up to one tick late, while the RPC layer answers the caller at its deadline on its own.
   */
  private expireProposals(): void {
    const now = Date.now();
    for (const group of this.groups.values()) {
      for (const [index, pending] of group.proposals) {
        if (pending.deadline > now) continue;
        group.proposals.delete(index);
        pending.reject(
          new DogfsError('DEADLINE_EXCEEDED', `group ${group.id}: command not committed before the deadline`),
        );
      }
    }
  }

  /** One step towards `preferred` leading every group: this node hands it one group it leads, if any. */
  private gatherLeaders(preferred: NodeId): void {
    if (preferred === this.nodeId) return;
    for (const group of this.groups.values()) {
      const s = group.raft.status();
      if (s.role !== 'leader' || s.transferee !== NO_NODE || !s.config.voters.includes(preferred)) continue;
      if (!this.transferable(group, preferred)) return;
      this.log.info('raft leader to the preferred node', { group: group.id, to: preferred });
      group.raft.transferLeader(preferred);
      return;
    }
  }

  /**
   * A follower refusing the snapshot it needs (larger than its maxSnapshotBytes) never catches up, and
   * the core only backs off: say so, throttled, since nothing else would.
   */
  private reportSnapshotRefusals(group: Group): void {
    const s = group.raft.status();
    if (s.role !== 'leader') {
      group.refusalsReportedMs.clear();
      return;
    }
    const now = Date.now();
    for (const peer of [...s.config.voters, ...s.config.learners]) {
      const pr = group.raft.peerProgress(peer);
      if (pr === undefined || pr.snapshotRefusals === 0) continue;
      const last = group.refusalsReportedMs.get(peer);
      if (last !== undefined && now - last < SNAPSHOT_REFUSAL_LOG_INTERVAL_MS) continue;
      group.refusalsReportedMs.set(peer, now);
      this.log.warn('raft follower refuses the snapshot it needs (larger than its maxSnapshotBytes)', {
        group: group.id,
        follower: peer,
        snapshotBytes: pr.refusedSnapshotBytes,
        refusalsInARow: pr.snapshotRefusals,
      });
    }
  }

  /**
   * A transfer target must be up and replicating: a transfer to a dead node would stall the group's
   * proposals for an election timeout, every interval. Heard from within an election timeout (the core's
   * own recentActive flag is reset on a tick schedule that this check, also tick-driven, can stay in
   * phase with).
   */
  private transferable(group: Group, to: NodeId): boolean {
    const pr = group.raft.peerProgress(to);
    const heard = this.lastHeardFrom.get(to);
    const recentMs = this.tickMs * this.maxElectionTicks;
    return (
      pr !== undefined && pr.state === 'replicate' && heard !== undefined && Date.now() - heard <= recentMs
    );
  }

  private receive(batch: RaftBatch): Record<string, never> {
    if (this.closed) throw new DogfsError('UNAVAILABLE', 'raft host is shutting down');
    if (batch.messages.length > MAX_MESSAGES_PER_BATCH) {
      throw new DogfsError(
        'INVALID_ARGUMENT',
        `raft batch of ${batch.messages.length} messages exceeds ${MAX_MESSAGES_PER_BATCH}`,
      );
    }
    // Validate the whole batch before stepping any of it: a lying peer changes nothing.
    const steps: [Group, Message][] = [];
    for (const wire of batch.messages) {
      const group = this.groups.get(wire.group);
      if (group === undefined)
        throw new DogfsError('NOT_FOUND', `raft group ${wire.group} is not hosted here`);
      const message = messageFromWire(wire);
      if (message.to !== this.nodeId) {
        throw new DogfsError(
          'INVALID_ARGUMENT',
          `raft message for node ${message.to} reached node ${this.nodeId}`,
        );
      }
      if (!this.addrOf.has(message.from)) {
        throw new DogfsError('INVALID_ARGUMENT', `raft message from unknown node ${message.from}`);
      }
      steps.push([group, message]);
    }
    const now = Date.now();
    for (const [group, message] of steps) {
      this.lastHeardFrom.set(message.from, now);
      try {
        group.raft.step(message);
      } catch (error) {
        // The core's own invariants broke (what a peer sends was validated above): its state may be half
        // changed. Crash rather than go on, and answer nothing, as after a storage failure.
        this.log.error('raft step failed; exiting', { group: group.id, type: message.type, error });
        process.exit(70);
      }
    }
    this.counters.messagesReceived += steps.length;
    this.scheduleRound();
    return {};
  }

  private scheduleRound(): void {
    if (this.roundScheduled || this.closed) return;
    this.roundScheduled = true;
    setImmediate(() => {
      this.roundScheduled = false;
      void this.runRounds();
    });
  }

  /** Ready rounds until no group has anything left; never two at once. */
  private async runRounds(): Promise<void> {
    if (this.roundRunning) {
      this.roundAgain = true;
      return;
    }
    this.roundRunning = true;
    try {
      do {
        this.roundAgain = false;
        await this.runRound();
      } while (this.roundAgain && !this.closed);
    } catch (error) {
      // Storage failure: the node can no longer promise durability. Crash rather than lie.
      this.log.error('raft round failed; exiting', { error });
      process.exit(70);
    } finally {
      this.roundRunning = false;
    }
  }

  private async runRound(): Promise<void> {
    const readies: [Group, Ready][] = [];
    for (const group of this.groups.values()) {
      if (group.raft.hasReady()) readies.push([group, group.raft.ready()]);
    }
    if (readies.length === 0) return;
    this.counters.rounds++;
    let mustSync = false;
    for (const [group, rd] of readies) {
      const storage = this.options.storage.group(group.id);
      if (rd.snapshot) storage.saveSnapshot(rd.snapshot);
      if (rd.entries.length > 0) storage.append(rd.entries);
      if (rd.hardState) storage.setHardState(rd.hardState);
      mustSync ||= rd.mustSync;
    }
    // A leader's appends may leave before its own fsync (the core counts the leader towards a commit only
    // once persisted), so the followers' fsyncs run in parallel with the leader's.
    this.sendAll(readies, (rd) => rd.earlyMessages);
    const roundStart = performance.now();
    if (mustSync) {
      this.counters.syncs++;
      await this.options.storage.sync();
      const syncMs = performance.now() - roundStart;
      this.counters.syncMs += syncMs;
      // The write runs on the event loop (durable.ts): while the disk stalls, this process does nothing
      // else, RPCs and timers included. Say so rather than look hung: at most one line per
      // SLOW_SYNC_LOG_INTERVAL_MS, with how many writes were slow since the last.
      if (syncMs >= SLOW_SYNC_MS) {
        this.slowSyncs++;
        const now = Date.now();
        if (now - this.slowSyncLoggedMs >= SLOW_SYNC_LOG_INTERVAL_MS) {
          this.log.warn('raft log write slow', { ms: Math.round(syncMs), slowWrites: this.slowSyncs });
          this.slowSyncLoggedMs = now;
          this.slowSyncs = 0;
        }
      }
    }
    this.sendAll(readies, (rd) => rd.messages);
    for (const [group, rd] of readies) {
      this.applyReady(group, rd);
      group.raft.advance(rd);
      this.maybeSnapshot(group);
    }
    this.counters.roundMs += performance.now() - roundStart;
    // What advance() released (and anything stepped meanwhile) runs in the next round.
    this.roundAgain ||= [...this.groups.values()].some((g) => g.raft.hasReady());
  }

  /** Sends the chosen messages of every Ready, one batch per peer. */
  private sendAll(readies: readonly [Group, Ready][], pick: (rd: Ready) => readonly Message[]): void {
    const outgoing = new Map<NodeId, Uint8Array[]>();
    for (const [group, rd] of readies) {
      for (const m of pick(rd)) {
        let list = outgoing.get(m.to);
        if (list === undefined) {
          list = [];
          outgoing.set(m.to, list);
        }
        list.push(encodeWireMessage(group.id, m));
      }
    }
    for (const [to, messages] of outgoing) this.send(to, messages);
  }

  private applyReady(group: Group, rd: Ready): void {
    if (rd.softState && rd.softState.leader !== NO_NODE) group.lastLeaderSeenMs = Date.now();
    if (rd.softState) {
      this.log.info('raft role', { group: group.id, role: rd.softState.role, leader: rd.softState.leader });
    }
    if (rd.snapshot) {
      // The leader's snapshot replaces the state this replica was streaming its own snapshot of: that
      // one is dropped (the log still holds its entries).
      this.dropSnapshotStream(group);
      group.machine.restore(rd.snapshot.data);
      group.applied = rd.snapshot.meta.index;
      group.lastSnapshotBytes = rd.snapshot.data.byteLength;
      group.appliedBytesSinceSnapshot = 0;
    }
    this.applyEntries(group, rd.committedEntries);
    for (const rs of rd.readStates) {
      const read = group.reads.get(rs.ctx);
      if (read) read.index = rs.index;
    }
    for (const ctx of rd.failedReads) {
      const read = group.reads.get(ctx);
      if (read) {
        group.reads.delete(ctx);
        clearTimeout(read.timer);
        read.reject(this.noLeaderError(group));
      }
    }
    this.resolveReads(group);
    // A leader that lost its role still holds the proposals it appended. The next leader commits or
    // overwrites them, but this node learns which only when the new leader's log reaches their indexes,
    // which in a quiet group may take until their deadline. Their callers are told now, after this
    // round's commits have answered whatever did commit: the outcome is unknown, so they retry
    // elsewhere (client sessions make a retry exactly-once).
    // (The role now, not the Ready's: the node may have won a new term while this round synced.)
    if (rd.softState !== undefined && group.raft.status().role !== 'leader') {
      for (const index of [...group.proposals.keys()])
        this.failProposal(
          group,
          index,
          'leadership was lost before the command committed (it may still commit)',
        );
    }
  }

  /** Applies committed entries in order, answering the proposals this node made. */
  private applyEntries(group: Group, entries: readonly Entry[]): void {
    for (const entry of entries) {
      if (entry.index <= group.applied) continue;
      assert(
        entry.index === group.applied + 1,
        `group ${group.id} applies ${entry.index} after ${group.applied}`,
      );
      group.applied = entry.index;
      const pending = group.proposals.get(entry.index);
      if (entry.kind === 'config') {
        // A membership change took effect (when appended); its proposer learns that it is committed.
        this.log.info('raft membership committed', { group: group.id, index: entry.index, ...entry.config });
        if (pending) this.settle(group, entry.index, entry.term, undefined);
        continue;
      }
      if (entry.data.byteLength === 0) {
        if (pending) this.failProposal(group, entry.index, 'leadership changed before the command committed');
        continue;
      }
      const result = group.machine.apply(entry.index, entry.data);
      group.appliedBytesSinceSnapshot += entry.data.byteLength;
      this.counters.applied++;
      if (pending) this.settle(group, entry.index, entry.term, result);
    }
  }

  private dropSnapshotStream(group: Group): void {
    group.snapshotting?.stream.close();
    group.snapshotting = undefined;
  }

  /** Answers the linearizable reads whose read index this replica has now applied. */
  private resolveReads(group: Group): void {
    for (const [ctx, read] of group.reads) {
      if (read.index !== undefined && read.index <= group.applied) {
        group.reads.delete(ctx);
        clearTimeout(read.timer);
        read.resolve();
      }
    }
  }

  /**
   * Bounds the log: once enough has been applied past the last snapshot (SNAPSHOT_GROWTH_DIVISOR says
   * how much), capture the state machine, make it durable, and let the core drop the entries it covers.
   * Restart then loads the snapshot and replays only the entries after it; a lagging follower gets the
   * snapshot in chunks. A state machine that streams its snapshot (streamSnapshot) is drained a slice
   * at a time while it goes on applying (continueSnapshot); the others are captured in one call.
   */
  private maybeSnapshot(group: Group): void {
    if (group.snapshotting !== undefined || group.snapshotWriting || this.closed) return;
    const every = this.options.snapshotEvery ?? 10_000;
    const snapshotIndex = group.raft.snapshotMeta().index;
    if (group.applied - snapshotIndex < every) return;
    if (group.appliedBytesSinceSnapshot * SNAPSHOT_GROWTH_DIVISOR < group.lastSnapshotBytes) return;
    const startedMs = performance.now();
    if (group.machine.streamSnapshot === undefined) {
      const bytes = group.appliedBytesSinceSnapshot;
      this.saveSnapshot(group, group.applied, bytes, group.machine.snapshot(), startedMs);
      return;
    }
    const taking: SnapshotInProgress = {
      index: group.applied,
      coveredBytes: group.appliedBytesSinceSnapshot,
      stream: group.machine.streamSnapshot(),
      parts: [],
      startedMs,
    };
    group.snapshotting = taking;
    this.continueSnapshot(group, taking);
  }

  /**
   * Drains the snapshot being taken for up to SNAPSHOT_SLICE_MS, then yields to the event loop (ticks,
   * peers' messages, log writes and applying go on) until it is complete.
   */
  private continueSnapshot(group: Group, taking: SnapshotInProgress): void {
    // Dropped meanwhile: the leader's snapshot replaced the state (applyReady).
    if (group.snapshotting !== taking) return;
    if (this.closed || group.raft.snapshotMeta().index >= taking.index) {
      // Closed, or the core took a newer snapshot from the leader (which applyReady restores): this one
      // would cover nothing new.
      this.dropSnapshotStream(group);
      return;
    }
    const sliceEnd = performance.now() + SNAPSHOT_SLICE_MS;
    for (;;) {
      const next = taking.stream.next();
      if (next.done === true) break;
      taking.parts.push(next.value);
      if (performance.now() >= sliceEnd) {
        setImmediate(() => this.continueSnapshot(group, taking));
        return;
      }
    }
    group.snapshotting = undefined;
    const data = Buffer.concat(taking.parts);
    this.saveSnapshot(group, taking.index, taking.coveredBytes, data, taking.startedMs);
    this.scheduleRound();
  }

  /**
   * Compacts the core's log (in memory: the snapshot can already serve lagging followers) and writes the
   * snapshot in the background: its payload is the whole state, hundreds of megabytes for a large
   * namespace, and a write of that on the event loop stalled it for as long. The log on disk keeps the
   * entries the snapshot covers until the snapshot is durable, so a crash meanwhile loses nothing.
   * `coveredBytes`: the command bytes counted since the last snapshot up to `index`.
   */
  private saveSnapshot(
    group: Group,
    index: LogIndex,
    coveredBytes: number,
    data: Uint8Array,
    startedMs: number,
  ): void {
    const meta = group.raft.compact(index, data);
    group.lastSnapshotBytes = data.byteLength;
    group.appliedBytesSinceSnapshot -= coveredBytes;
    assert(group.appliedBytesSinceSnapshot >= 0, 'a snapshot covers at most the bytes applied');
    group.snapshotWriting = true;
    const capturedMs = performance.now();
    this.options.storage
      .group(group.id)
      .saveOwnSnapshot({ meta, data })
      .then(
        () => {
          group.snapshotWriting = false;
          this.log.info('raft snapshot', {
            group: group.id,
            index: meta.index,
            bytes: data.byteLength,
            captureMs: Math.round(capturedMs - startedMs),
            writeMs: Math.round(performance.now() - capturedMs),
          });
          this.scheduleRound();
        },
        (error: unknown) => {
          if (this.closed) return;
          // As with a failed log write: the node can no longer promise durability. Crash rather than lie.
          this.log.error('raft snapshot write failed; exiting', { group: group.id, error });
          process.exit(70);
        },
      );
  }

  /** Answers the proposal at `index` with `result`, unless another leader's entry took its place. */
  private settle(group: Group, index: LogIndex, term: Term, result: unknown): void {
    const pending = group.proposals.get(index);
    if (!pending) return;
    group.proposals.delete(index);
    if (pending.term === term) pending.resolve(result);
    else
      pending.reject(new DogfsError('UNAVAILABLE', 'leadership changed before the command committed; retry'));
  }

  private failProposal(group: Group, index: LogIndex, why: string): void {
    const pending = group.proposals.get(index);
    if (!pending) return;
    group.proposals.delete(index);
    pending.reject(new DogfsError('UNAVAILABLE', `${why}; retry`));
  }

  private send(to: NodeId, messages: Uint8Array[]): void {
    let peer = this.peers.get(to);
    if (peer === undefined) {
      const addr = this.addrOf.get(to);
      if (addr === undefined) return;
      const channel = new RpcChannel(addr);
      this.channels.set(to, channel);
      peer = new FramePeer(addr, channel, this.counters, this.log);
      this.peers.set(to, peer);
    }
    for (const batch of splitBatches(messages, MAX_MESSAGES_PER_BATCH, MAX_BATCH_BYTES))
      peer.sendFrame(encodeBatchFrame(this.nodeId, batch), batch.length);
  }

  private group(groupId: number): Group {
    const group = this.groups.get(groupId);
    if (group === undefined) throw new DogfsError('NOT_FOUND', `raft group ${groupId} is not hosted here`);
    return group;
  }

  private noLeaderError(group: Group): DogfsError {
    const leader = group.raft.status().leader;
    if (leader !== NO_NODE && leader !== this.nodeId) {
      return new DogfsError('NOT_LEADER', `not the leader of group ${group.id}`, {
        leaderHint: this.addrOf.get(leader),
      });
    }
    // Several maximal election timeouts without any leader: not an election in progress but a lost majority.
    const noLeaderLimitMs = this.tickMs * 2 * this.maxElectionTicks * 4;
    if (Date.now() - group.lastLeaderSeenMs > noLeaderLimitMs) {
      return new DogfsError(
        'NO_QUORUM',
        `metadata group ${group.id} has no leader: a majority of metadata servers is unreachable`,
      );
    }
    return new DogfsError('UNAVAILABLE', `metadata group ${group.id} is electing a leader; retry`);
  }

  /** Proposes a command on this node (which must lead the group) and resolves with its result once applied. */
  propose(groupId: number, command: Uint8Array, deadline: number): Promise<unknown> {
    const group = this.group(groupId);
    const result = group.raft.propose(command);
    if (!result.ok) {
      switch (result.code) {
        case 'not_leader':
          return Promise.reject(this.noLeaderError(group));
        case 'transferring':
          return Promise.reject(
            new DogfsError('UNAVAILABLE', `group ${groupId} is transferring leadership; retry`),
          );
        case 'overloaded':
          return Promise.reject(
            new DogfsError('RESOURCE_EXHAUSTED', `group ${groupId} has too many uncommitted commands`),
          );
        case 'too_large':
          return Promise.reject(
            new DogfsError('INVALID_ARGUMENT', `command of ${command.byteLength} bytes is too large`),
          );
      }
    }
    this.counters.proposals++;
    return this.awaitCommit(group, result.index, result.term, deadline);
  }

  /** Resolves with the result of the entry at `index` once applied here (proposed by this node in `term`). */
  private awaitCommit(group: Group, index: LogIndex, term: Term, deadline: number): Promise<unknown> {
    this.scheduleRound();
    return new Promise((resolve, reject) => {
      group.proposals.set(index, { term, resolve, reject, deadline });
    });
  }

  /** Makes `peer` known (its address), so this node can talk to it once a group adds it as a member. */
  addPeer(peer: PeerInfo): void {
    const known = this.addrOf.get(peer.nodeId);
    if (known !== undefined && known !== peer.addr) {
      throw new DogfsError('ALREADY_EXISTS', `raft node ${peer.nodeId} is already known at ${known}`);
    }
    this.addrOf.set(peer.nodeId, peer.addr);
  }

  /**
   * Changes a group's membership, one server at a time (consensus/raft.ts says why): add a learner (it
   * catches up, by snapshot if need be, without voting), promote it to voter, or remove a member. Must be
   * called on the group's leader; resolves once the change is committed. The node must be known (addPeer).
   */
  changeMembership(groupId: number, change: ConfChange, deadline: number): Promise<void> {
    const group = this.group(groupId);
    if (!this.addrOf.has(change.node)) {
      return Promise.reject(
        new DogfsError(
          'FAILED_PRECONDITION',
          `raft node ${change.node} has no known address (addPeer first)`,
        ),
      );
    }
    const result = group.raft.proposeConfChange(change);
    if (!result.ok) {
      if (result.code === 'not_leader') return Promise.reject(this.noLeaderError(group));
      const code = result.code === 'invalid_change' ? 'FAILED_PRECONDITION' : 'UNAVAILABLE';
      const detail = 'detail' in result ? `: ${result.detail}` : '';
      return Promise.reject(
        new DogfsError(
          code,
          `group ${groupId}: membership change ${change.type} ${change.node} refused (${result.code}${detail})`,
        ),
      );
    }
    return this.awaitCommit(group, result.index, result.term, deadline).then(() => undefined);
  }

  /** Resolves once this replica's state machine reflects every command committed before the call (ReadIndex). */
  readBarrier(groupId: number, deadline: number): Promise<void> {
    const group = this.group(groupId);
    const ctx = `${this.nodeId}:${this.readNonce}:${++this.readSeq}`;
    const result = group.raft.readIndex(ctx);
    if (!result.ok) {
      return Promise.reject(
        result.code === 'no_leader'
          ? this.noLeaderError(group)
          : new DogfsError('RESOURCE_EXHAUSTED', `group ${groupId} has too many pending reads`),
      );
    }
    this.scheduleRound();
    return new Promise((resolve, reject) => {
      const timer = setTimeout(
        () => {
          group.reads.delete(ctx);
          reject(
            group.raft.status().leader === NO_NODE
              ? this.noLeaderError(group)
              : new DogfsError(
                  'DEADLINE_EXCEEDED',
                  `group ${groupId}: read not confirmed before the deadline`,
                ),
          );
        },
        Math.max(0, deadline - Date.now()),
      );
      group.reads.set(ctx, { index: undefined, resolve, reject, timer });
    });
  }

  isLeader(groupId: number): boolean {
    return this.group(groupId).raft.status().role === 'leader';
  }

  /** Throws NOT_LEADER (with a hint), UNAVAILABLE or NO_QUORUM unless this node leads the group. */
  requireLeader(groupId: number): void {
    const group = this.group(groupId);
    if (group.raft.status().role !== 'leader') throw this.noLeaderError(group);
  }

  status(groupId: number): GroupStatus {
    const group = this.group(groupId);
    const s = group.raft.status();
    return {
      group: groupId,
      role: s.role,
      leader: s.leader,
      leaderAddr: this.addrOf.get(s.leader) ?? '',
      term: s.term,
      commit: s.commit,
      applied: asIndex(group.applied),
      members: s.config.voters,
    };
  }

  groupIds(): number[] {
    return [...this.groups.keys()].sort((a, b) => a - b);
  }

  /** Turns leader balancing (see RaftHostOptions.balanceLeaders) on or off. */
  setLeaderBalancing(on: boolean): void {
    this.balancing = on;
  }

  /** Hands leadership of the groups this node leads to another voter (graceful shutdown). */
  transferLeadership(): void {
    for (const group of this.groups.values()) {
      const s = group.raft.status();
      if (s.role !== 'leader') continue;
      const target = s.config.voters.find((v) => v !== this.nodeId);
      if (target !== undefined) group.raft.transferLeader(target);
    }
    this.scheduleRound();
  }

  async close(): Promise<void> {
    this.closed = true;
    if (this.ticker) clearInterval(this.ticker);
    for (const group of this.groups.values()) {
      for (const p of group.proposals.values()) {
        p.reject(new DogfsError('UNAVAILABLE', 'metadata server is shutting down'));
      }
      for (const r of group.reads.values()) {
        clearTimeout(r.timer);
        r.reject(new DogfsError('UNAVAILABLE', 'metadata server is shutting down'));
      }
    }
    for (const peer of this.peers.values()) peer.close();
    this.frames?.close();
    for (const channel of this.channels.values()) channel.close();
    await this.options.storage.close();
  }
}
