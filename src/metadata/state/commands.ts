/**
 * metadata/state/commands — the namespace state machine's vocabulary: its records (inodes, block groups),
 * its commands (one Raft log entry each), its results, and their byte encodings (bytes.ts format).
 *
 * A command carries `timeMs`, stamped by the leader when proposing: the state machine never reads a clock.
 * Client commands carry a `session` (client id, sequence number, and `ackedBelow` — every seq below it has
 * been answered) for exactly-once application; leader-internal commands (lease expiry, garbage
 * collection) carry none and are idempotent by construction.
 */
import { MAX_TOTAL_SHARDS } from '../../common/ec-policy.js';
import { type ErrorCode, isErrorCode } from '../../wire/errors.js';
import { ByteReader, ByteWriter, StateCodecError } from './bytes.js';
import type { BlockGroupId, InodeId } from './ids.js';
import { MAX_PATH_BYTES } from './paths.js';
import type { Failure } from './result.js';

// ---- limits (explicit, so a command can never ask for unbounded work or memory) ----
export const MAX_CLIENT_ID_BYTES = 128;
export const MAX_SERVER_ID_BYTES = 128;
export const MAX_LEASE_ID_BYTES = 32;
export const MAX_SESSION_NONCE_BYTES = 32;
export const MAX_EC_NAME_BYTES = 32;
export const MAX_BLOCK_GROUPS_PER_FILE = 65_536;
/** Files one composeFile may join (S3's limit on the parts of a multipart upload). */
export const MAX_COMPOSE_SOURCES = 10_000;
export const MAX_LIST_LIMIT = 1000;
export const MAX_GARBAGE_PER_COLLECT = 10_000;
export const MAX_LEASE_MS = 3_600_000;
export const MAX_MESSAGE_BYTES = 1 << 20;
/** Stripe and block-group sizes a command may ask for. */
export const MIN_STRIPE_SIZE = 4096;
export const MAX_STRIPE_SIZE = 64 << 20;
export const MAX_BLOCK_GROUP_BYTES = 2 ** 40;
/** Mode bits a caller may set (permissions, setuid/setgid/sticky); the type comes from the command. */
export const MODE_MASK = 0o7777;

// ---- records ----
export type FileType = 'file' | 'dir';

/** One block group of a file: K data + M parity shards, shard i on `servers[i]` ('' = no target). */
export interface BlockGroupInfo {
  readonly id: BlockGroupId;
  /** File offset of the block group's first byte. */
  readonly offset: number;
  /** File bytes it holds: 0 until committed. */
  readonly length: number;
  readonly dataShards: number;
  readonly parityShards: number;
  readonly stripeSize: number;
  /** The most file bytes it may hold (cluster setting at allocation). */
  readonly maxBytes: number;
  readonly committed: boolean;
  readonly servers: readonly string[];
  /** Per shard index, once committed (empty before): bytes stored, CRC32C of the whole shard. */
  readonly shardLengths: readonly number[];
  readonly crcs: readonly number[];
  /** Bit i set: shard i was acknowledged durable (after fsync) at commit. */
  readonly durableMask: number;
}

export interface FileInode {
  readonly type: 'file';
  readonly id: InodeId;
  readonly mode: number;
  readonly size: number;
  readonly mtimeMs: number;
  readonly ctimeMs: number;
  readonly ec: string;
  readonly blockGroups: readonly BlockGroupInfo[];
}

export interface DirInode {
  readonly type: 'dir';
  readonly id: InodeId;
  readonly mode: number;
  readonly mtimeMs: number;
  readonly ctimeMs: number;
  /** EC policy inherited by new files below ('' = inherit from the parent, then the cluster default). */
  readonly ec: string;
}

export type Inode = FileInode | DirInode;

export interface DirEntry {
  readonly name: string;
  readonly inode: Inode;
}

// ---- commands ----
export interface Session {
  readonly clientId: string;
  /** 1, 2, 3, ... per client id. */
  readonly seq: number;
  /** Every seq below this has been answered and may be forgotten (0 or 1: none yet). */
  readonly ackedBelow: number;
  /**
   * Logged before sessions were opened explicitly (openSession): such a command opens its own unknown
   * session when it is the session's first, as it did when it was applied first (consensus/sessions.ts).
   * Leaders never write it now.
   */
  readonly implicitOpen?: true | undefined;
}

