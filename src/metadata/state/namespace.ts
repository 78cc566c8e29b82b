/**
 * metadata/state/namespace — the namespace state machine of one namespace group (DESIGN §3, §4).
 *
 * Pure and deterministic: Raft hands every replica the same commands in the same order, and each replica
 * must reach the same state. So: no clock (time is `cmd.timeMs`, stamped by the leader, and never allowed
 * to run backwards), no randomness (placement was done by the leader and arrives in the command), no I/O,
 * and nothing observable depends on Map iteration order except orders the commands themselves created.
 *
 * ## Data model (sharding changes routing, not this)
 * - A directory is a record keyed by its own inode id: a header (`alive`, file and subdirectory counts)
 *   and its entries `name → inode` plus a sorted name index for paged listing. A name's attributes (the
 *   inode: type, mode, size, times, EC policy, block groups) live beside its entry, in the parent's record.
 * - Ids come from one counter per group, with the group in the high bits (ids.ts).
 * - A file being written is a *pending* file held by a write lease, outside the directory: lookups see the
 *   old version or nothing until `completeFile` publishes it atomically (replacing an old version, whose
 *   block groups then become garbage). An expired or abandoned write never appears.
 * - Block groups of deleted, replaced, abandoned or expired files go to the garbage list, oldest first,
 *   until `collectGarbage` says their shards were deleted.
 *
 * ## API
 * - `apply(cmd)` — run one command (commands.ts), returning `{ ok: true, op, ... } | { ok: false, code,
 *   message }`. A refused command changes nothing (except the session table recording its result).
 *   `applyEncoded(bytes)` does the same for a log entry (malformed bytes → INVALID_ARGUMENT result).
 * - Reads, served after ReadIndex by the host: `stat`, `list`, `pendingFile`, `garbage`,
 *   `earliestLeaseExpiryMs`, `counts`.
 * - `snapshotChunks(maxBytes)` / `NamespaceRestorer` (or `snapshot()` / `NamespaceState.restore`) and
 *   `stateHash()`.
 *
 * ## Semantics chosen (POSIX where it has an answer)
 * - mkdir: ALREADY_EXISTS when the path exists (with `parents`, an existing directory is success,
 *   `created: false`); a file on the way is NOT_A_DIRECTORY; a missing parent without `parents` NOT_FOUND.
 * - create: parent must exist (no implicit mkdir -p). A directory at the path → IS_A_DIRECTORY; an existing
 *   file without `overwrite` → ALREADY_EXISTS. One writer per name: another unexpired write of the same
 *   name → ALREADY_EXISTS without `overwrite`; with `overwrite` the newer create supersedes it (its lease
 *   is revoked, its block groups become garbage) — the last writer wins instead of waiting for expiry.
 * - completeFile re-checks the name: a directory created there meanwhile → IS_A_DIRECTORY; a file renamed
 *   there meanwhile and no `overwrite` → ALREADY_EXISTS; parent removed → NOT_FOUND. It is refused, not
 *   discarded: the lease expires later.
 * - rename follows POSIX rename(2): a file replaces a file, a directory replaces an *empty* directory
 *   (NOT_EMPTY otherwise), file over directory IS_A_DIRECTORY, directory over file NOT_A_DIRECTORY, a
 *   directory into its own subtree INVALID_ARGUMENT, `src == dst` succeeds doing nothing. `noReplace`
 *   (renameat2 RENAME_NOREPLACE) refuses any existing destination with ALREADY_EXISTS. The moved inode's
 *   ctime becomes the command time. `mv SRC DIR/` (moving into a directory) is the CLI's job.
 * - delete: file, empty directory, or with `recursive` a whole subtree in one command. `/` is refused.
 * - Directory mtimes are not updated when entries change (that would be a second write in another group
 *   once directories are sharded).
 *
 * ## Exactly-once
 * Client commands must carry a session, opened by `openSession` under an id made from the id counter
 * (never handed out twice); consensus/sessions.ts `ClientSessions` runs each (clientId, seq) once and
 * answers a retry with the stored result (results are plain values, so they are snapshotted). A seq from
 * an unknown or expired session, or one whose result was forgotten → FAILED_PRECONDITION starting with
 * "session": the client must open a new session and check the state. Entries logged before sessions were
 * opened explicitly carry `implicitOpen` and open their own session on replay, as they did.
 */
import { createHash } from 'node:crypto';
import { assert } from '../../common/assert.js';
import { type EcPolicy, parseEcPolicy } from '../../common/ec-policy.js';
import { ClientSessions, type SessionLimits, type SessionsSnapshot } from '../../consensus/sessions.js';
import { ByteReader, ByteWriter, StateCodecError } from './bytes.js';
import {
  type AbandonFileCommand,
  type AllocateBlockGroupCommand,
  type BlockGroupCommit,
  type BlockGroupInfo,
  CLIENT_OPS,
  type CollectGarbageCommand,
  type CommitBlockGroupCommand,
  type CompleteFileCommand,
  type ComposeFileCommand,
  type CreateCommand,
  type DeleteCommand,
  type DirEntry,
  type DirInode,
  decodeNamespaceCommand,
  EMPTY_NUMBERS,
  type ExpireLeasesCommand,
  type FileInode,
  type FirstBlockGroup,
  type Inode,
  MAX_BLOCK_GROUP_BYTES,
  MAX_BLOCK_GROUPS_PER_FILE,
  MAX_CLIENT_ID_BYTES,
  MAX_COMPOSE_SOURCES,
  MAX_LEASE_ID_BYTES,
  MAX_LEASE_MS,
  MAX_LIST_LIMIT,
  MAX_SERVER_ID_BYTES,
  MAX_STRIPE_SIZE,
  MIN_STRIPE_SIZE,
  type MkdirCommand,
  MODE_MASK,
  minDurableShards,
  type NamespaceCommand,
  type NamespaceOp,
  type NamespaceResult,
  type OpenSessionCommand,
  type RenameCommand,
  type RenewLeaseCommand,
  type RepairShardsCommand,
  type ResultOf,
  readBlockGroup,
  readInode,
  readResult,
  type Success,
  writeBlockGroup,
  writeInode,
  writeResult,
} from './commands.js';
import {
  type BlockGroupId,
  composeId,
  counterOfId,
  groupOfId,
  type InodeId,
  isValidId,
  MAX_COUNTER,
  ROOT_GROUP,
  ROOT_INODE_ID,
} from './ids.js';
import { checkName, type ParsedPath, parsePath, utf8Length } from './paths.js';
import { type Failure, fail } from './result.js';
import { compareNames, SortedNames } from './sorted-names.js';

/** Entries one directory may hold; past it, creating refuses with FAILED_PRECONDITION. */
export const MAX_ENTRIES_PER_DIRECTORY = 10_000_000;
/**
 * Files one client session may be writing at once (unexpired or not yet expired leases). A client that
 * creates without completing (a bug, or a loop of abandoned puts) is refused past it, instead of filling
 * the group's memory with pending files that live until their leases expire.
 */
export const MAX_PENDING_FILES_PER_CLIENT = 1024;
/** Files being written at once in one group, over all clients: each holds its block groups in memory. */
export const MAX_PENDING_FILES = 65_536;
export const DEFAULT_SESSION_LIMITS: SessionLimits = {
  ttl: 3_600_000,
  maxSessions: 4096,
  maxResultsPerClient: 64,
};
export const DEFAULT_SNAPSHOT_CHUNK_BYTES = 1 << 20;
/**
 * A streamed snapshot's chunk: the host cannot interrupt one, and 1 MiB took 15-35 ms to serialise
 * (20,000 empty files), held every replica's event loop that long at each snapshot's start and showed as
 * whole-service stalls of ~100 ms in bench:meta. 64 KiB take 1-4 ms.
 */
export const STREAM_SNAPSHOT_CHUNK_BYTES = 1 << 16;
const ROOT_MODE = 0o755;

export interface NamespaceOptions {
  /** This namespace group's number (1..8191): the high bits of every id it allocates. */
  readonly group: number;
  readonly sessionLimits?: SessionLimits;
}

interface Directory {
  readonly id: InodeId;
  /** False once removal began; kept for the cross-group protocol (with one group, removal is immediate). */
  alive: boolean;
  files: number;
  dirs: number;
  readonly entries: Map<string, Inode>;
  readonly names: SortedNames;
}

/** A file being written: not in any directory until completeFile. */
export interface PendingFile {
  readonly id: InodeId;
  readonly parent: InodeId;
  readonly name: string;
  readonly leaseId: string;
  readonly clientId: string;
  readonly leaseMs: number;
  readonly overwrite: boolean;
  readonly mode: number;
  readonly ec: string;
  readonly dataShards: number;
  readonly parityShards: number;
  readonly createdMs: number;
  expiresMs: number;
  blockGroups: BlockGroupInfo[];
}

/** A snapshot read while the state goes on changing (NamespaceState.streamSnapshot). */
export interface SnapshotStream {
  next(): IteratorResult<Uint8Array, undefined>;
  /** Gives the stream up before its end, dropping what it kept. */
  close(): void;
}

/** A snapshot's contents as of its capture; see NamespaceState.capture and chunks. */
interface SnapshotCapture {
  readonly header: {
    readonly nextCounter: number;
    readonly nextLease: number;
    readonly clockMs: number;
    readonly rootInode: DirInode;
  };
  /** Every directory record then, in the map's order; read with what `preserved` kept of it. */
  readonly dirs: readonly Directory[];
  readonly pending: readonly PendingFile[];
  readonly garbage: readonly BlockGroupInfo[];
  /** Undefined: the session table and latest command time are left out (stateHash without sessions). */
  readonly sessions: SessionsSnapshot<NamespaceResult> | undefined;
  /** What changed since in the directories the stream has yet to finish, as it was at the capture. */
  readonly preserved: Map<InodeId, DirectoryPreimage>;
  /** Directories already streamed, or created since: nothing of them need be kept. */
  readonly settled: Set<InodeId>;
}

/**
 * A directory's entries as they were when a snapshot was taken, for the names changed since (kept before
 * each name's first change): the inode then, or null where the name did not exist.
 */
interface DirectoryPreimage {
  readonly before: Map<string, Inode | null>;
  /** The names in `before`, in order. */
  readonly names: SortedNames;
  /** The record's `alive` then, once it is being removed. */
  alive: boolean | undefined;
}

/** Names (with their inodes) a streamed snapshot reads from a directory at once. */
const SNAPSHOT_PAGE_NAMES = 256;

/** The names of `index` after `after` ('' = from the first) up to `last` included (undefined: to the end). */
function namesUpTo(index: SortedNames, after: string, last: string | undefined): string[] {
  const out: string[] = [];
  for (let from = after; ; ) {
    const page = index.page(from, SNAPSHOT_PAGE_NAMES);
    for (const name of page) {
      if (last !== undefined && compareNames(name, last) > 0) return out;
      out.push(name);
    }
    if (page.length < SNAPSHOT_PAGE_NAMES) return out;
    from = page[page.length - 1]!;
  }
}

/** Two ordered lists of names as one, each name once. */
function mergeNames(a: readonly string[], b: readonly string[]): string[] {
  if (b.length === 0) return a as string[];
  const out: string[] = [];
  let i = 0;
  let j = 0;
  while (i < a.length || j < b.length) {
    const order = i === a.length ? 1 : j === b.length ? -1 : compareNames(a[i]!, b[j]!);
    if (order <= 0) out.push(a[i++]!);
    else out.push(b[j++]!);
    if (order === 0) j++;
  }
  return out;
}

