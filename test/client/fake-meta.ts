/**
 * A fake metadata service for client and CLI tests: an RpcServer with the Metadata service backed by an
 * in-memory tree, with the semantics the client relies on (see docs/ARCHITECTURE.md, "Client"):
 * sessions deduplicate retried mutations; Create returns a lease and a pending inode that is invisible
 * until CompleteFile; AllocateBlockGroup picks K+M registered chunk servers; CommitBlockGroup records
 * the shards; CompleteFile makes the file appear (replacing an old one atomically). Several instances can
 * share one state, one of them the leader, the others answering NOT_LEADER with a hint.
 */

import { join } from 'node:path';
import { compareNames } from '../../src/common/code-point-order.js';
import { DogfsError } from '../../src/wire/errors.js';
import {
  type BlockGroup,
  FileType,
  type Inode,
  type MetadataMethods,
  MetadataService,
} from '../../src/wire/gen/types.js';
import type { Init } from '../../src/wire/proto.js';
import { type RequestOf, RpcServer, type ServiceHandlers } from '../../src/wire/rpc.js';
import { type RunningChunk, startChunk } from '../chunk/helpers.js';

interface ChunkServer {
  id: string;
  addr: string;
  alive: boolean;
}

interface Pending {
  inode: Inode;
  path: string;
  leaseId: string;
  overwrite: boolean;
  expiresMs: number;
}

export interface FakeMetaOptions {
  /** Data bytes a block group may hold (sent as block_group.length at allocation); 0 = client default. */
  blockGroupBytes?: number;
  stripeSize?: number;
  defaultEc?: string;
  /** Write lease length (60 s); an expired lease refuses the writer's calls, as the real service does. */
  leaseMs?: number;
  /**
   * Combine commands as the real service does: Create with `allocate` answers with the first block group,
   * CompleteFile commits the `block_group` it carries. Off: an older service, which ignores both fields.
   */
  combined?: boolean;
}

/** The shared state: the tree, pending files, chunk servers, and a log of calls. */
export class FakeMetaState {
  readonly nodes = new Map<string, Inode>();
  readonly pending = new Map<number, Pending>();
  readonly chunkServers = new Map<string, ChunkServer>();
  readonly badShards: { blockGroupId: number; index: number; chunkServerId: string; reason: string }[] = [];
  readonly calls: string[] = [];
  readonly sessions = new Map<string, unknown>();
  /** Sessions OpenSession handed out (a test may delete one: the service forgot it). */
  readonly openSessions = new Set<string>();
  /** Ids the next OpenSession calls answer, in order (a lying server); then session-N. */
  readonly sessionIds: string[] = [];
  /** Per method: the next calls fail with these errors, one each, in order (fault injection). */
  readonly failInTurn = new Map<string, DogfsError[]>();
  /** Per method: how many more calls fail with this error (fault injection). */
  readonly failNext = new Map<string, { error: DogfsError; count: number }>();
  /** Per method: how many more calls are applied but answered as given up on (a lost reply). */
  readonly dropReply = new Map<string, number>();
  /**
   * Per method: after a dropped reply, the next call fails with this (e.g. a session forgotten meanwhile),
   * or the next `count` calls.
   */
  readonly failAfterDrop = new Map<string, DogfsError | { error: DogfsError; count: number }>();
  /** Per method: calls are applied at once but answered only when the promise resolves (a slow reply). */
  readonly holdReply = new Map<string, Promise<void>>();
  /** Chunk-server ids to place the next block groups on, in shard order (default: round robin). */
  placement: string[] | undefined;
  nextId = 100;
  options: FakeMetaOptions;

  constructor(options: FakeMetaOptions = {}) {
    this.options = options;
    this.nodes.set('/', this.inode(FileType.DIRECTORY, ''));
  }

  inode(type: FileType, ec: string): Inode {
    const now = Date.now();
    return {
      id: this.nextId++,
      type,
      mode: type === FileType.DIRECTORY ? 0o755 : 0o644,
      size: 0,
      mtimeMs: now,
      ctimeMs: now,
      ec,
      blockGroups: [],
    };
  }

  count(method: string): number {
    return this.calls.filter((c) => c === method).length;
  }
}