interface CommandBase {
  /** Leader's clock when proposing, ms since the epoch. */
  readonly timeMs: number;
  readonly session?: Session | undefined;
}

/** mkdir [-p]: `ec` ('' = inherit) is recorded on the new directory (with parents, on the last one). */
export interface MkdirCommand extends CommandBase {
  readonly op: 'mkdir';
  readonly path: string;
  readonly parents: boolean;
  readonly mode: number;
  readonly ec: string;
}

/**
 * Starts writing a file. Nothing appears at `path` until completeFile. `ec` '' = inherit from the nearest
 * ancestor with a policy, else `defaultEc` (the cluster default, filled in by the leader from group 0).
 */
export interface CreateCommand extends CommandBase {
  readonly op: 'create';
  readonly path: string;
  readonly overwrite: boolean;
  readonly mode: number;
  readonly ec: string;
  readonly defaultEc: string;
  /** How long the write lease lasts without activity (leader's setting). */
  readonly leaseMs: number;
  /** An empty file that appears at once (no lease, no completeFile). */
  readonly complete?: boolean | undefined;
  /**
   * Also allocates the file's first block group (one command where a write took two): the leader's
   * placement for the policy it expected. When the policy resolved at apply time needs a different
   * number of shards, the file is created without a block group and the writer allocates one itself.
   */
  readonly firstBlockGroup?: FirstBlockGroup | undefined;
}

/** What allocateBlockGroup carries besides the file: the leader's settings and placement. */
export interface FirstBlockGroup {
  readonly stripeSize: number;
  readonly maxBytes: number;
  readonly servers: readonly string[];
}

/** Adds the next block group to a file being written; `servers` were chosen by the leader's placement. */
export interface AllocateBlockGroupCommand extends CommandBase {
  readonly op: 'allocateBlockGroup';
  readonly inodeId: InodeId;
  readonly leaseId: string;
  readonly offset: number;
  readonly stripeSize: number;
  readonly maxBytes: number;
  readonly servers: readonly string[];
}

export interface ShardCommit {
  readonly index: number;
  readonly length: number;
  readonly crc32c: number;
  readonly durable: boolean;
}

export interface CommitBlockGroupCommand extends CommandBase, BlockGroupCommit {
  readonly op: 'commitBlockGroup';
  readonly inodeId: InodeId;
  readonly leaseId: string;
}

export interface CompleteFileCommand extends CommandBase {
  readonly op: 'completeFile';
  readonly inodeId: InodeId;
  readonly leaseId: string;
  readonly size: number;
  /**
   * Commits the file's last block group first, in the same command (one command where a write took
   * two): all or nothing — a commit or a completion that would be refused refuses both.
   */
  readonly commit?: BlockGroupCommit | undefined;
}

/** What commitBlockGroup carries besides the file. */
export interface BlockGroupCommit {
  readonly blockGroupId: BlockGroupId;
  readonly length: number;
  readonly shards: readonly ShardCommit[];
}

/** The writer is still at work (a block group can take longer than a lease): the lease starts again. */
export interface RenewLeaseCommand extends CommandBase {
  readonly op: 'renewLease';
  readonly inodeId: InodeId;
  readonly leaseId: string;
}

/**
 * Opens a client session under an id the state machine makes from its id counter and the leader's random
 * `nonce` (`s<counter>.<nonce>`): no id is ever handed out twice (a retried open only opens another
 * session, which expires unused), and none can be guessed from another (sessions are not authenticated,
 * but one client should not stamp another's by counting).
 */
export interface OpenSessionCommand extends CommandBase {
  readonly op: 'openSession';
  readonly nonce: string;
}

/** The writer gives up: nothing appears, the block groups become garbage. */
export interface AbandonFileCommand extends CommandBase {
  readonly op: 'abandonFile';
  readonly inodeId: InodeId;
  readonly leaseId: string;
}

export interface RenameCommand extends CommandBase {
  readonly op: 'rename';
  readonly src: string;
  readonly dst: string;
  /** Refuse (ALREADY_EXISTS) when dst exists, instead of POSIX replacement. */
  readonly noReplace: boolean;
  /**
   * Replace dst only if it is this inode (FAILED_PRECONDITION when it is another or nothing): a
   * compare-and-swap of a name, as S3's If-Match on a write needs. Not with noReplace.
   */
  readonly ifDstId?: InodeId | undefined;
}

