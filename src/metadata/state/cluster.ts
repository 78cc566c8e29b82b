/**
 * metadata/state/cluster — the state machine of group 0, "cluster" (DESIGN §3 Groups): the chunk-server
 * registry, liveness decisions and cluster settings. Deterministic like the namespace: time comes in the
 * command (`timeMs`, from the leader), never from a clock.
 *
 * Commands (all idempotent by construction, so they need no client session — a chunk server's retried
 * heartbeat or registration just sets the same values again):
 * - `register`: a chunk server announces itself (after every start); it is alive from then on.
 * - `heartbeat`: capacity, usage, shard count, load; records `lastHeartbeatMs = timeMs`. An unknown id
 *   gets `reregister: true`. A *dead* server's heartbeat is recorded but does not revive it: the result
 *   says `dead: true` and the leader decides, by proposing `markAlive`.
 * - `declareDead { id, silentSinceMs, silentThroughIndex }`: proposed by the leader when a server's last
 *   heartbeat is older than `deadAfterMs`. A compare-and-set: applied only when the server's last
 *   heartbeat is still at or before `silentSinceMs` and, by log index, at or before `silentThroughIndex`
 *   (the leader's applied index when it judged), so a heartbeat committed in between wins the race on
 *   every replica alike. The time alone could tie: a heartbeat stamped by a leader whose clock is behind
 *   the state's gets the state's time, which may be the very millisecond judged by. Log indexes do not
 *   tie; heartbeats and registrations record theirs (`indexed`), entries logged before they did record
 *   none (0, on every replica: see HeartbeatCommand.indexed) and are judged by time alone, as before.
 * - `markAlive { id }`: the leader saw a dead server heartbeat again.
 * - `setSettings`: default EC policy, stripe size, block-group size, heartbeat/dead timing, lease length.
 * - `initCluster { clusterId }`: gives the cluster its identity, once (the first leader proposes a random
 *   one; later proposals change nothing and answer the id in force). A chunk server registering names the
 *   cluster it belongs to (`register.clusterId`, '' when new) and is refused by any other: its shards are
 *   another cluster's, which this one's garbage collection and orphan sweep must never touch (HDFS keeps
 *   a clusterID in every storage directory for the same reason).
 * - `setDraining { id, draining }`: an operator drains a server (`dogfs admin drain`) or stops draining
 *   it: placement skips it, and automatic repair moves its shards elsewhere (ChunkServerRecord.draining).
 *
 * Reads: `servers()` (sorted by id), `server(id)`, `placementCandidates()` (not draining), `silentServers(nowMs)`
 * (what the leader should declare dead), `settings`. Snapshot: `snapshot()` / `ClusterState.restore()`
 * (the registry is small: one record per chunk server) and `stateHash()`.
 *
 * Not here yet: the shard map (slot → namespace group and its members), which arrives with sharding.
 */
import { createHash } from 'node:crypto';
import { assert } from '../../common/assert.js';
import { isClusterId, MAX_CLUSTER_ID_CHARS } from '../../common/cluster-id.js';
import { DEFAULT_EC_POLICY, parseEcPolicy } from '../../common/ec-policy.js';
import { type ErrorCode, isErrorCode } from '../../wire/errors.js';
import { ByteReader, ByteWriter, StateCodecError } from './bytes.js';
import {
  MAX_BLOCK_GROUP_BYTES,
  MAX_EC_NAME_BYTES,
  MAX_LEASE_MS,
  MAX_SERVER_ID_BYTES,
  MAX_STRIPE_SIZE,
  MIN_STRIPE_SIZE,
} from './commands.js';
import { utf8Length } from './paths.js';
import type { PlacementCandidate } from './placement.js';
import { type Failure, fail } from './result.js';

export const MAX_CHUNK_SERVERS = 10_000;
export const MAX_ADDRESS_BYTES = 256;
export const MAX_FAILURE_DOMAIN_BYTES = 128;

export type ServerState = 'alive' | 'dead';