function parentOf(path: string): string {
  const i = path.lastIndexOf('/');
  return i <= 0 ? '/' : path.slice(0, i);
}

function checkPath(path: string): void {
  if (!path.startsWith('/')) throw new DogfsError('INVALID_ARGUMENT', `${path}: not an absolute path`);
  if (path === '/') return;
  for (const part of path.slice(1).split('/')) {
    if (
      part === '' ||
      part === '.' ||
      part === '..' ||
      part.includes('\0') ||
      Buffer.byteLength(part) > 255
    ) {
      throw new DogfsError('INVALID_ARGUMENT', `${path}: invalid path`);
    }
  }
}

function parseEc(ec: string): { k: number; m: number } {
  const rs = /^rs-(\d+)-(\d+)$/.exec(ec);
  if (rs) return { k: Number(rs[1]), m: Number(rs[2]) };
  const rep = /^replicate-(\d+)$/.exec(ec);
  if (rep) return { k: 1, m: Number(rep[1]) - 1 };
  throw new DogfsError('INVALID_ARGUMENT', `unknown EC policy '${ec}'`);
}

export class FakeMeta {
  readonly server = new RpcServer();
  readonly state: FakeMetaState;
  address = '';
  /** undefined: leader; a string: follower answering NOT_LEADER with this hint ('' = no hint). */
  leaderHint: string | undefined;
  /** Answer every call with NO_QUORUM. */
  noQuorum = false;

  constructor(state: FakeMetaState, leaderHint?: string) {
    this.state = state;
    this.leaderHint = leaderHint;
  }

  async start(): Promise<string> {
    this.server.addService(MetadataService, this.handlers());
    const port = await this.server.listen('127.0.0.1', 0);
    this.address = `127.0.0.1:${port}`;
    return this.address;
  }

  close(): Promise<void> {
    return this.server.close(0);
  }

  private gate(method: string): void {
    const s = this.state;
    s.calls.push(method);
    const next = s.failInTurn.get(method)?.shift();
    if (next !== undefined) throw next;
    const fail = s.failNext.get(method);
    if (fail !== undefined && fail.count > 0) {
      fail.count--;
      throw fail.error;
    }
    if (this.noQuorum) throw new DogfsError('NO_QUORUM', 'no quorum: cannot reach a majority');
    if (this.leaderHint !== undefined && method !== 'FindLeader') {
      throw new DogfsError(
        'NOT_LEADER',
        'not the leader',
        this.leaderHint === '' ? {} : { leaderHint: this.leaderHint },
      );
    }
  }

  /** Runs a mutation once per session stamp: a retry gets the first answer. */
  private once<T>(session: { clientId: string; seq: number } | null | undefined, run: () => T): T {
    if (!session || session.clientId === '') return run();
    // As the state machine: a command of a session that was never opened (or was forgotten) is refused.
    if (!this.state.openSessions.has(session.clientId))
      throw new DogfsError(
        'FAILED_PRECONDITION',
        `session expired: client ${session.clientId} seq ${session.seq} is unknown; open a new session`,
      );
    const key = `${session.clientId}/${session.seq}`;
    if (this.state.sessions.has(key)) return this.state.sessions.get(key) as T;
    const result = run();
    this.state.sessions.set(key, result);
    return result;
  }

