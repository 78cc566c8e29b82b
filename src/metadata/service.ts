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
 * - The leader's duties run on timers: declaring silent chunk servers dead (group 0) and expiring write
 *   leases (group 1). Placement of new block groups reads this node's replica of group 0.
 */
import { randomInt } from 'node:crypto';
import type { Logger } from '../common/log.js';
import type { LogIndex } from '../consensus/index.js';
import type { RaftHost, StateMachine } from '../raftnode/host.js';
import { DogfsError } from '../wire/errors.js';
import type { MetadataMethods } from '../wire/gen/types.js';
import {
  type BlockGroup,
  type ClientSession,
  FileType,
  MetadataService,
  type Inode as WireInode,
} from '../wire/gen/types.js';
import type { Init } from '../wire/proto.js';
import type { RpcServer, ServiceHandlers } from '../wire/rpc.js';
import {
  type BlockGroupInfo,
  type ClusterCommand,
  type ClusterResult,
  ClusterState,
  encodeClusterCommand,
  encodeNamespaceCommand,
  type Failure,
  type Inode,
  type InodeId,
  type NamespaceCommand,
  type NamespaceResult,
  NamespaceState,
  placeBlockGroup,
  type Session,
  StateCodecError,
} from './state/index.js';

export const CLUSTER_GROUP = 0;
export const NAMESPACE_GROUP = 1;
/** How often the leader looks for silent chunk servers and expired leases. */
const DUTY_INTERVAL_MS = 1000;
const MAX_BAD_SHARD_REPORTS = 10_000;

class NamespaceMachine implements StateMachine {
  state = new NamespaceState({ group: NAMESPACE_GROUP });
  apply(_index: LogIndex, command: Uint8Array): NamespaceResult {
    return this.state.applyEncoded(command);
  }
  snapshot(): Uint8Array {
    return this.state.snapshot();
  }
  restore(data: Uint8Array): void {
    this.state = NamespaceState.restore(data);
  }
}

class ClusterMachine implements StateMachine {
  state = new ClusterState();
  apply(_index: LogIndex, command: Uint8Array): ClusterResult {
    return this.state.applyEncoded(command);
  }
  snapshot(): Uint8Array {
    return this.state.snapshot();
  }
  restore(data: Uint8Array): void {
    this.state = ClusterState.restore(data);
  }
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

export interface BadShardReport {
  readonly blockGroupId: number;
  readonly index: number;
  readonly chunkServerId: string;
  readonly reason: string;
  readonly atMs: number;
}

export class MetadataNode {
  private readonly namespace = new NamespaceMachine();
  private readonly cluster = new ClusterMachine();
  private readonly badShards: BadShardReport[] = [];
  private readonly inventories = new Map<string, number>();
  private duties: NodeJS.Timeout | undefined;

  constructor(
    private readonly host: RaftHost,
    private readonly log: Logger,
    private readonly codecBackend: string,
    /** From `--ec`: every metadata server of a cluster is started with the same value. */
    private readonly defaultEc?: string,
  ) {
    host.addGroup(CLUSTER_GROUP, this.cluster);
    host.addGroup(NAMESPACE_GROUP, this.namespace);
  }

  start(server: RpcServer): void {
    server.addService(MetadataService, this.handlers());
    this.duties = setInterval(() => void this.runLeaderDuties(), DUTY_INTERVAL_MS);
  }

  stop(): void {
    if (this.duties) clearInterval(this.duties);
  }

  private async proposeNamespace(command: NamespaceCommand, deadline: number): Promise<NamespaceResult> {
    const bytes = encodeOrRefuse(() => encodeNamespaceCommand(command));
    return (await this.host.propose(NAMESPACE_GROUP, bytes, deadline)) as NamespaceResult;
  }

  private async proposeCluster(command: ClusterCommand, deadline: number): Promise<ClusterResult> {
    const bytes = encodeOrRefuse(() => encodeClusterCommand(command));
    return (await this.host.propose(CLUSTER_GROUP, bytes, deadline)) as ClusterResult;
  }