export interface ListPage {
  readonly ok: true;
  readonly entries: readonly DirEntry[];
  /** More entries follow the last one returned (pass its name as the next `startAfter`). */
  readonly more: boolean;
}

export interface StatResult {
  readonly ok: true;
  /** Canonical path. */
  readonly path: string;
  readonly inode: Inode;
}

interface Resolved {
  readonly ok: true;
  readonly dir: Directory;
  readonly inode: DirInode;
  /** EC policy inherited at this directory ('' = none on the way down). */
  readonly ec: string;
}

/**
 * A flat copy of `s`. Names come from splitting a path, and V8 represents a substring of 13 or more
 * characters as a slice that keeps the whole path alive; stored names must not pin their paths.
 */
function ownString(s: string): string {
  return s.length < 13 ? s : (JSON.parse(JSON.stringify(s)) as string);
}

/** Interning table size limit: chunk-server ids and EC names are few; past this, strings are kept as they are. */
const MAX_INTERNED = 65_536;

function pendingKey(parent: InodeId, name: string): string {
  return `${parent}/${name}`;
}

/** `/` and the first `count` components of `parsed`. */
function pathPrefix(parsed: ParsedPath, count: number): string {
  return `/${parsed.components.slice(0, count).join('/')}`;
}

/** Parsed policies by name: every create parses one, and there are few (a refusal is not kept). */
const policies = new Map<string, EcPolicy>();
const MAX_CACHED_POLICIES = 256;

function parsePolicy(name: string): EcPolicy | Failure {
  const known = policies.get(name);
  if (known !== undefined) return known;
  try {
    const policy = parseEcPolicy(name);
    if (policies.size < MAX_CACHED_POLICIES) policies.set(name, policy);
    return policy;
  } catch (error) {
    return fail('INVALID_ARGUMENT', error instanceof Error ? error.message : String(error));
  }
}

function isFailure(value: object): value is Failure {
  return 'ok' in value && value.ok === false;
}

export class NamespaceState {
  readonly group: number;
  private readonly sessionLimits: SessionLimits;
  private sessions: ClientSessions<NamespaceResult>;
  private readonly dirs = new Map<InodeId, Directory>();
  private readonly pending = new Map<InodeId, PendingFile>();
  private readonly pendingByName = new Map<string, InodeId>();
  /** Pending files per client id (derived from `pending`; not in snapshots). */
  private readonly pendingPerClient = new Map<string, number>();
  private readonly garbageList = new Map<BlockGroupId, BlockGroupInfo>();
  private rootInode: DirInode;
  private nextCounter: number;
  private nextLease = 1;
  private clockMs = 0;
  /** Chunk-server ids and EC policy names, shared by every block group and inode that names them. */
  private readonly interned = new Map<string, string>();
  /** Commands applied; a snapshot stream checks it did not change under it. */
  private applied = 0;
  /** The snapshot being streamed while commands apply (streamSnapshot), if one is. */
  private streaming: SnapshotCapture | undefined;

  constructor(options: NamespaceOptions) {
    assert(Number.isInteger(options.group) && options.group >= 1, 'namespace groups are numbered from 1');
    this.group = options.group;
    this.sessionLimits = options.sessionLimits ?? DEFAULT_SESSION_LIMITS;
    this.sessions = new ClientSessions(this.sessionLimits);
    this.rootInode = { type: 'dir', id: ROOT_INODE_ID, mode: ROOT_MODE, mtimeMs: 0, ctimeMs: 0, ec: '' };
    // The root group owns the root directory; its counter 1 is the root's id.
    this.nextCounter = 1;
    if (options.group === ROOT_GROUP) {
      this.nextCounter = 2;
      this.dirs.set(ROOT_INODE_ID, this.newDirectory(ROOT_INODE_ID));
    }
  }

  /** Memory only: equal strings share one copy. Does not affect behaviour, so needs no snapshotting. */
  intern(s: string): string {
    const known = this.interned.get(s);
    if (known !== undefined) return known;
    if (this.interned.size < MAX_INTERNED) this.interned.set(s, s);
    return s;
  }

  private newDirectory(id: InodeId): Directory {
    return { id, alive: true, files: 0, dirs: 0, entries: new Map(), names: new SortedNames() };
  }

  private allocId(): number {
    assert(this.nextCounter <= MAX_COUNTER, 'id space exhausted (checked before mutating)');
    return composeId(this.group, this.nextCounter++);
  }

  private idsLeft(): number {
    return MAX_COUNTER - this.nextCounter + 1;
  }

  // ---------------------------------------------------------------------------------------------------
  // Commands
  // ---------------------------------------------------------------------------------------------------

  /** Applies one command. Deterministic; never throws for bad input (only for a broken invariant). */
  apply<C extends NamespaceCommand>(cmd: C): ResultOf<C['op']> {
    return this.applyAny(cmd) as ResultOf<C['op']>;
  }

  /** Applies a command as read from the Raft log; malformed bytes give an INVALID_ARGUMENT result. */
  applyEncoded(bytes: Uint8Array): NamespaceResult {
    let cmd: NamespaceCommand;
    try {
      cmd = decodeNamespaceCommand(bytes);
    } catch (error) {
      if (!(error instanceof StateCodecError)) throw error;
      this.applied++;
      return fail('INVALID_ARGUMENT', error.message);
    }
    return this.applyAny(cmd);
  }

  private applyAny(cmd: NamespaceCommand): NamespaceResult {
    this.applied++;
    if (!Number.isSafeInteger(cmd.timeMs) || cmd.timeMs < 0)
      return fail('INVALID_ARGUMENT', 'bad command time');
    // Time never runs backwards across the log: a deposed leader's slow clock is clamped, not trusted.
    if (cmd.timeMs > this.clockMs) this.clockMs = cmd.timeMs;
    if (!CLIENT_OPS.has(cmd.op)) return this.execute(cmd);
    const session = cmd.session;
    if (session === undefined) return fail('INVALID_ARGUMENT', `${cmd.op} needs a client session`);
    const idBytes = utf8Length(session.clientId);
    if (idBytes < 1 || idBytes > MAX_CLIENT_ID_BYTES)
      return fail('INVALID_ARGUMENT', `client id must be 1..${MAX_CLIENT_ID_BYTES} bytes of valid UTF-8`);
    if (!Number.isSafeInteger(session.seq) || session.seq < 1)
      return fail('INVALID_ARGUMENT', 'session sequence numbers start at 1');
    if (
      !Number.isSafeInteger(session.ackedBelow) ||
      session.ackedBelow < 0 ||
      session.ackedBelow > session.seq
    )
      return fail('INVALID_ARGUMENT', 'session ackedBelow must be between 0 and seq');
    const outcome = this.sessions.apply(
      {
        clientId: session.clientId,
        seq: session.seq,
        ackedBelow: session.ackedBelow,
        time: this.clockMs,
        mayOpen: session.implicitOpen === true,
      },
      () => this.execute(cmd),
    );
    switch (outcome.kind) {
      case 'applied':
      case 'duplicate':
        return outcome.result;
      case 'session_expired':
        return fail(
          'FAILED_PRECONDITION',
          `session expired: client ${session.clientId} seq ${session.seq} is unknown (forgotten, or never opened: clients open sessions with OpenSession since 2026-11-27); open a new session`,
        );
      case 'result_forgotten':
        return fail(
          'FAILED_PRECONDITION',
          `session: the result of client ${session.clientId} seq ${session.seq} was already forgotten`,
        );
    }
  }

  /** The result this replica keeps for a client command already applied (see ClientSessions.recorded). */
  recordedResult(session: { readonly clientId: string; readonly seq: number }): NamespaceResult | undefined {
    return this.sessions.recorded(session.clientId, session.seq);
  }

  private execute(cmd: NamespaceCommand): NamespaceResult {
    switch (cmd.op) {
      case 'mkdir':
        return this.mkdir(cmd);
      case 'create':
        return this.create(cmd);
      case 'allocateBlockGroup':
        return this.allocateBlockGroup(cmd);
      case 'commitBlockGroup':
        return this.commitBlockGroup(cmd);
      case 'completeFile':
        return this.completeFile(cmd);
      case 'abandonFile':
        return this.abandonFile(cmd);
      case 'rename':
        return this.rename(cmd);
      case 'composeFile':
        return this.composeFile(cmd);
      case 'delete':
        return this.delete(cmd);
      case 'expireLeases':
        return this.expireLeases(cmd);
      case 'collectGarbage':
        return this.collectGarbage(cmd);
      case 'repairShards':
        return this.repairShards(cmd);
      case 'renewLease':
        return this.renewLease(cmd);
      case 'openSession':
        return this.openSession(cmd);
    }
  }

  private openSession(cmd: OpenSessionCommand): NamespaceResult {
    if (!/^[0-9a-f]{0,32}$/.test(cmd.nonce)) return fail('INVALID_ARGUMENT', 'a session nonce is hex');
    // From the id counter: never handed out again, also across snapshots, so a late copy of an earlier
    // open (or of a command of an expired session) can never meet a session it did not belong to. An id
    // in use all the same (a session an entry from before explicit opens named so) is passed over.
    for (;;) {
      if (this.idsLeft() < 1) return fail('FAILED_PRECONDITION', 'session ids of this group are exhausted');
      const counter = this.allocId();
      const clientId = cmd.nonce === '' ? `s${counter}` : `s${counter}.${cmd.nonce}`;
      if (this.sessions.has(clientId)) continue;
      this.sessions.open(clientId, this.clockMs);
      return this.ok('openSession', { clientId });
    }
  }

  private ok<K extends NamespaceOp>(op: K, payload: Omit<Success<K>, 'ok' | 'op'>): Success<K> {
    return { ok: true, op, ...payload } as Success<K>;
  }

  /** Paths start at the root, which only the root group holds until cross-group lookups exist. */
  private noRoot(): Failure {
    return fail('FAILED_PRECONDITION', `namespace group ${this.group} does not hold the root directory`);
  }

  /** Walks `components[0..count)` from the root; every one must be a directory. */
  private resolveDir(parsed: ParsedPath, count: number): Resolved | Failure {
    let dir = this.dirs.get(ROOT_INODE_ID);
    if (dir === undefined) return this.noRoot();
    let inode: DirInode = this.rootInode;
    let ec = inode.ec;
    for (let i = 0; i < count; i++) {
      const name = parsed.components[i]!;
      const entry: Inode | undefined = dir.entries.get(name);
      // The prefix named in a refusal is built only for one (every create walks this loop).
      if (entry === undefined)
        return fail('NOT_FOUND', `${pathPrefix(parsed, i + 1)}: no such file or directory`);
      if (entry.type !== 'dir')
        return fail('NOT_A_DIRECTORY', `${pathPrefix(parsed, i + 1)}: not a directory`);
      const next = this.dirs.get(entry.id);
      assert(next?.alive, 'a directory entry has a live directory record');
      dir = next;
      inode = entry;
      if (entry.ec !== '') ec = entry.ec;
    }
    return { ok: true, dir, inode, ec };
  }

