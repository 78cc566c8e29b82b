/**
 * cli/local-file — where `dogfs get` puts a file's bytes: a local file (LocalFileSink, below) or the
 * process's stdout (StdoutSink, at the end).
 *
 * The local file is a Writable and a ReadSink that bypasses the page cache.
 *
 * Writing new file data through the page cache costs this machine 1.5-2.2 s of kernel CPU per GiB
 * (fresh page-cache pages come from memory the VM has given back to the hypervisor, and each is faulted
 * in again), against about 0.15 s with O_DIRECT (`dd bs=1M` of 512 MiB: 1.1-1.2 s sys buffered, 0.08
 * s with oflag=direct). So the bytes go into two staging buffers that take turns: one fills while the
 * other is written with one positional O_DIRECT write of about STAGE_BYTES. As a ReadSink
 * (DogfsClient.readInto) the reader copies each stripe straight into a stage; as a Writable, chunks are
 * copied in. O_DIRECT wants the memory, the file offset and the length aligned to the device's block
 * size: the staging memory comes from the codec addon's aligned allocator, 2 MiB-aligned and advised to
 * be huge pages, as the chunk servers' staging is (a direct write from 4 KiB pages is split by the block
 * layer into many requests; a get into a file took 1.33-1.46 s against 1.52-1.63 s from 4 KiB pages,
 * docs/ARCHITECTURE.md), or without the addon a WebAssembly.Memory (page-aligned, which no Buffer
 * promises); every write but the last has the same length, a multiple of 4 KiB, at a multiple of it,
 * and the last, short one goes through a second, ordinary descriptor. Where O_DIRECT is refused (a filesystem without it, such as tmpfs, or
 * memory it finds misaligned: EINVAL), every write goes through the ordinary descriptor instead, still
 * one write per stage. Nothing here fsyncs: as with `cp`, the file is as durable as the page cache
 * makes it (direct writes have reached the device, only the short last stage has not).
 */
import { constants as fsConstants } from 'node:fs';
import { type FileHandle, open, unlink } from 'node:fs/promises';
import { Writable } from 'node:stream';
import type { ReadSink } from '../client/index.js';
import { alignedAllocator } from '../codec/native.js';
import { assert } from '../common/assert.js';

/** Bytes of one staging buffer: one direct write each (a multiple of any block size, 512 to 64 KiB). */
export const STAGE_BYTES = 4 * 1024 * 1024;
/** Room past STAGE_BYTES in each stage, for a reservation that runs past the write size. */
const SLACK_BYTES = 4 * 1024 * 1024;
/** What O_DIRECT offsets, lengths and memory are aligned to (any block size up to 4 KiB). */
const BLOCK_BYTES = 4096;
const WASM_PAGE_BYTES = 64 * 1024;
const HUGE_PAGE_BYTES = 2 * 1024 * 1024;

// The WebAssembly global, typed here: this package's TypeScript lib (ES2023, no DOM) does not declare it.
const WasmMemory = (
  globalThis as unknown as {
    WebAssembly: {
      Memory: new (size: { initial: number; maximum: number }) => { readonly buffer: ArrayBuffer };
    };
  }
).WebAssembly.Memory;

/**
 * `bytes` of memory aligned for O_DIRECT: from the addon (huge pages where the kernel gives them), else a
 * WebAssembly.Memory of its own.
 */
function stagingMemory(bytes: number): Buffer {
  const allocate = alignedAllocator();
  if (allocate !== undefined) return allocate(bytes, HUGE_PAGE_BYTES);
  const memory = new WasmMemory({ initial: bytes / WASM_PAGE_BYTES, maximum: bytes / WASM_PAGE_BYTES });
  return Buffer.from(memory.buffer, 0, bytes);
}

interface Stage {
  readonly buffer: Buffer;
  /** The write last started from this buffer (settled before the buffer is refilled). */
  writing: Promise<void> | undefined;
}

/** Whether an fs error is the kernel refusing O_DIRECT (flag or alignment). */
function refusesDirect(error: unknown): boolean {
  const code = (error as NodeJS.ErrnoException | undefined)?.code;
  return code === 'EINVAL' || code === 'EOPNOTSUPP' || code === 'ENOTSUP';
}