export interface ChunkServerRecord {
  readonly id: string;
  /** Data-transfer address (host:port). */
  readonly dataAddr: string;
  /** gRPC control address (host:port). */
  readonly controlAddr: string;
  /** Failure-domain label (rack, host, zone); '' = unlabeled. */
  readonly failureDomain: string;
  readonly capacityBytes: number;
  readonly usedBytes: number;
  readonly shardCount: number;
  readonly activeTransfers: number;
  readonly state: ServerState;
  /** Leader time of the last register or heartbeat. */
  readonly lastHeartbeatMs: number;
  /** Log index of the last register or heartbeat if that entry recorded it (`indexed`), else 0. */
  readonly lastHeartbeatIndex: number;
  readonly registeredMs: number;
  /** Leader time at which `state` last changed. */
  readonly stateSinceMs: number;
  /**
   * Being drained (decommissioned) by an operator: no new shards are placed on it, and automatic repair
   * moves the ones it holds to other servers, reading them from the rest of their block groups. It keeps
   * serving reads meanwhile; once it holds nothing the metadata records, it can be stopped for good.
   */
  readonly draining: boolean;
}

export interface ClusterSettings {
  readonly defaultEc: string;
  readonly stripeSize: number;
  readonly blockGroupMaxBytes: number;
  readonly heartbeatIntervalMs: number;
  /** Silence after which the leader proposes declareDead. */
  readonly deadAfterMs: number;
  /** Write-lease length given to creates. */
  readonly leaseMs: number;
}

export const DEFAULT_CLUSTER_SETTINGS: ClusterSettings = {
  defaultEc: DEFAULT_EC_POLICY,
  // 6 MiB: 1 MiB cells under the default rs-6-3, as HDFS's RS-6-3-1024k. Each cell then goes to its
  // chunk server as one whole data-transfer packet, sent from the stripe buffer as it is; cells of a
  // 1 MiB stripe (168 KiB) were copied into packet buffers first. ARCHITECTURE.md has the figures.
  stripeSize: 6 << 20,
  blockGroupMaxBytes: 6 * 256 * (1 << 20),
  heartbeatIntervalMs: 1000,
  deadAfterMs: 10_000,
  leaseMs: 60_000,
};

interface Base {
  readonly timeMs: number;
}
export interface RegisterCommand extends Base {
  readonly op: 'register';
  readonly id: string;
  readonly dataAddr: string;
  readonly controlAddr: string;
  readonly failureDomain: string;
  readonly capacityBytes: number;
  readonly usedBytes: number;
  /** The cluster the chunk server belongs to ('' when it has never registered anywhere). */
  readonly clusterId: string;
  /** As HeartbeatCommand.indexed. */
  readonly indexed?: boolean;
}
export interface HeartbeatCommand extends Base {
  readonly op: 'heartbeat';
  readonly id: string;
  readonly capacityBytes: number;
  readonly usedBytes: number;
  readonly shardCount: number;
  readonly activeTransfers: number;
  /**
   * The entry records its log index as the server's `lastHeartbeatIndex` (every leader sets it since
   * 2026-11-28). Entries logged before carry no such field and record 0, as snapshots from before hold:
   * a replica that replays them and one that restores a snapshot covering them must agree.
   */
  readonly indexed?: boolean;
}
export interface DeclareDeadCommand extends Base {
  readonly op: 'declareDead';
  readonly id: string;
  readonly silentSinceMs: number;
  /**
   * The leader's applied index when it judged the server silent: a heartbeat recorded at a later index
   * keeps the server alive, whatever its time. Absent in entries from before 2026-11-28 (time only).
   */
  readonly silentThroughIndex?: number;
}
export interface MarkAliveCommand extends Base {
  readonly op: 'markAlive';
  readonly id: string;
}
export interface SetSettingsCommand extends Base {
  readonly op: 'setSettings';
  readonly settings: ClusterSettings;
}
export interface InitClusterCommand extends Base {
  readonly op: 'initCluster';
  readonly clusterId: string;
}
export interface SetDrainingCommand extends Base {
  readonly op: 'setDraining';
  readonly id: string;
  readonly draining: boolean;
}
export type ClusterCommand =
  | RegisterCommand
  | HeartbeatCommand
  | DeclareDeadCommand
  | MarkAliveCommand
  | SetSettingsCommand
  | InitClusterCommand
  | SetDrainingCommand;
