/**
 * chunk/shard-file — how a shard file's bytes reach the disk while it is written. The store picks one of
 * two ways at start-up; both write the same bytes (the format is store.ts's), so a file written either
 * way reads the same, and files from before this module existed read as they always did.
 *
 *  - direct (O_DIRECT): the bytes are copied into 4 MiB staging buffers aligned to 2 MiB (huge pages,
 *    from the native addon) and each full buffer is written at a 4 MiB-aligned file offset, bypassing
 *    the page cache; the last buffer is padded with zeros to DIRECT_ALIGNMENT and the file truncated
 *    back to its real length before the fdatasync; an fdatasync runs behind the writes every
 *    SYNC_BEHIND_BYTES as in the buffered way (the disk's write cache and the block allocations still
 *    need flushing). Why: on this kind of machine (a VM that hands freed
 *    memory back to its hypervisor) the kernel's page-cache writes cost 1.5-3 s of system CPU per GiB
 *    into memory that went back, ~0.3 s into memory just freed, whereas direct writes cost ~0.1 s/GiB
 *    either way plus one memcpy, and are as fast (`npm run bench:chunk` reports both ways, and raw disk
 *    references of both). The copy is needed anyway: received packets sit in the socket's receive
 *    arena at no particular alignment.
 *  - buffered: the received slices are written where they are (writev) through the page cache, with a
 *    background fdatasync every SYNC_BEHIND_BYTES so the final one has little left to flush. Used when
 *    the filesystem refuses O_DIRECT (EINVAL at open), when there is no addon to allocate aligned memory,
 *    or when the store is told to (ShardStoreOptions.directWrites = false).
 *
 * Reads (store.ts) follow the same choice: shard data is read with O_DIRECT too where writes are, and
 * `readDirect` below is that read.
 * Either way one write is on its way to disk while the next bytes are received, never more: that bounds
 * the bytes a write holds and makes a slow disk slow the sender. Errors are kept and surface at the next
 * call; the caller maps ENOSPC to NO_SPACE.
 */
import { constants as fsConstants } from 'node:fs';
import { type FileHandle, open, unlink } from 'node:fs/promises';
import { join } from 'node:path';
import { assert } from '../common/assert.js';

/** File offsets, lengths and memory addresses of direct writes are multiples of this (any disk's block). */
export const DIRECT_ALIGNMENT = 4096;
/** One direct write: large enough that the disk streams (measured: 1 MiB ones ran at ~60% of 4 MiB). */
export const STAGING_BYTES = 4 * 1024 * 1024;
/*
 * Each direct write owns two staging buffers: one on its way to disk while the next is filled. Two writes
 * in flight (three buffers) ran no faster through the chunk server here (one stream, 1 GiB, 10:42-10:47,
 * load 4-5: 393-605 MB/s against 361-580, within the noise).
 */
/** Staging memory alignment: 2 MiB, so it can be huge pages (one block-layer segment per 2 MiB). */
const STAGING_ALIGNMENT = 2 * 1024 * 1024;
/** A write in progress fdatasyncs in the background after this many bytes since the last one. */
const SYNC_BEHIND_BYTES = 8 * 1024 * 1024;

/** The file-system calls writes (and reads) make, replaceable so tests can inject ENOSPC and EIO. */
export interface StoreIo {
  writev(handle: FileHandle, buffers: readonly Uint8Array[], position: number): Promise<void>;
  /** Reads into `buffer` at `offset`; bytes read (0 at the end of the file). Default: handle.read. */
  read?(
    handle: FileHandle,
    buffer: Buffer,
    offset: number,
    length: number,
    position: number,
  ): Promise<number>;
  /**
   * Creates a new file (failing if it exists) for direct writes. Default: open with O_DIRECT; a
   * filesystem without it refuses with EINVAL, which tests inject here.
   */
  createDirect?(path: string): Promise<FileHandle>;
}