export class LocalFileSink extends Writable implements ReadSink {
  /** True while writes go around the page cache (false after a fallback). */
  direct = false;
  /**
   * The first write to the file that failed (ENOSPC, EIO...): a reader reports a failed sink as its own
   * failure, under the remote path; the caller names the local file with this instead.
   */
  failure: Error | undefined;
  private readonly path: string;
  private directHandle: FileHandle | undefined;
  private plainHandle: FileHandle | undefined;
  private readonly stages: Stage[];
  /** The staging memory (a reservation elsewhere was too large for it). */
  private readonly memory: ArrayBufferLike;
  /** Bytes of each stage written at once: a multiple of BLOCK_BYTES, set by the first use. */
  private limit: number | undefined;
  private reserved: Uint8Array | undefined;
  private turn = 0;
  private fill = 0;
  /** File offset of the current stage's first byte. */
  private position = 0;

  /**
   * Creates `path`, which must not exist (as with flag 'wx'), for writing: O_DIRECT where the
   * filesystem takes it. Rejects with the fs error (ENOENT, EEXIST, EACCES, ...).
   */
  static async create(
    path: string,
    options: {
      mode?: number;
      /** false: through the page cache (tests) */
      direct?: boolean;
      /** Opens the file (tests inject a filesystem's refusal of O_DIRECT here). */
      openFile?: typeof open;
    } = {},
  ): Promise<LocalFileSink> {
    const mode = options.mode ?? 0o644;
    const openFile = options.openFile ?? open;
    const create = fsConstants.O_WRONLY | fsConstants.O_CREAT | fsConstants.O_EXCL;
    if (options.direct === false)
      return new LocalFileSink(path, undefined, await openFile(path, create, mode));
    try {
      return new LocalFileSink(path, await openFile(path, create | fsConstants.O_DIRECT, mode), undefined);
    } catch (error) {
      if (!refusesDirect(error)) throw error;
      // Linux checks O_DIRECT after creating the file, so the refused open may have left it behind. It
      // is ours (the open had O_EXCL): remove it and create again with O_EXCL, so the fallback neither
      // follows a link planted at the name meanwhile nor leaves the file behind if this open fails.
      await unlink(path).catch((unlinkError: NodeJS.ErrnoException) => {
        if (unlinkError.code !== 'ENOENT') throw unlinkError;
      });
      return new LocalFileSink(path, undefined, await openFile(path, create, mode));
    }
  }

  private constructor(
    path: string,
    directHandle: FileHandle | undefined,
    plainHandle: FileHandle | undefined,
  ) {
    super({ highWaterMark: STAGE_BYTES });
    this.path = path;
    this.directHandle = directHandle;
    this.plainHandle = plainHandle;
    this.direct = directHandle !== undefined;
    const stageBytes = STAGE_BYTES + SLACK_BYTES;
    const memory = stagingMemory(2 * stageBytes);
    this.memory = memory.buffer;
    this.stages = [0, 1].map((i) => ({
      buffer: memory.subarray(i * stageBytes, (i + 1) * stageBytes),
      writing: undefined,
    }));
  }

  override _write(chunk: Buffer, _encoding: BufferEncoding, callback: (error?: Error | null) => void): void {
    this.take(chunk).then(
      () => callback(),
      (error: unknown) => callback(error as Error),
    );
  }

  override _final(callback: (error?: Error | null) => void): void {
    this.finish().then(
      () => callback(),
      (error: unknown) => callback(error as Error),
    );
  }

  override _destroy(error: Error | null, callback: (error?: Error | null) => void): void {
    const pending = this.stages.map((s) => s.writing?.catch(() => {}));
    Promise.all(pending)
      .then(() => this.closeHandles())
      .then(
        () => callback(error),
        (closeError: unknown) => callback(error ?? (closeError as Error)),
      );
  }