export type ClusterOp = ClusterCommand['op'];

export interface ClusterResultPayloads {
  register: { readonly heartbeatIntervalMs: number; readonly clusterId: string };
  heartbeat: { readonly reregister: boolean; readonly dead: boolean };
  declareDead: { readonly changed: boolean };
  markAlive: { readonly changed: boolean };
  setSettings: { readonly settings: ClusterSettings };
  initCluster: { readonly clusterId: string; readonly changed: boolean };
  setDraining: { readonly changed: boolean };
}
export type ClusterSuccess<K extends ClusterOp> = {
  readonly ok: true;
  readonly op: K;
} & ClusterResultPayloads[K];
export type ClusterResultOf<K extends ClusterOp> = K extends ClusterOp ? ClusterSuccess<K> | Failure : never;
export type ClusterResult = { [K in ClusterOp]: ClusterSuccess<K> }[ClusterOp] | Failure;

function checkText(value: string, what: string, min: number, max: number): Failure | undefined {
  const bytes = utf8Length(value);
  if (bytes < min || bytes > max)
    return fail('INVALID_ARGUMENT', `${what} must be ${min}..${max} bytes of UTF-8`);
  return undefined;
}

function checkCount(value: number, what: string): Failure | undefined {
  if (!Number.isSafeInteger(value) || value < 0)
    return fail('INVALID_ARGUMENT', `${what} must be a non-negative integer`);
  return undefined;
}

export function checkSettings(s: ClusterSettings): Failure | undefined {
  try {
    parseEcPolicy(s.defaultEc);
  } catch (error) {
    return fail('INVALID_ARGUMENT', (error as Error).message);
  }
  if (!Number.isInteger(s.stripeSize) || s.stripeSize < MIN_STRIPE_SIZE || s.stripeSize > MAX_STRIPE_SIZE)
    return fail('INVALID_ARGUMENT', `stripe size must be ${MIN_STRIPE_SIZE}..${MAX_STRIPE_SIZE} bytes`);
  if (s.stripeSize % 4096 !== 0) return fail('INVALID_ARGUMENT', 'stripe size must be a multiple of 4096');
  if (
    !Number.isSafeInteger(s.blockGroupMaxBytes) ||
    s.blockGroupMaxBytes < s.stripeSize ||
    s.blockGroupMaxBytes > MAX_BLOCK_GROUP_BYTES
  )
    return fail('INVALID_ARGUMENT', `block-group size must be stripe size..${MAX_BLOCK_GROUP_BYTES} bytes`);
  if (
    !Number.isInteger(s.heartbeatIntervalMs) ||
    s.heartbeatIntervalMs < 10 ||
    s.heartbeatIntervalMs > 600_000
  )
    return fail('INVALID_ARGUMENT', 'heartbeat interval must be 10..600000 ms');
  if (
    !Number.isInteger(s.deadAfterMs) ||
    s.deadAfterMs < 2 * s.heartbeatIntervalMs ||
    s.deadAfterMs > 86_400_000
  )
    return fail(
      'INVALID_ARGUMENT',
      'dead-after must be at least two heartbeat intervals (and at most a day)',
    );
  if (!Number.isInteger(s.leaseMs) || s.leaseMs < 1000 || s.leaseMs > MAX_LEASE_MS)
    return fail('INVALID_ARGUMENT', `lease must be 1000..${MAX_LEASE_MS} ms`);
  return undefined;
}

export class ClusterState {
  private readonly registry = new Map<string, ChunkServerRecord>();
  private current: ClusterSettings;
  private clockMs = 0;
  private identity = '';

  constructor(settings: ClusterSettings = DEFAULT_CLUSTER_SETTINGS) {
    assert(checkSettings(settings) === undefined, 'initial cluster settings are valid');
    this.current = settings;
  }

  get settings(): ClusterSettings {
    return this.current;
  }

  get timeMs(): number {
    return this.clockMs;
  }

