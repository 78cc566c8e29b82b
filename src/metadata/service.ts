/**
 * metadata/service — the Metadata gRPC service on top of the Raft host: group 0 runs the cluster state
 * machine (chunk-server registry, liveness, settings), group 1 the namespace (one namespace group until
 * sharding lands; ids and keys are already per group, so sharding changes routing, not data).
 *
 * - Mutations become state-machine commands stamped with the leader's clock and the caller's session, are
 *   proposed on this node (which must lead the group: otherwise NOT_LEADER with the leader's address) and
 *   answered with the applied result; a refused command is a DogfsError with the state machine's code.
 * - Reads (Stat, List) wait on ReadIndex (`readBarrier`) and then read this replica, so followers serve
 *   linearizable reads too.
 * - The leader's duties run on timers: declaring silent chunk servers dead (group 0), expiring write
 *   leases and deleting the shards of garbage block groups from chunk servers (group 1). Placement of new
 *   block groups reads this node's replica of group 0.
 * - Shard health is soft state kept by group 0's leader, where chunk servers heartbeat (their scrubbers'
 *   corrupt shards) and clients report bad shards: a shard is missing when it was never durable, its
 *   server is dead or unknown, or it was reported bad. `ClusterReport` lists the files with missing
 *   shards; `PlanRepair` names them with new targets, and `CommitRepair` records rebuilt shards (DESIGN §4).
 *   After a leader change the new leader starts without reports; they come back with the next heartbeats.
 */
import { randomBytes, randomInt, randomUUID } from 'node:crypto';
import { assert } from '../common/assert.js';
import { type EcPolicy, parseEcPolicy, parseNewEcPolicy } from '../common/ec-policy.js';
import type { Logger } from '../common/log.js';
import type { LogIndex, Term } from '../consensus/index.js';
import type { RaftHost, SnapshotStream, StateMachine } from '../raftnode/host.js';
import { DogfsError, toDogfsError } from '../wire/errors.js';
import type { MetadataMethods } from '../wire/gen/types.js';
import {
  type BlockGroup,
  type BlockGroupRepair,
  ChunkControlService,
  type ClientSession,
  FileType,
  MetadataService,
  type ShardId,
  type Inode as WireInode,
} from '../wire/gen/types.js';
import type { Init } from '../wire/proto.js';
import { type RpcChannel, RpcChannelPool, type RpcServer, type ServiceHandlers } from '../wire/rpc.js';
import { AutoRepairSchedule, DEFAULT_AUTO_REPAIR_LIMITS, MAX_REPAIRING_NAMED } from './auto-repair.js';
import type { MetadataMetrics } from './metrics.js';
import { RebalancePlan, STOP_ABOVE_MEAN } from './rebalance.js';
import type { ChunkServerRecord } from './state/cluster.js';
import {
  type BlockGroupCommit,
  type BlockGroupInfo,
  type ClusterCommand,
  type ClusterResult,
  type ClusterSettings,
  ClusterState,
  compareNames,
  decodeNamespaceCommand,
  encodeClusterCommand,
  encodeNamespaceCommand,
  type Failure,
  type FirstBlockGroup,
  type Inode,
  type InodeId,
  MAX_PATH_BYTES,
  type NamespaceCommand,
  type NamespaceResult,
  NamespaceState,
  type PlacementCandidate,
  placeBlockGroup,
  type Session,
  StateCodecError,
} from './state/index.js';
import { StateClock } from './state-clock.js';

export const CLUSTER_GROUP = 0;
export const NAMESPACE_GROUP = 1;
/** How often the leader looks for silent chunk servers and expired leases. */
const DUTY_INTERVAL_MS = 1000;
/**
 * Duty rounds further apart than DUTY_INTERVAL_MS plus this (capped at half the dead-timeout) mean this
 * process stalled (a GC pause, a suspended VM, SIGSTOP): see runLeaderDuties.
 */
const DUTY_STALL_SLACK_MS = DUTY_INTERVAL_MS;
const MAX_BAD_SHARD_REPORTS = 10_000;
/**
 * Shards of one chunk server's block report kept to reconcile it with the namespace (block group and
 * index, ~50 bytes each); a larger inventory is only counted.
 */
const MAX_RECONCILED_SHARDS = 1_000_000;
/** Recorded shards one block report may find absent and have confirmed (StatShard) before noting them. */
const MAX_ABSENT_CHECKS = 256;
/**
 * When a report lacks more recorded shards than are checked one by one, and at least this share of
 * those checked is confirmed absent, the rest are taken as absent too (a disk lost or replaced: its
 * server came back with few or none of its shards). Below it, only the confirmed ones are noted.
 */
const ABSENT_SAMPLE_CONFIRMS = 0.9;
/** Why a shard the block report of its server did not name is missing. */
const ABSENT_REASON = 'absent from its chunk server (block report)';
/** Files a reconciliation walks between turns of the event loop. */
const RECONCILE_FILES_PER_SLICE = 2_000;
/** Paths of files with missing shards that one ClusterReport names (the count covers all of them). */
const MAX_REPORTED_DAMAGED_FILES = 1000;
/** Suspect shards one PlanRepair may name (a file's block groups times their shards is far more than enough). */
const MAX_REPAIR_SUSPECTS = 4096;
/** Garbage block groups whose shards the leader deletes per duty round. */
const GC_BATCH = 256;
/** How long a block group stays garbage before its shards are deleted: readers of a replaced or deleted file finish first. */
const DEFAULT_GC_GRACE_MS = 30_000;
/** Deadline of one DeleteShard or StatShard call to a chunk server. */
const CHUNK_CONTROL_TIMEOUT_MS = 5_000;
/** Time one duty round may spend deleting garbage shards before it commits what it did. */
const GC_ROUND_BUDGET_MS = 3_000;
/** A garbage block group whose shards could not all be deleted waits this long (doubling) before the next try. */
const GC_RETRY_MS = 5_000;
const GC_MAX_RETRY_MS = 5 * 60_000;
/** Replaced copies are deleted in rounds this far apart (each round passes over the namespace). */
const REPLACED_COPIES_INTERVAL_MS = 5_000;
/** Replaced shard copies waiting to be deleted (after a repair), retried by the duty; beyond, left as orphans. */
const MAX_PENDING_DELETES = 10_000;
/** Shards one CommitRepair may name (K + M is at most 32). */
const MAX_REPAIRED_SHARDS = 32;
const MAX_REPORT_REASON_CHARS = 200;
/** `text` with control characters as spaces: a peer's words printed in a report cannot forge its lines. */
function printable(text: string): string {
  let out = '';
  for (const ch of text) {
    const code = ch.codePointAt(0)!;
    out += code < 0x20 || code === 0x7f ? ' ' : ch;
  }
  return out;
}

/** Unfinished repairs one heartbeat may name. */
const MAX_REPAIR_FAILURES_NAMED = 16;
/**
 * A shard file that no metadata records (its file deleted while its server was down, a copy replaced by a
 * repair while its server was away, a write abandoned after its shard landed) is deleted once it is this
 * old; the orphan sweep also runs at this interval. Ten minutes: far longer than a repair takes between
 * writing a copy and committing it, which is the one time a shard is rightly on a server the metadata does
 * not yet name (and CommitRepair is guarded besides).
 */
const DEFAULT_ORPHAN_AGE_MS = 10 * 60_000;
/** Inventory entries of one chunk server an orphan sweep looks at (the rest wait for the next sweep). */
const MAX_SWEPT_SHARDS_PER_SERVER = 200_000;
/** ListShards page size of the orphan sweep. */
const ORPHAN_LIST_PAGE = 1_000;
/** ListShards pages one sweep reads per chunk server (it goes on from there next time). */
const MAX_SWEEP_PAGES = MAX_SWEPT_SHARDS_PER_SERVER / ORPHAN_LIST_PAGE;
/** Orphans one sweep deletes per chunk server. */
const MAX_ORPHAN_DELETES_PER_SERVER = 4_096;
/** StatShard and DeleteShard calls of a sweep in flight at once. */
const ORPHAN_DELETES_IN_FLIGHT = 32;
/** A server with more unrecorded shards than this, and more than half its old ones, is not swept. */
const ORPHAN_BREAKER_MIN = 100;
/** Shards of repairs of unknown outcome remembered per term (see uncertainRepairs). */
const MAX_UNCERTAIN_REPAIRS = 10_000;

class NamespaceMachine implements StateMachine {
  state = new NamespaceState({ group: NAMESPACE_GROUP });
  /**
   * `onRepaired` hears every shard relocation as this replica applies it — on every metadata server, so
   * the cluster group's leader (which keeps the bad-shard reports) hears it even when another server
   * leads the namespace group and served the CommitRepair.
   */
  constructor(private readonly onRepaired: (blockGroupId: number, indexes: readonly number[]) => void) {}
  apply(_index: LogIndex, command: Uint8Array): NamespaceResult {
    const result = this.state.applyEncoded(command);
    if (result.ok && result.op === 'repairShards') {
      // Rare: decoding the command a second time costs nothing that matters.
      const cmd = decodeNamespaceCommand(command);
      if (cmd.op === 'repairShards')
        this.onRepaired(
          cmd.blockGroupId,
          cmd.shards.map((s) => s.index),
        );
    }
    return result;
  }
  snapshot(): Uint8Array {
    return this.state.snapshot();
  }
  /** The namespace streams its snapshot while it goes on applying (raftnode/host.ts drains it). */
  streamSnapshot(): SnapshotStream {
    return this.state.streamSnapshot();
  }
  restore(data: Uint8Array): void {
    this.state = NamespaceState.restore(data);
  }
}

class ClusterMachine implements StateMachine {
  state = new ClusterState();
  apply(index: LogIndex, command: Uint8Array): ClusterResult {
    return this.state.applyEncoded(command, index);
  }
  snapshot(): Uint8Array {
    return this.state.snapshot();
  }
  restore(data: Uint8Array): void {
    this.state = ClusterState.restore(data);
  }
}

/** The policy `name` names, or undefined when it names none (the state machine then says why). */
function ecPolicyOrUndefined(name: string): EcPolicy | undefined {
  try {
    return parseEcPolicy(name);
  } catch {
    return undefined;
  }
}

/** A policy name from a request: canonical only (INVALID_ARGUMENT otherwise, before any proposal). */
function newEcPolicy(name: string): EcPolicy {
  try {
    return parseNewEcPolicy(name);
  } catch (error) {
    throw new DogfsError('INVALID_ARGUMENT', (error as Error).message);
  }
}

/**
 * A stripe gives each data shard at least one 4 KiB block: SetSettings checks the default policy, and a
 * file naming a wider one (or a directory's) is checked here, when it is created and at each block group.
 */
function checkStripeFits(policy: string, dataShards: number, stripeSize: number): void {
  if (stripeSize >= dataShards * 4096) return;
  throw new DogfsError(
    'INVALID_ARGUMENT',
    `${policy} needs a stripe of at least ${dataShards * 4096} bytes (4 KiB per data shard), and the cluster's stripe size is ${stripeSize}: raise it with 'dogfs admin settings --stripe-size'`,
  );
}

function raise(failure: Failure): never {
  throw new DogfsError(failure.code, failure.message);
}

/** A request whose values the command codec cannot hold (e.g. a number over 2^53) is the caller's error. */
function encodeOrRefuse(encode: () => Uint8Array): Uint8Array {
  try {
    return encode();
  } catch (error) {
    if (error instanceof StateCodecError) throw new DogfsError('INVALID_ARGUMENT', error.message);
    throw error;
  }
}

function sessionOf(session: ClientSession | null | undefined): Session {
  if (!session || session.clientId === '' || !(session.seq >= 1)) {
    throw new DogfsError(
      'INVALID_ARGUMENT',
      'a mutating call needs a client session (client id and seq >= 1)',
    );
  }
  return { clientId: session.clientId, seq: session.seq, ackedBelow: session.ackedBelow };
}

/** An id from the wire: a positive safe integer, or INVALID_ARGUMENT. */
function wireId<T extends number>(value: number, what: string): T {
  if (!Number.isSafeInteger(value) || value <= 0) {
    throw new DogfsError('INVALID_ARGUMENT', `invalid ${what} ${value}`);
  }
  return value as T;
}

function inodeId(value: number): InodeId {
  return wireId<InodeId>(value, 'inode id');
}

/** A block group's commit as a client sends it (CommitBlockGroup, or CompleteFile's last group). */
function commitOf(bg: BlockGroup): BlockGroupCommit {
  return {
    blockGroupId: wireId<BlockGroupInfo['id']>(bg.id, 'block group id'),
    length: bg.length,
    shards: bg.shards.map((s) => ({
      index: s.index,
      length: s.length,
      crc32c: s.crc32c,
      durable: s.durable,
    })),
  };
}

export interface BadShardReport {
  readonly blockGroupId: number;
  readonly index: number;
  readonly chunkServerId: string;
  readonly reason: string;
  readonly atMs: number;
}

/** Orders paths (as components) the way the namespace walk visits them: component by component. */
function compareWalkOrder(a: readonly string[], b: readonly string[]): number {
  for (let i = 0; i < Math.min(a.length, b.length); i++) {
    const c = compareNames(a[i]!, b[i]!);
    if (c !== 0) return c;
  }
  return a.length - b.length;
}

/** A shard of a chunk server's inventory that the orphan sweep looks at (mtimeMs 0: not known). */
/** A copy a committed repair replaced, to be deleted from its server (`mtimeMs`: see pendingDeletes). */
interface ReplacedCopy {
  readonly server: string;
  readonly blockGroupId: number;
  readonly index: number;
  readonly term: Term;
  mtimeMs: number;
}

interface OrphanCandidate {
  readonly serverId: string;
  readonly blockGroupId: number;
  readonly index: number;
  readonly mtimeMs: number;
}

function shardKey(blockGroupId: number, index: number): string {
  return `${blockGroupId}:${index}`;
}

/** A copy of a shard on one server: the key of deletions in flight, pending and guarded. */
function copyKey(serverId: string, blockGroupId: number, index: number): string {
  return `${serverId}:${blockGroupId}:${index}`;
}