  private checkMode(mode: number): Failure | undefined {
    if (!Number.isInteger(mode) || mode < 0 || mode > MODE_MASK)
      return fail('INVALID_ARGUMENT', `mode ${mode} has bits outside ${MODE_MASK.toString(8)} (octal)`);
    return undefined;
  }

  private checkRoom(dir: Directory, path: string): Failure | undefined {
    if (dir.entries.size >= MAX_ENTRIES_PER_DIRECTORY)
      return fail(
        'FAILED_PRECONDITION',
        `${path}: directory holds ${MAX_ENTRIES_PER_DIRECTORY} entries already`,
      );
    return undefined;
  }

  private mkdir(cmd: MkdirCommand): ResultOf<'mkdir'> {
    const parsed = parsePath(cmd.path);
    if (!parsed.ok) return parsed;
    const badMode = this.checkMode(cmd.mode);
    if (badMode) return badMode;
    if (cmd.ec !== '') {
      const policy = parsePolicy(cmd.ec);
      if (isFailure(policy)) return policy;
    }
    const { components } = parsed;
    if (components.length === 0)
      return cmd.parents
        ? this.ok('mkdir', { inode: this.rootInode, created: false })
        : fail('ALREADY_EXISTS', '/: directory exists');
    // Walk down as far as the path exists, refusing before any change.
    const root = this.dirs.get(ROOT_INODE_ID);
    if (root === undefined) return this.noRoot();
    let dir = root;
    let depth = 0;
    for (; depth < components.length; depth++) {
      const name = components[depth]!;
      const entry = dir.entries.get(name);
      if (entry === undefined) break;
      const prefix = `/${components.slice(0, depth + 1).join('/')}`;
      const last = depth === components.length - 1;
      if (entry.type === 'file')
        return last
          ? fail('ALREADY_EXISTS', `${prefix}: file exists`)
          : fail('NOT_A_DIRECTORY', `${prefix}: not a directory`);
      if (last)
        return cmd.parents
          ? this.ok('mkdir', { inode: entry, created: false })
          : fail('ALREADY_EXISTS', `${prefix}: directory exists`);
      dir = this.dirs.get(entry.id)!;
    }
    const missing = components.length - depth;
    if (missing > 1 && !cmd.parents)
      return fail('NOT_FOUND', `/${components.slice(0, depth + 1).join('/')}: no such file or directory`);
    const room = this.checkRoom(dir, parsed.path);
    if (room) return room;
    if (this.idsLeft() < missing) return fail('FAILED_PRECONDITION', 'inode ids of this group are exhausted');
    // From here nothing can fail.
    let created: DirInode | undefined;
    for (; depth < components.length; depth++) {
      const name = components[depth]!;
      const id = this.allocId() as InodeId;
      const last = depth === components.length - 1;
      created = {
        type: 'dir',
        id,
        mode: cmd.mode,
        mtimeMs: this.clockMs,
        ctimeMs: this.clockMs,
        ec: last ? cmd.ec : '',
      };
      this.putEntry(dir, ownString(name), created, undefined);
      const child = this.newDirectory(id);
      this.dirs.set(id, child);
      // Born after any snapshot being streamed: not in it, so nothing of it need be kept.
      this.streaming?.settled.add(id);
      dir = child;
    }
    assert(created !== undefined, 'mkdir created at least one directory');
    return this.ok('mkdir', { inode: created, created: true });
  }

  private create(cmd: CreateCommand): ResultOf<'create'> {
    const parsed = parsePath(cmd.path);
    if (!parsed.ok) return parsed;
    if (parsed.components.length === 0) return fail('IS_A_DIRECTORY', '/: is a directory');
    const badMode = this.checkMode(cmd.mode);
    if (badMode) return badMode;
    if (!Number.isInteger(cmd.leaseMs) || cmd.leaseMs < 1 || cmd.leaseMs > MAX_LEASE_MS)
      return fail('INVALID_ARGUMENT', `lease duration must be 1..${MAX_LEASE_MS} ms`);
    const parent = this.resolveDir(parsed, parsed.components.length - 1);
    if (!parent.ok) return parent;
    const ecName = cmd.ec !== '' ? cmd.ec : parent.ec !== '' ? parent.ec : cmd.defaultEc;
    if (ecName === '') return fail('INVALID_ARGUMENT', 'no EC policy given, inherited or defaulted');
    const policy = parsePolicy(ecName);
    if (isFailure(policy)) return policy;
    const name = ownString(parsed.components[parsed.components.length - 1]!);
    const existing = parent.dir.entries.get(name);
    if (existing?.type === 'dir') return fail('IS_A_DIRECTORY', `${parsed.path}: is a directory`);
    if (existing !== undefined && !cmd.overwrite)
      return fail('ALREADY_EXISTS', `${parsed.path}: file exists`);
    const key = pendingKey(parent.dir.id, name);
    const rivalId = this.pendingByName.get(key);
    if (rivalId !== undefined && !cmd.overwrite)
      return fail('ALREADY_EXISTS', `${parsed.path}: being written by another client`);
    if (existing === undefined) {
      const room = this.checkRoom(parent.dir, parsed.path);
      if (room) return room;
    }
    // The first block group comes with the create when the leader placed it for this policy; for another
    // (the directory's policy changed between placement and apply) the writer allocates it itself.
    const first =
      cmd.firstBlockGroup !== undefined &&
      cmd.firstBlockGroup.servers.length === policy.dataShards + policy.parityShards
        ? cmd.firstBlockGroup
        : undefined;
    if (cmd.firstBlockGroup !== undefined && cmd.complete === true)
      return fail('INVALID_ARGUMENT', 'an empty file created complete has no block group to allocate');
    if (first !== undefined) {
      const bad = this.checkAllocation(policy.name, policy.dataShards, policy.parityShards, first);
      if (bad) return bad;
    }
    if (this.idsLeft() < (first === undefined ? 1 : 2))
      return fail('FAILED_PRECONDITION', 'inode ids of this group are exhausted');
    const clientId = cmd.session?.clientId ?? '';
    if (cmd.complete !== true) {
      // An overwrite supersedes the rival's write first, which frees its place.
      const rival = rivalId === undefined ? undefined : this.pending.get(rivalId)!;
      const writing = (this.pendingPerClient.get(clientId) ?? 0) - (rival?.clientId === clientId ? 1 : 0);
      if (writing >= MAX_PENDING_FILES_PER_CLIENT)
        return fail(
          'FAILED_PRECONDITION',
          `client ${clientId} is writing ${writing} files already (at most ${MAX_PENDING_FILES_PER_CLIENT} at once): complete or abandon some first`,
        );
      if (this.pending.size - (rival === undefined ? 0 : 1) >= MAX_PENDING_FILES)
        return fail(
          'FAILED_PRECONDITION',
          `${MAX_PENDING_FILES} files are being written in this group already; try again when some are complete`,
        );
    }
    // From here nothing can fail.
    if (rivalId !== undefined) this.dropPending(this.pending.get(rivalId)!);
    if (cmd.complete === true) {
      const inode: FileInode = {
        type: 'file',
        id: this.allocId() as InodeId,
        mode: cmd.mode,
        size: 0,
        mtimeMs: this.clockMs,
        ctimeMs: this.clockMs,
        ec: this.intern(policy.name),
        blockGroups: [],
      };
      if (existing !== undefined)
        for (const bg of (existing as FileInode).blockGroups) this.garbageList.set(bg.id, bg);
      this.putEntry(parent.dir, name, inode, existing);
      return this.ok('create', { inode, leaseId: '', leaseExpiresMs: 0 });
    }
    const id = this.allocId() as InodeId;
    const leaseId = `L${this.nextLease++}`;
    const file: PendingFile = {
      id,
      parent: parent.dir.id,
      name,
      leaseId,
      clientId,
      leaseMs: cmd.leaseMs,
      overwrite: cmd.overwrite,
      mode: cmd.mode,
      ec: this.intern(policy.name),
      dataShards: policy.dataShards,
      parityShards: policy.parityShards,
      createdMs: this.clockMs,
      expiresMs: this.clockMs + cmd.leaseMs,
      blockGroups: [],
    };
    assert(this.pending.size < MAX_PENDING_FILES, 'pending files within their limit (checked before)');
    this.addPending(file);
    if (first === undefined)
      return this.ok('create', { inode: this.pendingInode(file), leaseId, leaseExpiresMs: file.expiresMs });
    const blockGroup = this.newBlockGroup(file, 0, first);
    file.blockGroups.push(blockGroup);
    return this.ok('create', {
      inode: this.pendingInode(file),
      leaseId,
      leaseExpiresMs: file.expiresMs,
      blockGroup,
    });
  }

  /** Refusal of a block group's settings and placement for a file of policy `ec` (K = k, M = m), if any. */
  private checkAllocation(ec: string, k: number, m: number, alloc: FirstBlockGroup): Failure | undefined {
    if (
      !Number.isInteger(alloc.stripeSize) ||
      alloc.stripeSize < MIN_STRIPE_SIZE ||
      alloc.stripeSize > MAX_STRIPE_SIZE
    )
      return fail('INVALID_ARGUMENT', `stripe size must be ${MIN_STRIPE_SIZE}..${MAX_STRIPE_SIZE}`);
    if (
      !Number.isSafeInteger(alloc.maxBytes) ||
      alloc.maxBytes < alloc.stripeSize ||
      alloc.maxBytes > MAX_BLOCK_GROUP_BYTES
    )
      return fail('INVALID_ARGUMENT', `block group size must be stripe size..${MAX_BLOCK_GROUP_BYTES}`);
    if (alloc.servers.length !== k + m)
      return fail('INVALID_ARGUMENT', `${ec} needs ${k + m} shard targets, got ${alloc.servers.length}`);
    const seen = new Set<string>();
    for (const server of alloc.servers) {
      if (server === '') continue;
      const bytes = utf8Length(server);
      if (bytes < 1 || bytes > MAX_SERVER_ID_BYTES) return fail('INVALID_ARGUMENT', 'bad chunk server id');
      if (seen.has(server)) return fail('INVALID_ARGUMENT', `chunk server ${server} is given two shards`);
      seen.add(server);
    }
    const need = minDurableShards(k, m);
    if (seen.size < need)
      return fail('FAILED_PRECONDITION', `${ec} needs at least ${need} shard targets, got ${seen.size}`);
    return undefined;
  }

  /** A new, uncommitted block group of `file` at `offset` (checked by checkAllocation; one id left). */
  private newBlockGroup(file: PendingFile, offset: number, alloc: FirstBlockGroup): BlockGroupInfo {
    return {
      id: this.allocId() as BlockGroupId,
      offset,
      length: 0,
      dataShards: file.dataShards,
      parityShards: file.parityShards,
      stripeSize: alloc.stripeSize,
      maxBytes: alloc.maxBytes,
      committed: false,
      servers: alloc.servers.map((server) => this.intern(server)),
      shardLengths: EMPTY_NUMBERS,
      crcs: EMPTY_NUMBERS,
      durableMask: 0,
    };
  }

  private pendingInode(file: PendingFile): FileInode {
    let size = 0;
    for (const bg of file.blockGroups) size += bg.length;
    return {
      type: 'file',
      id: file.id,
      mode: file.mode,
      size,
      mtimeMs: file.createdMs,
      ctimeMs: file.createdMs,
      ec: file.ec,
      blockGroups: file.blockGroups.slice(),
    };
  }