  private handlers(): ServiceHandlers<MetadataMethods> {
    const s = this.state;
    const dir = (path: string): Inode => {
      const node = s.nodes.get(path);
      if (!node) throw new DogfsError('NOT_FOUND', `${path}: No such file or directory`);
      if (node.type !== FileType.DIRECTORY)
        throw new DogfsError('NOT_A_DIRECTORY', `${path}: Not a directory`);
      return node;
    };
    const mutate = <K extends keyof MetadataMethods>(
      method: K,
      run: (request: RequestOf<MetadataMethods, K>) => Init<MetadataMethods[K]['response']>,
    ) => {
      return (request: RequestOf<MetadataMethods, K>) => {
        this.gate(method);
        const session = (request as { session?: { clientId: string; seq: number } | null }).session;
        const result = this.once(session, () => run(request));
        const drops = s.dropReply.get(method) ?? 0;
        if (drops > 0) {
          s.dropReply.set(method, drops - 1);
          const then = s.failAfterDrop.get(method);
          if (then !== undefined) {
            s.failAfterDrop.delete(method);
            s.failNext.set(method, then instanceof DogfsError ? { error: then, count: 1 } : then);
          }
          // What a leader that lost its role answers for a command it had appended: the client cannot
          // tell whether it applied (here it did).
          throw new DogfsError(
            'UNAVAILABLE',
            'leadership was lost before the command committed (it may still commit)',
          );
        }
        const held = s.holdReply.get(method);
        return held === undefined ? result : held.then(() => result);
      };
    };
    /** A new block group of `p` at `offset` on K+M live chunk servers (UNAVAILABLE with fewer). */
    const allocate = (p: Pending, offset: number): Init<BlockGroup> => {
      const { k, m } = parseEc(p.inode.ec);
      const alive = [...s.chunkServers.values()].filter((c) => c.alive);
      if (alive.length < k + m) {
        throw new DogfsError('UNAVAILABLE', `need ${k + m} live chunk servers, ${alive.length} alive`);
      }
      const start = (s.nextId * 7) % alive.length;
      const id = s.nextId++;
      const block: Init<BlockGroup> = {
        id,
        dataShards: k,
        parityShards: m,
        stripeSize: s.options.stripeSize ?? 0,
        offset,
        length: s.options.blockGroupBytes ?? 0,
        shards: Array.from({ length: k + m }, (_, i) => {
          const placed = s.placement?.[i];
          if (placed === '') return { index: i, chunkServerId: '', addr: '', generation: 1 };
          const c = placed === undefined ? alive[(start + i) % alive.length]! : s.chunkServers.get(placed)!;
          return { index: i, chunkServerId: c.id, addr: c.addr, generation: 1 };
        }),
      };
      return block;
    };
    return {
      OpenSession: () => {
        this.gate('OpenSession');
        const clientId = s.sessionIds.shift() ?? `session-${s.nextId++}`;
        s.openSessions.add(clientId);
        return { clientId };
      },
      Mkdir: mutate('Mkdir', (r) => {
        checkPath(r.path);
        const existing = s.nodes.get(r.path);
        if (existing) {
          if (r.parents && existing.type === FileType.DIRECTORY) return { inode: existing };
          throw new DogfsError('ALREADY_EXISTS', `${r.path}: File exists`);
        }
        const parent = parentOf(r.path);
        if (!s.nodes.has(parent) && r.parents) {
          const parts = r.path.slice(1).split('/');
          let p = '';
          for (const part of parts.slice(0, -1)) {
            p += `/${part}`;
            const n = s.nodes.get(p);
            if (!n) s.nodes.set(p, s.inode(FileType.DIRECTORY, ''));
            else if (n.type !== FileType.DIRECTORY)
              throw new DogfsError('NOT_A_DIRECTORY', `${p}: Not a directory`);
          }
        }
        dir(parent);
        const inode = s.inode(FileType.DIRECTORY, '');
        s.nodes.set(r.path, inode);
        return { inode };
      }),
      Create: mutate('Create', (r) => {
        checkPath(r.path);
        const ec = r.ec === '' ? (s.options.defaultEc ?? 'rs-3-2') : r.ec;
        parseEc(ec);
        dir(parentOf(r.path));
        const existing = s.nodes.get(r.path);
        if (existing?.type === FileType.DIRECTORY)
          throw new DogfsError('IS_A_DIRECTORY', `${r.path}: Is a directory`);
        if (existing && !r.overwrite) throw new DogfsError('ALREADY_EXISTS', `${r.path}: File exists`);
        const inode = s.inode(FileType.FILE, ec);
        if (r.complete) {
          s.nodes.set(r.path, inode);
          return { inode, leaseId: '', leaseExpiresMs: 0 };
        }
        const leaseId = `lease-${inode.id}`;
        const expiresMs = inode.ctimeMs + (s.options.leaseMs ?? 60_000);
        const pending = { inode, path: r.path, leaseId, overwrite: r.overwrite, expiresMs };
        s.pending.set(inode.id, pending);
        if (!r.allocate || !s.options.combined) return { inode, leaseId, leaseExpiresMs: expiresMs };
        // As the real service: too few chunk servers, and the create goes alone (Allocate says why).
        let blockGroup: Init<BlockGroup> | undefined;
        try {
          blockGroup = allocate(pending, 0);
        } catch {
          blockGroup = undefined;
        }
        return { inode, leaseId, leaseExpiresMs: expiresMs, blockGroup };
      }),
      AllocateBlockGroup: mutate('AllocateBlockGroup', (r) => {
        const p = this.lease(r.inodeId, r.leaseId);
        return { blockGroup: allocate(p, r.offset) };
      }),
      CommitBlockGroup: mutate('CommitBlockGroup', (r) => {
        const p = this.lease(r.inodeId, r.leaseId);
        const block = r.blockGroup;
        if (!block) throw new DogfsError('INVALID_ARGUMENT', 'no block group');
        p.inode.blockGroups.push(block);
        return {};
      }),
      CompleteFile: mutate('CompleteFile', (r) => {
        const p = this.lease(r.inodeId, r.leaseId);
        // An older service ignores the block group (and then finds it uncommitted: the sizes differ).
        const last = s.options.combined && r.blockGroup ? [r.blockGroup] : [];
        const total = [...p.inode.blockGroups, ...last].reduce((a, b) => a + b.length, 0);
        if (total !== r.size)
          throw new DogfsError('INVALID_ARGUMENT', `size ${r.size} but block groups hold ${total}`);
        p.inode.blockGroups.push(...last);
        p.inode.size = r.size;
        p.inode.mtimeMs = Date.now();
        const existing = s.nodes.get(p.path);
        if (existing && !p.overwrite) throw new DogfsError('ALREADY_EXISTS', `${p.path}: File exists`);
        s.nodes.set(p.path, p.inode);
        s.pending.delete(r.inodeId);
        return { inode: p.inode };
      }),
      Stat: (r) => {
        this.gate('Stat');
        checkPath(r.path);
        const inode = s.nodes.get(r.path);
        if (!inode) throw new DogfsError('NOT_FOUND', `${r.path}: No such file or directory`);
        return { inode };
      },
      List: (r) => {
        this.gate('List');
        dir(r.path);
        const prefix = r.path === '/' ? '/' : `${r.path}/`;
        const names = [...s.nodes.keys()]
          .filter((p) => p !== r.path && p.startsWith(prefix) && !p.slice(prefix.length).includes('/'))
          .map((p) => p.slice(prefix.length))
          .filter((n) => compareNames(n, r.startAfter) > 0)
          .sort(compareNames);
        const limit = r.limit === 0 ? 1000 : r.limit;
        const page = names.slice(0, limit);
        return {
          entries: page.map((name) => ({ name, inode: s.nodes.get(prefix + name)! })),
          more: names.length > limit,
        };
      },
      Rename: mutate('Rename', (r) => {
        checkPath(r.src);
        checkPath(r.dst);
        const node = s.nodes.get(r.src);
        if (!node) throw new DogfsError('NOT_FOUND', `${r.src}: No such file or directory`);
        if (r.dst === r.src || r.dst.startsWith(`${r.src}/`)) {
          throw new DogfsError('INVALID_ARGUMENT', `${r.dst}: cannot move a directory into itself`);
        }
        dir(parentOf(r.dst));
        if (s.nodes.has(r.dst)) throw new DogfsError('ALREADY_EXISTS', `${r.dst}: File exists`);
        for (const [p, n] of [...s.nodes.entries()]) {
          if (p === r.src || p.startsWith(`${r.src}/`)) {
            s.nodes.delete(p);
            s.nodes.set(r.dst + p.slice(r.src.length), n);
          }
        }
        return {};
      }),
      Delete: mutate('Delete', (r) => {
        checkPath(r.path);
        const node = s.nodes.get(r.path);
        if (!node) throw new DogfsError('NOT_FOUND', `${r.path}: No such file or directory`);
        if (r.path === '/') throw new DogfsError('INVALID_ARGUMENT', '/: cannot delete the root');
        const children = [...s.nodes.keys()].filter((p) => p.startsWith(`${r.path}/`));
        if (children.length > 0 && !r.recursive)
          throw new DogfsError('NOT_EMPTY', `${r.path}: Directory not empty`);
        for (const p of children) s.nodes.delete(p);
        s.nodes.delete(r.path);
        return {};
      }),
      ReportBadShard: (r) => {
        this.gate('ReportBadShard');
        s.badShards.push({ ...r });
        return {};
      },
      RegisterChunkServer: (r) => {
        s.calls.push('RegisterChunkServer');
        s.chunkServers.set(r.id, { id: r.id, addr: r.addr, alive: true });
        return { heartbeatIntervalMs: 1000 };
      },
      Heartbeat: (r) => ({ reregister: !s.chunkServers.has(r.id) }),
      BlockReport: () => ({}),
      ClusterReport: () => {
        this.gate('ClusterReport');
        return {
          groups: [{ group: 0, leader: this.address, term: 3, commitIndex: 42, members: [this.address] }],
          chunkServers: [...s.chunkServers.values()].map((c) => ({
            id: c.id,
            addr: c.addr,
            state: c.alive ? 'alive' : 'dead',
            failureDomain: 'default',
            capacityBytes: 1 << 30,
            usedBytes: 0,
            shardCount: 0,
            lastHeartbeatMs: Date.now(),
          })),
          filesWithMissingShards: [],
          codecBackend: 'test',
        };
      },
      FindLeader: () => {
        this.gate('FindLeader');
        return { leaderAddr: this.leaderHint ?? this.address, term: 3 };
      },
      AbandonFile: mutate('AbandonFile', (r) => {
        this.lease(r.inodeId, r.leaseId);
        this.state.pending.delete(r.inodeId);
        return {};
      }),
      RenewLease: mutate('RenewLease', (r) => {
        const p = this.lease(r.inodeId, r.leaseId);
        p.expiresMs = Date.now() + (s.options.leaseMs ?? 60_000);
        return { leaseExpiresMs: p.expiresMs };
      }),
      SetSettings: () => {
        throw new DogfsError('UNIMPLEMENTED', 'the fake has no settings');
      },
      PlanRepair: () => {
        throw new DogfsError('UNIMPLEMENTED', 'the fake has no repair');
      },
      CommitRepair: () => {
        throw new DogfsError('UNIMPLEMENTED', 'the fake has no repair');
      },
      SetDraining: () => {
        throw new DogfsError('UNIMPLEMENTED', 'the fake has no chunk servers');
      },
      MemberStatus: () => {
        throw new DogfsError('UNIMPLEMENTED', 'the fake has no Raft groups');
      },
      ComposeFile: () => {
        throw new DogfsError('UNIMPLEMENTED', 'the fake composes nothing (the real service is tested)');
      },
    };
  }

