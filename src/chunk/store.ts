/**
 * chunk/store — shards on local disk.
 *
 * Layout: DIR/shards/XX/YY/<name>, where XX/YY (64 × 64 directories, created when first needed) come
 * from a hash of (block group id, shard index), so no directory holds more than a few thousand files
 * even with millions of shards. The file name carries everything the inventory needs —
 * `b<blockGroupId>_i<index>_g<generation>_l<length>_c<crc32c hex>.shard` — so start-up rebuilds the
 * inventory from directory listings alone, without opening a single shard.
 *
 * A shard file:
 *   [64-byte header: magic, version, chunk size, ids, length, header CRC32C]
 *   [length bytes of shard data]
 *   [CRC32C of each 64 KiB chunk, 4 bytes each, big-endian]
 *   [8-byte footer: CRC32C of the whole shard, CRC32C of the checksum block]
 * Writes go to `<name>.<random>.tmp` in the same directory, are fdatasynced, renamed into place, and the
 * directory is fsynced: a shard is wholly there or not at all. Leftover tmp files (a crash mid-write)
 * are deleted at start-up. Every read verifies the chunks it touches; a mismatch is CORRUPT, never bytes.
 * How the bytes reach the disk — O_DIRECT where the filesystem takes it, else the page cache — is
 * shard-file.ts's; the file is the same either way. Shard data is read the same way it is written
 * (O_DIRECT, several reads in flight, or through the page cache); headers and checksums through the cache.
 */
import { randomBytes } from 'node:crypto';
import { type FileHandle, mkdir, open, readdir, rename, stat, statfs, unlink } from 'node:fs/promises';
import { join } from 'node:path';
// Only the checksum modules: the chunk server needs no erasure-coding backend in memory.
import { CHECKSUM_CHUNK_SIZE } from '../codec/checksum.js';
import { crc32c } from '../codec/crc32c.js';
import { alignedAllocator } from '../codec/native.js';
import { assert } from '../common/assert.js';
import { fsyncDir } from '../common/durable-file.js';
import type { Logger, ThrottledWarning } from '../common/log.js';
import {
  checkShardId,
  chunkChecksumsOfSlices,
  crc32cCombine,
  DATA_CHUNK_SIZE,
  formatShardId,
  MAX_PACKET_BYTES,
  MAX_SHARD_BYTES,
} from '../wire/data-transfer.js';
import { DogfsError } from '../wire/errors.js';
import type { ShardId } from '../wire/gen/types.js';
import {
  createShardFile,
  DIRECT_ALIGNMENT,
  defaultIo,
  openDirectRead,
  probeDirectWrites,
  readDirect,
  type ShardFileSink,
  STAGING_BYTES,
  StagingPool,
  type StoreIo,
} from './shard-file.js';

export type { StoreIo } from './shard-file.js';

export const SHARD_HEADER_BYTES = 64;
export const SHARD_FOOTER_BYTES = 8;
const MAGIC = Buffer.from('DOGFSHRD', 'latin1');
const FORMAT_VERSION = 1;
const FANOUT = 64;
/** Directories listed at once while rebuilding the inventory. */
const REBUILD_CONCURRENCY = 32;
/** Kept free on the filesystem whatever the configured capacity says. */
const FILESYSTEM_RESERVE_BYTES = 16 * 1024 * 1024;
const NAME_PATTERN = /^b(\d{1,16})_i(\d{1,2})_g(\d{1,16})_l(\d{1,10})_c([0-9a-f]{8})\.shard$/;
const TMP_PATTERN = /\.tmp$/;
/**
 * Added to the name of a shard file set aside at start-up (the older of two files for one shard): no longer
 * a shard name, so the inventory passes over it, and never deleted by the store (an operator's to judge).
 */
export const STALE_SUFFIX = '.stale';

assert(DATA_CHUNK_SIZE === CHECKSUM_CHUNK_SIZE, 'the wire and the disk checksum the same chunks');

export interface ShardRecord {
  readonly id: ShardId;
  readonly length: number;
  readonly crc32c: number;
  /** Modification time when known (written since start-up or stat'ed); 0 otherwise. */
  mtimeMs: number;
  /** Bytes the file occupies: header, data, checksums, footer. */
  readonly fileBytes: number;
}

export interface ShardStoreOptions {
  dir: string;
  /**
   * Most bytes of shard files to hold; default: the filesystem's size. An upper bound: what the store
   * reports (`capacityBytes`) is never more than its shards plus the filesystem's free space.
   */
  capacityBytes?: number | undefined;
  log?: Logger | undefined;
  io?: StoreIo | undefined;
  /** Called when a read or the scrubber finds a corrupt shard. */
  onCorrupt?: ((id: ShardId, reason: string) => void) | undefined;
  /**
   * Write shards with O_DIRECT when the filesystem takes it (shard-file.ts says why); default true.
   * False: always through the page cache.
   */
  directWrites?: boolean | undefined;
}

/**
 * Staging buffers of all direct writes together (4 MiB each): 2 per write, so 4 direct writes at a time;
 * writes that start while they are taken go through the page cache (the disk is the limit by then, and
 * nothing waits for a buffer another write holds). Kept after use: with 16 of them, and 16 of the read
 * pool, the server's peak RSS while 16 clients wrote 1 GiB each reached 255.6 of the 256 MiB allowed.
 */
const STAGING_POOL_BUFFERS = 8;
/**
 * Direct reads: one pool buffer per read operation, in DIRECT_READ_TURNS parts taking turns (some filled
 * from disk, some draining to the socket), each a packet plus the two partial 4 KiB blocks around it.
 * Reads beyond the pool's buffers go through the page cache rather than wait (a slow reader holds its
 * buffer). The buffers are the staging pool's kind, 4 MiB on 2 MiB-aligned huge pages: a 1 MiB direct
 * read into 4 KiB pages is 256 block-layer segments, split in two by virtio-blk's 254, and gets of 1 GiB
 * took 0.96-1.09 s into a file and 0.71-0.82 s to stdout from huge pages against 1.37-2.00 and 0.90-1.19
 * (docs/ARCHITECTURE.md). Three parts fit; four ran no faster (in 6 MiB buffers). 8 x 4 MiB at most.
 */