export const defaultIo: StoreIo = {
  async writev(handle, buffers, position) {
    let pending = buffers.filter((b) => b.length > 0);
    let at = position;
    // Local files rarely write short, but when they do the rest is written, never dropped.
    while (pending.length > 0) {
      let written = (await handle.writev(pending as Uint8Array[], at)).bytesWritten;
      assert(written > 0, 'write made no progress');
      at += written;
      while (written > 0 && pending.length > 0) {
        const head = pending[0]!;
        if (head.length <= written) {
          written -= head.length;
          pending = pending.slice(1);
        } else {
          pending = [head.subarray(written), ...pending.slice(1)];
          written = 0;
        }
      }
    }
  },
};

function createDirect(io: StoreIo, path: string): Promise<FileHandle> {
  if (io.createDirect !== undefined) return io.createDirect(path);
  const flags = fsConstants.O_WRONLY | fsConstants.O_CREAT | fsConstants.O_EXCL | fsConstants.O_DIRECT;
  return open(path, flags, 0o644);
}

/**
 * Staging buffers of a store's direct writes, at most `maxBuffers` of them (allocated when first needed
 * and kept: memory freed here goes back to the hypervisor and costs page faults to get again). A direct
 * write takes two when it starts (one being filled, one on its way to disk) and gives them back when it
 * ends; a write that finds fewer than two free goes through the page cache instead. Nothing ever waits
 * for a buffer: a write waiting on another's buffer while that one's client waited on the first (each
 * client sends a stripe to all its shards before the next) would stall both until their timeouts.
 */
export class StagingPool {
  private readonly free: Buffer[] = [];
  private allocated = 0;

  constructor(
    readonly maxBuffers: number,
    private readonly allocate: (bytes: number, alignment: number) => Buffer,
    readonly bufferBytes = STAGING_BYTES,
    private readonly alignment = STAGING_ALIGNMENT,
  ) {
    assert(maxBuffers >= 1, 'a staging pool has at least one buffer');
    assert(bufferBytes % alignment === 0 && alignment % DIRECT_ALIGNMENT === 0, 'aligned pool buffers');
  }

  get buffersAllocated(): number {
    return this.allocated;
  }

  /** Buffers given out and not yet back. */
  get buffersInUse(): number {
    return this.allocated - this.free.length;
  }

  /**
   * Allocates `count` buffers now (at most the pool's size) and keeps them free: a new buffer's memory
   * is zeroed and faulted in when it is allocated, which here (memory the hypervisor took back, huge
   * pages compacted for) cost the chunk servers 0.1-0.2 CPU-s per GB of the first put's file, and held
   * each server's stream meanwhile. Done at start-up, as TIGER_STYLE allocates, the cost is not in the
   * way of a write; the memory is what the first write would have kept anyway.
   */
  prewarm(count: number): void {
    assert(Number.isInteger(count) && count >= 0, 'a whole number of buffers to prewarm');
    while (this.allocated < Math.min(count, this.maxBuffers)) {
      this.allocated++;
      this.free.push(this.allocate(this.bufferBytes, this.alignment));
    }
  }

  /** A buffer if one is free or may still be allocated, else undefined at once (no waiting). */
  tryAcquire(): Buffer | undefined {
    const buffer = this.free.pop();
    if (buffer !== undefined || this.allocated >= this.maxBuffers) return buffer;
    this.allocated++;
    return this.allocate(this.bufferBytes, this.alignment);
  }

  /** Two buffers, or none (undefined) if two are not to be had at once. */
  tryAcquirePair(): [Buffer, Buffer] | undefined {
    const first = this.tryAcquire();
    if (first === undefined) return undefined;
    const second = this.tryAcquire();
    if (second !== undefined) return [first, second];
    this.release(first);
    return undefined;
  }

  release(buffer: Buffer): void {
    assert(buffer.length === this.bufferBytes, 'a pool buffer comes back whole');
    assert(
      this.free.length < this.allocated && !this.free.includes(buffer),
      'a pool buffer given back twice',
    );
    this.free.push(buffer);
  }
}