  /** Leader-only work: each node does it for the groups it leads, so exactly the leaders act. */
  private async runLeaderDuties(): Promise<void> {
    const deadline = Date.now() + DUTY_INTERVAL_MS * 5;
    try {
      if (this.host.isLeader(CLUSTER_GROUP)) {
        const now = Date.now();
        for (const silent of this.cluster.state.silentServers(now)) {
          const result = await this.proposeCluster({ op: 'declareDead', timeMs: now, ...silent }, deadline);
          if (result.ok)
            this.log.warn('chunk server declared dead', {
              server: silent.id,
              silentSinceMs: silent.silentSinceMs,
            });
        }
      }
      if (this.host.isLeader(NAMESPACE_GROUP)) {
        const now = Date.now();
        const earliest = this.namespace.state.earliestLeaseExpiryMs();
        if (earliest !== undefined && earliest <= now) {
          await this.proposeNamespace(
            { op: 'expireLeases', timeMs: now, expiresAtOrBeforeMs: now },
            deadline,
          );
        }
      }
    } catch (error) {
      // Lost leadership or quorum mid-duty: the next leader repeats it; nothing is half done.
      this.log.debug('leader duty interrupted', { error });
    }
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

  private handlers(): ServiceHandlers<MetadataMethods> {
    return {
      Mkdir: async (req, ctx) => {
        const result = await this.proposeNamespace(
          {
            op: 'mkdir',
            timeMs: Date.now(),
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
        const settings = this.cluster.state.settings;
        const result = await this.proposeNamespace(
          {
            op: 'create',
            timeMs: Date.now(),
            session: sessionOf(req.session),
            path: req.path,
            overwrite: req.overwrite,
            mode: req.mode || 0o644,
            ec: req.ec,
            defaultEc: this.defaultEc ?? settings.defaultEc,
            leaseMs: settings.leaseMs,
          },
          ctx.deadline,
        );
        if (!result.ok) raise(result);
        if (result.op !== 'create') throw new DogfsError('INTERNAL', `create answered ${result.op}`);
        return {
          inode: this.inodeToWire(result.inode),
          leaseId: result.leaseId,
          leaseExpiresMs: result.leaseExpiresMs,
        };
      },
      AllocateBlockGroup: async (req, ctx) => {
        const id = inodeId(req.inodeId);
        this.host.requireLeader(NAMESPACE_GROUP);
        const pending = this.namespace.state.pendingFile(id);
        if (pending === undefined || pending.leaseId !== req.leaseId) {
          throw new DogfsError(
            'FAILED_PRECONDITION',
            `no write in progress for inode ${id} under that lease (expired or superseded?)`,
          );
        }
        const settings = this.cluster.state.settings;
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
            timeMs: Date.now(),
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
            timeMs: Date.now(),
            session: sessionOf(req.session),
            inodeId: inodeId(req.inodeId),
            leaseId: req.leaseId,
            blockGroupId: wireId<BlockGroupInfo['id']>(bg.id, 'block group id'),
            length: bg.length,
            shards: bg.shards.map((s) => ({
              index: s.index,
              length: s.length,
              crc32c: s.crc32c,
              durable: s.durable,
            })),
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
            timeMs: Date.now(),
            session: sessionOf(req.session),
            inodeId: inodeId(req.inodeId),
            leaseId: req.leaseId,
            size: req.size,
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
            timeMs: Date.now(),
            session: sessionOf(req.session),
            src: req.src,
            dst: req.dst,
            noReplace: false,
          },
          ctx.deadline,
        );
        if (!result.ok) raise(result);
        return {};
      },
      Delete: async (req, ctx) => {
        const result = await this.proposeNamespace(
          {
            op: 'delete',
            timeMs: Date.now(),
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
        if (this.badShards.length >= MAX_BAD_SHARD_REPORTS) this.badShards.shift();
        this.badShards.push({
          blockGroupId: req.blockGroupId,
          index: req.index,
          chunkServerId: req.chunkServerId,
          reason: req.reason.slice(0, 200),
          atMs: Date.now(),
        });
        this.log.warn('bad shard reported', {
          blockGroupId: req.blockGroupId,
          index: req.index,
          server: req.chunkServerId,
          reason: req.reason.slice(0, 200),
        });
        return {};
      },
      RegisterChunkServer: async (req, ctx) => {
        const result = await this.proposeCluster(
          {
            op: 'register',
            timeMs: Date.now(),
            id: req.id,
            dataAddr: req.addr,
            controlAddr: req.controlAddr,
            failureDomain: req.failureDomain,
            capacityBytes: req.capacityBytes,
            usedBytes: req.usedBytes,
          },
          ctx.deadline,
        );
        if (!result.ok) raise(result);
        if (result.op !== 'register') throw new DogfsError('INTERNAL', `register answered ${result.op}`);
        return { heartbeatIntervalMs: result.heartbeatIntervalMs };
      },
      Heartbeat: async (req, ctx) => {
        const now = Date.now();
        const result = await this.proposeCluster(
          {
            op: 'heartbeat',
            timeMs: now,
            id: req.id,
            capacityBytes: req.capacityBytes,
            usedBytes: req.usedBytes,
            shardCount: req.shardCount,
            activeTransfers: req.activeTransfers,
          },
          ctx.deadline,
        );
        if (!result.ok) raise(result);
        if (result.op !== 'heartbeat') throw new DogfsError('INTERNAL', `heartbeat answered ${result.op}`);
        if (result.dead) {
          const alive = await this.proposeCluster({ op: 'markAlive', timeMs: now, id: req.id }, ctx.deadline);
          if (alive.ok) this.log.info('chunk server alive again', { server: req.id });
        }
        return { reregister: result.reregister };
      },
      BlockReport: (req) => {
        // Inventories are soft state (GFS/HDFS style): kept by whichever node receives them, rebuilt after
        // a restart from the next reports. Used for missing-shard detection and repair.
        const before = req.first ? 0 : (this.inventories.get(req.id) ?? 0);
        this.inventories.set(req.id, before + req.shards.length);
        return {};
      },
      ClusterReport: async (_req, ctx) => {
        await this.host.readBarrier(CLUSTER_GROUP, ctx.deadline);
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
          })),
          filesWithMissingShards: [],
          codecBackend: this.codecBackend,
        };
      },
      FindLeader: (req) => {
        const status = this.host.status(req.group);
        if (status.leaderAddr === '')
          throw new DogfsError('UNAVAILABLE', `group ${req.group} has no leader right now`);
        return { leaderAddr: status.leaderAddr, term: status.term };
      },
    };
  }
}