const READ_POOL_BUFFERS = 8;
/**
 * Pool buffers allocated when the store opens (16 MiB of the pools' 64), not at a first write or read
 * (StagingPool.prewarm; `npm run bench:data`, 2026-11-28 16:40-16:50, two runs each way: the first put's
 * chunk servers 0.83-0.88 CPU-s per GB of file against 0.97-1.05 without).
 */
const PREWARMED_STAGING_BUFFERS = 2;
const PREWARMED_READ_BUFFERS = 2;
const MAX_DIRECT_READ_PACKET = 1024 * 1024;
const DIRECT_READ_TURNS = 3;
const DIRECT_READ_PART = MAX_DIRECT_READ_PACKET + 2 * DIRECT_ALIGNMENT;
assert(DIRECT_READ_TURNS * DIRECT_READ_PART <= STAGING_BYTES, 'direct read parts fit a pool buffer');

export function shardKey(id: ShardId): string {
  return `${id.blockGroupId}_${id.index}_${id.generation}`;
}

export function compareShardIds(a: ShardId, b: ShardId): number {
  return a.blockGroupId - b.blockGroupId || a.index - b.index || a.generation - b.generation;
}

export function shardFileBytes(length: number): number {
  return SHARD_HEADER_BYTES + length + 4 * Math.ceil(length / DATA_CHUNK_SIZE) + SHARD_FOOTER_BYTES;
}

function fanoutOf(id: ShardId): [string, string] {
  const low = id.blockGroupId % 0x1_0000_0000;
  const high = Math.floor(id.blockGroupId / 0x1_0000_0000);
  let h = Math.imul(low ^ Math.imul(high, 0x9e3779b1) ^ Math.imul(id.index + 1, 0x85ebca6b), 0xc2b2ae35);
  h ^= h >>> 15;
  h = Math.imul(h, 0x27d4eb2f);
  h ^= h >>> 13;
  const bucket = (h >>> 0) % (FANOUT * FANOUT);
  const hex = (n: number) => n.toString(16).padStart(2, '0');
  return [hex(Math.floor(bucket / FANOUT)), hex(bucket % FANOUT)];
}

function fileName(id: ShardId, length: number, crc: number): string {
  const crcHex = (crc >>> 0).toString(16).padStart(8, '0');
  return `b${id.blockGroupId}_i${id.index}_g${id.generation}_l${length}_c${crcHex}.shard`;
}

function parseFileName(name: string): { id: ShardId; length: number; crc32c: number } | undefined {
  const match = NAME_PATTERN.exec(name);
  if (match === null) return undefined;
  const id = { blockGroupId: Number(match[1]), index: Number(match[2]), generation: Number(match[3]) };
  const length = Number(match[4]);
  try {
    checkShardId(id);
  } catch {
    return undefined;
  }
  if (!Number.isSafeInteger(length) || length > MAX_SHARD_BYTES) return undefined;
  return { id, length, crc32c: Number.parseInt(match[5]!, 16) };
}

function encodeHeader(id: ShardId, length: number): Buffer {
  const header = Buffer.alloc(SHARD_HEADER_BYTES);
  MAGIC.copy(header, 0);
  header.writeUInt16BE(FORMAT_VERSION, 8);
  header.writeUInt32BE(DATA_CHUNK_SIZE, 12);
  header.writeBigUInt64BE(BigInt(id.blockGroupId), 16);
  header.writeUInt32BE(id.index, 24);
  header.writeBigUInt64BE(BigInt(id.generation), 32);
  header.writeBigUInt64BE(BigInt(length), 40);
  header.writeUInt32BE(crc32c(header.subarray(0, 48)), 48);
  return header;
}

function isNoSpace(error: unknown): boolean {
  const code = (error as NodeJS.ErrnoException | undefined)?.code;
  return code === 'ENOSPC' || code === 'EDQUOT';
}

/** Errno codes meaning this process is out of a resource that frees up (file handles, memory). */
const EXHAUSTED_ERRNOS: ReadonlySet<string> = new Set(['EMFILE', 'ENFILE', 'ENOMEM']);
/** Errno codes meaning the disk (or its directory) cannot be used: failing, read-only, not ours. */
const DISK_UNUSABLE_ERRNOS: ReadonlySet<string> = new Set([
  'EIO',
  'EROFS',
  'EUCLEAN',
  'EBADMSG',
  'EACCES',
  'EPERM',
  'ENXIO',
  'ENODEV',
]);

/**
 * What a client is told when one of the store's disk calls failed, as a coded error: out of space is
 * NO_SPACE, out of file handles or memory RESOURCE_EXHAUSTED (retried later), a failing, read-only or
 * inaccessible disk UNAVAILABLE (this server cannot do it; the client writes a gap or reads another
 * shard). Without it these reached clients as INTERNAL, which says "a bug in DogFS". Anything else is
 * returned as it was (a DogfsError stays as it is).
 */
export function diskFailure(error: unknown, what: string, warning: ThrottledWarning | undefined): unknown {
  if (error instanceof DogfsError) return error;
  const code = (error as NodeJS.ErrnoException | undefined)?.code;
  if (typeof code !== 'string') return error;
  const message = `${what}: ${(error as Error).message}`;
  let failure: DogfsError | undefined;
  if (isNoSpace(error)) failure = new DogfsError('NO_SPACE', message, { cause: error });
  else if (EXHAUSTED_ERRNOS.has(code))
    failure = new DogfsError(
      'RESOURCE_EXHAUSTED',
      `${message} (the chunk server is out of file handles or memory for now; try later)`,
      { cause: error },
    );
  else if (DISK_UNUSABLE_ERRNOS.has(code))
    failure = new DogfsError('UNAVAILABLE', `${message} (the chunk server's disk failed this call)`, {
      cause: error,
    });
  if (failure === undefined) return error;
  // The client gets a code it can act on (a gap, another shard); the operator must still hear of a disk
  // failing or full, which the metadata service goes on placing shards on.
  warning?.warn({ what, errno: code, error: (error as Error).message });
  return failure;
}