  /** Copies `chunk` into the stages, starting a write whenever one is full. */
  private async take(chunk: Uint8Array): Promise<void> {
    this.limit ??= STAGE_BYTES;
    let offset = 0;
    while (offset < chunk.length) {
      const n = Math.min(chunk.length - offset, this.limit - this.fill);
      this.stages[this.turn]!.buffer.set(chunk.subarray(offset, offset + n), this.fill);
      this.fill += n;
      offset += n;
      if (this.fill === this.limit) await this.flush();
    }
  }

  /**
   * ReadSink (DogfsClient.readInto): memory in the current stage for the next `length` bytes, so the
   * reader's one copy out of its receive buffers puts them where the write takes them from. The first
   * reservation sets the stage's write size to the most whole stripes of that length that fit in
   * STAGE_BYTES, and at least one that fits a stage (a stripe is a whole number of 4 KiB cells, so that
   * is still a multiple of the block size): stripes then never straddle two writes. Bytes past the
   * write size go to the next stage.
   */
  reserve(length: number): Uint8Array {
    assert(this.reserved === undefined, 'one reservation at a time');
    if (this.limit === undefined) {
      // A stripe larger than STAGE_BYTES (but within a stage) is written on its own, not cut in two
      // with its rest copied over to the other stage.
      const stripes = Math.max(1, Math.floor(STAGE_BYTES / length));
      this.limit =
        length % BLOCK_BYTES === 0 && length <= STAGE_BYTES + SLACK_BYTES ? stripes * length : STAGE_BYTES;
    }
    const reserved =
      this.fill + length <= STAGE_BYTES + SLACK_BYTES
        ? this.stages[this.turn]!.buffer.subarray(this.fill, this.fill + length)
        : Buffer.allocUnsafe(length); // larger than any stage: copied in by commit
    this.reserved = reserved;
    return reserved;
  }

  /** ReadSink: the reserved bytes are filled; writes what is complete, waiting while both writes run. */
  async commit(): Promise<void> {
    const reserved = this.reserved;
    assert(reserved !== undefined, 'commit after reserve');
    this.reserved = undefined;
    if (reserved.buffer !== this.memory) {
      await this.take(reserved);
      return;
    }
    this.fill += reserved.length;
    while (this.fill >= this.limit!) await this.flush();
  }

  /**
   * Starts the write of the current stage's first `limit` bytes and turns to the other stage (once its
   * own write is done), which takes any bytes past `limit`.
   */
  private async flush(): Promise<void> {
    const limit = this.limit!;
    const stage = this.stages[this.turn]!;
    stage.writing = this.writeStage(stage.buffer.subarray(0, limit), this.position);
    // Never an unhandled rejection: the failure surfaces when the stage is next awaited.
    stage.writing.catch(() => {});
    this.position += limit;
    this.turn ^= 1;
    const next = this.stages[this.turn]!;
    if (next.writing !== undefined) {
      // Back-pressure: this buffer's previous write must be done before it is refilled.
      await next.writing;
      next.writing = undefined;
    }
    const over = this.fill - limit;
    if (over > 0) next.buffer.set(stage.buffer.subarray(limit, this.fill), 0);
    this.fill = over;
  }

  /** One positional write of a whole stage: direct if it can be, else through the ordinary descriptor. */
  private async writeStage(bytes: Buffer, position: number): Promise<void> {
    try {
      await this.writeStageOnce(bytes, position);
    } catch (error) {
      this.failure ??= error as Error;
      throw error;
    }
  }

  private async writeStageOnce(bytes: Buffer, position: number): Promise<void> {
    if (this.direct) {
      try {
        await writeAll(this.directHandle!, bytes, position);
        return;
      } catch (error) {
        if (!refusesDirect(error)) throw error;
        // The kernel refused this memory or file for O_DIRECT after all: no more direct writes. Writes
        // are positional, so this one is simply redone below.
        this.direct = false;
      }
    }
    await writeAll(await this.plain(), bytes, position);
  }

  private async plain(): Promise<FileHandle> {
    this.plainHandle ??= await open(this.path, fsConstants.O_WRONLY);
    return this.plainHandle;
  }

  private async finish(): Promise<void> {
    try {
      await this.finishOnce();
    } catch (error) {
      this.failure ??= error as Error;
      throw error;
    }
  }