/**
 * Joins complete files into one, without copying a byte: the file at `path` becomes the files named
 * `sources` in directory `sourceDir`, in that order — their block groups, one after another — and the
 * sources are gone (their block groups now belong to it). What an S3 multipart upload's completion is.
 */
export interface ComposeFileCommand extends CommandBase {
  readonly op: 'composeFile';
  readonly path: string;
  readonly sourceDir: string;
  readonly sources: readonly string[];
  /**
   * The inode id each source must still have (empty: any): a caller that checked the files it joins
   * (S3's part ETags) joins those files and not ones that replaced them since.
   */
  readonly sourceIds: readonly InodeId[];
  /** Replace an existing file at `path` (its block groups become garbage). */
  readonly overwrite: boolean;
  readonly mode: number;
  /** Replace `path` only if it is this inode (FAILED_PRECONDITION otherwise); needs `overwrite`. */
  readonly ifDstId?: InodeId | undefined;
}

export interface DeleteCommand extends CommandBase {
  readonly op: 'delete';
  readonly path: string;
  readonly recursive: boolean;
}

export interface RepairedShard {
  readonly index: number;
  /** The new holder. */
  readonly server: string;
  /** The holder recorded before ('' = none): the shard is only moved if it is still there. */
  readonly replaces: string;
  readonly length: number;
  readonly crc32c: number;
}

/**
 * Records rebuilt shards of a committed block group of the file at `path` (which must still be inode
 * `inodeId`): each moves to its new server, made durable, if its recorded holder is still `replaces`.
 */
export interface RepairShardsCommand extends CommandBase {
  readonly op: 'repairShards';
  readonly path: string;
  readonly inodeId: InodeId;
  readonly blockGroupId: BlockGroupId;
  readonly shards: readonly RepairedShard[];
}

/** Leader-internal: drops every write lease that expires at or before the given time. */
export interface ExpireLeasesCommand extends CommandBase {
  readonly op: 'expireLeases';
  readonly expiresAtOrBeforeMs: number;
}

/** Leader-internal: the chunk servers deleted these block groups' shards; forget them. */
export interface CollectGarbageCommand extends CommandBase {
  readonly op: 'collectGarbage';
  readonly blockGroupIds: readonly BlockGroupId[];
}

export type NamespaceCommand =
  | MkdirCommand
  | CreateCommand
  | AllocateBlockGroupCommand
  | CommitBlockGroupCommand
  | CompleteFileCommand
  | AbandonFileCommand
  | RenameCommand
  | ComposeFileCommand
  | DeleteCommand
  | ExpireLeasesCommand
  | CollectGarbageCommand
  | RepairShardsCommand
  | RenewLeaseCommand
  | OpenSessionCommand;

export type NamespaceOp = NamespaceCommand['op'];

/** Ops that come from clients and so must carry a session. */
export const CLIENT_OPS: ReadonlySet<NamespaceOp> = new Set<NamespaceOp>([
  'mkdir',
  'create',
  'allocateBlockGroup',
  'commitBlockGroup',
  'completeFile',
  'abandonFile',
  'rename',
  'composeFile',
  'delete',
  'repairShards',
  'renewLease',
]);

// ---- results ----
export interface ResultPayloads {
  mkdir: { readonly inode: DirInode; readonly created: boolean };
  create: {
    readonly inode: FileInode;
    readonly leaseId: string;
    readonly leaseExpiresMs: number;
    /** The first block group, when the command asked for it and the policy matched. */
    readonly blockGroup?: BlockGroupInfo | undefined;
  };
  allocateBlockGroup: { readonly blockGroup: BlockGroupInfo };
  commitBlockGroup: { readonly blockGroup: BlockGroupInfo };
  completeFile: { readonly inode: FileInode };
  composeFile: { readonly inode: FileInode };
  abandonFile: Record<never, never>;
  rename: Record<never, never>;
  delete: { readonly files: number; readonly dirs: number };
  expireLeases: { readonly expired: readonly InodeId[] };
  collectGarbage: { readonly removed: number };
  repairShards: { readonly blockGroup: BlockGroupInfo };
  renewLease: { readonly leaseExpiresMs: number };
  openSession: { readonly clientId: string };
}

export type Success<K extends NamespaceOp> = { readonly ok: true; readonly op: K } & ResultPayloads[K];
/** The result of a command with op K (distributes over a union of ops, so it stays discriminated). */
export type ResultOf<K extends NamespaceOp> = K extends NamespaceOp ? Success<K> | Failure : never;
export type NamespaceResult = { [K in NamespaceOp]: Success<K> }[NamespaceOp] | Failure;