  /** Why a chunk server naming cluster `claimed` is refused here. */
  refusal(serverId: string, claimed: string): string {
    return `chunk server '${serverId.slice(0, 128)}' belongs to cluster ${claimed.slice(0, MAX_CLUSTER_ID_CHARS)}, not to this one (${this.identity || 'not initialised yet'}): started with another cluster's --meta, or its directory comes from another cluster (if this cluster's metadata was re-created on purpose and the server's old shards may go, remove cluster-id from its directory)`;
  }

  /** The cluster's identity ('' until initCluster is applied). */
  get clusterId(): string {
    return this.identity;
  }

  /** Applies `cmd`, the entry at log `index` (heartbeats and registrations may record it). */
  apply<C extends ClusterCommand>(cmd: C, index: number): ClusterResultOf<C['op']> {
    return this.applyAny(cmd, index) as ClusterResultOf<C['op']>;
  }

  applyEncoded(bytes: Uint8Array, index: number): ClusterResult {
    let cmd: ClusterCommand;
    try {
      cmd = decodeClusterCommand(bytes);
    } catch (error) {
      if (!(error instanceof StateCodecError)) throw error;
      return fail('INVALID_ARGUMENT', error.message);
    }
    return this.applyAny(cmd, index);
  }

  private applyAny(cmd: ClusterCommand, index: number): ClusterResult {
    assert(Number.isSafeInteger(index) && index > 0, `a command applies at a log index, not ${index}`);
    if (!Number.isSafeInteger(cmd.timeMs) || cmd.timeMs < 0)
      return fail('INVALID_ARGUMENT', 'bad command time');
    if (cmd.timeMs > this.clockMs) this.clockMs = cmd.timeMs;
    const now = this.clockMs;
    if (cmd.op === 'setSettings') {
      const bad = checkSettings(cmd.settings);
      if (bad) return bad;
      this.current = { ...cmd.settings };
      return { ok: true, op: 'setSettings', settings: this.current };
    }
    if (cmd.op === 'initCluster') {
      if (this.identity !== '')
        return { ok: true, op: 'initCluster', clusterId: this.identity, changed: false };
      if (!isClusterId(cmd.clusterId))
        return fail('INVALID_ARGUMENT', 'a cluster id is 8..64 characters of 0-9, a-z and -');
      this.identity = cmd.clusterId;
      return { ok: true, op: 'initCluster', clusterId: this.identity, changed: true };
    }
    const badId = checkText(cmd.id, 'chunk server id', 1, MAX_SERVER_ID_BYTES);
    if (badId) return badId;
    const known = this.registry.get(cmd.id);
    assert(
      known === undefined || known.lastHeartbeatIndex < index,
      `entry ${index} applies after the heartbeat recorded at ${known?.lastHeartbeatIndex}`,
    );
    const beatIndex = (c: RegisterCommand | HeartbeatCommand) => (c.indexed === true ? index : 0);
    switch (cmd.op) {
      case 'register': {
        const bad =
          checkText(cmd.dataAddr, 'data address', 1, MAX_ADDRESS_BYTES) ??
          checkText(cmd.controlAddr, 'control address', 0, MAX_ADDRESS_BYTES) ??
          checkText(cmd.failureDomain, 'failure domain', 0, MAX_FAILURE_DOMAIN_BYTES) ??
          checkCount(cmd.capacityBytes, 'capacity') ??
          checkCount(cmd.usedBytes, 'used bytes');
        if (bad) return bad;
        if (cmd.clusterId !== '' && cmd.clusterId !== this.identity)
          return fail('FAILED_PRECONDITION', this.refusal(cmd.id, cmd.clusterId));
        if (known === undefined && this.registry.size >= MAX_CHUNK_SERVERS)
          return fail('FAILED_PRECONDITION', `at most ${MAX_CHUNK_SERVERS} chunk servers`);
        this.registry.set(cmd.id, {
          id: cmd.id,
          dataAddr: cmd.dataAddr,
          controlAddr: cmd.controlAddr,
          failureDomain: cmd.failureDomain,
          capacityBytes: cmd.capacityBytes,
          usedBytes: cmd.usedBytes,
          shardCount: known?.shardCount ?? 0,
          activeTransfers: 0,
          state: 'alive',
          lastHeartbeatMs: now,
          lastHeartbeatIndex: beatIndex(cmd),
          registeredMs: now,
          stateSinceMs: known?.state === 'alive' ? known.stateSinceMs : now,
          // A server registering again (a restart) is still being drained.
          draining: known?.draining ?? false,
        });
        return {
          ok: true,
          op: 'register',
          heartbeatIntervalMs: this.current.heartbeatIntervalMs,
          clusterId: this.identity,
        };
      }
      case 'heartbeat': {
        const bad =
          checkCount(cmd.capacityBytes, 'capacity') ??
          checkCount(cmd.usedBytes, 'used bytes') ??
          checkCount(cmd.shardCount, 'shard count') ??
          checkCount(cmd.activeTransfers, 'active transfers');
        if (bad) return bad;
        if (known === undefined) return { ok: true, op: 'heartbeat', reregister: true, dead: false };
        this.registry.set(cmd.id, {
          ...known,
          capacityBytes: cmd.capacityBytes,
          usedBytes: cmd.usedBytes,
          shardCount: cmd.shardCount,
          activeTransfers: cmd.activeTransfers,
          lastHeartbeatMs: now,
          lastHeartbeatIndex: beatIndex(cmd),
        });
        return { ok: true, op: 'heartbeat', reregister: false, dead: known.state === 'dead' };
      }
      case 'declareDead': {
        const bad =
          checkCount(cmd.silentSinceMs, 'silent since') ??
          (cmd.silentThroughIndex === undefined
            ? undefined
            : checkCount(cmd.silentThroughIndex, 'silent through index'));
        if (bad) return bad;
        if (known === undefined) return fail('NOT_FOUND', `chunk server ${cmd.id} is not registered`);
        const heardSince =
          known.lastHeartbeatMs > cmd.silentSinceMs ||
          (cmd.silentThroughIndex !== undefined && known.lastHeartbeatIndex > cmd.silentThroughIndex);
        if (known.state === 'dead' || heardSince) return { ok: true, op: 'declareDead', changed: false };
        this.registry.set(cmd.id, { ...known, state: 'dead', stateSinceMs: now });
        return { ok: true, op: 'declareDead', changed: true };
      }
      case 'markAlive': {
        if (known === undefined) return fail('NOT_FOUND', `chunk server ${cmd.id} is not registered`);
        if (known.state === 'alive') return { ok: true, op: 'markAlive', changed: false };
        this.registry.set(cmd.id, { ...known, state: 'alive', stateSinceMs: now });
        return { ok: true, op: 'markAlive', changed: true };
      }
      case 'setDraining': {
        if (known === undefined) return fail('NOT_FOUND', `chunk server ${cmd.id} is not registered`);
        if (known.draining === cmd.draining) return { ok: true, op: 'setDraining', changed: false };
        this.registry.set(cmd.id, { ...known, draining: cmd.draining });
        return { ok: true, op: 'setDraining', changed: true };
      }
    }
  }