function corrupt(id: ShardId, what: string): DogfsError {
  return new DogfsError('CORRUPT', `shard ${formatShardId(id)}: ${what}`);
}

/**
 * A read error that means the shard's bytes are lost or unreliable on this disk (EIO: a bad sector, a
 * failing device): CORRUPT, so the reader decodes around it and the shard is reported for repair just
 * like one whose checksum failed. Anything else is returned as it was.
 */
function readFailure(id: ShardId, error: unknown, where: string): unknown {
  const code = (error as NodeJS.ErrnoException | undefined)?.code;
  if (code === 'EIO' || code === 'EUCLEAN' || code === 'EBADMSG') {
    return corrupt(id, `disk I/O error (${code}) reading ${where}`);
  }
  return error;
}

export class ShardStore {
  readonly dir: string;
  private readonly shardsDir: string;
  private readonly records = new Map<string, ShardRecord>();
  /** The records in id order, kept up to date (paging and block reports must not re-sort millions). */
  private sorted: ShardRecord[] = [];
  private readonly writing = new Set<string>();
  private readonly corruptShards = new Map<string, ShardId>();
  private readonly knownDirs = new Set<string>();
  private readonly io: StoreIo;
  private readonly log: Logger | undefined;
  private readonly onCorrupt: ((id: ShardId, reason: string) => void) | undefined;
  /** The configured capacity, or the filesystem's size. */
  private capacity = 0;
  private used = 0;
  private reserved = 0;
  private filesystemFree = Number.POSITIVE_INFINITY;
  private filesystemCheckedAt = 0;
  /** Staging buffers when shards are written with O_DIRECT; undefined when through the page cache. */
  private staging: StagingPool | undefined;
  private readPool: StagingPool | undefined;
  private writeModeReason = '';

  private constructor(options: ShardStoreOptions) {
    this.dir = options.dir;
    this.shardsDir = join(options.dir, 'shards');
    this.io = options.io ?? defaultIo;
    this.log = options.log;
    this.onCorrupt = options.onCorrupt;
  }

  /** Opens (creating if needed) the store in `dir`, rebuilding the inventory and removing tmp files. */
  static async open(options: ShardStoreOptions): Promise<ShardStore> {
    const store = new ShardStore(options);
    await mkdir(store.shardsDir, { recursive: true });
    const stats = await statfs(store.shardsDir);
    const filesystemBytes = stats.blocks * stats.bsize;
    store.capacity = options.capacityBytes ?? filesystemBytes;
    assert(Number.isSafeInteger(store.capacity) && store.capacity >= 0, 'capacity is a byte count');
    store.noteFilesystemFree(stats);
    await store.chooseWriteMode(options.directWrites ?? true);
    await store.rebuild();
    return store;
  }

  private async chooseWriteMode(direct: boolean): Promise<void> {
    const allocate = alignedAllocator();
    let refused: string | undefined;
    if (!direct) refused = 'turned off';
    else if (allocate === undefined) refused = 'no native addon to allocate aligned memory';
    else refused = await probeDirectWrites(this.shardsDir, this.io, allocate);
    if (refused === undefined) {
      this.staging = new StagingPool(STAGING_POOL_BUFFERS, allocate!);
      this.readPool = new StagingPool(READ_POOL_BUFFERS, allocate!);
      // Enough for one direct write and two reads at once, the common load; the rest on demand.
      this.staging.prewarm(PREWARMED_STAGING_BUFFERS);
      this.readPool.prewarm(PREWARMED_READ_BUFFERS);
    }
    this.writeModeReason = refused ?? 'the filesystem takes O_DIRECT';
    this.log?.info('shard write mode', { mode: this.writeMode, why: this.writeModeReason });
  }

  /** How shard files are written: 'direct' (O_DIRECT) or 'buffered' (through the page cache). */
  get writeMode(): 'direct' | 'buffered' {
    return this.staging === undefined ? 'buffered' : 'direct';
  }
  /** Staging buffers held by direct writes in progress (each holds two; writes beyond go buffered). */
  get stagingBuffersInUse(): number {
    return this.staging?.buffersInUse ?? 0;
  }

  /** Why `writeMode` is what it is. */
  get writeModeWhy(): string {
    return this.writeModeReason;
  }