// ---- encoding ----
const FORMAT_VERSION = 1;
const OP_TAGS: Record<NamespaceOp, number> = {
  mkdir: 1,
  create: 2,
  allocateBlockGroup: 3,
  commitBlockGroup: 4,
  completeFile: 5,
  abandonFile: 6,
  rename: 7,
  delete: 8,
  expireLeases: 9,
  collectGarbage: 10,
  repairShards: 11,
  renewLease: 12,
  openSession: 13,
  composeFile: 14,
};
const OPS_BY_TAG = new Map<number, NamespaceOp>(
  (Object.entries(OP_TAGS) as [NamespaceOp, number][]).map(([op, tag]) => [tag, op]),
);

function readOp(r: ByteReader): NamespaceOp {
  const tag = r.u8('op');
  const op = OPS_BY_TAG.get(tag);
  if (op === undefined) throw new StateCodecError(`namespace command: unknown op tag ${tag}`);
  return op;
}

function writeStrings(w: ByteWriter, list: readonly string[]): void {
  w.uint(list.length);
  for (const s of list) w.string(s);
}

function readStrings(r: ByteReader, field: string, max: number, maxBytes: number): string[] {
  const n = r.count(field, max);
  const out: string[] = [];
  for (let i = 0; i < n; i++) out.push(r.string(field, maxBytes));
  return out;
}

export function writeBlockGroup(w: ByteWriter, bg: BlockGroupInfo): void {
  w.uint(bg.id).uint(bg.offset).uint(bg.length).uint(bg.dataShards).uint(bg.parityShards);
  w.uint(bg.stripeSize).uint(bg.maxBytes).bool(bg.committed);
  writeStrings(w, bg.servers);
  w.uint(bg.shardLengths.length);
  for (const n of bg.shardLengths) w.uint(n);
  w.uint(bg.crcs.length);
  for (const c of bg.crcs) w.u32(c);
  w.uint(bg.durableMask);
}

const identity = (s: string): string => s;

/** `intern` lets a restoring replica share one copy of each server id among all block groups. */
export function readBlockGroup(r: ByteReader, intern: (s: string) => string = identity): BlockGroupInfo {
  const id = r.uint('block group id') as BlockGroupId;
  const offset = r.uint('offset');
  const length = r.uint('length');
  const dataShards = r.uint('data shards', MAX_TOTAL_SHARDS);
  const parityShards = r.uint('parity shards', MAX_TOTAL_SHARDS);
  const stripeSize = r.uint('stripe size', MAX_STRIPE_SIZE);
  const maxBytes = r.uint('max bytes', MAX_BLOCK_GROUP_BYTES);
  const committed = r.bool('committed');
  const servers = readStrings(r, 'servers', MAX_TOTAL_SHARDS, MAX_SERVER_ID_BYTES).map(intern);
  const nl = r.count('shard lengths', MAX_TOTAL_SHARDS);
  const shardLengths: number[] = [];
  for (let i = 0; i < nl; i++) shardLengths.push(r.uint('shard length'));
  const nc = r.count('crcs', MAX_TOTAL_SHARDS);
  const crcs: number[] = [];
  for (let i = 0; i < nc; i++) crcs.push(r.u32('crc'));
  const durableMask = r.uint('durable mask', 2 ** 32 - 1);
  return {
    id,
    offset,
    length,
    dataShards,
    parityShards,
    stripeSize,
    maxBytes,
    committed,
    servers,
    shardLengths: nl === 0 ? EMPTY_NUMBERS : shardLengths,
    crcs: nc === 0 ? EMPTY_NUMBERS : crcs,
    durableMask,
  };
}

/** Shared empty array for uncommitted block groups (saves two allocations per block group). */
export const EMPTY_NUMBERS: readonly number[] = Object.freeze([]);

export function writeInode(w: ByteWriter, inode: Inode): void {
  w.u8(inode.type === 'file' ? 1 : 2)
    .uint(inode.id)
    .uint(inode.mode)
    .uint(inode.mtimeMs)
    .uint(inode.ctimeMs);
  w.string(inode.ec);
  if (inode.type === 'file') {
    w.uint(inode.size).uint(inode.blockGroups.length);
    for (const bg of inode.blockGroups) writeBlockGroup(w, bg);
  }
}