  private addPending(file: PendingFile): void {
    this.pending.set(file.id, file);
    this.pendingByName.set(pendingKey(file.parent, file.name), file.id);
    this.pendingPerClient.set(file.clientId, (this.pendingPerClient.get(file.clientId) ?? 0) + 1);
  }

  private removePending(file: PendingFile): void {
    assert(this.pending.delete(file.id), 'a pending file is removed once');
    this.pendingByName.delete(pendingKey(file.parent, file.name));
    const left = (this.pendingPerClient.get(file.clientId) ?? 0) - 1;
    assert(left >= 0, 'pending count per client');
    if (left === 0) this.pendingPerClient.delete(file.clientId);
    else this.pendingPerClient.set(file.clientId, left);
  }

  /** Discards a pending file: its block groups become garbage. */
  private dropPending(file: PendingFile): void {
    for (const bg of file.blockGroups) this.garbageList.set(bg.id, bg);
    this.removePending(file);
  }

  /** The pending file `inodeId` held by `leaseId`, with the lease unexpired at the command's time. */
  private leased(inodeId: InodeId, leaseId: string, allowExpired = false): PendingFile | Failure {
    const file = this.pending.get(inodeId);
    if (file === undefined)
      return fail(
        'NOT_FOUND',
        `inode ${inodeId}: no file being written (completed, abandoned or lease expired)`,
      );
    if (file.leaseId !== leaseId)
      return fail('FAILED_PRECONDITION', `inode ${inodeId}: lease ${leaseId} does not hold it`);
    if (!allowExpired && this.clockMs > file.expiresMs)
      return fail('FAILED_PRECONDITION', `inode ${inodeId}: lease ${leaseId} expired at ${file.expiresMs}`);
    return file;
  }

  private allocateBlockGroup(cmd: AllocateBlockGroupCommand): ResultOf<'allocateBlockGroup'> {
    const file = this.leased(cmd.inodeId, cmd.leaseId);
    if (isFailure(file)) return file;
    if (file.blockGroups.length >= MAX_BLOCK_GROUPS_PER_FILE)
      return fail('FAILED_PRECONDITION', `a file holds at most ${MAX_BLOCK_GROUPS_PER_FILE} block groups`);
    const last = file.blockGroups[file.blockGroups.length - 1];
    if (last !== undefined && !last.committed)
      return fail('FAILED_PRECONDITION', `block group ${last.id} is not committed yet; commit it first`);
    const end = last === undefined ? 0 : last.offset + last.length;
    if (cmd.offset !== end)
      return fail('INVALID_ARGUMENT', `offset ${cmd.offset} is not the file's end ${end}`);
    const bad = this.checkAllocation(file.ec, file.dataShards, file.parityShards, cmd);
    if (bad) return bad;
    // Sizes and offsets are JS numbers end to end (wire, client, CLI): past 2^53 they would round.
    if (end + cmd.maxBytes > Number.MAX_SAFE_INTEGER)
      return fail(
        'FAILED_PRECONDITION',
        `a file holds at most ${Number.MAX_SAFE_INTEGER} bytes (2^53 - 1); this block group could pass it`,
      );
    if (this.idsLeft() < 1) return fail('FAILED_PRECONDITION', 'block group ids of this group are exhausted');
    const blockGroup = this.newBlockGroup(file, end, cmd);
    file.blockGroups.push(blockGroup);
    file.expiresMs = this.clockMs + file.leaseMs;
    return this.ok('allocateBlockGroup', { blockGroup });
  }

  private commitBlockGroup(cmd: CommitBlockGroupCommand): ResultOf<'commitBlockGroup'> {
    const file = this.leased(cmd.inodeId, cmd.leaseId);
    if (isFailure(file)) return file;
    const prepared = this.prepareCommit(file, cmd);
    if (isFailure(prepared)) return prepared;
    file.blockGroups[prepared.at] = prepared.committed;
    file.expiresMs = this.clockMs + file.leaseMs;
    return this.ok('commitBlockGroup', { blockGroup: prepared.committed });
  }

  /** The block group `commit` makes of one of `file`'s, and where it goes — or the refusal. Changes nothing. */
  private prepareCommit(
    file: PendingFile,
    commit: BlockGroupCommit,
  ): { at: number; committed: BlockGroupInfo } | Failure {
    const at = file.blockGroups.findIndex((bg) => bg.id === commit.blockGroupId);
    if (at < 0)
      return fail('NOT_FOUND', `block group ${commit.blockGroupId} does not belong to inode ${file.id}`);
    const bg = file.blockGroups[at]!;
    if (bg.committed) return fail('FAILED_PRECONDITION', `block group ${bg.id} is already committed`);
    if (!Number.isSafeInteger(commit.length) || commit.length < 1 || commit.length > bg.maxBytes)
      return fail('INVALID_ARGUMENT', `block group length must be 1..${bg.maxBytes}`);
    const total = bg.dataShards + bg.parityShards;
    const shardLengths = new Array<number>(total).fill(0);
    const crcs = new Array<number>(total).fill(0);
    let durableMask = 0;
    let durable = 0;
    let shardLength = -1;
    const reported = new Set<number>();
    for (const shard of commit.shards) {
      if (!Number.isInteger(shard.index) || shard.index < 0 || shard.index >= total)
        return fail('INVALID_ARGUMENT', `shard index ${shard.index} is outside 0..${total - 1}`);
      if (reported.has(shard.index))
        return fail('INVALID_ARGUMENT', `shard ${shard.index} is reported twice`);
      reported.add(shard.index);
      if (!Number.isSafeInteger(shard.length) || shard.length < 0)
        return fail('INVALID_ARGUMENT', `shard ${shard.index} has a bad length`);
      if (!Number.isInteger(shard.crc32c) || shard.crc32c < 0 || shard.crc32c > 0xffffffff)
        return fail('INVALID_ARGUMENT', `shard ${shard.index} has a bad crc32c`);
      if (!shard.durable) continue;
      if (bg.servers[shard.index] === '')
        return fail('INVALID_ARGUMENT', `shard ${shard.index} had no target and cannot be durable`);
      // Every stripe puts one (padded) cell on every shard, so all shards of a block group are equally long.
      if (shardLength >= 0 && shard.length !== shardLength)
        return fail('INVALID_ARGUMENT', `shard lengths differ (${shardLength} and ${shard.length})`);
      shardLength = shard.length;
      shardLengths[shard.index] = shard.length;
      crcs[shard.index] = shard.crc32c;
      durableMask = (durableMask | (1 << shard.index)) >>> 0;
      durable++;
    }
    const need = minDurableShards(bg.dataShards, bg.parityShards);
    if (durable < need)
      return fail(
        'FAILED_PRECONDITION',
        `only ${durable} of ${total} shards are durable; ${need} are needed`,
      );
    if (shardLength * bg.dataShards < commit.length)
      return fail(
        'INVALID_ARGUMENT',
        `${bg.dataShards} shards of ${shardLength} bytes cannot hold ${commit.length} bytes`,
      );
    const committed: BlockGroupInfo = {
      ...bg,
      length: commit.length,
      committed: true,
      shardLengths,
      crcs,
      durableMask,
    };
    return { at, committed };
  }

  private completeFile(cmd: CompleteFileCommand): ResultOf<'completeFile'> {
    const file = this.leased(cmd.inodeId, cmd.leaseId);
    if (isFailure(file)) return file;
    // With a commit of the last block group: checked as commitBlockGroup would, applied only if the
    // completion is accepted too (a refused command changes nothing).
    const prepared = cmd.commit === undefined ? undefined : this.prepareCommit(file, cmd.commit);
    if (prepared !== undefined && isFailure(prepared)) return prepared;
    let size = 0;
    for (let i = 0; i < file.blockGroups.length; i++) {
      const bg = i === prepared?.at ? prepared.committed : file.blockGroups[i]!;
      if (!bg.committed) return fail('FAILED_PRECONDITION', `block group ${bg.id} is not committed`);
      size += bg.length;
    }
    if (cmd.size !== size)
      return fail('INVALID_ARGUMENT', `size ${cmd.size} differs from the committed ${size} bytes`);
    const parent = this.dirs.get(file.parent);
    if (parent === undefined || !parent.alive)
      return fail('NOT_FOUND', `inode ${file.id}: its directory was removed while it was written`);
    const existing = parent.entries.get(file.name);
    if (existing?.type === 'dir') return fail('IS_A_DIRECTORY', `${file.name}: a directory took its name`);
    if (existing !== undefined && !file.overwrite)
      return fail('ALREADY_EXISTS', `${file.name}: a file took its name and overwrite was not asked`);
    if (existing === undefined) {
      const room = this.checkRoom(parent, file.name);
      if (room) return room;
    }
    // From here nothing can fail: publish atomically.
    if (prepared !== undefined) file.blockGroups[prepared.at] = prepared.committed;
    const inode: FileInode = {
      type: 'file',
      id: file.id,
      mode: file.mode,
      size,
      mtimeMs: this.clockMs,
      ctimeMs: this.clockMs,
      ec: file.ec,
      // An exact-size copy: a pushed-to array keeps spare capacity, paid by every file.
      blockGroups: file.blockGroups.slice(),
    };
    if (existing !== undefined) for (const bg of existing.blockGroups) this.garbageList.set(bg.id, bg);
    this.putEntry(parent, file.name, inode, existing);
    this.removePending(file);
    return this.ok('completeFile', { inode });
  }