  private async rebuild(): Promise<void> {
    const started = Date.now();
    let tmpRemoved = 0;
    let setAside = 0;
    let ignored = 0;
    const leaves: string[] = [];
    for (const first of await readdir(this.shardsDir)) {
      if (!/^[0-9a-f]{2}$/.test(first)) continue;
      for (const second of await readdir(join(this.shardsDir, first))) {
        if (/^[0-9a-f]{2}$/.test(second)) leaves.push(join(this.shardsDir, first, second));
      }
    }
    for (let i = 0; i < leaves.length; i += REBUILD_CONCURRENCY) {
      await Promise.all(
        leaves.slice(i, i + REBUILD_CONCURRENCY).map(async (leaf) => {
          this.knownDirs.add(leaf);
          let changed = false;
          for (const name of await readdir(leaf)) {
            if (TMP_PATTERN.test(name)) {
              await unlink(join(leaf, name));
              tmpRemoved++;
              changed = true;
              continue;
            }
            const parsed = parseFileName(name);
            if (parsed === undefined || join(this.shardsDir, ...fanoutOf(parsed.id)) !== leaf) {
              ignored++;
              continue;
            }
            const record: ShardRecord = {
              id: parsed.id,
              length: parsed.length,
              crc32c: parsed.crc32c,
              mtimeMs: 0,
              fileBytes: shardFileBytes(parsed.length),
            };
            const key = shardKey(parsed.id);
            const other = this.records.get(key);
            if (other !== undefined) {
              // Two files for one shard (a deletion whose unlink failed, then the shard written again with
              // other bytes): the store refused to open, and a chunk server that will not start is worse
              // than a stale copy. The newer is the shard; the older is set aside, never deleted.
              const older = await this.setOlderAside(leaf, other, record);
              setAside++;
              changed = true;
              if (older === record) continue;
              this.used -= other.fileBytes;
            }
            this.records.set(key, record);
            this.used += record.fileBytes;
          }
          // The removals made durable where they were made, within the listing's bounded concurrency: every
          // one of the 4,096 leaves was fsynced at once after any removal, a descriptor each, and a crash's
          // leftovers made the next start fail EMFILE under a low descriptor limit.
          if (changed) await fsyncDir(leaf);
        }),
      );
    }
    this.sorted = [...this.records.values()].sort((a, b) => compareShardIds(a.id, b.id));
    this.log?.info('inventory rebuilt', {
      shards: this.records.size,
      usedBytes: this.used,
      tmpRemoved,
      setAside,
      ignored,
      ms: Date.now() - started,
    });
  }

  /**
   * Of two files in `leaf` for one shard, renames the older (by modification time; on a tie, the one found
   * second) out of the inventory's way, with a warning naming both. Returns the older's record.
   */
  private async setOlderAside(leaf: string, held: ShardRecord, listed: ShardRecord): Promise<ShardRecord> {
    const path = (r: ShardRecord) => join(leaf, fileName(r.id, r.length, r.crc32c));
    assert(this.pathFor(held.id, held).dir === leaf, 'both files of a shard are in its directory');
    const mtime = async (r: ShardRecord) => (await stat(path(r), { bigint: true })).mtimeNs;
    const [heldTime, listedTime] = await Promise.all([mtime(held), mtime(listed)]);
    const [newer, older] = listedTime > heldTime ? [listed, held] : [held, listed];
    await rename(path(older), `${path(older)}${STALE_SUFFIX}`);
    this.log?.warn('two files for one shard: the newer kept, the older set aside', {
      shard: formatShardId(held.id),
      kept: path(newer),
      setAside: `${path(older)}${STALE_SUFFIX}`,
    });
    return older;
  }

  get shardCount(): number {
    return this.records.size;
  }
  /**
   * The capacity offered to placement: the configured one (or the filesystem's size), but never more than
   * the shards held plus what the filesystem had free at the last `refreshSpace`. Placement takes capacity
   * minus used as free; with the filesystem's size and only shard files counted as used, a disk filled by
   * other data looked empty, and went on being chosen for writes that all failed NO_SPACE.
   */
  get capacityBytes(): number {
    return Math.min(this.capacity, this.used + this.filesystemFree);
  }
  get usedBytes(): number {
    return this.used;
  }
  /** Bytes a new shard may still take (capacity minus used and reserved by writes in progress). */
  get freeBytes(): number {
    return Math.max(0, Math.min(this.capacity - this.used - this.reserved, this.filesystemFree));
  }
  get activeWrites(): number {
    return this.writing.size;
  }

  get(id: ShardId): ShardRecord | undefined {
    return this.records.get(shardKey(id));
  }

  /** Shards in id order after `startAfter`, at most `limit`. */
  list(startAfter: ShardId | undefined, limit: number): { shards: ShardRecord[]; more: boolean } {
    assert(limit > 0);
    const all = this.sorted;
    const low = startAfter === undefined ? 0 : this.sortedIndexAfter(startAfter);
    return { shards: all.slice(low, low + limit), more: low + limit < all.length };
  }

  /** Index of the first record whose id is greater than `id`. */
  private sortedIndexAfter(id: ShardId): number {
    let low = 0;
    let high = this.sorted.length;
    while (low < high) {
      const mid = (low + high) >>> 1;
      if (compareShardIds(this.sorted[mid]!.id, id) <= 0) low = mid + 1;
      else high = mid;
    }
    return low;
  }

  corruptList(): ShardId[] {
    return [...this.corruptShards.values()];
  }

  /**
   * Remembers `copy` as corrupt while it is the copy held. A read that opened a copy since deleted and
   * written again (a repair, a rewrite under the same id) may fail on the old file: that says nothing
   * of the new one, which would otherwise be reported and rebuilt for nothing.
   */
  markCorrupt(copy: ShardRecord, reason: string): void {
    const key = shardKey(copy.id);
    if (this.records.get(key) !== copy || this.corruptShards.has(key)) return;
    this.corruptShards.set(key, copy.id);
    this.log?.warn('corrupt shard', { shard: formatShardId(copy.id), reason });
    this.onCorrupt?.(copy.id, reason);
  }

  /** Where a shard of this length and checksum lives (its directory and file). */
  pathFor(id: ShardId, record: { length: number; crc32c: number }): { dir: string; path: string } {
    const dir = join(this.shardsDir, ...fanoutOf(id));
    return { dir, path: join(dir, fileName(id, record.length, record.crc32c)) };
  }

  private async refreshFilesystemFree(): Promise<void> {
    if (Date.now() - this.filesystemCheckedAt < 1000) return;
    this.noteFilesystemFree(await statfs(this.shardsDir));
  }

  /** Reads the filesystem's free space now (for `capacityBytes`, before it is reported). */
  async refreshSpace(): Promise<void> {
    this.noteFilesystemFree(await statfs(this.shardsDir));
  }

  private noteFilesystemFree(stats: { bavail: number; bsize: number }): void {
    this.filesystemFree = Math.max(0, stats.bavail * stats.bsize - FILESYSTEM_RESERVE_BYTES);
    this.filesystemCheckedAt = Date.now();
  }