export function readInode(r: ByteReader, intern: (s: string) => string = identity): Inode {
  const kind = r.u8('inode type');
  if (kind !== 1 && kind !== 2) throw new StateCodecError(`inode type ${kind} is neither file nor dir`);
  const id = r.uint('inode id') as InodeId;
  const mode = r.uint('mode', MODE_MASK);
  const mtimeMs = r.uint('mtime');
  const ctimeMs = r.uint('ctime');
  const ec = intern(r.string('ec', MAX_EC_NAME_BYTES));
  if (kind === 2) return { type: 'dir', id, mode, mtimeMs, ctimeMs, ec };
  const size = r.uint('size');
  const n = r.count('block groups', MAX_BLOCK_GROUPS_PER_FILE);
  const blockGroups: BlockGroupInfo[] = [];
  for (let i = 0; i < n; i++) blockGroups.push(readBlockGroup(r, intern));
  return { type: 'file', id, mode, size, mtimeMs, ctimeMs, ec, blockGroups };
}

/**
 * The byte before a command's session: none, a session that opens itself (every entry written before
 * explicit opens; the byte was a boolean then), or one that must have been opened.
 */
const NO_SESSION = 0;
const SESSION_OPENS_ITSELF = 1;
const SESSION_OPENED = 2;

function writeSession(w: ByteWriter, session: Session | undefined): void {
  if (session === undefined) {
    w.u8(NO_SESSION);
    return;
  }
  w.u8(session.implicitOpen === true ? SESSION_OPENS_ITSELF : SESSION_OPENED);
  w.string(session.clientId).uint(session.seq).uint(session.ackedBelow);
}

function readSession(r: ByteReader): Session | undefined {
  const kind = r.u8('session kind');
  if (kind === NO_SESSION) return undefined;
  if (kind !== SESSION_OPENS_ITSELF && kind !== SESSION_OPENED)
    throw new StateCodecError(`namespace command: unknown session kind ${kind}`);
  const clientId = r.string('client id', MAX_CLIENT_ID_BYTES);
  const seq = r.uint('seq');
  const ackedBelow = r.uint('acked below');
  return kind === SESSION_OPENS_ITSELF
    ? { clientId, seq, ackedBelow, implicitOpen: true }
    : { clientId, seq, ackedBelow };
}

function writeCommit(w: ByteWriter, commit: BlockGroupCommit): void {
  w.uint(commit.blockGroupId).uint(commit.length).uint(commit.shards.length);
  for (const s of commit.shards) w.uint(s.index).uint(s.length).u32(s.crc32c).bool(s.durable);
}

function readCommit(r: ByteReader): BlockGroupCommit {
  const blockGroupId = r.uint('block group id') as BlockGroupId;
  const length = r.uint('length');
  const n = r.count('shards', MAX_TOTAL_SHARDS);
  const shards: ShardCommit[] = [];
  for (let i = 0; i < n; i++)
    shards.push({
      index: r.uint('shard index'),
      length: r.uint('shard length'),
      crc32c: r.u32('crc32c'),
      durable: r.bool('durable'),
    });
  return { blockGroupId, length, shards };
}