  /** See ComposeFileCommand: checked whole first, then applied; a refusal changes nothing. */
  private composeFile(cmd: ComposeFileCommand): ResultOf<'composeFile'> {
    const badMode = this.checkMode(cmd.mode);
    if (badMode) return badMode;
    if (cmd.sources.length === 0 || cmd.sources.length > MAX_COMPOSE_SOURCES)
      return fail(
        'INVALID_ARGUMENT',
        `compose joins 1 to ${MAX_COMPOSE_SOURCES} files, not ${cmd.sources.length}`,
      );
    const sourcePath = parsePath(cmd.sourceDir);
    if (!sourcePath.ok) return sourcePath;
    const from = this.resolveDir(sourcePath, sourcePath.components.length);
    if (!from.ok) return from;
    const target = parsePath(cmd.path);
    if (!target.ok) return target;
    if (target.components.length === 0) return fail('IS_A_DIRECTORY', '/: is a directory');
    const to = this.lookupEntry(target);
    if (!to.ok) return to;
    const existing = to.inode;
    if (existing?.type === 'dir') return fail('IS_A_DIRECTORY', `${target.path}: is a directory`);
    if (cmd.ifDstId !== undefined && !cmd.overwrite)
      return fail('INVALID_ARGUMENT', 'a compose that replaces one inode must be allowed to overwrite');
    if (existing !== undefined && !cmd.overwrite)
      return fail('ALREADY_EXISTS', `${target.path}: file exists`);
    const notExpected = notTheExpectedInode(target.path, existing, cmd.ifDstId);
    if (notExpected) return notExpected;
    if (cmd.sourceIds.length !== 0 && cmd.sourceIds.length !== cmd.sources.length)
      return fail(
        'INVALID_ARGUMENT',
        `${cmd.sources.length} files to join but ${cmd.sourceIds.length} inode ids to check them by`,
      );
    const files: FileInode[] = [];
    const named = new Set<string>();
    let size = 0;
    let blockGroups = 0;
    for (const name of cmd.sources) {
      const bad = checkName(name);
      if (bad) return bad;
      if (named.has(name)) return fail('INVALID_ARGUMENT', `${sourcePath.path}/${name}: named twice`);
      named.add(name);
      const file = from.dir.entries.get(name);
      if (file === undefined) return fail('NOT_FOUND', `${sourcePath.path}/${name}: no such file`);
      if (file.type !== 'file') return fail('IS_A_DIRECTORY', `${sourcePath.path}/${name}: is a directory`);
      const expected = cmd.sourceIds[files.length];
      if (expected !== undefined && file.id !== expected)
        return fail(
          'FAILED_PRECONDITION',
          `${sourcePath.path}/${name}: replaced since it was checked (inode ${file.id}, not ${expected})`,
        );
      if (file === existing)
        return fail('INVALID_ARGUMENT', `${target.path}: the target cannot be one of the files it joins`);
      // One policy per file: its name is what stat shows and what repair and placement read.
      if (files.length > 0 && file.ec !== files[0]!.ec)
        return fail(
          'FAILED_PRECONDITION',
          `${sourcePath.path}/${name}: ${file.ec}, not ${files[0]!.ec} as the others`,
        );
      files.push(file);
      size += file.size;
      blockGroups += file.blockGroups.length;
    }
    if (!Number.isSafeInteger(size)) return fail('INVALID_ARGUMENT', 'the joined file would be too large');
    if (blockGroups > MAX_BLOCK_GROUPS_PER_FILE)
      return fail(
        'INVALID_ARGUMENT',
        `the joined file would have more than ${MAX_BLOCK_GROUPS_PER_FILE} block groups`,
      );
    if (existing === undefined && to.parent !== from.dir) {
      const room = this.checkRoom(to.parent, target.path);
      if (room) return room;
    }
    if (this.idsLeft() < 1) return fail('FAILED_PRECONDITION', 'inode ids of this group are exhausted');
    // From here nothing can fail. The sources' block groups move to the new file, shifted to its offsets.
    const joined: BlockGroupInfo[] = [];
    let offset = 0;
    for (const file of files)
      for (const bg of file.blockGroups) {
        joined.push(bg.offset === offset ? bg : { ...bg, offset });
        offset += bg.length;
      }
    assert(offset === size, 'a complete file holds its size in its block groups');
    for (let i = 0; i < files.length; i++) this.removeEntry(from.dir, cmd.sources[i]!, files[i]!);
    const inode: FileInode = {
      type: 'file',
      id: this.allocId() as InodeId,
      mode: cmd.mode,
      size,
      mtimeMs: this.clockMs,
      ctimeMs: this.clockMs,
      ec: files[0]!.ec,
      blockGroups: joined,
    };
    if (existing !== undefined) for (const bg of existing.blockGroups) this.garbageList.set(bg.id, bg);
    this.putEntry(to.parent, ownString(to.name), inode, existing);
    return this.ok('composeFile', { inode });
  }

  private abandonFile(cmd: AbandonFileCommand): ResultOf<'abandonFile'> {
    const file = this.leased(cmd.inodeId, cmd.leaseId, true);
    if (isFailure(file)) return file;
    this.dropPending(file);
    return this.ok('abandonFile', {});
  }

  private renewLease(cmd: RenewLeaseCommand): ResultOf<'renewLease'> {
    const file = this.leased(cmd.inodeId, cmd.leaseId);
    if (isFailure(file)) return file;
    file.expiresMs = this.clockMs + file.leaseMs;
    return this.ok('renewLease', { leaseExpiresMs: file.expiresMs });
  }

  /** Parent directory and entry of a non-root path. */
  private lookupEntry(
    parsed: ParsedPath,
  ): { ok: true; parent: Directory; name: string; inode: Inode | undefined } | Failure {
    const parent = this.resolveDir(parsed, parsed.components.length - 1);
    if (!parent.ok) return parent;
    const name = parsed.components[parsed.components.length - 1]!;
    return { ok: true, parent: parent.dir, name, inode: parent.dir.entries.get(name) };
  }

  /**
   * Puts `inode` at `name` in `dir`, where `replacing` (of the same type) is, or nothing. With removeEntry,
   * removeDirectoryRecord and delete, the only places a directory record changes (streamSnapshot relies on it).
   */
  private putEntry(dir: Directory, name: string, inode: Inode, replacing: Inode | undefined): void {
    this.beforeEntryChange(dir, name);
    if (replacing === undefined) {
      dir.names.insert(name);
      if (inode.type === 'dir') dir.dirs++;
      else dir.files++;
    } else assert(replacing.type === inode.type, 'an entry is replaced by one of its own type');
    dir.entries.set(name, inode);
  }

  private removeEntry(dir: Directory, name: string, inode: Inode): void {
    this.beforeEntryChange(dir, name);
    dir.entries.delete(name);
    dir.names.remove(name);
    if (inode.type === 'dir') dir.dirs--;
    else dir.files--;
  }

  private rename(cmd: RenameCommand): ResultOf<'rename'> {
    const src = parsePath(cmd.src);
    if (!src.ok) return src;
    const dst = parsePath(cmd.dst);
    if (!dst.ok) return dst;
    if (src.components.length === 0) return fail('INVALID_ARGUMENT', 'cannot rename /');
    if (dst.components.length === 0) return fail('INVALID_ARGUMENT', 'cannot rename onto /');
    const from = this.lookupEntry(src);
    if (!from.ok) return from;
    const moving = from.inode;
    if (moving === undefined) return fail('NOT_FOUND', `${src.path}: no such file or directory`);
    if (moving.type === 'dir' && (dst.path === src.path || dst.path.startsWith(`${src.path}/`))) {
      if (dst.path === src.path) return this.ok('rename', {});
      return fail('INVALID_ARGUMENT', `cannot move ${src.path} into its own subtree (${dst.path})`);
    }
    const to = this.lookupEntry(dst);
    if (!to.ok) return to;
    const replaced = to.inode;
    if (cmd.ifDstId !== undefined && cmd.noReplace)
      return fail('INVALID_ARGUMENT', 'a rename cannot both refuse to replace and replace one inode');
    const notExpected = notTheExpectedInode(dst.path, replaced, cmd.ifDstId);
    if (notExpected) return notExpected;
    if (src.path === dst.path) return this.ok('rename', {});
    if (replaced !== undefined) {
      if (cmd.noReplace) return fail('ALREADY_EXISTS', `${dst.path}: exists`);
      if (moving.type === 'file' && replaced.type === 'dir')
        return fail('IS_A_DIRECTORY', `${dst.path}: is a directory`);
      if (moving.type === 'dir' && replaced.type === 'file')
        return fail('NOT_A_DIRECTORY', `${dst.path}: not a directory`);
      if (replaced.type === 'dir') {
        const victim = this.dirs.get(replaced.id)!;
        if (victim.entries.size > 0) return fail('NOT_EMPTY', `${dst.path}: directory not empty`);
      }
    } else if (to.parent !== from.parent) {
      const room = this.checkRoom(to.parent, dst.path);
      if (room) return room;
    }
    // From here nothing can fail.
    this.removeEntry(from.parent, from.name, moving);
    if (replaced !== undefined) {
      this.removeEntry(to.parent, to.name, replaced);
      if (replaced.type === 'dir') this.removeDirectoryRecord(replaced.id);
      else for (const bg of replaced.blockGroups) this.garbageList.set(bg.id, bg);
    }
    const moved: Inode = { ...moving, ctimeMs: this.clockMs };
    this.putEntry(to.parent, ownString(to.name), moved, undefined);
    return this.ok('rename', {});
  }

  private removeDirectoryRecord(id: InodeId): void {
    const dir = this.dirs.get(id);
    assert(dir !== undefined && dir.entries.size === 0, 'only an empty directory record is removed');
    this.beforeDirectoryRemoval(dir);
    dir.alive = false;
    this.dirs.delete(id);
  }

  private delete(cmd: DeleteCommand): ResultOf<'delete'> {
    const parsed = parsePath(cmd.path);
    if (!parsed.ok) return parsed;
    if (parsed.components.length === 0) return fail('INVALID_ARGUMENT', 'cannot delete /');
    const found = this.lookupEntry(parsed);
    if (!found.ok) return found;
    const inode = found.inode;
    if (inode === undefined) return fail('NOT_FOUND', `${parsed.path}: no such file or directory`);
    if (inode.type === 'file') {
      this.removeEntry(found.parent, found.name, inode);
      for (const bg of inode.blockGroups) this.garbageList.set(bg.id, bg);
      return this.ok('delete', { files: 1, dirs: 0 });
    }
    const dir = this.dirs.get(inode.id)!;
    if (dir.entries.size > 0 && !cmd.recursive)
      return fail('NOT_EMPTY', `${parsed.path}: directory not empty`);
    // Depth-first, children before parents, in name order so the garbage list's order is deterministic.
    let files = 0;
    let dirs = 0;
    const stack: { dir: Directory; expanded: boolean }[] = [{ dir, expanded: false }];
    while (stack.length > 0) {
      const top = stack[stack.length - 1]!;
      if (!top.expanded) {
        top.expanded = true;
        this.beforeDirectoryRemoval(top.dir);
        top.dir.alive = false;
        for (const name of top.dir.names) {
          const child = top.dir.entries.get(name)!;
          if (child.type === 'dir') stack.push({ dir: this.dirs.get(child.id)!, expanded: false });
          else {
            files++;
            for (const bg of child.blockGroups) this.garbageList.set(bg.id, bg);
          }
        }
        continue;
      }
      stack.pop();
      this.dirs.delete(top.dir.id);
      dirs++;
    }
    this.removeEntry(found.parent, found.name, inode);
    return this.ok('delete', { files, dirs });
  }

  private expireLeases(cmd: ExpireLeasesCommand): ResultOf<'expireLeases'> {
    const expired: PendingFile[] = [];
    for (const file of this.pending.values())
      if (file.expiresMs <= cmd.expiresAtOrBeforeMs) expired.push(file);
    expired.sort((a, b) => a.id - b.id);
    for (const file of expired) this.dropPending(file);
    return this.ok('expireLeases', { expired: expired.map((f) => f.id) });
  }

  private collectGarbage(cmd: CollectGarbageCommand): ResultOf<'collectGarbage'> {
    let removed = 0;
    for (const id of cmd.blockGroupIds) if (this.garbageList.delete(id)) removed++;
    return this.ok('collectGarbage', { removed });
  }