  server(id: string): ChunkServerRecord | undefined {
    return this.registry.get(id);
  }

  /** Every registered chunk server, sorted by id. */
  servers(): ChunkServerRecord[] {
    return [...this.registry.values()].sort((a, b) => (a.id < b.id ? -1 : a.id > b.id ? 1 : 0));
  }

  /** Servers new shards may go to (placement skips dead ones itself): not those being drained. */
  placementCandidates(): PlacementCandidate[] {
    return this.servers().filter((s) => !s.draining);
  }

  /** Alive servers whose last heartbeat is older than `deadAfterMs` at `nowMs` (leader's clock). */
  silentServers(nowMs: number): { id: string; silentSinceMs: number }[] {
    return this.servers()
      .filter((s) => s.state === 'alive' && nowMs - s.lastHeartbeatMs > this.current.deadAfterMs)
      .map((s) => ({ id: s.id, silentSinceMs: s.lastHeartbeatMs }));
  }

  snapshot(): Uint8Array {
    const w = new ByteWriter(256);
    w.u8(CLUSTER_FORMAT_VERSION).uint(this.clockMs);
    writeSettings(w, this.current);
    const servers = this.servers();
    w.uint(servers.length);
    for (const s of servers) {
      w.string(s.id).string(s.dataAddr).string(s.controlAddr).string(s.failureDomain);
      w.uint(s.capacityBytes).uint(s.usedBytes).uint(s.shardCount).uint(s.activeTransfers);
      w.bool(s.state === 'dead')
        .uint(s.lastHeartbeatMs)
        .uint(s.registeredMs)
        .uint(s.stateSinceMs);
    }
    // Last, so that a snapshot written before cluster ids existed still reads (as '').
    w.string(this.identity);
    // After it, so that a snapshot written before heartbeats recorded their index still reads (as 0).
    w.uint(servers.length);
    for (const s of servers) w.uint(s.lastHeartbeatIndex);
    // After them, and only when there are any: a snapshot of a cluster that never drained a server reads
    // as before, in this version and the last.
    const draining = servers.filter((s) => s.draining);
    if (draining.length > 0) {
      w.uint(draining.length);
      for (const s of draining) w.string(s.id);
    }
    return w.finish();
  }