/**
 * Whether `dir`'s filesystem takes direct writes: creates a file there with O_DIRECT and writes one
 * aligned block. Undefined if it does, else why not (the store then writes through the page cache).
 */
export async function probeDirectWrites(
  dir: string,
  io: StoreIo,
  allocate: (bytes: number, alignment: number) => Buffer,
): Promise<string | undefined> {
  const path = join(dir, `direct-probe.${process.pid}.tmp`);
  await unlink(path).catch(() => {});
  let handle: FileHandle | undefined;
  try {
    handle = await createDirect(io, path);
    const block = allocate(DIRECT_ALIGNMENT, DIRECT_ALIGNMENT);
    const { bytesWritten } = await handle.write(block, 0, DIRECT_ALIGNMENT, 0);
    return bytesWritten === DIRECT_ALIGNMENT ? undefined : `a direct write wrote ${bytesWritten} bytes`;
  } catch (error) {
    return `${(error as NodeJS.ErrnoException).code ?? 'error'}: ${(error as Error).message}`;
  } finally {
    await handle?.close();
    await unlink(path).catch(() => {});
  }
}

/** The bytes of one shard file on their way to disk, in file order from offset 0. */
export interface ShardFileSink {
  /** Whether `append` copies the bytes it is given (so the caller may reuse them once it returns). */
  readonly copies: boolean;
  /**
   * Queues the next `bytes` (the slices, in order). Resolves once the caller may pass more: the
   * previous write is done (or, direct, the bytes are copied). Rejects with the first write failure.
   */
  append(slices: readonly Uint8Array[], bytes: number): Promise<void>;
  /** Writes `tail` as the file's last bytes, then fdatasyncs; the file is then `fileBytes` long. */
  finish(tail: Buffer, fileBytes: number): Promise<void>;
  close(): Promise<void>;
  /** Waits for writes in flight, gives memory back and closes the file. Never rejects. */
  discard(): Promise<void>;
}

/**
 * Creates `path` (which must not exist) and starts it with `header`: direct (through two staging buffers
 * of `pool`) when a pool is given and has two free, else through the page cache.
 */
export async function createShardFile(
  path: string,
  header: Buffer,
  io: StoreIo,
  pool: StagingPool | undefined,
): Promise<ShardFileSink> {
  const buffers = pool?.tryAcquirePair();
  let handle: FileHandle;
  try {
    handle = buffers === undefined ? await open(path, 'wx') : await createDirect(io, path);
  } catch (error) {
    if (buffers !== undefined) for (const buffer of buffers) pool!.release(buffer);
    throw error;
  }
  const sink =
    buffers === undefined ? new BufferedSink(handle, io) : new DirectSink(handle, io, pool!, buffers);
  try {
    // Buffered: written at once. Direct: held in the first staging buffer, written with the data.
    await sink.append([header], header.length);
    return sink;
  } catch (error) {
    await sink.discard();
    throw error;
  }
}

/**
 * What both sinks share: the write in flight, and an fdatasync behind the writes every
 * SYNC_BEHIND_BYTES, so the disk works while the network does and the final fdatasync has little left
 * to flush (HDFS's sync-behind-writes). Direct writes need it too: they skip the page cache, not the
 * disk's write cache, and their block allocations are still to be journaled (without it the final
 * fdatasync of a direct 64 MiB shard took ~45 ms here, ~25 ms with it). One at a time; failures are
 * kept and surface at the next call.
 */
abstract class SyncBehindSink {
  protected inflight: Promise<void> | undefined;
  protected syncing: Promise<void> | undefined;
  private unsyncedBytes = 0;
  protected failure: unknown;

  constructor(
    protected readonly handle: FileHandle,
    protected readonly io: StoreIo,
  ) {}