export interface MetadataNodeOptions {
  /** From `--ec`: every metadata server of a cluster is started with the same value. */
  readonly defaultEc?: string | undefined;
  /** Garbage block groups wait this long before their shards are deleted (30 s). */
  readonly gcGraceMs?: number;
  /**
   * Shard files no metadata records are deleted once this old, by a sweep of the chunk servers'
   * inventories at this interval (10 minutes; 0: never).
   */
  readonly orphanAgeMs?: number;
  /**
   * Added to the wall clock this node stamps into commands (0). A test seam (DOGFS_COMMAND_CLOCK_OFFSET_MS):
   * a leader whose clock is far ahead, to show the state's time carried on after it (state-clock.ts).
   */
  readonly commandClockOffsetMs?: number;
  /**
   * Automatic repair: a file damaged this long is handed to a chunk server to rebuild (undefined: 60 s);
   * null: off (`dogfs meta --repair-delay off`), and damage waits for `dogfs admin repair`.
   */
  readonly autoRepairDelayMs?: number | null;
}

/** Automatic repair's delay unless the server is told otherwise. */
export const DEFAULT_AUTO_REPAIR_DELAY_MS = 60_000;
/** How often group 0's leader walks the namespace for damaged files while repairing automatically. */
const AUTO_REPAIR_SCAN_MS = 5_000;
/**
 * With nothing known to be missing (no dead server, no bad or absent shard, nothing being repaired), the
 * walk still runs this often: a file written with fewer than K+M durable shards shows only there.
 */
const AUTO_REPAIR_IDLE_SCAN_MS = 60_000;
/**
 * Damaged files one scan adds to those the schedule tracks already (which it always names, so a file
 * repaired is forgotten whatever else is damaged, and files that cannot be repaired yet do not hide the
 * rest); the schedule tracks at most its own limit.
 */
const AUTO_REPAIR_NEW_PER_SCAN = 1_000;
/**
 * A walk of the namespace runs again no sooner than this many times its own length after it began: with
 * a server dead for good (its shards rebuilt, the server still in the registry) or damage that cannot be
 * repaired, the walk would otherwise take a core of a large namespace's leader every 5 s, forever.
 */
const AUTO_REPAIR_SCAN_DUTY = 10;
/**
 * Files a walk starts moving off servers that hold more than their share (rebalance.ts): each move
 * copies one shard of each of a file's block groups from there to another server (rebuilt from K of
 * its group when the copy fails), so few at a time.
 */
const REBALANCE_NEW_PER_SCAN = 8;
/** After a walk found nothing that could move off the shedding servers, rebalancing rests this long. */
const REBALANCE_PAUSE_MS = 10 * 60_000;

export class MetadataNode {
  /** A relocated shard's bad reports were about its old copy: they go (see NamespaceMachine). */
  private readonly namespace = new NamespaceMachine((blockGroupId, indexes) => {
    for (const [key, note] of this.badShards)
      if (note.blockGroupId === blockGroupId && indexes.includes(note.index)) this.badShards.delete(key);
  });
  private readonly cluster = new ClusterMachine();
  /** Automatic repair's schedule (soft state of this node's group 0 leadership); undefined: off. */
  private readonly autoRepair: AutoRepairSchedule | undefined;
  /** Which chunk servers hold more than their share (soft state of group 0's leadership; see rebalance.ts). */
  private readonly rebalance = new RebalancePlan();
  /** Files the last walk handed to automatic repair as rebalancing moves (PlanRepair moves only these). */
  private readonly movePaths = new Set<string>();
  /**
   * Bytes of the current batch of moves planned off (negative) and onto (positive) each server, not yet
   * in its heartbeats: without them, moves planned together all took the same fullest source and the
   * same emptiest target.
   */
  private readonly movesPlanned = new Map<string, number>();
  /** The move planned for each block group in this batch (its bytes are in movesPlanned). */
  private readonly moveOfGroup = new Map<number, { from: string; to: string; bytes: number }>();
  /** Chunk servers whose last heartbeat said they take repair work. */
  private readonly repairWorkers = new Set<string>();
  private autoRepairNextScanMs = 0;
  private autoRepairLastFullScanMs = 0;
  private autoRepairScanning = false;
  /** Shards reported bad (by readers or scrubbers), by shardKey; oldest first, bounded. */
  private readonly badShards = new Map<string, BadShardReport>();
  /** Servers whose block report is being reconciled with the namespace now. */
  private readonly reconciling = new Set<string>();
  /** Per server, the latest report that finished while its previous one was being reconciled. */
  private readonly reportsWaiting = new Map<string, ReadonlySet<string>>();
  /**
   * Per server, the recorded shards its last reconciled report lacked when they were too many to check
   * one by one and the checked ones were confirmed absent (see ABSENT_SAMPLE_CONFIRMS); by shardKey, at
   * most MAX_RECONCILED_SHARDS per server. Soft state of this leadership, like badShards.
   */
  private readonly absentOnServer = new Map<string, Set<string>>();
  /** Replaced copies whose DeleteShard is on its way, by server:blockGroup:index. */
  private readonly deletingCopies = new Map<string, Promise<boolean>>();
  /** Block reports being received (first page seen, not the last): the shards they name, by server. */
  private readonly reportsInProgress = new Map<string, Set<string> | undefined>();
  /** Registered chunk server id → when this node (as group 0's leader) last heard its heartbeat. */
  private readonly lastSeen = new Map<string, number>();
  /**
   * Registered chunk server id → the group 0 term in which this node received its whole block report
   * (first..last). A heartbeat from a server with none in the current term is answered `reregister`:
   * reporters send their inventory when asked, not after every failed heartbeat, and what a report
   * rebuilds (absent-shard notes) is soft state of one leadership. At most one entry per registered server.
   */
  private readonly inventoried = new Map<string, number>();
  /** What this node stamps into each group's commands when it leads (see state-clock.ts). */
  private readonly namespaceClock: StateClock;
  private readonly clusterClock: StateClock;
  /** Garbage block group id → when this node (as group 1's leader) first saw it. */
  private readonly garbageSeen = new Map<number, number>();
  /** Garbage block groups that failed to delete: when to try again, and the current backoff. */
  private readonly garbageRetry = new Map<number, { atMs: number; backoffMs: number }>();
  /**
   * Replaced shard copies to delete (after repairs committed elsewhere), by server:bg:index, with the
   * modification time the first StatShard read (0 until then): the copy this deletion is about.
   */
  private readonly pendingDeletes = new Map<string, ReplacedCopy>();
  /**
   * Shards whose CommitRepair is running here, by server:blockGroup:index (a count: two repairs may race).
   * The orphan sweep leaves them alone: such a copy is on a server the metadata is about to name.
   */
  private readonly repairsCommitting = new Map<string, number>();
  /**
   * Shards of CommitRepairs whose outcome is unknown (the proposal timed out: it may still commit), with the
   * namespace term then. The sweep leaves them alone for the rest of that term (bounded; when full, it
   * does not delete at all).
   */
  private readonly uncertainRepairs = new Map<string, Term>();
  /** Whether an orphan sweep is running, and when the next may start (Date.now()). */
  private orphanSweep: { running: boolean; nextAtMs: number } = { running: false, nextAtMs: 0 };
  /** A term in which more repairs were uncertain than uncertainRepairs holds: no sweep deletes in it. */
  private uncertainOverflowTerm: Term | undefined;
  /** When deleteReplacedCopies may next run (Date.now()). */
  private replacedCopiesNextAtMs = 0;
  private readonly orphanAgeMs: number;
  /** Where the orphan sweep goes on in each chunk server's inventory (absent: from the start). */
  private readonly sweepCursors = new Map<string, ShardId>();
  /** gRPC channels to chunk servers' control addresses (DeleteShard). */
  private readonly chunkChannels = new RpcChannelPool();
  private readonly defaultEc: string | undefined;
  private readonly gcGraceMs: number;
  private duties: NodeJS.Timeout | undefined;
  private dutyRunning = false;
  /** performance.now() and Date.now() of the last duty timer callback, to notice this process stalling. */
  private lastDutyTick: { monotonicMs: number; wallMs: number } | undefined;
  /** After a stall, no chunk server is declared dead before this (Date.now()). */
  private livenessGraceUntilMs = 0;
  /** When this node became group 0's leader, and in which term (undefined while it is not). */
  private clusterLeadership: { sinceMs: number; term: number } | undefined;
  /**
   * The group 0 term the soft state (liveness, reports, bad shards, repairs) was gathered in. Whatever
   * touches that state first in a new term drops the old (`notesOfThisTerm`): notes a new leadership took
   * before the next duty round are its own and stay (the round used to drop them, and every chunk server
   * that had just sent its whole report was asked for it again).
   */
  private notesTerm: Term | undefined;

  constructor(
    private readonly host: RaftHost,
    private readonly log: Logger,
    private readonly codecBackend: string,
    options: MetadataNodeOptions = {},
  ) {
    this.defaultEc = options.defaultEc;
    this.gcGraceMs = options.gcGraceMs ?? DEFAULT_GC_GRACE_MS;
    this.orphanAgeMs = options.orphanAgeMs ?? DEFAULT_ORPHAN_AGE_MS;
    const offsetMs = options.commandClockOffsetMs ?? 0;
    assert(Number.isSafeInteger(offsetMs), 'a clock offset is a whole number of milliseconds');
    const wallMs = offsetMs === 0 ? Date.now : () => Date.now() + offsetMs;
    this.namespaceClock = new StateClock(wallMs);
    this.clusterClock = new StateClock(wallMs);
    assert(Number.isSafeInteger(this.orphanAgeMs) && this.orphanAgeMs >= 0, 'orphan age');
    const delayMs =
      options.autoRepairDelayMs === undefined ? DEFAULT_AUTO_REPAIR_DELAY_MS : options.autoRepairDelayMs;
    if (delayMs !== null) {
      assert(Number.isSafeInteger(delayMs) && delayMs >= 0, 'auto-repair delay');
      this.autoRepair = new AutoRepairSchedule({ ...DEFAULT_AUTO_REPAIR_LIMITS, delayMs });
    }
    host.addGroup(CLUSTER_GROUP, this.cluster);
    host.addGroup(NAMESPACE_GROUP, this.namespace);
  }

  /** This member's own view of each group it hosts (no read barrier: what MemberStatus and metrics say). */
  private ownGroupViews() {
    return this.host.groupIds().map((g) => {
      const s = this.host.status(g);
      return {
        group: g,
        role: s.role,
        term: s.term,
        leaderAddr: s.leaderAddr,
        commitIndex: s.commit,
        appliedIndex: s.applied,
      };
    });
  }

  /** What this member says of itself for its metrics endpoint (metadata/metrics.ts); cheap: no walk. */
  metrics(): MetadataMetrics {
    const servers = this.cluster.state.servers();
    const leadsCluster = this.host.isLeader(CLUSTER_GROUP);
    if (leadsCluster) this.notesOfThisTerm();
    const c = this.host.counters;
    return {
      groups: this.ownGroupViews(),
      raft: {
        proposals: c.proposals,
        applied: c.applied,
        syncs: c.syncs,
        syncMs: c.syncMs,
        messagesSent: c.messagesSent,
        messagesReceived: c.messagesReceived,
        batchesDropped: c.batchesDropped,
      },
      chunkServers: {
        alive: servers.filter((s) => s.state === 'alive').length,
        dead: servers.filter((s) => s.state !== 'alive').length,
        draining: servers.filter((s) => s.draining).length,
      },
      damagedFilesTracked: leadsCluster
        ? (this.autoRepair?.trackedCount ?? 0) -
          [...this.movePaths].filter((p) => this.autoRepair?.isTracked(p) === true).length
        : undefined,
      repairsInProgress: leadsCluster ? (this.autoRepair?.inProgress().length ?? 0) : undefined,
      residentBytes: process.memoryUsage.rss(),
    };
  }

  start(server: RpcServer): void {
    server.addService(MetadataService, this.handlers());
    this.duties = setInterval(() => void this.runLeaderDuties(), DUTY_INTERVAL_MS);
  }

  stop(): void {
    if (this.duties) clearInterval(this.duties);
    this.chunkChannels.close();
  }

  private async proposeNamespace(command: NamespaceCommand, deadline: number): Promise<NamespaceResult> {
    const bytes = encodeOrRefuse(() => encodeNamespaceCommand(command));
    return (await this.host.propose(NAMESPACE_GROUP, bytes, deadline)) as NamespaceResult;
  }

  /** A writer's command on its own lease (renew, abandon): applied, or the state machine's refusal raised. */
  private async leaseCommand(
    op: 'renewLease' | 'abandonFile',
    req: { inodeId: number; leaseId: string; session?: ClientSession | null },
    deadline: number,
  ): Promise<NamespaceResult & { ok: true }> {
    const result = await this.proposeNamespace(
      {
        op,
        timeMs: this.namespaceNow(),
        session: sessionOf(req.session),
        inodeId: inodeId(req.inodeId),
        leaseId: req.leaseId,
      },
      deadline,
    );
    if (!result.ok) raise(result);
    return result;
  }

  /** The time for a namespace command: the wall clock, never behind the state's time carried forward. */
  private namespaceNow(): number {
    return this.namespaceClock.now(this.namespace.state.timeMs);
  }

  /** The time for a cluster-group command (see namespaceNow). */
  private clusterNow(): number {
    return this.clusterClock.now(this.cluster.state.timeMs);
  }

  private async proposeCluster(command: ClusterCommand, deadline: number): Promise<ClusterResult> {
    const bytes = encodeOrRefuse(() => encodeClusterCommand(command));
    return (await this.host.propose(CLUSTER_GROUP, bytes, deadline)) as ClusterResult;
  }