export function encodeNamespaceCommand(cmd: NamespaceCommand): Uint8Array {
  // Room for a create with its session (a 32-character client id) and a path: one allocation, no regrowth.
  const w = new ByteWriter(256);
  w.u8(FORMAT_VERSION).u8(OP_TAGS[cmd.op]).uint(cmd.timeMs);
  writeSession(w, cmd.session);
  switch (cmd.op) {
    case 'mkdir':
      w.string(cmd.path).bool(cmd.parents).uint(cmd.mode).string(cmd.ec);
      break;
    case 'create':
      w.string(cmd.path)
        .bool(cmd.overwrite)
        .uint(cmd.mode)
        .string(cmd.ec)
        .string(cmd.defaultEc)
        .uint(cmd.leaseMs)
        .bool(cmd.complete === true);
      // Optional trailing fields: absent, the entry is byte for byte what older leaders wrote.
      if (cmd.firstBlockGroup !== undefined) {
        const first = cmd.firstBlockGroup;
        w.bool(true).uint(first.stripeSize).uint(first.maxBytes);
        writeStrings(w, first.servers);
      }
      break;
    case 'allocateBlockGroup':
      w.uint(cmd.inodeId).string(cmd.leaseId).uint(cmd.offset).uint(cmd.stripeSize).uint(cmd.maxBytes);
      writeStrings(w, cmd.servers);
      break;
    case 'commitBlockGroup':
      w.uint(cmd.inodeId).string(cmd.leaseId);
      writeCommit(w, cmd);
      break;
    case 'completeFile':
      w.uint(cmd.inodeId).string(cmd.leaseId).uint(cmd.size);
      // Optional trailing field, as create's.
      if (cmd.commit !== undefined) writeCommit(w.bool(true), cmd.commit);
      break;
    case 'abandonFile':
    case 'renewLease':
      w.uint(cmd.inodeId).string(cmd.leaseId);
      break;
    case 'openSession':
      w.string(cmd.nonce);
      break;
    case 'rename':
      w.string(cmd.src).string(cmd.dst).bool(cmd.noReplace);
      // A trailing field, only when set: renames without it encode as they did before it existed.
      if (cmd.ifDstId !== undefined) w.bool(true).uint(cmd.ifDstId);
      break;
    case 'composeFile':
      w.string(cmd.path).string(cmd.sourceDir).bool(cmd.overwrite).uint(cmd.mode);
      writeStrings(w, cmd.sources);
      w.uint(cmd.sourceIds.length);
      for (const id of cmd.sourceIds) w.uint(id);
      if (cmd.ifDstId !== undefined) w.bool(true).uint(cmd.ifDstId);
      break;
    case 'delete':
      w.string(cmd.path).bool(cmd.recursive);
      break;
    case 'expireLeases':
      w.uint(cmd.expiresAtOrBeforeMs);
      break;
    case 'collectGarbage':
      w.uint(cmd.blockGroupIds.length);
      for (const id of cmd.blockGroupIds) w.uint(id);
      break;
    case 'repairShards':
      w.string(cmd.path).uint(cmd.inodeId).uint(cmd.blockGroupId).uint(cmd.shards.length);
      for (const s of cmd.shards)
        w.uint(s.index).string(s.server).string(s.replaces).uint(s.length).u32(s.crc32c);
      break;
  }
  return w.finish();
}