  /**
   * Starts writing a shard of `length` bytes. NO_SPACE when it would not fit, ALREADY_EXISTS when the
   * same shard (ids and generation) is stored or being written.
   */
  async beginWrite(shard: ShardId, length: number): Promise<ShardWriteSession> {
    const id = checkShardId(shard);
    if (!Number.isSafeInteger(length) || length < 0 || length > MAX_SHARD_BYTES) {
      throw new DogfsError('INVALID_ARGUMENT', `shard length ${length} out of range [0, ${MAX_SHARD_BYTES}]`);
    }
    const key = shardKey(id);
    if (this.records.has(key) || this.writing.has(key)) {
      throw new DogfsError('ALREADY_EXISTS', `shard ${formatShardId(id)} already exists`);
    }
    const fileBytes = shardFileBytes(length);
    // Claimed before the first await: a second write of the same shard arriving meanwhile is refused
    // ALREADY_EXISTS (two accepted writes of one shard left two files, and a store that would not
    // open), and the space check counts every write that got this far.
    this.writing.add(key);
    this.reserved += fileBytes;
    try {
      await this.refreshFilesystemFree();
      const free = Math.max(
        0,
        Math.min(this.capacity - this.used - (this.reserved - fileBytes), this.filesystemFree),
      );
      if (fileBytes > free) {
        throw new DogfsError(
          'NO_SPACE',
          `no space for shard ${formatShardId(id)}: ${fileBytes} bytes needed, ${free} free`,
        );
      }
    } catch (error) {
      this.writing.delete(key);
      this.reserved -= fileBytes;
      throw error;
    }
    const dir = join(this.shardsDir, ...fanoutOf(id));
    let sink: ShardFileSink | undefined;
    let tmpPath = '';
    try {
      if (!this.knownDirs.has(dir)) {
        await mkdir(dir, { recursive: true });
        await fsyncDir(join(dir, '..'));
        await fsyncDir(this.shardsDir);
        this.knownDirs.add(dir);
      }
      tmpPath = join(
        dir,
        `b${id.blockGroupId}_i${id.index}_g${id.generation}.${randomBytes(6).toString('hex')}.tmp`,
      );
      sink = await createShardFile(tmpPath, encodeHeader(id, length), this.io, this.staging);
    } catch (error) {
      if (tmpPath !== '') await unlink(tmpPath).catch(() => {});
      this.writing.delete(key);
      this.reserved -= fileBytes;
      throw isNoSpace(error)
        ? new DogfsError('NO_SPACE', `no space for shard ${formatShardId(id)}: ${(error as Error).message}`)
        : error;
    }
    return new ShardWriteSession(this, id, length, fileBytes, dir, tmpPath, sink);
  }

  /** @internal Called by a session when it ends, committed or not. */
  finishWrite(session: ShardWriteSession, record: ShardRecord | undefined): void {
    const key = shardKey(session.id);
    assert(this.writing.delete(key), 'finishing a write that was not in progress');
    this.reserved -= session.fileBytes;
    if (record !== undefined) this.remember(key, record);
  }

  /** Counts and lists a shard on disk. */
  private remember(key: string, record: ShardRecord): void {
    assert(!this.records.has(key), 'one record per shard');
    this.records.set(key, record);
    this.used += record.fileBytes;
    this.sorted.splice(this.sortedIndexAfter(record.id), 0, record);
  }

  /** Stops counting and listing a shard (its file is being removed). */
  private forget(key: string, record: ShardRecord): void {
    this.records.delete(key);
    const at = this.sortedIndexAfter(record.id) - 1;
    assert(at >= 0 && this.sorted[at] === record, 'the sorted index holds every record');
    this.sorted.splice(at, 1);
    this.corruptShards.delete(key);
    this.used -= record.fileBytes;
  }