  /**
   * Automatic repair, a duty round's part: walk the namespace for damaged files when due (in slices, not
   * holding up the round), then hand the files that have waited long enough to chunk servers that take
   * repair work (told in their next heartbeat answers).
   */
  private scheduleRepairs(now: number): void {
    const schedule = this.autoRepair;
    if (schedule === undefined) return;
    const { started, stopped } = this.rebalance.update(
      now,
      this.cluster.state.servers().map((s) => ({
        id: s.id,
        alive: s.state === 'alive',
        draining: s.draining,
        capacityBytes: s.capacityBytes,
        usedBytes: s.usedBytes,
      })),
    );
    for (const share of this.rebalance.sheddingServers())
      if (started.includes(share.id))
        this.log.info('rebalance: chunk server holds more than its share; moving shards off it', {
          server: share.id,
          usedPercent: Math.round(share.usage * 100),
          clusterPercent: Math.round(share.mean * 100),
        });
    for (const id of stopped)
      this.log.info(
        'rebalance: chunk server no longer sheds (near the cluster mean, or rebalancing paused)',
        { server: id },
      );
    const knownMissing =
      this.rebalance.sheddingServers().length > 0 ||
      this.badShards.size > 0 ||
      this.absentOnServer.size > 0 ||
      schedule.trackedCount > 0 ||
      this.cluster.state.servers().some((s) => s.state !== 'alive' || s.draining);
    const due =
      now >= this.autoRepairNextScanMs &&
      (knownMissing || now - this.autoRepairLastFullScanMs >= AUTO_REPAIR_IDLE_SCAN_MS);
    if (due && !this.autoRepairScanning) {
      this.autoRepairScanning = true;
      this.autoRepairNextScanMs = now + AUTO_REPAIR_SCAN_MS;
      const term = this.host.status(CLUSTER_GROUP).term;
      const startedMs = performance.now();
      // New moves go out in batches, when nothing is being repaired or moved: a damaged file found
      // meanwhile then waits behind a batch at most, not behind a full queue of moves.
      const newMoves = schedule.inProgress().length === 0 ? REBALANCE_NEW_PER_SCAN : 0;
      // The previous batch is done and in the heartbeats' usage by now (or never ran).
      if (newMoves > 0) {
        this.movesPlanned.clear();
        this.moveOfGroup.clear();
      }
      this.scanDamagedFiles(AUTO_REPAIR_NEW_PER_SCAN, (path) => schedule.isTracked(path), newMoves)
        .then((found) => {
          if (found === undefined || this.clusterLeadership?.term !== term) return;
          if (!this.host.isLeader(CLUSTER_GROUP) || this.host.status(CLUSTER_GROUP).term !== term) return;
          // Shards on a server being drained are moved at once: an operator asked, nothing may come back.
          // Moves off a server with more than its share come only when nothing is damaged or draining.
          const moving = found.paths.length === 0 ? found.moves : [];
          this.movePaths.clear();
          for (const path of moving) this.movePaths.add(path);
          const shedding = this.rebalance.sheddingServers();
          if (shedding.length > 0 && found.paths.length === 0 && moving.length === 0 && newMoves > 0) {
            // Nothing on the shedding servers can move without crowding a failure domain or overfilling
            // its target: stop asking (and walking every 5 s) for a while.
            this.rebalance.pause(Date.now() + REBALANCE_PAUSE_MS);
            this.log.info('rebalance: nothing on the fuller servers can move; paused', {
              servers: shedding.map((x) => x.id),
              pauseMs: REBALANCE_PAUSE_MS,
            });
          }
          schedule.observeScan(
            [...found.paths, ...moving],
            Date.now(),
            new Set([...found.drainOnly, ...moving]),
          );
          this.autoRepairLastFullScanMs = Date.now();
        })
        .catch((error: unknown) =>
          this.log.warn('automatic repair: scan failed', { error: toDogfsError(error).message }),
        )
        .finally(() => {
          this.autoRepairScanning = false;
          const walkMs = performance.now() - startedMs;
          this.autoRepairNextScanMs = Math.max(
            this.autoRepairNextScanMs,
            now + AUTO_REPAIR_SCAN_DUTY * walkMs,
          );
        });
    }
    const workers = this.cluster.state
      .servers()
      .filter((s) => s.state === 'alive' && this.repairWorkers.has(s.id))
      .map((s) => s.id);
    for (const a of schedule.plan(workers, now, (n) => randomInt(0, n)))
      this.log.info('automatic repair: file handed to a chunk server', { path: a.path, server: a.server });
  }

  /**
   * Files with missing shards, walked in slices: every one `tracked` says is known already, and the first
   * `newLimit` others. Undefined when leadership ended during the walk.
   */
  private async scanDamagedFiles(
    newLimit: number,
    tracked: (path: string) => boolean,
    newMoveLimit = 0,
  ): Promise<{ paths: string[]; drainOnly: Set<string>; moves: string[] } | undefined> {
    const paths: string[] = [];
    const drainOnly = new Set<string>();
    /** Whole files with a shard on a shedding server: the tracked ones, and a few new ones a walk. */
    const moves: string[] = [];
    let newMoves = 0;
    const shedding = this.rebalance.sheddingServers().length > 0;
    let added = 0;
    let files = 0;
    for (const { path, inode } of this.namespace.state.files()) {
      if (++files % RECONCILE_FILES_PER_SLICE === 0) {
        await new Promise((resolve) => setImmediate(resolve));
        if (!this.host.isLeader(CLUSTER_GROUP)) return undefined;
      }
      const damaged = inode.blockGroups.some((bg) => this.missingShards(bg).length > 0);
      const draining = !damaged && inode.blockGroups.some((bg) => this.onDrainingServer(bg));
      if (!damaged && !draining) {
        // Whether a file can move is asked only of those on a shedding server (a placement per group).
        const candidate =
          shedding &&
          (tracked(path) || newMoves < newMoveLimit) &&
          inode.blockGroups.some((bg) => this.onSheddingServer(bg)) &&
          inode.blockGroups.some((bg) => this.rebalanceMove(bg) !== undefined);
        if (candidate) {
          if (!tracked(path)) newMoves++;
          moves.push(path);
        }
        continue;
      }
      if (tracked(path)) paths.push(path);
      else if (added < newLimit) {
        added++;
        paths.push(path);
      } else continue;
      if (draining) drainOnly.add(path);
    }
    return { paths, drainOnly, moves };
  }

  /** Leader-only work: each node does it for the groups it leads, so exactly the leaders act. */
  private async runLeaderDuties(): Promise<void> {
    // After a stall of this process the clock has run on while nothing was read: heartbeats (and lease
    // renewals) wait unread in the sockets, and timers run before them. Judged now, every chunk server
    // would look silent and be declared dead. So the round after a stall does nothing, and no server is
    // declared dead for the length of the stall plus two heartbeat intervals (capped at a dead-timeout,
    // so stalls that keep coming delay the detection of a dead server but never stop it).
    const tick = { monotonicMs: performance.now(), wallMs: Date.now() };
    const last = this.lastDutyTick ?? tick;
    this.lastDutyTick = tick;
    const { deadAfterMs, heartbeatIntervalMs } = this.cluster.state.settings;
    const gapMs = Math.max(tick.monotonicMs - last.monotonicMs, tick.wallMs - last.wallMs);
    if (gapMs > DUTY_INTERVAL_MS + Math.min(DUTY_STALL_SLACK_MS, deadAfterMs / 2)) {
      const graceMs = Math.min(deadAfterMs, gapMs + 2 * heartbeatIntervalMs);
      this.livenessGraceUntilMs = Math.max(this.livenessGraceUntilMs, tick.wallMs + graceMs);
      this.log.warn(
        'this server stalled: leader duties skip a round, no chunk server is declared dead meanwhile',
        {
          sinceLastRoundMs: Math.round(gapMs),
          graceMs: Math.round(graceMs),
        },
      );
      return;
    }
    // A slow round (deleting shards from a hung server) must not overlap the next one.
    if (this.dutyRunning) return;
    this.dutyRunning = true;
    const deadline = Date.now() + DUTY_INTERVAL_MS * 5;
    try {
      const clusterTerm = this.host.status(CLUSTER_GROUP).term;
      if (!this.host.isLeader(CLUSTER_GROUP)) {
        this.clusterLeadership = undefined;
        this.forgetLeadership();
        this.notesTerm = undefined;
      } else {
        const now = Date.now();
        if (this.cluster.state.clusterId === '') await this.ensureClusterId(deadline);
        // A term change means leadership was lost and won again between two rounds: a new leadership,
        // whose notes start empty as after any other loss (unless taken in this term already).
        this.notesOfThisTerm();
        if (this.clusterLeadership?.term !== clusterTerm)
          this.clusterLeadership = { sinceMs: now, term: clusterTerm };
        // Safe mode: a new leader (after an election, or a whole-cluster restart where every recorded
        // heartbeat is old) first gives every chunk server one dead-timeout to find it and heartbeat.
        const safeMode =
          now - this.clusterLeadership.sinceMs < this.cluster.state.settings.deadAfterMs ||
          now < this.livenessGraceUntilMs;
        // Heartbeat times are state times (StateClock); lastSeen is this process's own wall clock.
        const stateNow = this.clusterNow();
        // What the state below reflects: a heartbeat recorded after it keeps its server alive (declareDead).
        const silentThroughIndex = this.host.status(CLUSTER_GROUP).applied;
        const silentServers = this.cluster.state
          .silentServers(stateNow)
          .filter((s) => now - (this.lastSeen.get(s.id) ?? 0) > this.cluster.state.settings.deadAfterMs);
        for (const silent of safeMode ? [] : silentServers) {
          const result = await this.proposeCluster(
            { op: 'declareDead', timeMs: stateNow, ...silent, silentThroughIndex },
            deadline,
          );
          // Unchanged: a heartbeat was committed after this leader judged (or another declared it).
          if (result.ok && result.op === 'declareDead' && result.changed) {
            this.log.warn('chunk server declared dead', {
              server: silent.id,
              silentSinceMs: silent.silentSinceMs,
            });
            this.autoRepair?.serverGone(silent.id);
            this.repairWorkers.delete(silent.id);
          }
        }
        if (!safeMode) this.scheduleRepairs(now);
      }
      if (this.host.isLeader(NAMESPACE_GROUP)) {
        const now = Date.now();
        // Leases run on the state machine's time, carried forward by this leader's monotonic clock
        // (StateClock): a leader whose wall clock is behind the state's (an earlier leader's was ahead,
        // or the clock stepped back) neither holds expired leases nor waits for its wall to catch up.
        const leaseNow = this.namespaceNow();
        const earliest = this.namespace.state.earliestLeaseExpiryMs();
        if (earliest !== undefined && earliest <= leaseNow) {
          await this.proposeNamespace(
            { op: 'expireLeases', timeMs: leaseNow, expiresAtOrBeforeMs: leaseNow },
            deadline,
          );
        }
        await this.collectGarbage(now);
        // Each round passes over the whole namespace: every few seconds, not every second.
        if (now >= this.replacedCopiesNextAtMs) {
          this.replacedCopiesNextAtMs = now + REPLACED_COPIES_INTERVAL_MS;
          await this.deleteReplacedCopies(now + GC_ROUND_BUDGET_MS);
        }
        this.startOrphanSweep(Date.now());
      } else {
        this.garbageSeen.clear();
        this.garbageRetry.clear();
        // Soft: copies left undeleted become orphans, which the sweep of a later leader deletes.
        this.pendingDeletes.clear();
      }
    } catch (error) {
      // Lost leadership or quorum mid-duty: the next leader repeats it; nothing is half done. Anything
      // else is worth seeing.
      const e = toDogfsError(error);
      const expected = e.code === 'NOT_LEADER' || e.code === 'NO_QUORUM' || e.code === 'DEADLINE_EXCEEDED';
      this.log[expected ? 'debug' : 'warn']('leader duty interrupted', { error });
    } finally {
      this.dutyRunning = false;
    }
  }

  /**
   * The fencing token chunk servers check verifications and deletions by: the namespace group and a term
   * this node *led* in (read with the leadership check). Never the node's current term as such: a deposed
   * leader campaigning in a minority raises its term without leading, and a token of that term would make
   * chunk servers refuse the real leader's deletions until some election passed it.
   */
  private fencingToken(ledTerm: Term): { namespaceGroup: number; leaderTerm: number } {
    return { namespaceGroup: NAMESPACE_GROUP, leaderTerm: ledTerm };
  }

  /**
   * Gives the cluster its identity if it has none yet (group 0's leader: a new cluster, or one from before
   * cluster ids): a random id, committed once; a racing proposal changes nothing.
   */
  private async ensureClusterId(deadline: number): Promise<void> {
    if (this.cluster.state.clusterId !== '') return;
    const result = await this.proposeCluster(
      { op: 'initCluster', timeMs: this.clusterNow(), clusterId: randomUUID() },
      deadline,
    );
    if (!result.ok) raise(result);
    if (result.op === 'initCluster' && result.changed)
      this.log.info('cluster identity created', { clusterId: result.clusterId });
  }

  /**
   * Deletes shard `index` of `blockGroupId` from `serverId`. True when the server no longer has it; false
   * when the server is dead, unknown or did not answer (the caller keeps the work for later or gives up),
   * or, with `ifMtimeMs`, holds another copy than the one of that modification time.
   */
  private async deleteShard(
    serverId: string,
    blockGroupId: number,
    index: number,
    leaderTerm: Term,
    ifMtimeMs = 0,
  ): Promise<boolean> {
    const control = this.liveControl(serverId);
    if (control === undefined) return false;
    try {
      await control.call(
        ChunkControlService,
        'DeleteShard',
        {
          shard: { blockGroupId, index, generation: 0 },
          chunkServerId: serverId,
          clusterId: this.cluster.state.clusterId,
          // The term this node led in when it decided: a node that has since learnt of a later term
          // (and stepped down) must not lend its deletions that term's authority.
          ...this.fencingToken(leaderTerm),
          ifMtimeMs,
        },
        { timeoutMs: CHUNK_CONTROL_TIMEOUT_MS },
      );
      return true;
    } catch (error) {
      // A refusal (a newer copy there, a later leader's term, another server at that address) is worth an
      // operator's eye; a timeout is retried quietly.
      const refused = toDogfsError(error).code === 'FAILED_PRECONDITION';
      this.log[refused ? 'info' : 'debug']('delete shard failed', {
        server: serverId,
        blockGroupId,
        index,
        error,
      });
      return false;
    }
  }