  /** Throws StateCodecError on malformed bytes. */
  static restore(bytes: Uint8Array): ClusterState {
    const r = new ByteReader(bytes, 'cluster snapshot');
    r.version(CLUSTER_FORMAT_VERSION);
    const clockMs = r.uint('clock');
    const settings = readSettings(r);
    if (checkSettings(settings) !== undefined)
      throw new StateCodecError('cluster snapshot: invalid settings');
    const state = new ClusterState(settings);
    state.clockMs = clockMs;
    const n = r.count('servers', MAX_CHUNK_SERVERS);
    const ids: string[] = [];
    for (let i = 0; i < n; i++) {
      const record: ChunkServerRecord = {
        id: r.string('id', MAX_SERVER_ID_BYTES),
        dataAddr: r.string('data address', MAX_ADDRESS_BYTES),
        controlAddr: r.string('control address', MAX_ADDRESS_BYTES),
        failureDomain: r.string('failure domain', MAX_FAILURE_DOMAIN_BYTES),
        capacityBytes: r.uint('capacity'),
        usedBytes: r.uint('used'),
        shardCount: r.uint('shard count'),
        activeTransfers: r.uint('active transfers'),
        state: r.bool('dead') ? 'dead' : 'alive',
        lastHeartbeatMs: r.uint('last heartbeat'),
        lastHeartbeatIndex: 0,
        registeredMs: r.uint('registered'),
        stateSinceMs: r.uint('state since'),
        draining: false,
      };
      if (state.registry.has(record.id))
        throw new StateCodecError(`cluster snapshot: server ${record.id} twice`);
      state.registry.set(record.id, record);
      ids.push(record.id);
    }
    if (r.remaining > 0) {
      const clusterId = r.string('cluster id', MAX_CLUSTER_ID_CHARS);
      if (clusterId !== '' && !isClusterId(clusterId))
        throw new StateCodecError('cluster snapshot: invalid cluster id');
      state.identity = clusterId;
    }
    if (r.remaining > 0) {
      if (r.count('heartbeat indexes', MAX_CHUNK_SERVERS) !== n)
        throw new StateCodecError('cluster snapshot: heartbeat indexes do not match the servers');
      for (const id of ids) {
        const record = state.registry.get(id)!;
        state.registry.set(id, { ...record, lastHeartbeatIndex: r.uint('last heartbeat index') });
      }
    }
    if (r.remaining > 0) {
      const count = r.count('draining servers', MAX_CHUNK_SERVERS);
      if (count === 0) throw new StateCodecError('cluster snapshot: an empty list of draining servers');
      for (let i = 0; i < count; i++) {
        const id = r.string('draining server', MAX_SERVER_ID_BYTES);
        const record = state.registry.get(id);
        if (record === undefined || record.draining)
          throw new StateCodecError(`cluster snapshot: draining server ${id.slice(0, 64)} unknown or twice`);
        state.registry.set(id, { ...record, draining: true });
      }
    }
    r.end();
    return state;
  }