  /** Opens a shard for verified reads. NOT_FOUND if absent; CORRUPT if its header or checksums are bad. */
  async openRead(shard: ShardId): Promise<ShardReader> {
    const id = checkShardId(shard);
    const record = this.records.get(shardKey(id));
    if (record === undefined) throw new DogfsError('NOT_FOUND', `shard ${formatShardId(id)} not found`);
    const { path } = this.pathFor(id, record);
    let handle: FileHandle;
    try {
      handle = await open(path, 'r');
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code === 'ENOENT') {
        // Deleted since the lookup, or, with its record still held, removed behind the store's back: lost,
        // and marked so, which is what gets it reported and rebuilt (the scrubber took it for deleted, and
        // the shard stayed listed, counted and unreported for good).
        this.markCorrupt(record, 'its file is missing');
        throw new DogfsError('NOT_FOUND', `shard ${formatShardId(id)} not found`);
      }
      // EIO opening it is as lost as EIO reading it: CORRUPT, remembered and reported for repair.
      const failure = readFailure(id, error, 'the file');
      if (failure instanceof DogfsError && failure.code === 'CORRUPT')
        this.markCorrupt(record, failure.message);
      throw failure;
    }
    try {
      const chunks = Math.ceil(record.length / DATA_CHUNK_SIZE);
      const size = (await handle.stat()).size;
      if (size !== record.fileBytes) throw corrupt(id, `file is ${size} bytes, expected ${record.fileBytes}`);
      const header = await readExactly(this.io, handle, SHARD_HEADER_BYTES, 0);
      if (
        !header.subarray(0, 8).equals(MAGIC) ||
        header.readUInt32BE(48) !== crc32c(header.subarray(0, 48)) ||
        !header.equals(encodeHeader(id, record.length))
      ) {
        throw corrupt(id, 'bad header');
      }
      const tail = await readExactly(
        this.io,
        handle,
        chunks * 4 + SHARD_FOOTER_BYTES,
        SHARD_HEADER_BYTES + record.length,
      );
      const checksumBlock = tail.subarray(0, chunks * 4);
      if (tail.readUInt32BE(chunks * 4 + 4) !== crc32c(checksumBlock))
        throw corrupt(id, 'bad checksum block');
      if (tail.readUInt32BE(chunks * 4) !== record.crc32c)
        throw corrupt(id, 'whole-shard checksum differs from its name');
      const checksums = new Uint32Array(chunks);
      for (let i = 0; i < chunks; i++) checksums[i] = checksumBlock.readUInt32BE(i * 4);
      // Shard data read with O_DIRECT where writes are (the header and checksums above are small): new
      // page-cache pages cost this machine 1.5-3 s of system CPU per GiB (shard-file.ts).
      const direct = this.readPool === undefined ? undefined : await openDirectRead(path);
      return new ShardReader(this, id, record, handle, checksums, this.io, direct, this.readPool);
    } catch (caught) {
      await handle.close();
      const error = readFailure(id, caught, 'its header or checksums');
      if (error instanceof DogfsError && error.code === 'CORRUPT') this.markCorrupt(record, error.message);
      throw error;
    }
  }

  /**
   * Removes a shard; false if it was not there. With `ifMtimeMs`, only the copy of that modification
   * time: FAILED_PRECONDITION, and nothing removed, when the shard held now is another (written since).
   */
  async delete(shard: ShardId, ifMtimeMs?: number): Promise<boolean> {
    const id = checkShardId(shard);
    const key = shardKey(id);
    if (ifMtimeMs !== undefined) {
      // Fills in a modification time not yet read from disk (the copy the caller saw was stated the same way).
      // A file found gone meanwhile is forgotten: nothing to delete.
      if (this.records.has(key))
        await this.stat(id).catch((error: unknown) => {
          if (!(error instanceof DogfsError && error.code === 'NOT_FOUND')) throw error;
        });
      const held = this.records.get(key);
      if (held !== undefined && held.mtimeMs !== ifMtimeMs) {
        throw new DogfsError(
          'FAILED_PRECONDITION',
          `shard ${formatShardId(id)} here was modified at ${held.mtimeMs}, not ${ifMtimeMs}: a newer copy, kept`,
        );
      }
    }
    // No await from here to the record's removal: the check above holds for what is removed.
    const record = this.records.get(key);
    if (record === undefined) return false;
    const { dir, path } = this.pathFor(id, record);
    this.forget(key, record);
    try {
      await unlink(path);
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code !== 'ENOENT') {
        // Still on disk (EIO, EROFS, EACCES): still counted and listed, so a retry deletes it, unless a
        // new copy took its place meanwhile (which a retry must not take for it).
        if (!this.records.has(key) && !this.writing.has(key)) this.remember(key, record);
        throw error;
      }
    }
    await fsyncDir(dir);
    return true;
  }

  /**
   * Gives the copy of `shard` held now a modification time later than the one it had, in memory at once
   * (a `delete` naming the old time is refused from the moment this is called) and on disk, fsynced,
   * before resolving (so also after a restart). NOT_FOUND if absent, or deleted before it resolves.
   */
  async claim(shard: ShardId): Promise<ShardRecord> {
    const id = checkShardId(shard);
    const record = this.records.get(shardKey(id));
    if (record === undefined) throw new DogfsError('NOT_FOUND', `shard ${formatShardId(id)} not found`);
    const mtimeMs = Math.max(Date.now(), record.mtimeMs + 1);
    record.mtimeMs = mtimeMs;
    let handle: FileHandle;
    try {
      handle = await open(this.pathFor(id, record).path, 'r');
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code === 'ENOENT') throw this.fileGone(record);
      throw error;
    }
    try {
      // Half a millisecond up: the file system keeps microseconds at most (truncating), and the time read
      // back after a restart, floored to milliseconds, must be this one.
      const seconds = (mtimeMs + 0.5) / 1000;
      await handle.utimes(seconds, seconds);
      await handle.sync();
    } finally {
      await handle.close();
    }
    // Deleted meanwhile (a deletion that needed no time, its file opened here before its unlink): the
    // claim answers for a copy held, never for one gone.
    if (this.records.get(shardKey(id)) !== record)
      throw new DogfsError('NOT_FOUND', `shard ${formatShardId(id)} not found (deleted while claimed)`);
    return record;
  }

  /**
   * NOT_FOUND for a shard whose file was not there when a stat or a claim looked. A record still held then
   * is of a file removed behind the store's back, and is forgotten: the metadata service asking takes the
   * answer for "not there" (a replaced copy gone, a shard absent to repair) and never deletes such a copy,
   * so a record kept would stay listed, counted and reported corrupt for good.
   */
  private fileGone(record: ShardRecord): DogfsError {
    const key = shardKey(record.id);
    if (this.records.get(key) === record) {
      this.log?.warn('shard file missing; shard forgotten', { shard: formatShardId(record.id) });
      this.forget(key, record);
    }
    return new DogfsError('NOT_FOUND', `shard ${formatShardId(record.id)} not found (its file is gone)`);
  }

  /** Stat for a shard, with its modification time read from disk when not known. */
  async stat(shard: ShardId): Promise<ShardRecord> {
    const id = checkShardId(shard);
    const key = shardKey(id);
    const record = this.records.get(key);
    if (record === undefined) throw new DogfsError('NOT_FOUND', `shard ${formatShardId(id)} not found`);
    if (record.mtimeMs !== 0) return record;
    let mtimeMs: number;
    try {
      mtimeMs = (await stat(this.pathFor(id, record).path)).mtimeMs;
    } catch (error) {
      // Removed behind the store's back: as absent. Anything else (EIO, EMFILE) is the caller's to see.
      if ((error as NodeJS.ErrnoException).code === 'ENOENT') throw this.fileGone(record);
      throw error;
    }
    // Only into a time still unknown, of the copy still held: a claim meanwhile set a later one (and is
    // writing it to disk), which the time read here, maybe before that write, must not undo. It did: a
    // conditional delete naming the old time then matched, and removed the copy the claim answered for.
    const held = this.records.get(key);
    if (held === record && record.mtimeMs === 0) record.mtimeMs = Math.floor(mtimeMs);
    // A copy written since the lookup (its time known from its write) is the one to answer for.
    if (held === undefined) throw new DogfsError('NOT_FOUND', `shard ${formatShardId(id)} not found`);
    assert(held === record || held.mtimeMs !== 0, 'a copy written since start-up has its time');
    return held;
  }
}