  private repairShards(cmd: RepairShardsCommand): ResultOf<'repairShards'> {
    const parsed = parsePath(cmd.path);
    if (!parsed.ok) return parsed;
    if (parsed.components.length === 0) return fail('IS_A_DIRECTORY', '/: is a directory');
    const found = this.lookupEntry(parsed);
    if (!found.ok) return found;
    const inode = found.inode;
    if (inode === undefined) return fail('NOT_FOUND', `${parsed.path}: no such file or directory`);
    if (inode.type !== 'file') return fail('IS_A_DIRECTORY', `${parsed.path}: is a directory`);
    if (inode.id !== cmd.inodeId)
      return fail(
        'FAILED_PRECONDITION',
        `${parsed.path}: is now inode ${inode.id}, not ${cmd.inodeId} (replaced while it was repaired)`,
      );
    const at = inode.blockGroups.findIndex((bg) => bg.id === cmd.blockGroupId);
    if (at < 0) return fail('NOT_FOUND', `block group ${cmd.blockGroupId} does not belong to ${parsed.path}`);
    const bg = inode.blockGroups[at]!;
    assert(bg.committed, 'a completed file has only committed block groups');
    if (cmd.shards.length === 0) return fail('INVALID_ARGUMENT', 'a repair names at least one shard');
    const total = bg.dataShards + bg.parityShards;
    let shardLength = -1;
    for (let i = 0; i < total && shardLength < 0; i++)
      if ((bg.durableMask & (2 ** i)) !== 0) shardLength = bg.shardLengths[i]!;
    assert(shardLength >= 0, 'a committed block group has durable shards');
    const servers = bg.servers.slice();
    const shardLengths =
      bg.shardLengths.length === total ? bg.shardLengths.slice() : new Array(total).fill(0);
    const crcs = bg.crcs.length === total ? bg.crcs.slice() : new Array(total).fill(0);
    let durableMask = bg.durableMask;
    const seen = new Set<number>();
    for (const shard of cmd.shards) {
      const i = shard.index;
      if (!Number.isInteger(i) || i < 0 || i >= total)
        return fail('INVALID_ARGUMENT', `shard index ${i} is outside 0..${total - 1}`);
      if (seen.has(i)) return fail('INVALID_ARGUMENT', `shard ${i} is repaired twice`);
      seen.add(i);
      const bytes = utf8Length(shard.server);
      if (bytes < 1 || bytes > MAX_SERVER_ID_BYTES) return fail('INVALID_ARGUMENT', 'bad chunk server id');
      if (shard.server === shard.replaces)
        return fail('INVALID_ARGUMENT', `shard ${i}: the new holder must differ from the one it replaces`);
      if (servers[i] !== shard.replaces)
        return fail(
          'FAILED_PRECONDITION',
          `shard ${i} of block group ${bg.id} is on '${servers[i]}' now, not '${shard.replaces}'`,
        );
      const other = servers.findIndex((server, j) => j !== i && server === shard.server);
      if (other >= 0)
        return fail('INVALID_ARGUMENT', `chunk server ${shard.server} already holds shard ${other}`);
      if (shard.length !== shardLength)
        return fail(
          'INVALID_ARGUMENT',
          `shard ${i}: ${shard.length} bytes, the group's shards hold ${shardLength}`,
        );
      if (!Number.isInteger(shard.crc32c) || shard.crc32c < 0 || shard.crc32c > 0xffffffff)
        return fail('INVALID_ARGUMENT', `shard ${i} has a bad crc32c`);
      const wasDurable = (bg.durableMask & (2 ** i)) !== 0;
      // A rebuilt shard must be the shard that was written: a repairer that decoded wrongly (or lies) is caught.
      if (wasDurable && crcs[i] !== shard.crc32c)
        return fail(
          'CORRUPT',
          `shard ${i} of block group ${bg.id}: rebuilt crc32c ${shard.crc32c} differs from the recorded ${crcs[i]}`,
        );
      servers[i] = this.intern(shard.server);
      shardLengths[i] = shard.length;
      crcs[i] = shard.crc32c;
      durableMask = (durableMask | (2 ** i)) >>> 0;
    }
    // From here nothing can fail.
    const repaired: BlockGroupInfo = { ...bg, servers, shardLengths, crcs, durableMask };
    const blockGroups = inode.blockGroups.slice();
    blockGroups[at] = repaired;
    this.putEntry(found.parent, found.name, { ...inode, blockGroups }, inode);
    return this.ok('repairShards', { blockGroup: repaired });
  }

  // ---------------------------------------------------------------------------------------------------
  // Reads (served by the host after ReadIndex; never change state)
  // ---------------------------------------------------------------------------------------------------

  /**
   * The EC policy a create of `path` asking for `ec` would get now (explicit, else inherited, else
   * `defaultEc`), or undefined when the path or policy would be refused: the leader places a first block
   * group with it before proposing the create (which re-resolves it when applied).
   */
  policyFor(path: string, ec: string, defaultEc: string): EcPolicy | undefined {
    const parsed = parsePath(path);
    if (!parsed.ok || parsed.components.length === 0) return undefined;
    const parent = this.resolveDir(parsed, parsed.components.length - 1);
    if (!parent.ok) return undefined;
    const policy = parsePolicy(ec !== '' ? ec : parent.ec !== '' ? parent.ec : defaultEc);
    return isFailure(policy) ? undefined : policy;
  }

  stat(path: string): StatResult | Failure {
    const parsed = parsePath(path);
    if (!parsed.ok) return parsed;
    if (parsed.components.length === 0) return { ok: true, path: '/', inode: this.rootInode };
    const found = this.lookupEntry(parsed);
    if (!found.ok) return found;
    if (found.inode === undefined) return fail('NOT_FOUND', `${parsed.path}: no such file or directory`);
    return { ok: true, path: parsed.path, inode: found.inode };
  }

  /**
   * One page of a directory, in code-point order of names, strictly after `startAfter` ('' = from the
   * start), at most `limit` entries (0 = MAX_LIST_LIMIT; larger is clamped to it). Costs O(log n + limit).
   */
  list(path: string, startAfter = '', limit = MAX_LIST_LIMIT): ListPage | Failure {
    const parsed = parsePath(path);
    if (!parsed.ok) return parsed;
    if (!Number.isInteger(limit) || limit < 0)
      return fail('INVALID_ARGUMENT', 'limit must be a non-negative integer');
    const pageSize = limit === 0 ? MAX_LIST_LIMIT : Math.min(limit, MAX_LIST_LIMIT);
    const resolved = this.resolveDir(parsed, parsed.components.length - 1);
    if (!resolved.ok) return resolved;
    let dir = resolved.dir;
    if (parsed.components.length > 0) {
      const entry = dir.entries.get(parsed.components[parsed.components.length - 1]!);
      if (entry === undefined) return fail('NOT_FOUND', `${parsed.path}: no such file or directory`);
      if (entry.type !== 'dir') return fail('NOT_A_DIRECTORY', `${parsed.path}: not a directory`);
      dir = this.dirs.get(entry.id)!;
    }
    const names = dir.names.page(startAfter, pageSize);
    const entries = names.map((name) => ({ name, inode: dir.entries.get(name)! }));
    const last = names[names.length - 1];
    const more = names.length === pageSize && last !== undefined && dir.names.hasAfter(last);
    return { ok: true, entries, more };
  }

  /**
   * Every complete file with its path, depth first, in name order. O(files): for admin scans (the
   * report's files with missing shards), not for the request path.
   */
  *files(): Generator<{ readonly path: string; readonly inode: FileInode }> {
    const root = this.dirs.get(ROOT_INODE_ID);
    if (root === undefined) return;
    // Depth first, each directory's names in order, descending as soon as a subdirectory comes up: so
    // the walk order is the component-by-component order of paths (a resumable cursor for callers).
    const stack: { dir: Directory; path: string; names: Iterator<string> }[] = [
      { dir: root, path: '', names: root.names[Symbol.iterator]() },
    ];
    while (stack.length > 0) {
      const top = stack[stack.length - 1]!;
      const next = top.names.next();
      if (next.done) {
        stack.pop();
        continue;
      }
      const inode = top.dir.entries.get(next.value)!;
      const path = `${top.path}/${next.value}`;
      if (inode.type === 'file') yield { path, inode };
      else {
        const dir = this.dirs.get(inode.id)!;
        stack.push({ dir, path, names: dir.names[Symbol.iterator]() });
      }
    }
  }

  /** The file being written as `inodeId` (the leader needs its policy to place the next block group). */
  pendingFile(inodeId: InodeId): Readonly<PendingFile> | undefined {
    return this.pending.get(inodeId);
  }

  /** Up to `limit` garbage block groups, oldest first, for the chunk-server GC. */
  garbage(limit: number): BlockGroupInfo[] {
    const out: BlockGroupInfo[] = [];
    for (const bg of this.garbageList.values()) {
      if (out.length >= limit) break;
      out.push(bg);
    }
    return out;
  }

  /**
   * Where the namespace records each of the block groups `ids` (of this group): the chunk server meant to
   * hold each shard, and whether the group is garbage (the garbage collector deletes its shards). Files,
   * files being written and garbage are all looked at; an id absent from the answer is recorded nowhere.
   * One synchronous pass over the whole namespace: a walk that yielded could miss a file renamed from
   * a directory not yet walked into one already walked, and call its shards unrecorded. So it is for rare
   * use (the orphan sweep), and costs about as much as a snapshot's iteration.
   */
  blockGroupsAmong(
    ids: ReadonlySet<number>,
  ): Map<BlockGroupId, { readonly servers: readonly string[]; readonly garbage: boolean }> {
    const found = new Map<BlockGroupId, { readonly servers: readonly string[]; readonly garbage: boolean }>();
    if (ids.size === 0) return found;
    const note = (bg: BlockGroupInfo, garbage: boolean) => {
      if (ids.has(bg.id)) found.set(bg.id, { servers: bg.servers, garbage });
    };
    for (const dir of this.dirs.values())
      for (const inode of dir.entries.values())
        if (inode.type === 'file') for (const bg of inode.blockGroups) note(bg, false);
    for (const file of this.pending.values()) for (const bg of file.blockGroups) note(bg, false);
    // Last: a block group both in a file and in the garbage list is garbage.
    for (const bg of this.garbageList.values()) note(bg, true);
    return found;
  }

  /**
   * True when `id` is a block group or inode id this group has handed out (a shard naming a later one
   * was not written for any allocation made so far).
   */
  hasAllocated(id: number): boolean {
    return isValidId(id) && groupOfId(id) === this.group && counterOfId(id) < this.nextCounter;
  }

  /** When the leader should next propose expireLeases (undefined: no write in progress). */
  earliestLeaseExpiryMs(): number | undefined {
    let earliest: number | undefined;
    for (const file of this.pending.values())
      if (earliest === undefined || file.expiresMs < earliest) earliest = file.expiresMs;
    return earliest;
  }

  counts(): { directories: number; files: number; pending: number; garbage: number; sessions: number } {
    let files = 0;
    for (const dir of this.dirs.values()) files += dir.files;
    return {
      directories: this.dirs.size,
      files,
      pending: this.pending.size,
      garbage: this.garbageList.size,
      sessions: this.sessions.size(),
    };
  }

  /** The latest command time seen (the state machine's notion of "now"). */
  get timeMs(): number {
    return this.clockMs;
  }