/** Throws StateCodecError on malformed bytes (unknown version/op, truncation, bad UTF-8, trailing bytes). */
export function decodeNamespaceCommand(bytes: Uint8Array): NamespaceCommand {
  const r = new ByteReader(bytes, 'namespace command');
  r.version(FORMAT_VERSION);
  const op = readOp(r);
  const timeMs = r.uint('time');
  const session = readSession(r);
  const base = session === undefined ? { timeMs } : { timeMs, session };
  const path = (field = 'path') => r.string(field, MAX_PATH_BYTES);
  let cmd: NamespaceCommand;
  switch (op) {
    case 'mkdir':
      cmd = {
        op,
        ...base,
        path: path(),
        parents: r.bool('parents'),
        mode: r.uint('mode'),
        ec: r.string('ec', MAX_EC_NAME_BYTES),
      };
      break;
    case 'create': {
      const created = {
        op,
        ...base,
        path: path(),
        overwrite: r.bool('overwrite'),
        mode: r.uint('mode'),
        ec: r.string('ec', MAX_EC_NAME_BYTES),
        defaultEc: r.string('default ec', MAX_EC_NAME_BYTES),
        leaseMs: r.uint('lease ms'),
      };
      // Absent in entries written before the flag existed; present only when set, as callers write it.
      const complete = r.remaining > 0 ? r.bool('complete') : false;
      const first =
        r.remaining > 0 && r.bool('has first block group')
          ? {
              stripeSize: r.uint('stripe size'),
              maxBytes: r.uint('max bytes'),
              servers: readStrings(r, 'servers', MAX_TOTAL_SHARDS, MAX_SERVER_ID_BYTES),
            }
          : undefined;
      const withComplete = complete ? { ...created, complete } : created;
      cmd = first === undefined ? withComplete : { ...withComplete, firstBlockGroup: first };
      break;
    }
    case 'allocateBlockGroup':
      cmd = {
        op,
        ...base,
        inodeId: r.uint('inode id') as InodeId,
        leaseId: r.string('lease id', MAX_LEASE_ID_BYTES),
        offset: r.uint('offset'),
        stripeSize: r.uint('stripe size'),
        maxBytes: r.uint('max bytes'),
        servers: readStrings(r, 'servers', MAX_TOTAL_SHARDS, MAX_SERVER_ID_BYTES),
      };
      break;
    case 'commitBlockGroup': {
      const inodeId = r.uint('inode id') as InodeId;
      const leaseId = r.string('lease id', MAX_LEASE_ID_BYTES);
      cmd = { op, ...base, inodeId, leaseId, ...readCommit(r) };
      break;
    }
    case 'completeFile': {
      const completed = {
        op,
        ...base,
        inodeId: r.uint('inode id') as InodeId,
        leaseId: r.string('lease id', MAX_LEASE_ID_BYTES),
        size: r.uint('size'),
      };
      cmd = r.remaining > 0 && r.bool('has commit') ? { ...completed, commit: readCommit(r) } : completed;
      break;
    }
    case 'abandonFile':
    case 'renewLease':
      cmd = {
        op,
        ...base,
        inodeId: r.uint('inode id') as InodeId,
        leaseId: r.string('lease id', MAX_LEASE_ID_BYTES),
      };
      break;
    case 'rename':
      cmd = { op, ...base, src: path('src'), dst: path('dst'), noReplace: r.bool('no replace') };
      if (r.remaining > 0 && r.bool('has if dst id'))
        cmd = { ...cmd, ifDstId: r.uint('if dst id') as InodeId };
      break;
    case 'composeFile': {
      const target = path();
      const sourceDir = path('source dir');
      const overwrite = r.bool('overwrite');
      const mode = r.uint('mode');
      const sources = readStrings(r, 'source name', MAX_COMPOSE_SOURCES, MAX_PATH_BYTES);
      const sourceIds: InodeId[] = [];
      for (let n = r.count('source ids', MAX_COMPOSE_SOURCES); n > 0; n--)
        sourceIds.push(r.uint('source id') as InodeId);
      cmd = { op, ...base, path: target, sourceDir, sources, sourceIds, overwrite, mode };
      if (r.remaining > 0 && r.bool('has if dst id'))
        cmd = { ...cmd, ifDstId: r.uint('if dst id') as InodeId };
      break;
    }
    case 'openSession':
      // Absent in the entries of the first hour of explicit sessions (ecb7b25): ids `s<counter>` then.
      cmd = { op, ...base, nonce: r.remaining > 0 ? r.string('nonce', MAX_SESSION_NONCE_BYTES) : '' };
      break;
    case 'delete':
      cmd = { op, ...base, path: path(), recursive: r.bool('recursive') };
      break;
    case 'expireLeases':
      cmd = { op, ...base, expiresAtOrBeforeMs: r.uint('expires at or before') };
      break;
    case 'collectGarbage': {
      const n = r.count('block group ids', MAX_GARBAGE_PER_COLLECT);
      const blockGroupIds: BlockGroupId[] = [];
      for (let i = 0; i < n; i++) blockGroupIds.push(r.uint('block group id') as BlockGroupId);
      cmd = { op, ...base, blockGroupIds };
      break;
    }
    case 'repairShards': {
      const repairPath = path();
      const inodeId = r.uint('inode id') as InodeId;
      const blockGroupId = r.uint('block group id') as BlockGroupId;
      const n = r.count('shards', MAX_TOTAL_SHARDS);
      const shards: RepairedShard[] = [];
      for (let i = 0; i < n; i++)
        shards.push({
          index: r.uint('shard index'),
          server: r.string('server', MAX_SERVER_ID_BYTES),
          replaces: r.string('replaces', MAX_SERVER_ID_BYTES),
          length: r.uint('shard length'),
          crc32c: r.u32('crc32c'),
        });
      cmd = { op, ...base, path: repairPath, inodeId, blockGroupId, shards };
      break;
    }
  }
  r.end();
  return cmd;
}

/**
 * A create result that carries its first block group has a tag of its own, so results written before
 * block groups could come with a create (in snapshots' session tables) read as they were.
 */
const CREATE_WITH_BLOCK_GROUP_TAG = 0x40;