  /** The control channel of a registered chunk server that is alive now; undefined otherwise. */
  private liveControl(serverId: string): RpcChannel | undefined {
    const server = this.cluster.state.server(serverId);
    if (server === undefined || server.state !== 'alive' || server.controlAddr === '') return undefined;
    return this.chunkChannels.get(server.controlAddr);
  }

  /**
   * Deletes the replaced copy, and only that one: its modification time, read by the first StatShard and
   * kept, is named by every attempt. Sent late (delayed, or retried by the RPC layer), a deletion then
   * cannot take a copy written there since, by a repair, nor one a repair's commit claimed (verifyRebuilt
   * gives it a new time). True when that copy is no longer there: gone, or another in its place.
   */
  private async deleteReplacedCopy(copy: ReplacedCopy, leaderTerm: Term): Promise<boolean> {
    const { server: serverId, blockGroupId, index } = copy;
    const control = this.liveControl(serverId);
    if (control === undefined) return false;
    let mtimeMs: number;
    try {
      const stat = await control.call(
        ChunkControlService,
        'StatShard',
        {
          shard: { blockGroupId, index, generation: 0 },
          chunkServerId: serverId,
          clusterId: this.cluster.state.clusterId,
          ...this.fencingToken(leaderTerm),
        },
        { timeoutMs: CHUNK_CONTROL_TIMEOUT_MS },
      );
      mtimeMs = stat.info?.mtimeMs ?? 0;
    } catch (error) {
      if (toDogfsError(error).code === 'NOT_FOUND') return true;
      this.log.debug('stat shard failed', { server: serverId, blockGroupId, index, error });
      return false;
    }
    // A server that cannot say when its copy was written is not sent an unconditional deletion.
    if (mtimeMs === 0) return false;
    if (copy.mtimeMs === 0) copy.mtimeMs = mtimeMs;
    // Another copy since (the replaced one deleted, say by an attempt whose answer was lost, then the shard
    // written there again): not this deletion's to take.
    else if (mtimeMs !== copy.mtimeMs) return true;
    return this.deleteShard(serverId, blockGroupId, index, leaderTerm, copy.mtimeMs);
  }

  /**
   * Group 1's leader: shards of garbage block groups (deleted, replaced, abandoned or expired files) are
   * deleted from their chunk servers once the grace period has passed, then forgotten by a collectGarbage
   * command. Only committed metadata made them garbage, so nothing live is ever deleted. A server that is
   * dead keeps its copies (logged): its inventory will name them as orphans when it returns.
   */
  private async collectGarbage(now: number): Promise<void> {
    const term = this.host.status(NAMESPACE_GROUP).term;
    if (!this.host.isLeader(NAMESPACE_GROUP)) return;
    // Look past the oldest entries: block groups waiting to be retried must not starve the rest.
    const batch = this.namespace.state.garbage(GC_BATCH * 16);
    if (batch.length === 0) {
      this.garbageSeen.clear();
      this.garbageRetry.clear();
      return;
    }
    const due: BlockGroupInfo[] = [];
    for (const bg of batch) {
      if (due.length >= GC_BATCH) break;
      const seen = this.garbageSeen.get(bg.id);
      if (seen === undefined) this.garbageSeen.set(bg.id, now);
      else if (now - seen >= this.gcGraceMs && (this.garbageRetry.get(bg.id)?.atMs ?? 0) <= now) due.push(bg);
    }
    const budgetEnd = now + GC_ROUND_BUDGET_MS;
    const collected: BlockGroupInfo['id'][] = [];
    for (const bg of due) {
      if (Date.now() >= budgetEnd) break;
      let complete = true;
      await Promise.all(
        bg.servers.map(async (serverId, index) => {
          if (serverId === '') return;
          const record = this.cluster.state.server(serverId);
          if (record === undefined || record.state !== 'alive') {
            this.log.info('garbage shard left on an unavailable chunk server', {
              server: serverId,
              blockGroupId: bg.id,
              index,
            });
            return;
          }
          if (!(await this.deleteShard(serverId, bg.id, index, term))) complete = false;
        }),
      );
      if (complete) collected.push(bg.id);
      else {
        const backoffMs = Math.min(
          GC_MAX_RETRY_MS,
          (this.garbageRetry.get(bg.id)?.backoffMs ?? GC_RETRY_MS / 2) * 2,
        );
        this.garbageRetry.set(bg.id, { atMs: Date.now() + backoffMs, backoffMs });
      }
    }
    if (collected.length === 0) return;
    // A deadline of its own: the deletes above may have used up the round's time.
    const result = await this.proposeNamespace(
      { op: 'collectGarbage', timeMs: this.namespaceNow(), blockGroupIds: collected },
      Date.now() + DUTY_INTERVAL_MS * 5,
    );
    if (result.ok)
      for (const id of collected) {
        this.garbageSeen.delete(id);
        this.garbageRetry.delete(id);
      }
  }

  /** Copies replaced by committed repairs, deleted from their servers (retried while the server is alive). */
  private async deleteReplacedCopies(budgetEnd: number): Promise<void> {
    const term = this.host.status(NAMESPACE_GROUP).term;
    // First what needs no look at the namespace: copies noted in an earlier leadership (another leader
    // may have committed repairs since; the sweep deletes the copy if it is an orphan), and copies on a
    // dead or unknown server (it may never return; if it does, the sweep finds the copy).
    for (const [key, copy] of this.pendingDeletes) {
      const server = this.cluster.state.server(copy.server);
      if (copy.term !== term || server === undefined || server.state !== 'alive')
        this.pendingDeletes.delete(key);
    }
    if (this.pendingDeletes.size === 0) return;
    // Where the namespace records each copy's block group now (one pass; by id, so a rename since the
    // repair changes nothing). Later in this round only a CommitRepair here can make a copy live again,
    // and it drops the copy from pendingDeletes first.
    const recorded = this.namespace.state.blockGroupsAmong(
      new Set([...this.pendingDeletes.values()].map((copy) => copy.blockGroupId)),
    );
    for (const [key, copy] of [...this.pendingDeletes]) {
      // `recorded` holds for this leadership only.
      if (
        Date.now() >= budgetEnd ||
        !this.host.isLeader(NAMESPACE_GROUP) ||
        this.host.status(NAMESPACE_GROUP).term !== term
      )
        return;
      // Taken back by a repair meanwhile (CommitRepair drops it from the map before verifying).
      if (!this.pendingDeletes.has(key)) continue;
      // Died meanwhile: left to the sweep.
      if (this.cluster.state.server(copy.server)?.state !== 'alive') {
        this.pendingDeletes.delete(key);
        continue;
      }
      // A later repair may have put the shard back on that very server: then the copy is live again.
      const bg = recorded.get(copy.blockGroupId as BlockGroupInfo['id']);
      // The new holder is down: the old copy may be the one left; kept for now.
      const holder = bg?.servers[copy.index] ?? '';
      if (bg !== undefined && holder !== copy.server && this.cluster.state.server(holder)?.state !== 'alive')
        continue;
      if (bg === undefined || bg.garbage || holder === copy.server) {
        this.pendingDeletes.delete(key);
        continue;
      }
      // The orphan sweep is deleting it already: this entry stays, to be confirmed next round.
      if (this.deletingCopies.has(key)) continue;
      const deleting = this.deleteReplacedCopy(copy, term);
      this.deletingCopies.set(key, deleting);
      try {
        if (await deleting) this.pendingDeletes.delete(key);
      } finally {
        this.deletingCopies.delete(key);
      }
    }
  }

  /** Repairs whose commit may still come (see uncertainRepairs), noted for the term they were tried in. */
  private noteUncertainRepair(keys: readonly string[], term: Term): void {
    this.pruneUncertainRepairs(term);
    for (const key of keys) {
      if (this.uncertainRepairs.size >= MAX_UNCERTAIN_REPAIRS) {
        this.uncertainOverflowTerm = term;
        return;
      }
      this.uncertainRepairs.set(key, term);
    }
  }

  /** Entries of other terms are settled: that term's leader log decided them. */
  private pruneUncertainRepairs(term: Term): void {
    for (const [key, at] of this.uncertainRepairs) if (at !== term) this.uncertainRepairs.delete(key);
    if (this.uncertainOverflowTerm !== term) this.uncertainOverflowTerm = undefined;
  }

  /** Starts an orphan sweep in the background when one is due (group 1's leader; see sweepOrphans). */
  private startOrphanSweep(now: number): void {
    if (this.orphanAgeMs === 0 || this.orphanSweep.running || now < this.orphanSweep.nextAtMs) return;
    this.orphanSweep.running = true;
    this.sweepOrphans()
      .catch((error: unknown) =>
        this.log.debug('orphan sweep interrupted', { error: toDogfsError(error).message }),
      )
      .finally(() => {
        this.orphanSweep = { running: false, nextAtMs: Date.now() + this.orphanAgeMs };
      });
  }

  /**
   * Group 1's leader: deletes shard files no metadata records — left on a server that was down when their
   * file was deleted (the garbage collector then gives up on them) or when a repair replaced them, or
   * written for a write that failed. Garbage collection alone would leave them for good (DESIGN section 4:
   * "orphaned shard files are collected later").
   * 1. Each live chunk server's inventory is listed (after checking that its address still answers with
   *    its id; paged and bounded, resuming where the last sweep stopped), shards older than the orphan
   *    age only.
   * 2. A first look (after a read barrier) picks the suspects: block groups the namespace records nowhere,
   *    or records on another server that is alive (a copy is kept while the recorded holder is down).
   *    A server whose old shards are mostly unrecorded is left alone and logged: that is a chunk server
   *    pointed at the wrong cluster, or metadata restored from an old backup, not orphans.
   * 3. A write barrier (an empty collectGarbage command): every command proposed before it, such as a
   *    CommitRepair whose caller gave up waiting, is applied. Then one synchronous pass decides, and each
   *    deletion is registered in the same turn of the event loop (a CommitRepair arriving later waits for
   *    it; one running keeps its copies out). Deletions name the server, which refuses one meant for
   *    another.
   * Left alone: garbage block groups (the garbage collector's), ids this group never handed out and
   * generations other than 0 (logged), shards younger than the orphan age.
   */
  private async sweepOrphans(): Promise<void> {
    // Uncertain repairs of an earlier term are settled: the new leader's log decided them.
    const term = this.host.status(NAMESPACE_GROUP).term;
    this.pruneUncertainRepairs(term);
    if (this.uncertainOverflowTerm === term) {
      this.log.warn('orphan sweep skipped: too many repairs of unknown outcome this term');
      return;
    }
    // Server by server, so that only one inventory's old shards are held at once (up to 200,000).
    let suspects: OrphanCandidate[] = [];
    /** Where each server's next sweep goes on, once this one has done its part there. */
    const cursors = new Map<string, ShardId | undefined>();
    for (const server of this.cluster.state.servers()) {
      if (!this.host.isLeader(NAMESPACE_GROUP)) return;
      if (server.state !== 'alive' || server.controlAddr === '') continue;
      // One server failing to answer (dying, say) does not keep the others from being swept.
      const listed = await this.listOldShards(server.id, server.controlAddr).catch((error: unknown) => {
        this.log.debug('orphan sweep: listing a chunk server failed', {
          server: server.id,
          error: toDogfsError(error).message,
        });
        return undefined;
      });
      if (listed === undefined) continue;
      const { old, next } = listed;
      if (old.length === 0) {
        cursors.set(server.id, next);
        continue;
      }
      // A new leader may not have applied its whole log yet, and would suspect everything written since.
      await this.host.readBarrier(NAMESPACE_GROUP, Date.now() + CHUNK_CONTROL_TIMEOUT_MS);
      const { unrecorded: mine, foreign } = this.unrecorded(old);
      if (foreign > 0)
        this.log.warn('orphan sweep: shards of block groups never allocated left alone', {
          server: server.id,
          count: foreign,
        });
      // Ids never handed out here count against the server too: another cluster's ids overlap ours.
      const unknown = mine.length + foreign;
      if (unknown > ORPHAN_BREAKER_MIN && unknown * 2 > old.length) {
        this.log.warn(
          'orphan sweep: most shards of this chunk server are unknown to the metadata (started with the wrong --meta? metadata restored from an old backup?); none deleted',
          { server: server.id, unrecorded: unknown, old: old.length },
        );
        cursors.set(server.id, next);
        continue;
      }
      suspects.push(...mine.slice(0, MAX_ORPHAN_DELETES_PER_SERVER));
      // More suspects than one sweep deletes: the next sweep lists this window again.
      if (mine.length <= MAX_ORPHAN_DELETES_PER_SERVER) cursors.set(server.id, next);
    }
    // Windows move on only once swept: a sweep cut short (leadership lost) looks at them again.
    const moveOn = () => {
      for (const [serverId, next] of cursors)
        if (next === undefined) this.sweepCursors.delete(serverId);
        else this.sweepCursors.set(serverId, next);
    };
    if (suspects.length === 0) return moveOn();
    suspects = await this.withKnownMtimes(suspects);
    // A write barrier, not a read one: a repair's command appended before this one is applied before it
    // (one appended after it is still running here, or its outcome is uncertain: both are skipped below).
    const barrier = await this.proposeNamespace(
      { op: 'collectGarbage', timeMs: this.namespaceNow(), blockGroupIds: [] },
      Date.now() + CHUNK_CONTROL_TIMEOUT_MS,
    );
    if (
      !barrier.ok ||
      !this.host.isLeader(NAMESPACE_GROUP) ||
      this.host.status(NAMESPACE_GROUP).term !== term
    )
      return;
    // From the decision to each deletion's registration: no await.
    const deletions: (() => Promise<void>)[] = [];
    for (const s of this.unrecorded(suspects).unrecorded) {
      const key = copyKey(s.serverId, s.blockGroupId, s.index);
      if (this.repairsCommitting.has(key) || this.uncertainRepairs.get(key) === term) continue;
      if (this.deletingCopies.has(key)) continue;
      let settle: (gone: boolean) => void = () => {};
      this.deletingCopies.set(key, new Promise<boolean>((resolve) => (settle = resolve)));
      deletions.push(async () => {
        let gone = false;
        try {
          // Queued behind others: still this leadership (a repair committed by another leader cannot have
          // waited for this deletion), and the recorded holder, if any, still alive.
          if (
            this.host.status(NAMESPACE_GROUP).term !== term ||
            !this.host.isLeader(NAMESPACE_GROUP) ||
            (s.holder !== '' && this.cluster.state.server(s.holder)?.state !== 'alive')
          )
            return;
          // Only the copy listed: one a repair wrote there since (after this one went) is another.
          gone = await this.deleteShard(s.serverId, s.blockGroupId, s.index, term, s.mtimeMs);
          if (gone)
            this.log.info('orphan shard deleted', {
              server: s.serverId,
              blockGroupId: s.blockGroupId,
              index: s.index,
              ageMs: Date.now() - s.mtimeMs,
            });
        } catch (error) {
          this.log.warn('orphan deletion failed', { key, error: toDogfsError(error).message });
        } finally {
          this.deletingCopies.delete(key);
          settle(gone);
        }
      });
    }
    // A few at a time; each is registered above, so a CommitRepair meanwhile waits for its turn too.
    const running = new Set<Promise<void>>();
    for (const deletion of deletions) {
      if (running.size >= ORPHAN_DELETES_IN_FLIGHT) await Promise.race(running);
      const run = deletion().finally(() => running.delete(run));
      running.add(run);
    }
    await Promise.all(running);
    moveOn();
  }