  private async finishOnce(): Promise<void> {
    await Promise.all(this.stages.map((s) => s.writing));
    if (this.fill > 0) {
      // The short last stage: not a whole number of blocks, so through the page cache.
      await writeAll(
        await this.plain(),
        this.stages[this.turn]!.buffer.subarray(0, this.fill),
        this.position,
      );
      this.position += this.fill;
      this.fill = 0;
    }
    await this.closeHandles();
  }

  private async closeHandles(): Promise<void> {
    const handles = [this.directHandle, this.plainHandle];
    this.directHandle = undefined;
    this.plainHandle = undefined;
    // Both are closed even if one fails; the first failure is reported.
    const results = await Promise.allSettled(handles.map((h) => h?.close()));
    const failed = results.find((r) => r.status === 'rejected');
    if (failed !== undefined) throw (failed as PromiseRejectedResult).reason;
  }
}

/** Writes all of `bytes` at `position` (a write may take fewer bytes than asked). */
async function writeAll(handle: FileHandle, bytes: Buffer, position: number): Promise<void> {
  let done = 0;
  while (done < bytes.length) {
    const { bytesWritten } = await handle.write(bytes, done, bytes.length - done, position + done);
    if (bytesWritten <= 0) throw Object.assign(new Error('write made no progress'), { code: 'EIO' });
    done += bytesWritten;
  }
}

/** Stripe buffers a StdoutSink takes turns with: at most this many writes are waited for. */
const STDOUT_SLOTS = 4;

/** What a StdoutSink writes to: process.stdout, or a device's or FIFO's descriptor (cli/files.ts). */
export interface ByteStreamOut {
  write(chunk: Uint8Array, callback: (error?: Error | null) => void): boolean;
}

/**
 * A ReadSink (DogfsClient.readInto) that writes to the process's own stdout (or a stream like it)
 * through a few stripe buffers it reuses, instead of a fresh buffer per stripe (fresh memory costs a
 * page fault per 4 KiB here, more than the copy into it). A buffer is refilled only after the write
 * from it has called back, which for process.stdout (a file, a pipe, a terminal or a socket) and a
 * descriptor's writer means its bytes have reached the kernel; a stream that keeps references to
 * written chunks (a PassThrough) must not be used.
 */
export class StdoutSink implements ReadSink {
  private readonly slots: { buffer: Buffer | undefined; written: Promise<void> | undefined }[] = [];
  private turn = 0;
  private reserved: Buffer | undefined;

  constructor(private readonly out: ByteStreamOut = process.stdout) {
    for (let i = 0; i < STDOUT_SLOTS; i++) this.slots.push({ buffer: undefined, written: undefined });
  }

  reserve(length: number): Uint8Array {
    assert(this.reserved === undefined, 'one reservation at a time');
    const slot = this.slots[this.turn]!;
    assert(slot.written === undefined, 'a slot is free before it is reserved');
    if (slot.buffer === undefined || slot.buffer.length < length)
      slot.buffer = Buffer.allocUnsafeSlow(length);
    this.reserved = slot.buffer.subarray(0, length);
    return this.reserved;
  }

  async commit(): Promise<void> {
    const bytes = this.reserved;
    assert(bytes !== undefined, 'commit after reserve');
    this.reserved = undefined;
    const slot = this.slots[this.turn]!;
    slot.written = new Promise<void>((resolve, reject) => {
      this.out.write(bytes, (error) => (error ? reject(error) : resolve()));
    });
    // Never an unhandled rejection: the failure surfaces when the slot is next awaited.
    slot.written.catch(() => {});
    this.turn = (this.turn + 1) % STDOUT_SLOTS;
    await this.free(this.slots[this.turn]!);
  }

  /** Resolves once every write has called back (rejects with the first failure). */
  async flush(): Promise<void> {
    for (const slot of this.slots) await this.free(slot);
  }

  private async free(slot: { written: Promise<void> | undefined }): Promise<void> {
    const written = slot.written;
    if (written === undefined) return;
    slot.written = undefined;
    await written;
  }
}