export function writeResult(w: ByteWriter, result: NamespaceResult): void {
  if (!result.ok) {
    w.u8(0).string(result.code).string(result.message);
    return;
  }
  if (result.op === 'create' && result.blockGroup !== undefined) {
    w.u8(CREATE_WITH_BLOCK_GROUP_TAG);
    writeInode(w, result.inode);
    w.string(result.leaseId).uint(result.leaseExpiresMs);
    writeBlockGroup(w, result.blockGroup);
    return;
  }
  w.u8(OP_TAGS[result.op]);
  switch (result.op) {
    case 'mkdir':
      writeInode(w, result.inode);
      w.bool(result.created);
      break;
    case 'create':
      writeInode(w, result.inode);
      w.string(result.leaseId).uint(result.leaseExpiresMs);
      break;
    case 'allocateBlockGroup':
    case 'commitBlockGroup':
    case 'repairShards':
      writeBlockGroup(w, result.blockGroup);
      break;
    case 'completeFile':
    case 'composeFile':
      writeInode(w, result.inode);
      break;
    case 'abandonFile':
    case 'rename':
      break;
    case 'delete':
      w.uint(result.files).uint(result.dirs);
      break;
    case 'expireLeases':
      w.uint(result.expired.length);
      for (const id of result.expired) w.uint(id);
      break;
    case 'collectGarbage':
      w.uint(result.removed);
      break;
    case 'renewLease':
      w.uint(result.leaseExpiresMs);
      break;
    case 'openSession':
      w.string(result.clientId);
      break;
  }
}

export function readResult(r: ByteReader): NamespaceResult {
  const tag = r.u8('result op');
  if (tag === 0) {
    const code = r.string('code', 64);
    if (!isErrorCode(code)) throw new StateCodecError(`result: unknown error code '${code}'`);
    return { ok: false, code: code as ErrorCode, message: r.string('message') };
  }
  if (tag === CREATE_WITH_BLOCK_GROUP_TAG) {
    const inode = readInode(r);
    if (inode.type !== 'file') throw new StateCodecError('result: create carries a directory inode');
    return {
      ok: true,
      op: 'create',
      inode,
      leaseId: r.string('lease id', MAX_LEASE_ID_BYTES),
      leaseExpiresMs: r.uint('lease expires'),
      blockGroup: readBlockGroup(r),
    };
  }
  const op = OPS_BY_TAG.get(tag);
  if (op === undefined) throw new StateCodecError(`result: unknown op tag ${tag}`);
  const fileInode = (): FileInode => {
    const inode = readInode(r);
    if (inode.type !== 'file') throw new StateCodecError(`result: ${op} carries a directory inode`);
    return inode;
  };
  switch (op) {
    case 'mkdir': {
      const inode = readInode(r);
      if (inode.type !== 'dir') throw new StateCodecError('result: mkdir carries a file inode');
      return { ok: true, op, inode, created: r.bool('created') };
    }
    case 'create':
      return {
        ok: true,
        op,
        inode: fileInode(),
        leaseId: r.string('lease id', MAX_LEASE_ID_BYTES),
        leaseExpiresMs: r.uint('lease expires'),
      };
    case 'allocateBlockGroup':
    case 'commitBlockGroup':
    case 'repairShards':
      return { ok: true, op, blockGroup: readBlockGroup(r) };
    case 'completeFile':
    case 'composeFile':
      return { ok: true, op, inode: fileInode() };
    case 'abandonFile':
    case 'rename':
      return { ok: true, op };
    case 'delete':
      return { ok: true, op, files: r.uint('files'), dirs: r.uint('dirs') };
    case 'expireLeases': {
      const n = r.count('expired', Number.MAX_SAFE_INTEGER);
      const expired: InodeId[] = [];
      for (let i = 0; i < n; i++) expired.push(r.uint('inode id') as InodeId);
      return { ok: true, op, expired };
    }
    case 'collectGarbage':
      return { ok: true, op, removed: r.uint('removed') };
    case 'renewLease':
      return { ok: true, op, leaseExpiresMs: r.uint('lease expires') };
    case 'openSession':
      return { ok: true, op, clientId: r.string('client id', MAX_CLIENT_ID_BYTES) };
  }
}

export function encodeNamespaceResult(result: NamespaceResult): Uint8Array {
  const w = new ByteWriter(64);
  w.u8(FORMAT_VERSION);
  writeResult(w, result);
  return w.finish();
}

export function decodeNamespaceResult(bytes: Uint8Array): NamespaceResult {
  const r = new ByteReader(bytes, 'namespace result');
  r.version(FORMAT_VERSION);
  const result = readResult(r);
  r.end();
  return result;
}

/**
 * The fewest shards of a block group that must have a target at allocation and be durable at commit:
 * K+1, so one more loss is survivable before repair — except that with M <= 1 that would be every
 * shard (no write could survive a failure), so there it is K (DESIGN §4 write path).
 */
export function minDurableShards(dataShards: number, parityShards: number): number {
  return parityShards <= 1 ? dataShards : dataShards + 1;
}