  /**
   * Shards of one chunk server older than the orphan age (mtime 0: not known, kept for a closer look),
   * from where the last sweep stopped, at most MAX_SWEEP_PAGES pages, and where the next sweep would go
   * on (undefined: from the start). Throws when the address no longer answers with the server's id
   * (another server may listen there now).
   */
  private async listOldShards(
    serverId: string,
    controlAddr: string,
  ): Promise<{ old: OrphanCandidate[]; next: ShardId | undefined }> {
    const channel = this.chunkChannels.get(controlAddr);
    const options = { timeoutMs: CHUNK_CONTROL_TIMEOUT_MS };
    const status = await channel.call(ChunkControlService, 'Status', {}, options);
    if (status.id !== serverId)
      throw new DogfsError(
        'FAILED_PRECONDITION',
        `${controlAddr} answers as '${status.id.slice(0, 128)}', not '${serverId}'`,
      );
    const listedAtMs = Date.now();
    const old: OrphanCandidate[] = [];
    let other = 0;
    let startAfter = this.sweepCursors.get(serverId);
    for (let pages = 0; pages < MAX_SWEEP_PAGES; pages++) {
      const page = await channel.call(
        ChunkControlService,
        'ListShards',
        { startAfter, limit: ORPHAN_LIST_PAGE },
        options,
      );
      const shards = page.shards.slice(0, ORPHAN_LIST_PAGE);
      for (const info of shards) {
        if (!info.shard) continue;
        if (info.shard.generation !== 0) {
          other++;
          continue;
        }
        if (info.mtimeMs !== 0 && listedAtMs - info.mtimeMs < this.orphanAgeMs) continue;
        const { blockGroupId, index } = info.shard;
        old.push({ serverId, blockGroupId, index, mtimeMs: info.mtimeMs });
      }
      const last = shards.at(-1)?.shard ?? undefined;
      const stuck =
        last === undefined ||
        (startAfter !== undefined &&
          last.blockGroupId === startAfter.blockGroupId &&
          last.index === startAfter.index &&
          last.generation === startAfter.generation);
      if (!page.more || stuck) {
        startAfter = undefined;
        break;
      }
      startAfter = { blockGroupId: last.blockGroupId, index: last.index, generation: last.generation };
    }
    if (other > 0)
      this.log.warn('orphan sweep: shards of a generation other than 0 left alone', {
        server: serverId,
        count: other,
      });
    return { old, next: startAfter };
  }

  /** `shards` with unknown mtimes read from their servers (StatShard); gone or unreadable ones dropped. */
  private async withKnownMtimes(shards: readonly OrphanCandidate[]): Promise<OrphanCandidate[]> {
    const known: OrphanCandidate[] = [];
    for (let at = 0; at < shards.length; at += ORPHAN_DELETES_IN_FLIGHT) {
      const batch = shards.slice(at, at + ORPHAN_DELETES_IN_FLIGHT);
      const stated = await Promise.all(
        batch.map(async (s) => {
          if (s.mtimeMs !== 0) return s;
          const addr = this.cluster.state.server(s.serverId)?.controlAddr ?? '';
          if (addr === '') return undefined;
          const stat = await this.chunkChannels
            .get(addr)
            .call(
              ChunkControlService,
              'StatShard',
              {
                shard: { blockGroupId: s.blockGroupId, index: s.index, generation: 0 },
                // The address may be another server's by now: its mtime must not be taken for this one's.
                chunkServerId: s.serverId,
                clusterId: this.cluster.state.clusterId,
              },
              { timeoutMs: CHUNK_CONTROL_TIMEOUT_MS },
            )
            .catch(() => undefined);
          return stat?.info ? { ...s, mtimeMs: stat.info.mtimeMs } : undefined;
        }),
      );
      for (const s of stated)
        if (s !== undefined && s.mtimeMs !== 0 && Date.now() - s.mtimeMs >= this.orphanAgeMs) known.push(s);
    }
    return known;
  }

  /**
   * The shards of `shards` that the namespace, as applied here now, records nowhere, or records on
   * another server that is alive (while the recorded holder is down, a copy elsewhere may be the one
   * left). Garbage block groups and ids this group never handed out are not among them. One pass.
   */
  private unrecorded(shards: readonly OrphanCandidate[]): {
    unrecorded: (OrphanCandidate & { holder: string })[];
    foreign: number;
  } {
    const state = this.namespace.state;
    const recorded = state.blockGroupsAmong(new Set(shards.map((s) => s.blockGroupId)));
    let foreign = 0;
    const unrecorded: (OrphanCandidate & { holder: string })[] = [];
    for (const s of shards) {
      if (!state.hasAllocated(s.blockGroupId)) {
        foreign++;
        continue;
      }
      const bg = recorded.get(s.blockGroupId as BlockGroupInfo['id']);
      if (bg === undefined) {
        unrecorded.push({ ...s, holder: '' });
        continue;
      }
      if (bg.garbage) continue;
      const holder = bg.servers[s.index] ?? '';
      if (holder !== s.serverId && holder !== '' && this.cluster.state.server(holder)?.state === 'alive')
        unrecorded.push({ ...s, holder });
    }
    return { unrecorded, foreign };
  }

  /**
   * Proof that a rebuilt shard is where a repairer says it is: its chunk server (registered, alive) holds
   * it with the group's shard length and, when the shard was durable before, its recorded CRC32C.
   * Otherwise a repairer could "move" a shard to a server that does not have it, and the old copy — the
   * real one — would be deleted.
   */
  private async verifyRebuilt(
    bg: BlockGroupInfo,
    shard: { index: number; chunkServerId: string; length: number; crc32c: number },
    deadline: number,
    ledTerm: Term,
  ): Promise<void> {
    const control = this.liveControl(shard.chunkServerId);
    if (control === undefined)
      throw new DogfsError(
        'FAILED_PRECONDITION',
        `shard ${shard.index}: chunk server '${shard.chunkServerId.slice(0, 128)}' is not a live registered server`,
      );
    const stat = await control
      .call(
        ChunkControlService,
        'StatShard',
        // Fenced: a deletion of this copy sent earlier by a leader of an older term is refused from now on.
        {
          shard: { blockGroupId: bg.id, index: shard.index, generation: 0 },
          chunkServerId: shard.chunkServerId,
          clusterId: this.cluster.state.clusterId,
          ...this.fencingToken(ledTerm),
          // And claimed: a deletion decided on this copy as it was (the sweep's, or a replaced copy's, sent
          // before this and landing after it) names its old modification time and is refused.
          claim: true,
        },
        { deadline: Math.min(deadline, Date.now() + CHUNK_CONTROL_TIMEOUT_MS) },
      )
      .catch((error: unknown) => {
        const e = toDogfsError(error);
        if (e.code === 'NOT_FOUND')
          throw new DogfsError(
            'FAILED_PRECONDITION',
            `shard ${shard.index} of block group ${bg.id} is not on ${shard.chunkServerId}`,
          );
        // Unreachable or failing (dead, but not declared so yet): a refusal naming this shard, not a
        // retryable UNAVAILABLE, so the repairer commits the other shards without it instead of retrying
        // all of them until its deadline; this one stays missing for the next repair.
        throw new DogfsError(
          'FAILED_PRECONDITION',
          `shard ${shard.index} of block group ${bg.id} on ${shard.chunkServerId} could not be checked (${e.code}: ${e.message.slice(0, 200)})`,
        );
      });
    const wasDurable = (bg.durableMask & (2 ** shard.index)) !== 0;
    const expectedCrc = wasDurable ? bg.crcs[shard.index] : shard.crc32c;
    if (stat.info?.length !== shard.length || stat.info.crc32c !== expectedCrc)
      throw new DogfsError(
        'CORRUPT',
        `shard ${shard.index} of block group ${bg.id} on ${shard.chunkServerId}: holds ${stat.info?.length ?? 0} bytes with crc32c ${stat.info?.crc32c ?? 0}, expected ${shard.length} and ${expectedCrc}`,
      );
  }

  /** Called by whatever is about to read or change the soft state, as group 0's leader: see notesTerm. */
  private notesOfThisTerm(): void {
    const term = this.host.status(CLUSTER_GROUP).term;
    if (this.notesTerm === term) return;
    this.forgetLeadership();
    this.notesTerm = term;
  }

  /**
   * Drops the soft state of a group 0 leadership: heartbeat arrival times, reports half received (a
   * reporter restarts from page 1 at the new leader), which servers reported in full, shard health, and
   * automatic repair's schedule (heartbeats and reports rebuild it; notes kept from an earlier leadership
   * could name a shard missing that came back while another node led).
   */
  private forgetLeadership(): void {
    this.autoRepair?.clear();
    this.rebalance.clear();
    this.movePaths.clear();
    this.movesPlanned.clear();
    this.moveOfGroup.clear();
    this.repairWorkers.clear();
    this.lastSeen.clear();
    this.reportsInProgress.clear();
    this.reportsWaiting.clear();
    this.inventoried.clear();
    this.badShards.clear();
    this.absentOnServer.clear();
  }

  /** Reconciles `named` (a whole report of `serverId`), then the one that finished meanwhile, if any. */
  private startReconciliation(serverId: string, named: ReadonlySet<string>): void {
    this.reconciling.add(serverId);
    this.reconcileBlockReport(serverId, named)
      .catch((error: unknown) =>
        this.log.warn('block report reconciliation failed', {
          server: serverId,
          error: toDogfsError(error).message,
        }),
      )
      .finally(() => {
        this.reconciling.delete(serverId);
        if (!this.host.isLeader(CLUSTER_GROUP)) return;
        this.notesOfThisTerm(); // a report waiting from an earlier term is not this leadership's
        const next = this.reportsWaiting.get(serverId);
        this.reportsWaiting.delete(serverId);
        if (next !== undefined) this.startReconciliation(serverId, next);
      });
  }

  /**
   * A chunk server's whole block report against the namespace: each durable shard recorded on it that the
   * report does not name is asked for (StatShard), since it may have been written or repaired there
   * after the server listed its store; one still not found is noted missing there, so `admin report`
   * names its file and a repair rebuilds it (a disk that lost files while its server was down, say).
   * At most MAX_ABSENT_CHECKS are checked per report; beyond that, if the checked ones were confirmed
   * absent (a lost disk), the rest are taken as absent too (absentOnServer). Nothing is deleted here.
   */
  private async reconcileBlockReport(serverId: string, named: ReadonlySet<string>): Promise<void> {
    // The report came in this term: a walk that outlives the leadership (lost and won again meanwhile, in
    // a later term) notes nothing, since the notes would belong to a leadership that did not take it.
    const term = this.host.status(CLUSTER_GROUP).term;
    // A shard noted absent that this report names is there again (a disk mounted back): the note goes.
    for (const [key, note] of this.badShards) {
      if (
        note.chunkServerId === serverId &&
        note.reason === ABSENT_REASON &&
        named.has(shardKey(note.blockGroupId, note.index))
      )
        this.badShards.delete(key);
    }
    this.absentOnServer.delete(serverId);
    const unchecked = new Set<string>();
    const absent: { blockGroupId: number; index: number }[] = [];
    let files = 0;
    walk: for (const { inode } of this.namespace.state.files()) {
      // A large namespace is walked in slices, so Raft's ticks and heartbeats go on meanwhile.
      if (++files % RECONCILE_FILES_PER_SLICE === 0) {
        await new Promise((resolve) => setImmediate(resolve));
        if (!this.host.isLeader(CLUSTER_GROUP) || this.host.status(CLUSTER_GROUP).term !== term) return;
      }
      for (const bg of inode.blockGroups) {
        for (let index = 0; index < bg.servers.length; index++) {
          if (bg.servers[index] !== serverId || (bg.durableMask & (2 ** index)) === 0) continue;
          const key = shardKey(bg.id, index);
          if (named.has(key) || this.badShards.has(copyKey(serverId, bg.id, index))) continue;
          if (absent.length < MAX_ABSENT_CHECKS) absent.push({ blockGroupId: bg.id, index });
          else unchecked.add(key);
          if (unchecked.size >= MAX_RECONCILED_SHARDS) break walk;
        }
      }
    }
    let confirmed = 0;
    for (const shard of absent) {
      // A note made after this node stopped leading would outlive the leadership it belongs to.
      if (!this.host.isLeader(CLUSTER_GROUP) || this.host.status(CLUSTER_GROUP).term !== term) return;
      const control = this.liveControl(serverId);
      if (control === undefined) return;
      const found = await control
        .call(
          ChunkControlService,
          'StatShard',
          // Named: another server now answering at that address must not say "not found" for this one.
          {
            shard: { ...shard, generation: 0 },
            chunkServerId: serverId,
            clusterId: this.cluster.state.clusterId,
          },
          { timeoutMs: CHUNK_CONTROL_TIMEOUT_MS },
        )
        .then(
          () => true,
          (error: unknown) => {
            // Only a NOT_FOUND says absent; a server that could not tell (EMFILE, EIO, a timeout) is
            // given the benefit of the doubt, and the rest of the reconciliation goes on.
            if (toDogfsError(error).code === 'NOT_FOUND') return false;
            this.log.debug('absent shard check failed', { server: serverId, ...shard, error });
            return true;
          },
        );
      if (found) continue;
      // Checked again after the call: a note must not land in a leadership won again meanwhile.
      if (!this.host.isLeader(CLUSTER_GROUP) || this.host.status(CLUSTER_GROUP).term !== term) return;
      confirmed++;
      this.log.warn('shard missing from its chunk server', { server: serverId, ...shard });
      this.noteBadShard({
        ...shard,
        chunkServerId: serverId,
        reason: ABSENT_REASON,
        atMs: Date.now(),
      });
    }
    if (unchecked.size > 0 && confirmed >= ABSENT_SAMPLE_CONFIRMS * absent.length) {
      if (!this.host.isLeader(CLUSTER_GROUP) || this.host.status(CLUSTER_GROUP).term !== term) return;
      this.log.warn('chunk server lacks most of its recorded shards; all taken as missing', {
        server: serverId,
        checked: absent.length,
        confirmedAbsent: confirmed,
        more: unchecked.size,
      });
      this.absentOnServer.set(serverId, unchecked);
    }
  }