  /** Counts `bytes` just queued as `inflight`, starting an fdatasync after it when enough are unsynced. */
  protected syncBehind(bytes: number): void {
    this.unsyncedBytes += bytes;
    if (this.unsyncedBytes < SYNC_BEHIND_BYTES || this.syncing !== undefined) return;
    this.unsyncedBytes = 0;
    this.syncing = (this.inflight ?? Promise.resolve())
      .then(() => this.handle.datasync())
      .catch((error: unknown) => {
        this.failure ??= error;
      })
      .finally(() => {
        this.syncing = undefined;
      });
  }

  close(): Promise<void> {
    return this.handle.close();
  }
}

class BufferedSink extends SyncBehindSink implements ShardFileSink {
  readonly copies = false;
  private position = 0;

  async append(slices: readonly Uint8Array[], bytes: number): Promise<void> {
    await this.settle(false);
    const at = this.position;
    this.position += bytes;
    this.inflight = this.io.writev(this.handle, slices, at).catch((error: unknown) => {
      this.failure ??= error;
    });
    if (at === 0) {
      // The header: written before anything else is accepted, so a full disk fails the write at once.
      await this.settle(false);
      return;
    }
    this.syncBehind(bytes);
  }

  private async settle(withSync: boolean): Promise<void> {
    if (this.inflight !== undefined) await this.inflight;
    if (withSync && this.syncing !== undefined) await this.syncing;
    this.inflight = undefined;
    if (this.failure !== undefined) throw this.failure;
  }

  async finish(tail: Buffer, fileBytes: number): Promise<void> {
    await this.settle(true);
    assert(this.position + tail.length === fileBytes, 'the tail ends the file');
    await this.io.writev(this.handle, [tail], this.position);
    this.position = fileBytes;
    await this.handle.datasync();
  }

  async discard(): Promise<void> {
    if (this.inflight !== undefined) await this.inflight;
    if (this.syncing !== undefined) await this.syncing;
    await this.handle.close().catch(() => {});
  }
}

class DirectSink extends SyncBehindSink implements ShardFileSink {
  readonly copies = true;
  /** The buffer being filled, holding the file's bytes from `offset`. */
  private staging: Buffer | undefined;
  private fill = 0;
  private offset = 0;
  /** This write's buffers not being filled nor written. */
  private readonly spare: Buffer[] = [];
  /** Writes on their way to disk, oldest first (each never rejects: failures are kept). */
  private readonly writes: { done: Promise<void>; buffer: Buffer }[] = [];
  private released = false;

  constructor(
    handle: FileHandle,
    io: StoreIo,
    private readonly pool: StagingPool,
    private readonly buffers: readonly [Buffer, Buffer],
  ) {
    super(handle, io);
    this.spare.push(...buffers);
  }

  async append(slices: readonly Uint8Array[], bytes: number): Promise<void> {
    let copied = 0;
    for (const slice of slices) {
      let done = 0;
      while (done < slice.length) {
        if (this.staging === undefined) this.staging = await this.nextBuffer();
        const n = Math.min(slice.length - done, STAGING_BYTES - this.fill);
        this.staging.set(slice.subarray(done, done + n), this.fill);
        this.fill += n;
        done += n;
        if (this.fill === STAGING_BYTES) this.submit(STAGING_BYTES);
      }
      copied += slice.length;
    }
    assert(copied === bytes, 'the slices hold the bytes announced');
    if (this.failure !== undefined) throw this.failure;
  }

  /** A buffer of this write's own: a spare one, or the oldest written one once the disk has it. */
  private async nextBuffer(): Promise<Buffer> {
    const spare = this.spare.pop();
    if (spare !== undefined) return spare;
    const oldest = this.writes.shift();
    assert(oldest !== undefined, 'a direct write without a spare buffer has one on its way to disk');
    await oldest.done;
    if (this.failure !== undefined) throw this.failure;
    return oldest.buffer;
  }