  /**
   * Verifies the structure: counts, records for every directory entry, pending names, and the tree's
   * shape — every directory record has exactly one parent entry (the root none) and is reachable from
   * the root, and no inode or block group id is used twice or lies beyond the ids handed out. Tests call
   * it after commands; a snapshot restore calls it because a damaged snapshot that passed the codec could
   * otherwise hold a directory cycle (rename and delete would walk it forever or orphan a subtree), two
   * files sharing a block group (collecting one's garbage would delete the other's shards), or ids that
   * the next creates would hand out again.
   */
  checkInvariants(): void {
    const parentOf = new Map<InodeId, InodeId>();
    // Inodes and block groups share one id counter, so one set holds both (and catches an inode and a
    // block group sharing an id).
    const ids = new IdSet();
    ids.add(ROOT_INODE_ID);
    const noteBlockGroup = (bg: BlockGroupInfo): void => {
      assert(groupOfId(bg.id) !== this.group || this.hasAllocated(bg.id), 'block group ids were handed out');
      assert(ids.add(bg.id), `block group ${bg.id} is recorded once`);
    };
    const noteInode = (id: InodeId): void => {
      assert(isValidId(id), 'valid inode id');
      assert(groupOfId(id) !== this.group || this.hasAllocated(id), 'inode ids were handed out');
      assert(ids.add(id), `inode ${id} is named once`);
    };
    for (const dir of this.dirs.values()) {
      assert(dir.alive, 'directory records are alive');
      assert(dir.names.size === dir.entries.size, 'name index matches entries');
      let files = 0;
      let dirs = 0;
      for (const name of dir.names) {
        const inode = dir.entries.get(name);
        assert(inode !== undefined, 'indexed name has an entry');
        noteInode(inode.id);
        if (inode.type === 'dir') {
          dirs++;
          assert(this.dirs.has(inode.id), 'a directory entry has a record');
          parentOf.set(inode.id, dir.id);
        } else {
          files++;
          for (const bg of inode.blockGroups) noteBlockGroup(bg);
        }
      }
      assert(dir.files === files && dir.dirs === dirs, 'directory counts match entries');
    }
    assert(!parentOf.has(ROOT_INODE_ID), 'the root directory has no parent');
    // Every record but the root's has one parent (noteInode refused a second); following parents from
    // each must reach the root, or a directory already seen to reach it, within as many steps as there
    // are directories, or there is a cycle. Each directory joins `rooted` once: O(directories) in all,
    // however deep the tree.
    const rooted = new Set<InodeId>([ROOT_INODE_ID]);
    const path: InodeId[] = [];
    for (const dir of this.dirs.values()) {
      assert(dir.id === ROOT_INODE_ID || parentOf.has(dir.id), 'every directory record is named by an entry');
      let at: InodeId | undefined = dir.id;
      path.length = 0;
      while (at !== undefined && !rooted.has(at)) {
        assert(path.length < this.dirs.size, `directory ${dir.id} is reachable from the root (no cycle)`);
        path.push(at);
        at = parentOf.get(at);
      }
      assert(at !== undefined, `directory ${dir.id} is reachable from the root`);
      for (const id of path) rooted.add(id);
    }
    for (const file of this.pending.values()) {
      noteInode(file.id);
      for (const bg of file.blockGroups) noteBlockGroup(bg);
    }
    for (const bg of this.garbageList.values()) noteBlockGroup(bg);
    for (const [key, id] of this.pendingByName) {
      const file = this.pending.get(id);
      assert(file !== undefined && pendingKey(file.parent, file.name) === key, 'pending name index');
    }
    assert(this.pendingByName.size === this.pending.size, 'one pending file per name');
    const perClient = new Map<string, number>();
    for (const file of this.pending.values())
      perClient.set(file.clientId, (perClient.get(file.clientId) ?? 0) + 1);
    assert(
      perClient.size === this.pendingPerClient.size &&
        [...perClient].every(([client, n]) => this.pendingPerClient.get(client) === n),
      'pending files per client match the pending files',
    );
  }

  // ---------------------------------------------------------------------------------------------------
  // Snapshots
  // ---------------------------------------------------------------------------------------------------

  /**
   * The whole state as a stream of chunks of exactly `maxChunkBytes` (the last one shorter). It is a
   * sequence of length-prefixed records (header, then each directory followed by its entries in name
   * order, pending files, garbage, sessions, and an end record with the record count), so memory is bounded
   * by one chunk plus one record. The state must not change while this stream is drained (checked); see
   * streamSnapshot for one that may.
   */
  snapshotChunks(maxChunkBytes = DEFAULT_SNAPSHOT_CHUNK_BYTES): Generator<Uint8Array> {
    return this.chunks(this.capture(true), maxChunkBytes, this.applied);
  }

  /**
   * The same bytes as snapshotChunks at the moment of this call, streamed while commands go on being
   * applied: in a directory the stream has yet to finish, each entry is kept as it was before its first
   * change (a name created since is kept as absent), a record being removed keeps its entries, and the
   * small parts (pending files, garbage, sessions) are copied now. What is kept grows with the changes
   * made during the stream, never with a directory's size, so the host need not hold commands back
   * while a large namespace is written out. One stream at a time; `close` gives it up early and drops
   * what it kept.
   */
  streamSnapshot(maxChunkBytes = STREAM_SNAPSHOT_CHUNK_BYTES): SnapshotStream {
    assert(this.streaming === undefined, 'one snapshot streams at a time');
    const capture = this.capture(true);
    this.streaming = capture;
    const chunks = this.chunks(capture, maxChunkBytes, undefined);
    const release = (): void => {
      if (this.streaming === capture) this.streaming = undefined;
      capture.preserved.clear();
    };
    return {
      next: () => {
        const next = chunks.next();
        if (next.done === true) release();
        return next;
      },
      close: () => {
        release();
        chunks.return(undefined);
      },
    };
  }

  /** What a streamed snapshot has to keep of `dir`, or undefined when it needs nothing (see streamSnapshot). */
  private preimageOf(dir: Directory): DirectoryPreimage | undefined {
    const capture = this.streaming;
    if (capture === undefined || capture.settled.has(dir.id)) return undefined;
    let preimage = capture.preserved.get(dir.id);
    if (preimage === undefined) {
      preimage = { before: new Map(), names: new SortedNames(), alive: undefined };
      capture.preserved.set(dir.id, preimage);
    }
    return preimage;
  }

  /** Keeps the entry at `name` in `dir` as it is now for the snapshot being streamed, if it must. */
  private beforeEntryChange(dir: Directory, name: string): void {
    const preimage = this.preimageOf(dir);
    if (preimage === undefined || preimage.before.has(name)) return;
    preimage.before.set(name, dir.entries.get(name) ?? null);
    preimage.names.insert(name);
  }

  /** Like beforeEntryChange, for a record about to be removed: nothing changes its entries after. */
  private beforeDirectoryRemoval(dir: Directory): void {
    const preimage = this.preimageOf(dir);
    if (preimage !== undefined && preimage.alive === undefined) preimage.alive = dir.alive;
  }

  /** What a snapshot of the state now consists of; directories are read as the stream reaches them. */
  private capture(withSessions: boolean): SnapshotCapture {
    return {
      header: {
        nextCounter: this.nextCounter,
        nextLease: this.nextLease,
        clockMs: withSessions ? this.clockMs : 0,
        rootInode: this.rootInode,
      },
      dirs: [...this.dirs.values()],
      // Pending files change in place (block groups, lease expiry); committed inodes and block groups never do.
      pending: [...this.pending.values()].map((file) => ({ ...file, blockGroups: file.blockGroups.slice() })),
      garbage: [...this.garbageList.values()],
      sessions: withSessions ? this.sessions.snapshot() : undefined,
      preserved: new Map(),
      settled: new Set(),
    };
  }

  /** `unchangedAt`: the applied count the state must keep while streamed (undefined: copy-on-write). */
  private *chunks(
    capture: SnapshotCapture,
    maxChunkBytes: number,
    unchangedAt: number | undefined,
  ): Generator<Uint8Array, undefined> {
    assert(Number.isInteger(maxChunkBytes) && maxChunkBytes >= 64, 'snapshot chunk size');
    // Records are framed by a fixed 4-byte length written in place, so nothing is copied per record.
    const record = new ByteWriter(Math.min(maxChunkBytes + 1024, 1 << 16));
    let frameAt = record.placeholderU32();
    let records = 0;
    const self = this;
    function* emit(): Generator<Uint8Array> {
      records++;
      record.patchU32(frameAt, record.length - frameAt - 4);
      while (record.length >= maxChunkBytes) {
        yield record.view(0, maxChunkBytes).slice();
        record.shift(maxChunkBytes);
      }
      assert(
        unchangedAt === undefined || self.applied === unchangedAt,
        'the state changed while its snapshot was streamed',
      );
      frameAt = record.placeholderU32();
    }
    const { header } = capture;
    record.u8(SNAP_HEADER).u8(SNAPSHOT_VERSION).uint(this.group).uint(header.nextCounter);
    record.uint(header.nextLease).uint(header.clockMs);
    writeInode(record, header.rootInode);
    yield* emit();
    for (const dir of capture.dirs) {
      record
        .u8(SNAP_DIR)
        .uint(dir.id)
        .bool(capture.preserved.get(dir.id)?.alive ?? dir.alive);
      yield* emit();
      // A page of names with their inodes is read at once, merged with the names changed since the
      // capture that fall in the same range, each of those as it was then.
      let after = '';
      for (;;) {
        const names = dir.names.page(after, SNAPSHOT_PAGE_NAMES);
        const last = names.length === SNAPSHOT_PAGE_NAMES ? names[names.length - 1] : undefined;
        const preimage = capture.preserved.get(dir.id);
        const page =
          preimage === undefined ? names : mergeNames(names, namesUpTo(preimage.names, after, last));
        const inodes = page.map((name) =>
          preimage?.before.has(name) === true ? preimage.before.get(name)! : dir.entries.get(name)!,
        );
        for (let i = 0; i < page.length; i++) {
          const inode = inodes[i]!;
          if (inode === null) continue;
          record.u8(SNAP_ENTRY).string(page[i]!);
          writeInode(record, inode);
          yield* emit();
        }
        if (last === undefined) break;
        after = last;
      }
      capture.settled.add(dir.id);
      capture.preserved.delete(dir.id);
    }
    for (const file of capture.pending) {
      record.u8(SNAP_PENDING).uint(file.id).uint(file.parent).string(file.name).string(file.leaseId);
      record.string(file.clientId).uint(file.leaseMs).bool(file.overwrite).uint(file.mode).string(file.ec);
      record.uint(file.dataShards).uint(file.parityShards).uint(file.createdMs).uint(file.expiresMs);
      record.uint(file.blockGroups.length);
      for (const bg of file.blockGroups) writeBlockGroup(record, bg);
      yield* emit();
    }
    for (const bg of capture.garbage) {
      record.u8(SNAP_GARBAGE);
      writeBlockGroup(record, bg);
      yield* emit();
    }
    const sessions = capture.sessions;
    if (sessions !== undefined) {
      record.u8(SNAP_SESSION_CLOCK).uint(sessions.latestTime);
      yield* emit();
      for (const s of sessions.sessions) {
        record.u8(SNAP_SESSION).string(s.clientId).uint(s.lastActive).uint(s.floor).uint(s.highest);
        record.uint(s.results.length);
        for (const [seq, result] of s.results) {
          record.uint(seq);
          writeResult(record, result);
        }
        yield* emit();
      }
    }
    record.u8(SNAP_END).uint(records + 1);
    yield* emit();
    // emit() left an empty frame slot open at the end; drop it.
    if (record.length > 4) yield record.view(0, record.length - 4).slice();
    return undefined;
  }

  /** The whole snapshot in one buffer (small states, tests). */
  snapshot(): Uint8Array {
    const chunks = [...this.snapshotChunks()];
    const total = chunks.reduce((n, c) => n + c.length, 0);
    const bytes = new Uint8Array(total);
    let at = 0;
    for (const c of chunks) {
      bytes.set(c, at);
      at += c.length;
    }
    return bytes;
  }