  stateHash(): string {
    return createHash('sha256').update(this.snapshot()).digest('hex');
  }
}

const CLUSTER_FORMAT_VERSION = 1;
const CLUSTER_OP_TAGS: Record<ClusterOp, number> = {
  register: 1,
  heartbeat: 2,
  declareDead: 3,
  markAlive: 4,
  setSettings: 5,
  initCluster: 6,
  setDraining: 7,
};
const CLUSTER_OPS_BY_TAG = new Map<number, ClusterOp>(
  (Object.entries(CLUSTER_OP_TAGS) as [ClusterOp, number][]).map(([op, tag]) => [tag, op]),
);

function writeSettings(w: ByteWriter, s: ClusterSettings): void {
  w.string(s.defaultEc).uint(s.stripeSize).uint(s.blockGroupMaxBytes).uint(s.heartbeatIntervalMs);
  w.uint(s.deadAfterMs).uint(s.leaseMs);
}

function readSettings(r: ByteReader): ClusterSettings {
  return {
    defaultEc: r.string('default ec', MAX_EC_NAME_BYTES),
    stripeSize: r.uint('stripe size'),
    blockGroupMaxBytes: r.uint('block group max bytes'),
    heartbeatIntervalMs: r.uint('heartbeat interval'),
    deadAfterMs: r.uint('dead after'),
    leaseMs: r.uint('lease ms'),
  };
}

export function encodeClusterCommand(cmd: ClusterCommand): Uint8Array {
  const w = new ByteWriter(64);
  w.u8(CLUSTER_FORMAT_VERSION).u8(CLUSTER_OP_TAGS[cmd.op]).uint(cmd.timeMs);
  switch (cmd.op) {
    case 'register':
      w.string(cmd.id).string(cmd.dataAddr).string(cmd.controlAddr).string(cmd.failureDomain);
      w.uint(cmd.capacityBytes).uint(cmd.usedBytes);
      // Last: a register entry logged before cluster ids existed still reads (as '').
      w.string(cmd.clusterId);
      // The fields added later are written only when present, so an entry without them reads back as
      // it was logged before they existed, and keeps its meaning.
      if (cmd.indexed !== undefined) w.bool(cmd.indexed);
      break;
    case 'heartbeat':
      w.string(cmd.id)
        .uint(cmd.capacityBytes)
        .uint(cmd.usedBytes)
        .uint(cmd.shardCount)
        .uint(cmd.activeTransfers);
      if (cmd.indexed !== undefined) w.bool(cmd.indexed);
      break;
    case 'declareDead':
      w.string(cmd.id).uint(cmd.silentSinceMs);
      if (cmd.silentThroughIndex !== undefined) w.uint(cmd.silentThroughIndex);
      break;
    case 'markAlive':
      w.string(cmd.id);
      break;
    case 'setSettings':
      writeSettings(w, cmd.settings);
      break;
    case 'initCluster':
      w.string(cmd.clusterId);
      break;
    case 'setDraining':
      w.string(cmd.id).bool(cmd.draining);
      break;
  }
  return w.finish();
}

/** `indexed` when the entry carries it (logged since it exists), else nothing: see encodeClusterCommand. */
function indexedField(r: ByteReader): { indexed?: boolean } {
  return r.remaining > 0 ? { indexed: r.bool('indexed') } : {};
}