  /**
   * Records a bad copy of a shard (bounded: the oldest report goes first). Keyed by the server named too:
   * keyed by the shard alone, a report naming another server (a stale copy left by a repair, or a server
   * that lies) replaced the holder's, and the file stopped counting as damaged.
   */
  private noteBadShard(report: BadShardReport): void {
    const key = copyKey(report.chunkServerId, report.blockGroupId, report.index);
    this.badShards.delete(key);
    if (this.badShards.size >= MAX_BAD_SHARD_REPORTS) {
      const oldest = this.badShards.keys().next();
      if (!oldest.done) this.badShards.delete(oldest.value);
    }
    this.badShards.set(key, report);
  }

  /**
   * Shard indexes of a committed block group that cannot be counted on: never durable, no server, a dead
   * or unknown server, reported bad on the server that holds it, or named by the caller as a suspect;
   * with `draining`, also those on a server being drained (to be moved, though still readable).
   */
  private missingShards(bg: BlockGroupInfo, suspects?: ReadonlySet<string>, draining = false): number[] {
    const missing: number[] = [];
    const total = bg.dataShards + bg.parityShards;
    for (let i = 0; i < total; i++) {
      const serverId = bg.servers[i] ?? '';
      const server = serverId === '' ? undefined : this.cluster.state.server(serverId);
      if (
        (bg.durableMask & (2 ** i)) === 0 ||
        server === undefined ||
        server.state !== 'alive' ||
        (draining && server.draining) ||
        this.badShards.has(copyKey(serverId, bg.id, i)) ||
        this.absentOnServer.get(serverId)?.has(shardKey(bg.id, i)) === true ||
        suspects?.has(shardKey(bg.id, i))
      )
        missing.push(i);
    }
    return missing;
  }

  /**
   * Files with missing shards in the namespace's walk order (depth first, names in order): the first
   * `limit` after `after` ('' = from the start), and the count of all.
   */
  private damagedFiles(limit: number, after: string): { paths: string[]; count: number; onDraining: number } {
    const cursor = after === '' ? undefined : after.split('/');
    const paths: string[] = [];
    let count = 0;
    let onDraining = 0;
    for (const { path, inode } of this.namespace.state.files()) {
      if (inode.blockGroups.some((bg) => this.onDrainingServer(bg))) onDraining++;
      if (!inode.blockGroups.some((bg) => this.missingShards(bg).length > 0)) continue;
      count++;
      if (paths.length < limit && (cursor === undefined || compareWalkOrder(path.split('/'), cursor) > 0))
        paths.push(path);
    }
    return { paths, count, onDraining };
  }

  /**
   * Whether a shard of `bg` is recorded on a server being drained, alive or not: one that died while
   * draining still holds what was not moved, and must not be reported empty.
   */
  /** Records `move` as block group `id`'s planned move of this batch (undefined: none), in both maps. */
  private planMove(id: number, move: { from: string; to: string; bytes: number } | undefined): void {
    const add = (server: string, bytes: number) =>
      this.movesPlanned.set(server, (this.movesPlanned.get(server) ?? 0) + bytes);
    const earlier = this.moveOfGroup.get(id);
    if (earlier !== undefined) {
      add(earlier.from, earlier.bytes);
      add(earlier.to, -earlier.bytes);
      this.moveOfGroup.delete(id);
    }
    if (move === undefined) return;
    add(move.from, -move.bytes);
    add(move.to, move.bytes);
    this.moveOfGroup.set(id, move);
  }

  private onSheddingServer(bg: BlockGroupInfo): boolean {
    return bg.servers.some((id) => id !== '' && this.rebalance.isShedding(id));
  }

  /**
   * A rebalancing move for `bg`, or undefined: its shard on the fullest shedding server, copied to the
   * emptiest server that (1) is alive, not draining, not shedding and holds nothing of the group, (2)
   * does not raise the most shards of the group any one failure domain holds (a move is optional: it
   * must not make a rack's loss worse; a review found rebalancing putting two of three in one), and (3)
   * ends emptier than the source (no shard bounces between two servers near the line). Only a whole
   * group (nothing lost or draining: those are repair's and a drain's), one shard at a time.
   */
  private rebalanceMove(bg: BlockGroupInfo, plan = false): Init<BlockGroupRepair> | undefined {
    if (!bg.committed || this.missingShards(bg, undefined, true).length > 0) return undefined;
    if (plan) {
      // A repairer plans again after a round that failed. A group whose move of this batch committed
      // (its shard is on the target now) moves nothing more: one shard per group per batch, and that
      // move's bytes stay counted until heartbeats show them. One that did not is planned afresh, its
      // earlier move replaced rather than counted twice.
      const earlier = this.moveOfGroup.get(bg.id);
      if (earlier !== undefined && bg.servers.includes(earlier.to) && !bg.servers.includes(earlier.from))
        return undefined;
      this.planMove(bg.id, undefined);
    }
    // Usage counts the moves of this batch already planned (heartbeats have not caught up with them).
    const usage = (s: { id: string; usedBytes: number; capacityBytes: number }, plusBytes: number) =>
      (s.usedBytes + (this.movesPlanned.get(s.id) ?? 0) + plusBytes) / s.capacityBytes;
    const shares = new Map(this.rebalance.sheddingServers().map((x) => [x.id, x]));
    let from: { index: number; server: ChunkServerRecord } | undefined;
    for (let i = 0; i < bg.servers.length; i++) {
      const server = this.cluster.state.server(bg.servers[i] ?? '');
      const share = shares.get(server?.id ?? '');
      if (server === undefined || share === undefined) continue;
      // Planned moves already bring it back near the cluster's share: it gives no more this batch.
      if (usage(server, 0) <= share.mean + STOP_ABOVE_MEAN) continue;
      if (from === undefined || usage(server, 0) > usage(from.server, 0)) from = { index: i, server };
    }
    if (from === undefined) return undefined;
    const source = from;
    const shardBytes = bg.shardLengths[source.index] ?? 0;
    // Shards per failure domain, as placement counts them (an unlabelled server is a domain of its own):
    // a move may not raise the most any domain holds (three racks of rs-4-2 at 2/2/2 must not become
    // 1/3/2, where one rack's loss is more than M; a count of distinct domains let it).
    const domainOf = (id: string) => {
      const domain = this.cluster.state.server(id)?.failureDomain ?? '';
      return domain === '' ? `\0server:${id}` : domain;
    };
    const mostInOneDomain = (ids: readonly string[]) => {
      const counts = new Map<string, number>();
      for (const id of ids) if (id !== '') counts.set(domainOf(id), (counts.get(domainOf(id)) ?? 0) + 1);
      return Math.max(0, ...counts.values());
    };
    const before = mostInOneDomain(bg.servers);
    const others = bg.servers.filter((_, i) => i !== source.index);
    const sourceAfter = usage(source.server, -shardBytes);
    let best: PlacementCandidate | undefined;
    for (const candidate of this.cluster.state.placementCandidates()) {
      if (candidate.state !== 'alive' || candidate.capacityBytes <= 0) continue;
      if (bg.servers.includes(candidate.id) || this.rebalance.isShedding(candidate.id)) continue;
      if (mostInOneDomain([...others, candidate.id]) > before) continue;
      if (usage(candidate, shardBytes) >= sourceAfter) continue;
      if (best === undefined || usage(candidate, 0) < usage(best, 0)) best = candidate;
    }
    if (best === undefined) return undefined;
    if (plan) this.planMove(bg.id, { from: source.server.id, to: best.id, bytes: shardBytes });
    return {
      blockGroup: this.blockGroupToWire(bg),
      missing: [source.index],
      readable: [source.index],
      targets: [
        {
          index: source.index,
          chunkServerId: best.id,
          addr: this.dataAddrOf(best.id),
          length: 0,
          crc32c: 0,
          durable: false,
          generation: 0,
        },
      ],
    };
  }

  private onDrainingServer(bg: BlockGroupInfo): boolean {
    return bg.servers.some((id) => id !== '' && this.cluster.state.server(id)?.draining === true);
  }

  /** A new server for each missing shard that can be placed (none that already holds a shard of the group). */
  private repairTargets(bg: BlockGroupInfo, missing: readonly number[]): Init<BlockGroupRepair>['targets'] {
    // Shedding servers are candidates too: placement weighs free space, and a lost or drained shard
    // that only a shedding server can take is better there than not rebuilt at all (excluded, a group
    // with one such target stayed damaged while the gate below kept rebalancing from lowering usage).
    const candidates = this.cluster.state.placementCandidates();
    for (let count = missing.length; count >= 1; count--) {
      const placement = placeBlockGroup({
        servers: candidates,
        dataShards: count,
        parityShards: 0,
        seed: randomInt(0, 2 ** 31),
        exclude: bg.servers.filter((s) => s !== ''),
        // The survivors' failure domains are taken: a rebuilt shard goes to another one where it can.
        occupied: bg.servers.filter((s, i) => s !== '' && !missing.includes(i)),
      });
      if (!placement.ok) continue;
      return placement.servers.map((serverId, j) => ({
        index: missing[j]!,
        chunkServerId: serverId,
        addr: this.dataAddrOf(serverId),
        length: 0,
        crc32c: 0,
        durable: false,
        generation: 0,
      }));
    }
    return [];
  }

  private dataAddrOf(serverId: string): string {
    return this.cluster.state.server(serverId)?.dataAddr ?? '';
  }

  private blockGroupToWire(bg: BlockGroupInfo): Init<BlockGroup> {
    return {
      id: bg.id,
      dataShards: bg.dataShards,
      parityShards: bg.parityShards,
      stripeSize: bg.stripeSize,
      offset: bg.offset,
      // Before commit the client needs the most it may write into the group; after, what it holds.
      length: bg.committed ? bg.length : bg.maxBytes,
      shards: bg.servers.map((serverId, index) => ({
        index,
        chunkServerId: serverId,
        addr: serverId === '' ? '' : this.dataAddrOf(serverId),
        length: bg.shardLengths[index] ?? 0,
        crc32c: bg.crcs[index] ?? 0,
        durable: bg.committed && (bg.durableMask & (2 ** index)) !== 0,
        generation: 0,
      })),
    };
  }

  private inodeToWire(inode: Inode, withBlockGroups = true): Init<WireInode> {
    if (inode.type === 'dir') {
      return {
        id: inode.id,
        type: FileType.DIRECTORY,
        mode: inode.mode,
        mtimeMs: inode.mtimeMs,
        ctimeMs: inode.ctimeMs,
        ec: inode.ec,
      };
    }
    return {
      id: inode.id,
      type: FileType.FILE,
      mode: inode.mode,
      size: inode.size,
      mtimeMs: inode.mtimeMs,
      ctimeMs: inode.ctimeMs,
      ec: inode.ec,
      blockGroups: withBlockGroups ? inode.blockGroups.map((bg) => this.blockGroupToWire(bg)) : [],
    };
  }

  /**
   * The first block group's settings and placement for a create that asks for one, or undefined when
   * there is none to give (the path or policy will be refused, or too few chunk servers): the create then
   * goes alone, and the writer's AllocateBlockGroup says what stood in the way — the errors are the
   * same as without the combined command.
   */
  private placeFirstBlockGroup(path: string, ec: string, defaultEc: string): FirstBlockGroup | undefined {
    this.host.requireLeader(NAMESPACE_GROUP);
    const policy = this.namespace.state.policyFor(path, ec, defaultEc);
    if (policy === undefined) return undefined;
    const placement = placeBlockGroup({
      servers: this.cluster.state.placementCandidates(),
      dataShards: policy.dataShards,
      parityShards: policy.parityShards,
      seed: randomInt(0, 2 ** 31),
    });
    if (!placement.ok) return undefined;
    const settings = this.cluster.state.settings;
    return {
      stripeSize: settings.stripeSize,
      maxBytes: settings.blockGroupMaxBytes,
      servers: placement.servers,
    };
  }