  /**
   * SHA-256 of the snapshot: equal hashes ⇔ equal states, including the session table and id counters.
   * `withSessions: false` leaves out the session table and the latest command time (which every command,
   * refused or not, updates), so a test can check that a refused command changed nothing else.
   */
  stateHash(withSessions = true): string {
    const hash = createHash('sha256');
    for (const chunk of this.chunks(this.capture(withSessions), DEFAULT_SNAPSHOT_CHUNK_BYTES, this.applied))
      hash.update(chunk);
    return hash.digest('hex');
  }

  static restore(bytes: Uint8Array, sessionLimits?: SessionLimits): NamespaceState {
    const restorer = new NamespaceRestorer(sessionLimits);
    restorer.push(bytes);
    return restorer.finish();
  }

  /** @internal Used by NamespaceRestorer. */
  static fromParts(parts: RestoredParts, sessionLimits: SessionLimits): NamespaceState {
    const state = new NamespaceState({ group: parts.group, sessionLimits });
    state.dirs.clear();
    for (const dir of parts.dirs) state.dirs.set(dir.id, dir);
    for (const s of parts.interned.keys()) state.intern(s);
    // More than MAX_PENDING_FILES may be restored (a snapshot of a version without the limit): only new
    // creates are refused past it.
    for (const file of parts.pending) {
      if (state.pending.has(file.id))
        throw new StateCodecError(`namespace snapshot: pending file ${file.id} twice`);
      state.addPending(file);
    }
    for (const bg of parts.garbage) state.garbageList.set(bg.id, bg);
    state.rootInode = parts.rootInode;
    state.nextCounter = parts.nextCounter;
    state.nextLease = parts.nextLease;
    state.clockMs = parts.clockMs;
    state.sessions = ClientSessions.restore(sessionLimits, parts.sessions);
    if (!state.dirs.has(ROOT_INODE_ID) && parts.group === ROOT_GROUP)
      throw new StateCodecError('namespace snapshot: the root directory is missing');
    try {
      state.checkInvariants();
    } catch (error) {
      throw new StateCodecError(`namespace snapshot: inconsistent state (${(error as Error).message})`);
    }
    return state;
  }
}

/**
 * A set of ids, sharded by counter: one Set holds at most 2^24 entries in V8, and a namespace may hold
 * more inodes and block groups than that (10 million entries in each of several directories).
 */
class IdSet {
  private static readonly SHARD_BITS = 22;
  private readonly shards = new Map<number, Set<number>>();

  /** Adds `id`; false if it was there already. */
  add(id: number): boolean {
    const key = Math.floor(id / 2 ** IdSet.SHARD_BITS);
    let shard = this.shards.get(key);
    if (shard === undefined) {
      shard = new Set();
      this.shards.set(key, shard);
    }
    if (shard.has(id)) return false;
    shard.add(id);
    return true;
  }
}

// ---- snapshot records ----
const SNAPSHOT_VERSION = 1;
const SNAP_HEADER = 1;
const SNAP_DIR = 2;
const SNAP_ENTRY = 3;
const SNAP_PENDING = 4;
const SNAP_GARBAGE = 5;
const SNAP_SESSION_CLOCK = 6;
const SNAP_SESSION = 7;
const SNAP_END = 8;
/** A single record is at most this big (a file with the most block groups fits well within it). */
const MAX_SNAPSHOT_RECORD_BYTES = 64 << 20;

interface RestoredParts {
  group: number;
  nextCounter: number;
  nextLease: number;
  clockMs: number;
  rootInode: DirInode;
  /** Strings shared while decoding (server ids, EC names), handed to the state's intern table. */
  interned: Map<string, string>;
  dirs: Directory[];
  pending: PendingFile[];
  garbage: BlockGroupInfo[];
  sessions: SessionsSnapshot<NamespaceResult>;
}

/**
 * Rebuilds a NamespaceState from snapshot chunks as they arrive (any chunking), holding at most one
 * partial record besides the state. `finish()` checks the end record and the state's invariants; any
 * malformed input throws StateCodecError.
 */
export class NamespaceRestorer {
  private buffered: Uint8Array = new Uint8Array(0);
  private records = 0;
  private ended = false;
  private parts: RestoredParts | undefined;
  private currentDir: Directory | undefined;
  private readonly sessionLimits: SessionLimits;
  private readonly sessionList: SessionsSnapshot<NamespaceResult>['sessions'][number][] = [];
  private sessionClock = 0;
  private readonly interned = new Map<string, string>();
  private readonly intern = (s: string): string => {
    const known = this.interned.get(s);
    if (known !== undefined) return known;
    if (this.interned.size < MAX_INTERNED) this.interned.set(s, s);
    return s;
  };

  constructor(sessionLimits: SessionLimits = DEFAULT_SESSION_LIMITS) {
    this.sessionLimits = sessionLimits;
  }

  push(chunk: Uint8Array): void {
    let data = chunk;
    if (this.buffered.length > 0) {
      data = new Uint8Array(this.buffered.length + chunk.length);
      data.set(this.buffered);
      data.set(chunk, this.buffered.length);
    }
    const view = new DataView(data.buffer, data.byteOffset, data.byteLength);
    let at = 0;
    while (data.length - at >= 4) {
      const length = view.getUint32(at, true);
      if (length > MAX_SNAPSHOT_RECORD_BYTES)
        throw new StateCodecError(`namespace snapshot: record of ${length} bytes exceeds the limit`);
      if (data.length - at - 4 < length) break;
      this.record(data.subarray(at + 4, at + 4 + length));
      at += 4 + length;
    }
    this.buffered = data.slice(at);
  }

  private record(body: Uint8Array): void {
    if (this.ended) throw new StateCodecError('namespace snapshot: data after the end record');
    this.records++;
    const r = new ByteReader(body, 'namespace snapshot record');
    const tag = r.u8('record tag');
    if (this.parts === undefined && tag !== SNAP_HEADER)
      throw new StateCodecError('namespace snapshot: does not start with a header record');
    const parts = this.parts;
    switch (tag) {
      case SNAP_HEADER: {
        if (parts !== undefined) throw new StateCodecError('namespace snapshot: two header records');
        const version = r.u8('snapshot version');
        if (version !== SNAPSHOT_VERSION)
          throw new StateCodecError(`namespace snapshot: version ${version}, expected ${SNAPSHOT_VERSION}`);
        const group = r.uint('group', 8191);
        if (group < 1) throw new StateCodecError('namespace snapshot: group 0 is not a namespace group');
        const nextCounter = r.uint('next counter', MAX_COUNTER + 1);
        const nextLease = r.uint('next lease');
        const clockMs = r.uint('clock');
        const rootInode = readInode(r);
        if (rootInode.type !== 'dir' || rootInode.id !== ROOT_INODE_ID)
          throw new StateCodecError('namespace snapshot: bad root inode');
        this.parts = {
          group,
          nextCounter,
          nextLease,
          clockMs,
          rootInode,
          interned: this.interned,
          dirs: [],
          pending: [],
          garbage: [],
          sessions: { latestTime: 0, sessions: [] },
        };
        break;
      }
      case SNAP_DIR: {
        const id = r.uint('directory id') as InodeId;
        const alive = r.bool('alive');
        const dir: Directory = { id, alive, files: 0, dirs: 0, entries: new Map(), names: new SortedNames() };
        parts!.dirs.push(dir);
        this.currentDir = dir;
        break;
      }
      case SNAP_ENTRY: {
        const dir = this.currentDir;
        if (dir === undefined) throw new StateCodecError('namespace snapshot: an entry before any directory');
        const name = r.string('name', 1024);
        const inode = readInode(r, this.intern);
        if (dir.entries.has(name)) throw new StateCodecError(`namespace snapshot: entry '${name}' twice`);
        if (dir.names.hasAfter(name)) throw new StateCodecError('namespace snapshot: entries out of order');
        dir.entries.set(name, inode);
        dir.names.insert(name);
        if (inode.type === 'dir') dir.dirs++;
        else dir.files++;
        break;
      }
      case SNAP_PENDING: {
        const id = r.uint('pending id') as InodeId;
        const parent = r.uint('parent') as InodeId;
        const name = r.string('name', 1024);
        const leaseId = r.string('lease id', MAX_LEASE_ID_BYTES);
        const clientId = r.string('client id', MAX_CLIENT_ID_BYTES);
        const leaseMs = r.uint('lease ms');
        const overwrite = r.bool('overwrite');
        const mode = r.uint('mode', MODE_MASK);
        const ec = this.intern(r.string('ec', 64));
        const dataShards = r.uint('data shards', 255);
        const parityShards = r.uint('parity shards', 255);
        const createdMs = r.uint('created');
        const expiresMs = r.uint('expires');
        const n = r.count('block groups', MAX_BLOCK_GROUPS_PER_FILE);
        const blockGroups: BlockGroupInfo[] = [];
        for (let i = 0; i < n; i++) blockGroups.push(readBlockGroup(r, this.intern));
        parts!.pending.push({
          id,
          parent,
          name,
          leaseId,
          clientId,
          leaseMs,
          overwrite,
          mode,
          ec,
          dataShards,
          parityShards,
          createdMs,
          expiresMs,
          blockGroups,
        });
        break;
      }
      case SNAP_GARBAGE:
        parts!.garbage.push(readBlockGroup(r, this.intern));
        break;
      case SNAP_SESSION_CLOCK:
        this.sessionClock = r.uint('session clock');
        break;
      case SNAP_SESSION: {
        const clientId = r.string('client id', MAX_CLIENT_ID_BYTES);
        const lastActive = r.uint('last active');
        const floor = r.uint('floor');
        const highest = r.uint('highest');
        const n = r.count('results', 1 << 20);
        const results: [number, NamespaceResult][] = [];
        for (let i = 0; i < n; i++) results.push([r.uint('seq'), readResult(r)]);
        this.sessionList.push({ clientId, lastActive, floor, highest, results });
        break;
      }
      case SNAP_END: {
        const count = r.uint('record count');
        if (count !== this.records)
          throw new StateCodecError(
            `namespace snapshot: ${this.records} records, the end record says ${count}`,
          );
        this.ended = true;
        break;
      }
      default:
        throw new StateCodecError(`namespace snapshot: unknown record tag ${tag}`);
    }
    r.end();
  }

  finish(): NamespaceState {
    if (!this.ended || this.parts === undefined || this.buffered.length > 0)
      throw new StateCodecError('namespace snapshot: truncated (no end record)');
    this.parts.sessions = { latestTime: this.sessionClock, sessions: this.sessionList };
    return NamespaceState.fromParts(this.parts, this.sessionLimits);
  }
}

/**
 * A command that replaces only inode `expected` at `path` (a compare-and-replace: S3's If-Match) is
 * refused when something else, or nothing, is there. Undefined when it may go on.
 */
function notTheExpectedInode(
  path: string,
  found: Inode | undefined,
  expected: InodeId | undefined,
): Failure | undefined {
  if (expected === undefined) return undefined;
  if (found === undefined)
    return fail('FAILED_PRECONDITION', `${path}: no such file (inode ${expected} expected)`);
  if (found.id !== expected)
    return fail('FAILED_PRECONDITION', `${path}: inode ${found.id}, not ${expected} as expected`);
  return undefined;
}