async function readExactly(
  io: StoreIo,
  handle: FileHandle,
  bytes: number,
  position: number,
  into?: Buffer,
): Promise<Buffer> {
  const buffer = into ?? Buffer.allocUnsafe(bytes);
  assert(buffer.length >= bytes);
  let done = 0;
  while (done < bytes) {
    const bytesRead =
      io.read === undefined
        ? (await handle.read(buffer, done, bytes - done, position + done)).bytesRead
        : await io.read(handle, buffer, done, bytes - done, position + done);
    if (bytesRead === 0) throw new DogfsError('CORRUPT', `short read at ${position + done}`);
    done += bytesRead;
  }
  return buffer.subarray(0, bytes);
}

/**
 * A shard being written. `append` takes whole chunks (the last may be short) with their CRC32Cs as sent
 * by the writer, verifies them, and hands them to the file's sink (shard-file.ts), which has one write
 * on its way to disk while the next packet is received, never more (that bounds the bytes held per write).
 */
export class ShardWriteSession {
  private position = 0;
  private readonly chunkCrcs: number[] = [];
  private wholeCrc = 0;
  private ended = false;

  constructor(
    private readonly store: ShardStore,
    readonly id: ShardId,
    readonly length: number,
    readonly fileBytes: number,
    private readonly dir: string,
    private readonly tmpPath: string,
    private readonly sink: ShardFileSink,
  ) {}

  get received(): number {
    return this.position;
  }

  /** Whether `append` copies the packets it is given (direct writes), so they are free once it returns. */
  get copiesPackets(): boolean {
    return this.sink.copies;
  }

  /**
   * Verifies and queues the next piece of the shard. Resolves once the previous piece is on its way
   * to disk — so a slow disk slows the caller. CORRUPT if a chunk's CRC differs from `chunkCrcs`.
   */
  async append(slices: Buffer[], bytes: number, chunkCrcs: readonly number[]): Promise<void> {
    assert(!this.ended, 'append after end');
    assert(bytes > 0 && bytes <= MAX_PACKET_BYTES);
    if (this.position % DATA_CHUNK_SIZE !== 0) {
      throw new DogfsError(
        'INVALID_ARGUMENT',
        `packet at ${this.position} does not start on a chunk boundary`,
      );
    }
    if (this.position + bytes > this.length) {
      throw new DogfsError('INVALID_ARGUMENT', `packet runs past the declared length ${this.length}`);
    }
    if (bytes % DATA_CHUNK_SIZE !== 0 && this.position + bytes !== this.length) {
      throw new DogfsError('INVALID_ARGUMENT', 'only the last packet may end inside a chunk');
    }
    const expectedChunks = Math.ceil(bytes / DATA_CHUNK_SIZE);
    if (chunkCrcs.length !== expectedChunks) {
      throw new DogfsError(
        'INVALID_ARGUMENT',
        `packet of ${bytes} bytes needs ${expectedChunks} chunk checksums`,
      );
    }
    const actual = chunkChecksumsOfSlices(slices, crc32c);
    for (let chunk = 0; chunk < expectedChunks; chunk++) {
      if (actual[chunk] !== chunkCrcs[chunk]! >>> 0) {
        throw new DogfsError(
          'CORRUPT',
          `chunk at offset ${this.position + chunk * DATA_CHUNK_SIZE} damaged in transit (checksum mismatch)`,
        );
      }
      this.chunkCrcs.push(actual[chunk]!);
      const chunkLength = Math.min(DATA_CHUNK_SIZE, bytes - chunk * DATA_CHUNK_SIZE);
      this.wholeCrc = crc32cCombine(this.wholeCrc, actual[chunk]!, chunkLength);
    }
    this.position += bytes;
    try {
      await this.sink.append(slices, bytes);
    } catch (error) {
      throw this.noSpaceOr(error);
    }
  }

  private noSpaceOr(error: unknown): unknown {
    return isNoSpace(error)
      ? new DogfsError(
          'NO_SPACE',
          `no space for shard ${formatShardId(this.id)}: ${(error as Error).message}`,
        )
      : error;
  }

  /** CRC32C of the bytes appended so far. */
  get crc32c(): number {
    return this.wholeCrc >>> 0;
  }

  /**
   * Writes checksums and footer, fdatasyncs, renames into place and fsyncs the directory. Only after
   * this resolves is the shard visible (and may be acknowledged).
   */
  async commit(expectedCrc: number): Promise<ShardRecord> {
    assert(!this.ended, 'commit after end');
    try {
      if (this.position !== this.length) {
        throw new DogfsError(
          'INVALID_ARGUMENT',
          `shard ended after ${this.position} of ${this.length} bytes`,
        );
      }
      if (expectedCrc >>> 0 !== this.crc32c) {
        throw new DogfsError(
          'CORRUPT',
          `whole-shard checksum differs from the writer's (damaged in transit)`,
        );
      }
      const tail = Buffer.allocUnsafe(this.chunkCrcs.length * 4 + SHARD_FOOTER_BYTES);
      for (let i = 0; i < this.chunkCrcs.length; i++) tail.writeUInt32BE(this.chunkCrcs[i]!, i * 4);
      tail.writeUInt32BE(this.crc32c, this.chunkCrcs.length * 4);
      tail.writeUInt32BE(crc32c(tail.subarray(0, this.chunkCrcs.length * 4)), this.chunkCrcs.length * 4 + 4);
      await this.sink.finish(tail, this.fileBytes);
      await this.sink.close();
      const finalPath = join(this.dir, fileName(this.id, this.length, this.crc32c));
      await rename(this.tmpPath, finalPath);
      try {
        await fsyncDir(this.dir);
      } catch (error) {
        // Renamed but not known durable: the write fails, and its file must not stay behind uncounted
        // (it would come back at the next start as a shard nobody wrote).
        await unlink(finalPath).catch((cleanup: unknown) => {
          if ((cleanup as NodeJS.ErrnoException).code !== 'ENOENT') throw cleanup;
        });
        throw error;
      }
      this.ended = true;
      const record: ShardRecord = {
        id: this.id,
        length: this.length,
        crc32c: this.crc32c,
        mtimeMs: Date.now(),
        fileBytes: this.fileBytes,
      };
      this.store.finishWrite(this, record);
      return record;
    } catch (error) {
      await this.abort();
      throw this.noSpaceOr(error);
    }
  }