  private handlers(): ServiceHandlers<MetadataMethods> {
    return {
      Mkdir: async (req, ctx) => {
        const result = await this.proposeNamespace(
          {
            op: 'mkdir',
            timeMs: this.namespaceNow(),
            session: sessionOf(req.session),
            path: req.path,
            parents: req.parents,
            mode: req.mode || 0o755,
            ec: '',
          },
          ctx.deadline,
        );
        if (!result.ok) raise(result);
        if (result.op !== 'mkdir') throw new DogfsError('INTERNAL', `mkdir answered ${result.op}`);
        return { inode: this.inodeToWire(result.inode) };
      },
      Create: async (req, ctx) => {
        if (req.ec !== '') newEcPolicy(req.ec);
        const settings = this.cluster.state.settings;
        const defaultEc = this.defaultEc ?? settings.defaultEc;
        // Refused here, not by the codec at the first write of a file that would already exist.
        if (!req.complete) {
          const policy = this.namespace.state.policyFor(req.path, req.ec, defaultEc);
          if (policy !== undefined) checkStripeFits(policy.name, policy.dataShards, settings.stripeSize);
        }
        const firstBlockGroup =
          req.allocate && !req.complete ? this.placeFirstBlockGroup(req.path, req.ec, defaultEc) : undefined;
        const result = await this.proposeNamespace(
          {
            op: 'create',
            timeMs: this.namespaceNow(),
            session: sessionOf(req.session),
            path: req.path,
            overwrite: req.overwrite,
            mode: req.mode || 0o644,
            ec: req.ec,
            defaultEc,
            leaseMs: settings.leaseMs,
            complete: req.complete,
            firstBlockGroup,
          },
          ctx.deadline,
        );
        if (!result.ok) raise(result);
        if (result.op !== 'create') throw new DogfsError('INTERNAL', `create answered ${result.op}`);
        return {
          inode: this.inodeToWire(result.inode),
          leaseId: result.leaseId,
          leaseExpiresMs: result.leaseExpiresMs,
          blockGroup: result.blockGroup === undefined ? undefined : this.blockGroupToWire(result.blockGroup),
        };
      },
      AllocateBlockGroup: async (req, ctx) => {
        const id = inodeId(req.inodeId);
        this.host.requireLeader(NAMESPACE_GROUP);
        // A leader new to its term may not have applied a Create committed in the last one yet: without
        // the barrier the write in progress would be refused as unknown.
        await this.host.readBarrier(NAMESPACE_GROUP, ctx.deadline);
        // A retry of an allocation already applied (its answer lost) gets that answer: the checks below
        // would judge today's lease and servers, and could refuse what was done (3 servers died since).
        const earlier = this.namespace.state.recordedResult(sessionOf(req.session));
        if (earlier !== undefined) {
          if (!earlier.ok) raise(earlier);
          if (earlier.op !== 'allocateBlockGroup')
            throw new DogfsError('INVALID_ARGUMENT', `session seq ${req.session?.seq} was a ${earlier.op}`);
          return { blockGroup: this.blockGroupToWire(earlier.blockGroup) };
        }
        const pending = this.namespace.state.pendingFile(id);
        if (pending === undefined || pending.leaseId !== req.leaseId) {
          throw new DogfsError(
            'FAILED_PRECONDITION',
            `no write in progress for inode ${id} under that lease (expired or superseded?)`,
          );
        }
        const settings = this.cluster.state.settings;
        checkStripeFits(pending.ec, pending.dataShards, settings.stripeSize);
        const placement = placeBlockGroup({
          servers: this.cluster.state.placementCandidates(),
          dataShards: pending.dataShards,
          parityShards: pending.parityShards,
          seed: randomInt(0, 2 ** 31),
        });
        if (!placement.ok) raise(placement);
        const result = await this.proposeNamespace(
          {
            op: 'allocateBlockGroup',
            timeMs: this.namespaceNow(),
            session: sessionOf(req.session),
            inodeId: id,
            leaseId: req.leaseId,
            offset: req.offset,
            stripeSize: settings.stripeSize,
            maxBytes: settings.blockGroupMaxBytes,
            servers: placement.servers,
          },
          ctx.deadline,
        );
        if (!result.ok) raise(result);
        if (result.op !== 'allocateBlockGroup')
          throw new DogfsError('INTERNAL', `allocate answered ${result.op}`);
        return { blockGroup: this.blockGroupToWire(result.blockGroup) };
      },
      CommitBlockGroup: async (req, ctx) => {
        const bg = req.blockGroup;
        if (!bg) throw new DogfsError('INVALID_ARGUMENT', 'CommitBlockGroup needs the block group');
        const result = await this.proposeNamespace(
          {
            op: 'commitBlockGroup',
            timeMs: this.namespaceNow(),
            session: sessionOf(req.session),
            inodeId: inodeId(req.inodeId),
            leaseId: req.leaseId,
            ...commitOf(bg),
          },
          ctx.deadline,
        );
        if (!result.ok) raise(result);
        return {};
      },
      CompleteFile: async (req, ctx) => {
        const result = await this.proposeNamespace(
          {
            op: 'completeFile',
            timeMs: this.namespaceNow(),
            session: sessionOf(req.session),
            inodeId: inodeId(req.inodeId),
            leaseId: req.leaseId,
            size: req.size,
            commit: req.blockGroup ? commitOf(req.blockGroup) : undefined,
          },
          ctx.deadline,
        );
        if (!result.ok) raise(result);
        if (result.op !== 'completeFile') throw new DogfsError('INTERNAL', `complete answered ${result.op}`);
        return { inode: this.inodeToWire(result.inode) };
      },
      Stat: async (req, ctx) => {
        await this.host.readBarrier(NAMESPACE_GROUP, ctx.deadline);
        const result = this.namespace.state.stat(req.path);
        if (!result.ok) raise(result);
        return { inode: this.inodeToWire(result.inode) };
      },
      List: async (req, ctx) => {
        await this.host.readBarrier(NAMESPACE_GROUP, ctx.deadline);
        const result = this.namespace.state.list(req.path, req.startAfter, req.limit);
        if (!result.ok) raise(result);
        return {
          // Listings carry attributes, not block-group maps (Stat has those): pages stay small.
          entries: result.entries.map((e) => ({ name: e.name, inode: this.inodeToWire(e.inode, false) })),
          more: result.more,
        };
      },
      Rename: async (req, ctx) => {
        const result = await this.proposeNamespace(
          {
            op: 'rename',
            timeMs: this.namespaceNow(),
            session: sessionOf(req.session),
            src: req.src,
            dst: req.dst,
            noReplace: req.noReplace,
            ...(req.ifDstId === 0 ? {} : { ifDstId: inodeId(req.ifDstId) }),
          },
          ctx.deadline,
        );
        if (!result.ok) raise(result);
        return {};
      },
      ComposeFile: async (req, ctx) => {
        const result = await this.proposeNamespace(
          {
            op: 'composeFile',
            timeMs: this.namespaceNow(),
            session: sessionOf(req.session),
            path: req.path,
            sourceDir: req.sourceDir,
            sources: req.sources,
            sourceIds: req.sourceIds.map(inodeId),
            overwrite: req.overwrite,
            mode: req.mode || 0o644,
            ...(req.ifDstId === 0 ? {} : { ifDstId: inodeId(req.ifDstId) }),
          },
          ctx.deadline,
        );
        if (!result.ok) raise(result);
        if (result.op !== 'composeFile')
          throw new DogfsError('INTERNAL', `composeFile answered ${result.op}`);
        return { inode: this.inodeToWire(result.inode) };
      },
      Delete: async (req, ctx) => {
        const result = await this.proposeNamespace(
          {
            op: 'delete',
            timeMs: this.namespaceNow(),
            session: sessionOf(req.session),
            path: req.path,
            recursive: req.recursive,
          },
          ctx.deadline,
        );
        if (!result.ok) raise(result);
        return {};
      },
      ReportBadShard: (req) => {
        this.host.requireLeader(CLUSTER_GROUP);
        this.notesOfThisTerm();
        // Only registered servers and real indexes: reports are kept in memory, so nothing else gets in.
        if (this.cluster.state.server(req.chunkServerId) === undefined)
          throw new DogfsError('INVALID_ARGUMENT', 'the reported chunk server is not registered');
        if (!Number.isInteger(req.index) || req.index >= MAX_REPAIRED_SHARDS)
          throw new DogfsError('INVALID_ARGUMENT', `shard index ${req.index} is out of range`);
        this.noteBadShard({
          blockGroupId: wireId(req.blockGroupId, 'block group id'),
          index: req.index,
          chunkServerId: req.chunkServerId,
          reason: req.reason.slice(0, MAX_REPORT_REASON_CHARS),
          atMs: Date.now(),
        });
        this.log.warn('bad shard reported', {
          blockGroupId: req.blockGroupId,
          index: req.index,
          server: req.chunkServerId,
          reason: req.reason.slice(0, MAX_REPORT_REASON_CHARS),
        });
        return {};
      },
      RegisterChunkServer: async (req, ctx) => {
        await this.ensureClusterId(ctx.deadline);
        // The id never changes once set: another cluster's server is refused without a Raft entry (it
        // asks again every 30 s, and each entry would stay in the log). The state machine checks again.
        const ours = this.cluster.state.clusterId;
        if (req.clusterId !== '' && ours !== '' && req.clusterId !== ours) {
          const refusal = this.cluster.state.refusal(req.id, req.clusterId);
          this.log.warn('chunk server of another cluster refused', {
            server: req.id.slice(0, 128),
            error: refusal,
          });
          throw new DogfsError('FAILED_PRECONDITION', refusal);
        }
        const result = await this.proposeCluster(
          {
            op: 'register',
            timeMs: this.clusterNow(),
            id: req.id,
            dataAddr: req.addr,
            controlAddr: req.controlAddr,
            failureDomain: req.failureDomain,
            capacityBytes: req.capacityBytes,
            usedBytes: req.usedBytes,
            clusterId: req.clusterId,
            indexed: true,
          },
          ctx.deadline,
        );
        if (!result.ok) {
          if (result.code === 'FAILED_PRECONDITION')
            this.log.warn('chunk server of another cluster refused', {
              server: req.id,
              error: result.message,
            });
          raise(result);
        }
        if (result.op !== 'register') throw new DogfsError('INTERNAL', `register answered ${result.op}`);
        return { heartbeatIntervalMs: result.heartbeatIntervalMs, clusterId: result.clusterId };
      },
      Heartbeat: async (req, ctx) => {
        this.host.requireLeader(CLUSTER_GROUP);
        this.notesOfThisTerm();
        const now = Date.now();
        const stateNow = this.clusterNow();
        const known = this.cluster.state.server(req.id);
        // A server this replica does not know registers first: answered from here, not with a Raft entry
        // and an fsync on every replica per heartbeat of any id anyone sends (and what it says of shards
        // is not taken either). A registration this new leader has not applied yet costs one more.
        if (known === undefined) return { reregister: true, repairPaths: [] };
        // Liveness is the leader's memory between commits: a heartbeat is committed (one Raft entry and
        // fsync on every replica) only every third of the dead-timeout, or when the server is dead — not
        // once a second per chunk server, which kept the metadata servers busy while idle.
        let result: { reregister: boolean; dead: boolean } = { reregister: false, dead: false };
        if (
          known.state !== 'alive' ||
          stateNow - known.lastHeartbeatMs >= this.cluster.state.settings.deadAfterMs / 3
        ) {
          const committed = await this.proposeCluster(
            {
              op: 'heartbeat',
              timeMs: stateNow,
              id: req.id,
              capacityBytes: req.capacityBytes,
              usedBytes: req.usedBytes,
              shardCount: req.shardCount,
              activeTransfers: req.activeTransfers,
              indexed: true,
            },
            ctx.deadline,
          );
          if (!committed.ok) raise(committed);
          if (committed.op !== 'heartbeat')
            throw new DogfsError('INTERNAL', `heartbeat answered ${committed.op}`);
          result = committed;
        }
        this.lastSeen.set(req.id, now);
        for (const shard of req.corruptShards.slice(0, MAX_REPAIR_SUSPECTS)) {
          if (
            !Number.isSafeInteger(shard.blockGroupId) ||
            shard.blockGroupId <= 0 ||
            shard.index >= MAX_REPAIRED_SHARDS
          )
            continue;
          if (this.badShards.has(copyKey(req.id, shard.blockGroupId, shard.index))) continue;
          this.noteBadShard({
            blockGroupId: shard.blockGroupId,
            index: shard.index,
            chunkServerId: req.id,
            reason: 'the chunk server found it corrupt',
            atMs: now,
          });
        }
        if (result.dead) {
          // What a server back from the dead holds may have changed while it was away: asked for anew.
          this.inventoried.delete(req.id);
          const alive = await this.proposeCluster(
            { op: 'markAlive', timeMs: this.clusterNow(), id: req.id },
            ctx.deadline,
          );
          if (alive.ok) this.log.info('chunk server alive again', { server: req.id });
        }
        const inventoried = this.inventoried.get(req.id) === this.host.status(CLUSTER_GROUP).term;
        let repairPaths: string[] = [];
        if (this.autoRepair !== undefined && known !== undefined) {
          if (req.repairs) this.repairWorkers.add(req.id);
          else this.repairWorkers.delete(req.id);
          const repairing = req.repairing
            .slice(0, MAX_REPAIRING_NAMED)
            .filter((path) => path.length > 0 && path.length <= MAX_PATH_BYTES);
          repairPaths = this.autoRepair.heartbeat(req.id, req.repairs, repairing, now);
          this.autoRepair.noteUnfinished(
            req.id,
            req.repairFailures
              .slice(0, MAX_REPAIR_FAILURES_NAMED)
              .filter((f) => f.path.length > 0 && f.path.length <= MAX_PATH_BYTES)
              .map((f) => ({ path: f.path, reason: printable(f.reason.slice(0, MAX_REPORT_REASON_CHARS)) })),
            now,
          );
        }
        return { reregister: result.reregister || !inventoried, repairPaths };
      },
      BlockReport: (req) => {
        this.host.requireLeader(CLUSTER_GROUP);
        this.notesOfThisTerm();
        // Only from registered servers: each report in progress holds a set of up to MAX_RECONCILED_SHARDS
        // keys, which ids made up on the wire must not multiply.
        if (this.cluster.state.server(req.id) === undefined)
          throw new DogfsError(
            'FAILED_PRECONDITION',
            `chunk server '${req.id.slice(0, 128)}' is not registered`,
          );
        // A server busy sending a large report sends no heartbeat meanwhile: it is alive all the same.
        this.lastSeen.set(req.id, Date.now());
        // Inventories are soft state (GFS/HDFS style): kept by whichever node receives them, rebuilt after
        // a restart from the next reports. A whole report (first..last pages to this leader) is
        // reconciled with the namespace: recorded shards it lacks are checked and noted missing.
        if (req.first) this.reportsInProgress.set(req.id, new Set());
        if (!this.reportsInProgress.has(req.id)) return {}; // its first page went to another leader
        let named = this.reportsInProgress.get(req.id);
        if (named !== undefined && named.size + req.shards.length > MAX_RECONCILED_SHARDS) {
          this.log.warn('block report too large to reconcile; counted only', { server: req.id });
          named = undefined;
          this.reportsInProgress.set(req.id, undefined);
        }
        for (const info of req.shards) {
          const id = info.shard;
          if (named !== undefined && id) named.add(shardKey(id.blockGroupId, id.index));
        }
        if (req.last) {
          this.reportsInProgress.delete(req.id);
          this.inventoried.set(req.id, this.host.status(CLUSTER_GROUP).term);
          // One reconciliation per server at a time (each walks the namespace); a report finished while
          // one runs waits for it, the latest only (reports come again only when this leader asks, or
          // hourly: one dropped here would not be replaced for an hour).
          if (named !== undefined) {
            if (this.reconciling.has(req.id)) this.reportsWaiting.set(req.id, named);
            else this.startReconciliation(req.id, named);
          }
        }
        return {};
      },
      ClusterReport: async (req, ctx) => {
        // Shard health is the cluster leader's soft state: only its answer is complete.
        this.host.requireLeader(CLUSTER_GROUP);
        this.notesOfThisTerm();
        await this.host.readBarrier(CLUSTER_GROUP, ctx.deadline);
        await this.host.readBarrier(NAMESPACE_GROUP, ctx.deadline);
        const damaged = this.damagedFiles(MAX_REPORTED_DAMAGED_FILES, req.damagedAfter);
        return {
          groups: this.host.groupIds().map((g) => {
            const s = this.host.status(g);
            return {
              group: g,
              leader: s.leaderAddr,
              term: s.term,
              commitIndex: s.commit,
              members: s.members.map(String),
            };
          }),
          chunkServers: this.cluster.state.servers().map((s) => ({
            id: s.id,
            addr: s.dataAddr,
            state: s.state,
            failureDomain: s.failureDomain,
            capacityBytes: s.capacityBytes,
            usedBytes: s.usedBytes,
            shardCount: s.shardCount,
            lastHeartbeatMs: s.lastHeartbeatMs,
            draining: s.draining,
          })),
          filesOnDrainingServers: damaged.onDraining,
          filesWithMissingShards: damaged.paths,
          filesWithMissingShardsCount: damaged.count,
          settings: this.cluster.state.settings,
          codecBackend: this.codecBackend,
          clusterId: this.cluster.state.clusterId,
          repairs: (this.autoRepair?.inProgress() ?? []).map((a) => ({
            path: a.path,
            chunkServerId: a.server,
            sinceMs: a.sinceMs,
          })),
          autoRepair: this.autoRepair !== undefined,
          unfinishedRepairs: (this.autoRepair?.unfinishedRepairs() ?? [])
            .slice(0, MAX_REPORTED_DAMAGED_FILES)
            .map((u) => ({ path: u.path, reason: u.reason, chunkServerId: u.server })),
          autoRepairDelayMs: this.autoRepair?.limits.delayMs ?? 0,
          rebalancing: this.rebalance
            .sheddingServers()
            .map((s) => ({ id: s.id, usedFraction: s.usage, clusterFraction: s.mean })),
        };
      },
      PlanRepair: async (req, ctx) => {
        this.host.requireLeader(CLUSTER_GROUP);
        this.notesOfThisTerm();
        if (req.suspects.length > MAX_REPAIR_SUSPECTS)
          throw new DogfsError('INVALID_ARGUMENT', `at most ${MAX_REPAIR_SUSPECTS} suspect shards`);
        const suspects = new Set(
          req.suspects.map((s) => shardKey(wireId(s.blockGroupId, 'block group id'), s.index)),
        );
        await this.host.readBarrier(NAMESPACE_GROUP, ctx.deadline);
        const found = this.namespace.state.stat(req.path);
        if (!found.ok) raise(found);
        if (found.inode.type !== 'file')
          throw new DogfsError('IS_A_DIRECTORY', `${found.path}: is a directory`);
        const blockGroups: Init<BlockGroupRepair>[] = [];
        for (const bg of found.inode.blockGroups) {
          // Shards on a server being drained move elsewhere too (the repairer copies them from there), but
          // they can still be read, and come after the lost ones: when targets run short, what is lost is rebuilt first, and a group
          // with more than M lost counting the drained ones is still rebuilt from them.
          const lost = this.missingShards(bg, suspects);
          const readable = this.missingShards(bg, suspects, true).filter((i) => !lost.includes(i));
          const missing = [...lost, ...readable];
          if (missing.length === 0) {
            // A file handed out as a rebalancing move (not any file `admin repair` names): one shard of
            // each group that can move.
            const move = this.movePaths.has(found.path) ? this.rebalanceMove(bg, true) : undefined;
            if (move !== undefined) blockGroups.push(move);
            continue;
          }
          blockGroups.push({
            blockGroup: this.blockGroupToWire(bg),
            missing,
            targets: this.repairTargets(bg, missing),
            readable,
          });
        }
        return { inode: this.inodeToWire(found.inode, false), blockGroups };
      },
      CommitRepair: async (req, ctx) => {
        this.host.requireLeader(NAMESPACE_GROUP);
        const ledTerm = this.host.status(NAMESPACE_GROUP).term;
        if (req.shards.length === 0 || req.shards.length > MAX_REPAIRED_SHARDS)
          throw new DogfsError('INVALID_ARGUMENT', `a repair names 1..${MAX_REPAIRED_SHARDS} shards`);
        // A leader new to its term may not have applied the last one's tail yet (the file, the block
        // group's latest locations): the checks below read the namespace.
        await this.host.readBarrier(NAMESPACE_GROUP, ctx.deadline);
        // A retry of a repair already applied (its answer lost) skips the checks, which judge the block
        // group as it is now, and gets the recorded answer through the proposal.
        const applied = this.namespace.state.recordedResult(sessionOf(req.session)) !== undefined;
        const found = this.namespace.state.stat(req.path);
        if (!found.ok && !applied) raise(found);
        const bg =
          found.ok && found.inode.type === 'file'
            ? found.inode.blockGroups.find((b) => b.id === req.blockGroupId)
            : undefined;
        if (bg === undefined && !applied)
          throw new DogfsError('NOT_FOUND', `block group ${req.blockGroupId} does not belong to ${req.path}`);
        // A copy waiting to be deleted as replaced may be the very one this repair takes back (a repair
        // reads back a copy it finds on its target): it is not deleted now, and one being deleted is
        // gone first, so the check below sees what will be there.
        // Until the new locations are applied here, the orphan sweep leaves these copies alone (it runs on
        // this node too: it leads the namespace group); one it is deleting already is waited for.
        const keys = req.shards.map((shard) => copyKey(shard.chunkServerId, req.blockGroupId, shard.index));
        for (const key of keys) this.repairsCommitting.set(key, (this.repairsCommitting.get(key) ?? 0) + 1);
        let result: NamespaceResult;
        let proposing = false;
        try {
          for (const key of keys) {
            this.pendingDeletes.delete(key);
            await this.deletingCopies.get(key);
          }
          if (bg !== undefined && !applied)
            await Promise.all(
              req.shards.map((shard) => this.verifyRebuilt(bg, shard, ctx.deadline, ledTerm)),
            );
          proposing = true;
          result = await this.proposeNamespace(
            {
              op: 'repairShards',
              timeMs: this.namespaceNow(),
              session: sessionOf(req.session),
              path: req.path,
              inodeId: inodeId(req.inodeId),
              blockGroupId: wireId<BlockGroupInfo['id']>(req.blockGroupId, 'block group id'),
              shards: req.shards.map((s) => ({
                index: s.index,
                server: s.chunkServerId,
                replaces: s.replaces,
                length: s.length,
                crc32c: s.crc32c,
              })),
            },
            ctx.deadline,
          );
        } catch (error) {
          // Timed out or cut off after proposing: the command may still commit later.
          if (proposing) this.noteUncertainRepair(keys, ledTerm);
          throw error;
        } finally {
          for (const key of keys) {
            const left = (this.repairsCommitting.get(key) ?? 1) - 1;
            if (left === 0) this.repairsCommitting.delete(key);
            else this.repairsCommitting.set(key, left);
          }
        }
        if (!result.ok) raise(result);
        if (result.op !== 'repairShards') throw new DogfsError('INTERNAL', `repair answered ${result.op}`);
        // The new locations are committed (and were verified on their servers): the replaced copies
        // (corrupt, or on a server that may come back) go, by the leader duty, retried while it can.
        for (const shard of req.shards) {
          if (shard.replaces === '' || this.pendingDeletes.size >= MAX_PENDING_DELETES) continue;
          this.pendingDeletes.set(copyKey(shard.replaces, req.blockGroupId, shard.index), {
            server: shard.replaces,
            blockGroupId: req.blockGroupId,
            index: shard.index,
            term: ledTerm,
            mtimeMs: 0,
          });
        }
        return { blockGroup: this.blockGroupToWire(result.blockGroup) };
      },
      SetSettings: async (req, ctx) => {
        this.host.requireLeader(CLUSTER_GROUP);
        // Merge onto every committed change (a new leader may not have applied them all yet).
        await this.host.readBarrier(CLUSTER_GROUP, ctx.deadline);
        const current = this.cluster.state.settings;
        const asked = req.settings;
        if (asked?.defaultEc) newEcPolicy(asked.defaultEc);
        // A server started with --ec overrides the setting for every file it creates: taking a new
        // setting would show one policy and apply another.
        if (asked?.defaultEc && this.defaultEc !== undefined && asked.defaultEc !== this.defaultEc)
          throw new DogfsError(
            'FAILED_PRECONDITION',
            `this metadata server runs with --ec ${this.defaultEc}, which overrides the cluster's default EC policy: restart the metadata servers without --ec to set it to ${asked.defaultEc}`,
          );
        const settings: ClusterSettings = {
          defaultEc: asked?.defaultEc || current.defaultEc,
          stripeSize: asked?.stripeSize || current.stripeSize,
          blockGroupMaxBytes: asked?.blockGroupMaxBytes || current.blockGroupMaxBytes,
          heartbeatIntervalMs: asked?.heartbeatIntervalMs || current.heartbeatIntervalMs,
          deadAfterMs: asked?.deadAfterMs || current.deadAfterMs,
          leaseMs: asked?.leaseMs || current.leaseMs,
        };
        // The policy of files that name none (this server's --ec, else the setting) must get a stripe it
        // can cut: K data cells of whole 4 KiB blocks (codec/stripe.ts). A smaller one was taken and then
        // failed every such write. (The state machine checks what it can alone: the setting's own policy
        // may not be the one in force.)
        const policy = ecPolicyOrUndefined(this.defaultEc ?? settings.defaultEc);
        if (
          policy !== undefined &&
          settings.stripeSize % 4096 === 0 &&
          settings.stripeSize < policy.dataShards * 4096
        )
          throw new DogfsError(
            'INVALID_ARGUMENT',
            `stripe size must be at least ${policy.dataShards * 4096} bytes for ${policy.name} (4 KiB per data shard)`,
          );
        const result = await this.proposeCluster(
          { op: 'setSettings', timeMs: this.clusterNow(), settings },
          ctx.deadline,
        );
        if (!result.ok) raise(result);
        if (result.op !== 'setSettings') throw new DogfsError('INTERNAL', `settings answered ${result.op}`);
        return { settings: result.settings };
      },
      RenewLease: async (req, ctx) => {
        const result = await this.leaseCommand('renewLease', req, ctx.deadline);
        if (result.op !== 'renewLease') throw new DogfsError('INTERNAL', `renew answered ${result.op}`);
        return { leaseExpiresMs: result.leaseExpiresMs };
      },
      AbandonFile: async (req, ctx) => {
        await this.leaseCommand('abandonFile', req, ctx.deadline);
        return {};
      },
      OpenSession: async (_req, ctx) => {
        const result = await this.proposeNamespace(
          { op: 'openSession', timeMs: this.namespaceNow(), nonce: randomBytes(8).toString('hex') },
          ctx.deadline,
        );
        if (!result.ok) raise(result);
        if (result.op !== 'openSession')
          throw new DogfsError('INTERNAL', `open session answered ${result.op}`);
        return { clientId: result.clientId };
      },
      SetDraining: async (req, ctx) => {
        this.host.requireLeader(CLUSTER_GROUP);
        // Nothing but automatic repair moves a drained server's shards: refused rather than left waiting.
        if (req.draining && this.autoRepair === undefined)
          throw new DogfsError(
            'FAILED_PRECONDITION',
            'automatic repair is off on the cluster leader (dogfs meta --repair-delay off), and nothing else would move the shards; run dogfs admin repair PATH for each file instead',
          );
        await this.host.readBarrier(CLUSTER_GROUP, ctx.deadline);
        const id = req.chunkServerId;
        if (this.cluster.state.server(id) === undefined)
          throw new DogfsError('NOT_FOUND', `chunk server '${id.slice(0, 128)}' is not registered`);
        const result = await this.proposeCluster(
          { op: 'setDraining', timeMs: this.clusterNow(), id, draining: req.draining },
          ctx.deadline,
        );
        if (!result.ok) raise(result);
        if (result.op !== 'setDraining')
          throw new DogfsError('INTERNAL', `setDraining answered ${result.op}`);
        if (result.changed)
          this.log.warn(req.draining ? 'chunk server draining' : 'chunk server no longer draining', {
            server: id,
          });
        return { changed: result.changed };
      },
      FindLeader: (req) => {
        const status = this.host.status(req.group);
        if (status.leaderAddr === '')
          throw new DogfsError('UNAVAILABLE', `group ${req.group} has no leader right now`);
        return { leaderAddr: status.leaderAddr, term: status.term };
      },
      MemberStatus: () => ({ groups: this.ownGroupViews() }),
    };
  }
}