  /** Writes the staging buffer's first `length` bytes (at most two writes are in flight: two buffers). */
  private submit(length: number): void {
    const buffer = this.staging!;
    assert(length % DIRECT_ALIGNMENT === 0 && this.offset % DIRECT_ALIGNMENT === 0, 'aligned direct write');
    const at = this.offset;
    this.offset += this.fill;
    this.staging = undefined;
    this.fill = 0;
    this.inflight = this.io.writev(this.handle, [buffer.subarray(0, length)], at).catch((error: unknown) => {
      this.failure ??= error;
    });
    this.writes.push({ done: this.inflight, buffer });
    this.syncBehind(length);
  }

  private async settle(): Promise<void> {
    for (const write of this.writes.splice(0)) {
      await write.done;
      this.spare.push(write.buffer);
    }
    this.inflight = undefined;
  }

  async finish(tail: Buffer, fileBytes: number): Promise<void> {
    try {
      await this.append([tail], tail.length);
      const end = this.offset + this.fill;
      assert(end === fileBytes, 'the tail ends the file');
      if (this.fill > 0) {
        // The last block padded with zeros (the buffer is reused: stale bytes must not reach the disk).
        const padded = Math.ceil(this.fill / DIRECT_ALIGNMENT) * DIRECT_ALIGNMENT;
        this.staging!.fill(0, this.fill, padded);
        this.submit(padded);
      }
      await this.settle();
      if (this.syncing !== undefined) await this.syncing;
      if (this.failure !== undefined) throw this.failure;
      if (end % DIRECT_ALIGNMENT !== 0) await this.handle.truncate(fileBytes);
      await this.handle.datasync();
    } finally {
      await this.releaseBuffers();
    }
  }

  async discard(): Promise<void> {
    await this.releaseBuffers();
    if (this.syncing !== undefined) await this.syncing;
    await this.handle.close().catch(() => {});
  }

  /** Once no write of them is in flight, gives this write's two buffers back to the pool (once). */
  private async releaseBuffers(): Promise<void> {
    await this.settle();
    if (this.released) return;
    this.released = true;
    this.staging = undefined;
    this.spare.length = 0;
    for (const buffer of this.buffers) this.pool.release(buffer);
  }
}

/**
 * Opens an existing file for direct reads; undefined if that fails (the caller reads through the page
 * cache instead, on the descriptor it already has): EINVAL where the filesystem refuses, or ENOENT if
 * the shard was deleted since the caller opened it — whose open descriptor still reads it whole.
 */
export async function openDirectRead(path: string): Promise<FileHandle | undefined> {
  try {
    return await open(path, fsConstants.O_RDONLY | fsConstants.O_DIRECT);
  } catch {
    return undefined;
  }
}

/**
 * Reads file bytes [position, position+bytes) with one direct read of the 4 KiB blocks around them into
 * `buffer` (aligned, at least `bytes` + 2 blocks long); returns the bytes asked for, a view of `buffer`.
 * A file shorter than the range is CORRUPT-worthy: `short` says where it ended (the caller words it).
 */
export async function readDirect(
  io: StoreIo,
  handle: FileHandle,
  buffer: Buffer,
  bytes: number,
  position: number,
): Promise<Buffer | { short: number }> {
  const first = Math.floor(position / DIRECT_ALIGNMENT) * DIRECT_ALIGNMENT;
  const skew = position - first;
  const length = Math.ceil((skew + bytes) / DIRECT_ALIGNMENT) * DIRECT_ALIGNMENT;
  assert(length <= buffer.length, 'the direct read buffer holds the blocks around the range');
  let done = 0;
  while (done < skew + bytes) {
    // After a short read that ended off a block boundary the file has ended: no aligned read is left.
    if (done % DIRECT_ALIGNMENT !== 0) return { short: first + done };
    const got =
      io.read === undefined
        ? (await handle.read(buffer, done, length - done, first + done)).bytesRead
        : await io.read(handle, buffer, done, length - done, first + done);
    if (got === 0) return { short: first + done };
    done += got;
  }
  return buffer.subarray(skew, skew + bytes);
}