  /** Discards the shard: nothing of it remains. Safe to call more than once. */
  async abort(): Promise<void> {
    if (this.ended) return;
    this.ended = true;
    await this.sink.discard();
    await unlink(this.tmpPath).catch(() => {});
    this.store.finishWrite(this, undefined);
  }
}

/** An open shard: verified reads of whole chunks. */
export class ShardReader {
  /** The pool buffer whose parts `packetBuffers` gave out, given back at close. */
  private pooled: Buffer | undefined;
  private readonly directBuffers = new WeakSet<Buffer>();

  constructor(
    private readonly store: ShardStore,
    readonly id: ShardId,
    readonly record: ShardRecord,
    private readonly handle: FileHandle,
    readonly checksums: Uint32Array,
    private readonly io: StoreIo,
    /** The same file opened O_DIRECT, when the store reads that way. */
    private readonly directHandle?: FileHandle,
    private readonly readPool?: StagingPool,
  ) {}

  /**
   * Buffers for `readChunks` of up to `packetBytes` each, used in turns: DIRECT_READ_TURNS parts of a
   * read-pool buffer (given back at close) when the shard is open for direct reads and the pool has
   * one; else two plain ones, read through the page cache.
   */
  packetBuffers(packetBytes: number): Buffer[] {
    if (
      this.directHandle !== undefined &&
      packetBytes <= MAX_DIRECT_READ_PACKET &&
      this.pooled === undefined
    ) {
      const pooled = this.readPool!.tryAcquire();
      if (pooled !== undefined) {
        this.pooled = pooled;
        const parts = Array.from({ length: DIRECT_READ_TURNS }, (_, i) =>
          pooled.subarray(i * DIRECT_READ_PART, (i + 1) * DIRECT_READ_PART),
        );
        for (const part of parts) this.directBuffers.add(part);
        return parts;
      }
    }
    return [Buffer.allocUnsafe(packetBytes), Buffer.allocUnsafe(packetBytes)];
  }

  get length(): number {
    return this.record.length;
  }

  /**
   * Reads shard bytes [start, start+bytes) into `buffer` and verifies them. `start` is on a chunk
   * boundary and the range ends on one or at the shard's end. CORRUPT on a mismatch (and the shard is
   * reported corrupt); a disk I/O error (EIO) is CORRUPT too, and reported the same way. Returns the
   * stored CRC32C of each chunk read.
   */
  async readChunks(start: number, bytes: number, buffer: Buffer): Promise<{ data: Buffer; crcs: number[] }> {
    assert(
      start % DATA_CHUNK_SIZE === 0 && start + bytes <= this.length,
      'chunk-aligned read within the shard',
    );
    assert(
      bytes % DATA_CHUNK_SIZE === 0 || start + bytes === this.length,
      'read ends on a chunk boundary or the end',
    );
    let data: Buffer;
    try {
      if (this.directHandle !== undefined && this.directBuffers.has(buffer)) {
        const read = await readDirect(this.io, this.directHandle, buffer, bytes, SHARD_HEADER_BYTES + start);
        if (!Buffer.isBuffer(read)) throw new DogfsError('CORRUPT', `short read at ${read.short}`);
        data = read;
      } else {
        data = await readExactly(this.io, this.handle, bytes, SHARD_HEADER_BYTES + start, buffer);
      }
    } catch (caught) {
      // A short read (readExactly's CORRUPT, without the shard's name) or a disk I/O error.
      const error =
        caught instanceof DogfsError && caught.code === 'CORRUPT'
          ? corrupt(this.id, caught.message)
          : readFailure(this.id, caught, `offset ${start}`);
      if (error instanceof DogfsError && error.code === 'CORRUPT')
        this.store.markCorrupt(this.record, error.message);
      throw error;
    }
    const crcs: number[] = [];
    const firstChunk = start / DATA_CHUNK_SIZE;
    for (let offset = 0; offset < bytes; offset += DATA_CHUNK_SIZE) {
      const actual = crc32c(data.subarray(offset, Math.min(offset + DATA_CHUNK_SIZE, bytes)));
      const chunk = firstChunk + offset / DATA_CHUNK_SIZE;
      if (actual !== this.checksums[chunk]) {
        const failure = corrupt(this.id, `checksum mismatch in chunk ${chunk} (offset ${start + offset})`);
        this.store.markCorrupt(this.record, failure.message);
        throw failure;
      }
      crcs.push(actual);
    }
    return { data, crcs };
  }

  async close(): Promise<void> {
    if (this.pooled !== undefined) this.readPool!.release(this.pooled);
    this.pooled = undefined;
    // Both descriptors closed whatever the other does; the first failure is reported.
    const closed = await Promise.allSettled([this.directHandle?.close(), this.handle.close()]);
    for (const result of closed) if (result.status === 'rejected') throw result.reason;
  }
}