/** Throws StateCodecError on malformed bytes. */
export function decodeClusterCommand(bytes: Uint8Array): ClusterCommand {
  const r = new ByteReader(bytes, 'cluster command');
  r.version(CLUSTER_FORMAT_VERSION);
  const tag = r.u8('op');
  const op = CLUSTER_OPS_BY_TAG.get(tag);
  if (op === undefined) throw new StateCodecError(`cluster command: unknown op tag ${tag}`);
  const timeMs = r.uint('time');
  const id = () => r.string('id', MAX_SERVER_ID_BYTES);
  let cmd: ClusterCommand;
  switch (op) {
    case 'register':
      cmd = {
        op,
        timeMs,
        id: id(),
        dataAddr: r.string('data address', MAX_ADDRESS_BYTES),
        controlAddr: r.string('control address', MAX_ADDRESS_BYTES),
        failureDomain: r.string('failure domain', MAX_FAILURE_DOMAIN_BYTES),
        capacityBytes: r.uint('capacity'),
        usedBytes: r.uint('used'),
        clusterId: r.remaining > 0 ? r.string('cluster id', MAX_CLUSTER_ID_CHARS) : '',
        ...indexedField(r),
      };
      break;
    case 'heartbeat':
      cmd = {
        op,
        timeMs,
        id: id(),
        capacityBytes: r.uint('capacity'),
        usedBytes: r.uint('used'),
        shardCount: r.uint('shard count'),
        activeTransfers: r.uint('active transfers'),
        ...indexedField(r),
      };
      break;
    case 'declareDead':
      cmd = {
        op,
        timeMs,
        id: id(),
        silentSinceMs: r.uint('silent since'),
        ...(r.remaining > 0 ? { silentThroughIndex: r.uint('silent through index') } : {}),
      };
      break;
    case 'markAlive':
      cmd = { op, timeMs, id: id() };
      break;
    case 'setSettings':
      cmd = { op, timeMs, settings: readSettings(r) };
      break;
    case 'initCluster':
      cmd = { op, timeMs, clusterId: r.string('cluster id', MAX_CLUSTER_ID_CHARS) };
      break;
    case 'setDraining':
      cmd = { op, timeMs, id: id(), draining: r.bool('draining') };
      break;
  }
  r.end();
  return cmd;
}

/** Encodes a cluster result (for hosts that store or forward results as bytes). */
export function encodeClusterResult(result: ClusterResult): Uint8Array {
  const w = new ByteWriter(64);
  w.u8(CLUSTER_FORMAT_VERSION);
  if (!result.ok) {
    w.u8(0).string(result.code).string(result.message);
    return w.finish();
  }
  w.u8(CLUSTER_OP_TAGS[result.op]);
  switch (result.op) {
    case 'register':
      w.uint(result.heartbeatIntervalMs).string(result.clusterId);
      break;
    case 'heartbeat':
      w.bool(result.reregister).bool(result.dead);
      break;
    case 'declareDead':
    case 'markAlive':
    case 'setDraining':
      w.bool(result.changed);
      break;
    case 'setSettings':
      writeSettings(w, result.settings);
      break;
    case 'initCluster':
      w.string(result.clusterId).bool(result.changed);
      break;
  }
  return w.finish();
}

export function decodeClusterResult(bytes: Uint8Array): ClusterResult {
  const r = new ByteReader(bytes, 'cluster result');
  r.version(CLUSTER_FORMAT_VERSION);
  const tag = r.u8('op');
  let result: ClusterResult;
  if (tag === 0) {
    const code = r.string('code', 64);
    if (!isErrorCode(code)) throw new StateCodecError(`cluster result: unknown error code '${code}'`);
    result = { ok: false, code: code as ErrorCode, message: r.string('message') };
  } else {
    const op = CLUSTER_OPS_BY_TAG.get(tag);
    if (op === undefined) throw new StateCodecError(`cluster result: unknown op tag ${tag}`);
    switch (op) {
      case 'register':
        result = {
          ok: true,
          op,
          heartbeatIntervalMs: r.uint('heartbeat interval'),
          clusterId: r.remaining > 0 ? r.string('cluster id', MAX_CLUSTER_ID_CHARS) : '',
        };
        break;
      case 'heartbeat':
        result = { ok: true, op, reregister: r.bool('reregister'), dead: r.bool('dead') };
        break;
      case 'declareDead':
      case 'markAlive':
      case 'setDraining':
        result = { ok: true, op, changed: r.bool('changed') };
        break;
      case 'setSettings':
        result = { ok: true, op, settings: readSettings(r) };
        break;
      case 'initCluster':
        result = {
          ok: true,
          op,
          clusterId: r.string('cluster id', MAX_CLUSTER_ID_CHARS),
          changed: r.bool('changed'),
        };
        break;
    }
  }
  r.end();
  return result;
}