  private lease(inodeId: number, leaseId: string): Pending {
    const p = this.state.pending.get(inodeId);
    if (!p || p.leaseId !== leaseId)
      throw new DogfsError('FAILED_PRECONDITION', `no lease ${leaseId} on inode ${inodeId}`);
    if (Date.now() > p.expiresMs)
      throw new DogfsError('FAILED_PRECONDITION', `lease ${leaseId} on inode ${inodeId} expired`);
    return p;
  }
}

/** One leader plus `followers` followers sharing a state; followers answer NOT_LEADER with the hint. */
export async function startFakeMetaCluster(
  followers = 0,
  options: FakeMetaOptions = {},
): Promise<{ state: FakeMetaState; leader: FakeMeta; followers: FakeMeta[]; close: () => Promise<void> }> {
  const state = new FakeMetaState(options);
  const leader = new FakeMeta(state);
  await leader.start();
  const rest: FakeMeta[] = [];
  for (let i = 0; i < followers; i++) {
    const f = new FakeMeta(state, leader.address);
    await f.start();
    rest.push(f);
  }
  return {
    state,
    leader,
    followers: rest,
    close: async () => {
      await Promise.all([leader, ...rest].map((m) => m.close()));
    },
  };
}

/** Starts real `dogfs chunk` processes (scrubber off) under `dir` and registers them with the fake. */
export async function startChunkServers(
  state: FakeMetaState,
  dir: string,
  ids: string[],
): Promise<RunningChunk[]> {
  const started = await Promise.all(
    ids.map((id) => startChunk(join(dir, id), ['--id', id, '--scrub-rate', '0', '--log-level', 'info'])),
  );
  started.forEach((chunk, i) => {
    state.chunkServers.set(ids[i]!, { id: ids[i]!, addr: chunk.dataAddr, alive: true });
  });
  return started;
}
