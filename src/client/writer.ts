/**
 * client/writer — the write path (DESIGN §4): a Node Writable that creates the file, allocates block
 * groups, cuts the bytes into stripes, encodes parity, streams the K+M shards to their chunk servers in
 * parallel, commits each block group with the shards' lengths, checksums and durability, and completes
 * the file. Memory is bounded: two stripe buffers (one filling, one sending) and their parity cells,
 * allocated once per stream and reused (fresh memory costs a page fault per 4 KiB here, more than the
 * copy into it), plus the transport's per-shard packet buffers, which only cells of less than half a
 * packet need (under the default 6 MiB stripe and rs-6-3, cells are whole 1 MiB packets, sent as they
 * are).
 *
 * A block group is good when at least K+1 of its shards (K when M = 1) are durable; the missing ones are
 * committed as not durable (the gap repair fills). With fewer, the stream fails, nothing is committed for
 * that group and CompleteFile is never called, so the file never appears.
 *
 * Metadata commands (each one Raft entry, the cost of a small file): nothing is created before the first
 * bytes arrive. A stream that ends empty makes one command (Create with complete). Otherwise Create also
 * allocates the first block group, and the last block group's commit goes with CompleteFile: a file of
 * one block group takes 2 commands (Create+allocate, commit+CompleteFile), each further group 2 more
 * (AllocateBlockGroup, CommitBlockGroup). A service that does not combine them (an older server, or too
 * few chunk servers at Create) answers Create without a block group, and the writer then makes the
 * separate calls (4 commands for one block group).
 */
import { Writable } from 'node:stream';
import { createCodec } from '../codec/backends.js';
import type { ReedSolomon } from '../codec/rs.js';
import { DEFAULT_STRIPE_SIZE, StripeLayout } from '../codec/stripe.js';
import { assert } from '../common/assert.js';
import { dataOperationMs } from '../wire/data-transfer.js';
import { DogfsError, toDogfsError } from '../wire/errors.js';
import type { BlockGroup, Inode, ShardLocation } from '../wire/gen/types.js';
import type { Init } from '../wire/proto.js';
import type { MetaCallOptions, MetadataConnection } from './meta.js';
import type { ClientSession } from './session.js';
import { withStallTimeout } from './timeout.js';
import type { ShardTransport, ShardWriteHandle } from './transport.js';

export interface WriteStreamOptions {
  /** EC policy, e.g. "rs-6-3"; default: inherited from the directory / the cluster. */
  ec?: string;
  /** Replace an existing file (atomically, when the new one completes). */
  overwrite?: boolean;
  mode?: number;
  /**
   * Total bytes that will be written, when known in advance (a local file's size). Lets each shard be
   * announced with its exact length; writing a different number of bytes fails the stream.
   */
  size?: number;
  /** Deadline of each metadata call (default: the client's). */
  timeoutMs?: number;
  /** A shard that accepts no bytes (or does not confirm durability) for this long is given up (30 s). */
  shardTimeoutMs?: number;
  /**
   * Where the bytes come from instead of `write()`: a local file (an fs/promises FileHandle, or
   * anything with its positional `read`) of exactly `size` bytes (required), read straight into the
   * stripe buffers when the stream is ended (`end()` with no bytes). Saves the read stream's buffers
   * and the copy out of them. A file shorter than `size` fails the stream (INVALID_ARGUMENT).
   */
  source?: PositionalSource;
  /** With `source`: called with the bytes read so far after each stripe's worth. */
  onProgress?: (bytes: number) => void;
}

/** The part of fs/promises' FileHandle a write stream reads its `source` through. */
export interface PositionalSource {
  read(
    buffer: Uint8Array,
    offset: number,
    length: number,
    position: number,
  ): Promise<{ readonly bytesRead: number }>;
}

export interface WriterContext {
  readonly meta: MetadataConnection;
  readonly session: ClientSession;
  readonly transport: ShardTransport;
}

/**
 * When the total size is not known in advance (stdin), a block group's length is not known until its
 * bytes have arrived, and every shard is announced with its exact length: the writer then buffers up to
 * this many bytes before each block group (so such streams use block groups of at most this size).
 */
/** Lease renewals come at least this far apart (a lease is at least 1 s; renewals come every quarter). */
const MIN_RENEW_MS = 250;
/** Deadline of the AbandonFile call a failed stream makes on its way out. */
const ABANDON_TIMEOUT_MS = 5000;
export const UNKNOWN_SIZE_WINDOW_BYTES = 16 * 1024 * 1024;

export interface ShardOutcome {
  readonly index: number;
  readonly chunkServerId: string;
  readonly addr: string;
  readonly durable: boolean;
  readonly error?: DogfsError;
}

export interface BlockGroupOutcome {
  readonly id: number;
  readonly offset: number;
  readonly length: number;
  readonly shards: readonly ShardOutcome[];
}

/** Shards that must be durable for a block group to be kept. */
export function requiredDurable(k: number, m: number): number {
  return m <= 1 ? k : k + 1;
}

/** Puts bytes [offset, offset + length) of the input at stripe[at...] (FileWriteStream.feed). */
type StripeFill = (stripe: Buffer, at: number, offset: number, length: number) => void | Promise<void>;

function copyFrom(chunk: Buffer): StripeFill {
  return (stripe, at, offset, length) => {
    chunk.copy(stripe, at, offset, offset + length);
  };
}

/** The stripe being filled: a view of one of the stream's two stripe buffers. */
interface Stripe {
  readonly data: Buffer;
  readonly parity: readonly Buffer[];
  readonly padding: Buffer;
  filled: number;
}

/**
 * A stripe's data and parity buffers. Two take turns: one fills while the other is being sent. The
 * transport has taken a stripe's bytes once its send resolves (ShardWriteHandle.write), and a stripe's
 * send is awaited before the stripe after next begins (sendStripe), so a buffer is never refilled while
 * its bytes are still wanted.
 */
interface StripeBuffers {
  readonly data: Buffer;
  readonly parity: Buffer[];
  readonly padding: Buffer;
}

class ShardStream {
  readonly location: Init<ShardLocation>;
  handle: ShardWriteHandle | undefined;
  crc = 0;
  error: DogfsError | undefined;
  /** The failure was this process's own (see fail). */
  localFault = false;
  /** Restarts the stall timeout of the step in progress (a write or the finish), if any. */
  private onProgress: (() => void) | undefined;

  constructor(location: Init<ShardLocation>) {
    this.location = location;
  }

  /** The transport took more of this shard's bytes. */
  progressed(): void {
    this.onProgress?.();
  }

  /**
   * Runs a step of this shard's write (`handle.write`, `handle.finish`) under a stall timeout that
   * restarts whenever the transport takes bytes: a cell of 1-2 MiB over a slow link that keeps moving
   * takes longer than `ms`, and a bound on the whole step failed puts at 60 KiB/s per shard.
   */
  async step<T>(run: (handle: ShardWriteHandle) => Promise<T>, ms: number): Promise<T> {
    try {
      return await withStallTimeout(
        (progress) => {
          this.onProgress = progress;
          return run(this.handle!);
        },
        ms,
        `shard ${this.location.index}`,
        'DEADLINE_EXCEEDED',
      );
    } finally {
      this.onProgress = undefined;
    }
  }

  get alive(): boolean {
    return this.handle !== undefined && this.error === undefined;
  }

  fail(error: unknown): void {
    if (this.error !== undefined) return;
    // Neither a DogfsError nor a system error (errno): a fault of this process (a bug), not of the
    // shard's server, which must not pass as a tolerated gap (checkEnoughAlive fails the group).
    this.localFault = !(error instanceof DogfsError) && !isSystemError(error);
    const e = toDogfsError(error, this.localFault ? 'INTERNAL' : 'UNAVAILABLE');
    this.error = new DogfsError(
      e.code,
      `shard ${this.location.index} on ${this.location.chunkServerId ?? '?'} (${this.location.addr ?? '?'}): ${e.message}`,
      { cause: e },
    );
    this.handle?.abort(this.error);
  }
}

/** An error from the operating system (it carries an errno code such as ECONNRESET). */
function isSystemError(error: unknown): boolean {
  return error instanceof Error && typeof (error as NodeJS.ErrnoException).code === 'string';
}

class GroupWriter {
  readonly block: BlockGroup;
  readonly layout: StripeLayout;
  /** File data bytes this group holds (known before its shards open: each is announced with its length). */
  readonly length: number;
  readonly shards: ShardStream[];
  readonly required: number;
  /** Bytes encoded and handed to the shards. */
  written = 0;
  /** The send of the last stripe: stripes go out in order, at most two in flight. */
  inFlight: Promise<void> = Promise.resolve();

  constructor(
    block: BlockGroup,
    layout: StripeLayout,
    length: number,
    transport: ShardTransport,
    deadline: number,
  ) {
    this.block = block;
    this.layout = layout;
    this.length = length;
    this.required = requiredDurable(layout.k, layout.m);
    const total = layout.k + layout.m;
    if (block.shards.length !== total) {
      throw new DogfsError(
        'INTERNAL',
        `block group ${block.id}: metadata gave ${block.shards.length} targets for ${total} shards`,
      );
    }
    const shardLength = layout.shardLength(length);
    // Every target first: a shard write must not be opened for a group that is refused.
    for (let i = 0; i < total; i++) {
      if (!block.shards.some((s) => s.index === i))
        throw new DogfsError('INTERNAL', `block group ${block.id}: no target for shard ${i}`);
    }
    this.shards = [];
    for (let i = 0; i < total; i++) {
      const target = block.shards.find((s) => s.index === i)!;
      const stream = new ShardStream({
        index: i,
        chunkServerId: target.chunkServerId,
        addr: target.addr,
        generation: target.generation,
      });
      if (target.addr === '') {
        // Placement found no server for this shard (fewer live servers than K+M): it starts as a gap.
        stream.fail(new DogfsError('UNAVAILABLE', 'no chunk server was placed for it'));
        this.shards.push(stream);
        continue;
      }
      try {
        stream.handle = transport.openWrite(
          { addr: target.addr, shard: { blockGroupId: block.id, index: i, generation: target.generation } },
          { length: shardLength, deadline, onProgress: () => stream.progressed() },
        );
      } catch (error) {
        stream.fail(error);
      }
      this.shards.push(stream);
    }
    try {
      this.checkEnoughAlive();
    } catch (error) {
      // The shard writes opened above would otherwise stay open until their deadline.
      this.abort(toDogfsError(error));
      throw error;
    }
  }

  alive(): number {
    return this.shards.filter((s) => s.alive).length;
  }

  /**
   * Throws when too few shards are left for the group to be kept, or when a shard failed for a fault of
   * this process (INTERNAL). The error has the failed shards' code when they share one (NO_SPACE from
   * full servers is no reason to retry), else UNAVAILABLE.
   */
  checkEnoughAlive(): void {
    const errors = this.shards.flatMap((s) => (s.error === undefined ? [] : [s.error]));
    const ownFault = this.shards.find((s) => s.localFault)?.error;
    if (ownFault !== undefined) throw ownFault;
    if (this.alive() >= this.required) return;
    const codes = new Set(errors.map((e) => e.code));
    const code = codes.size === 1 ? [...codes][0]! : 'UNAVAILABLE';
    throw new DogfsError(
      code,
      `write failed: only ${this.alive()} of ${this.shards.length} shards of block group ${this.block.id} could be written, ${this.required} needed (${errors.map((e) => e.message).join('; ')})`,
    );
  }

  /** Sends cell i to shard i; a shard that fails is dropped (and the group checked). */
  async send(cells: readonly Uint8Array[], timeoutMs: number): Promise<void> {
    await Promise.all(
      this.shards.map(async (stream, i) => {
        if (!stream.alive) return;
        try {
          await stream.step((handle) => handle.write(cells[i]!), timeoutMs);
        } catch (error) {
          stream.fail(error);
        }
      }),
    );
  }

  abort(reason: Error): void {
    for (const stream of this.shards) if (stream.alive) stream.handle!.abort(reason);
  }

  /** Ends every shard and waits for durability; the locations to commit. */
  async finish(timeoutMs: number): Promise<Init<ShardLocation>[]> {
    const expected = this.layout.shardLength(this.written);
    await Promise.all(
      this.shards.map(async (stream) => {
        if (!stream.alive) return;
        try {
          const result = await stream.step((handle) => handle.finish(), timeoutMs);
          if (result.length !== expected) {
            stream.fail(new DogfsError('CORRUPT', `stored ${result.length} bytes, sent ${expected}`));
          }
          stream.crc = result.crc32c >>> 0;
        } catch (error) {
          stream.fail(error);
        }
      }),
    );
    this.checkEnoughAlive();
    return this.shards.map((s) => ({
      ...s.location,
      length: expected,
      crc32c: s.alive ? s.crc : 0,
      durable: s.alive,
    }));
  }

  outcome(): BlockGroupOutcome {
    return {
      id: this.block.id,
      offset: this.block.offset,
      length: this.written,
      shards: this.shards.map((s) => ({
        index: s.location.index ?? 0,
        chunkServerId: s.location.chunkServerId ?? '',
        addr: s.location.addr ?? '',
        durable: s.alive,
        ...(s.error === undefined ? {} : { error: s.error }),
      })),
    };
  }
}

/**
 * The writable stream `DogfsClient.createWriteStream` returns. `'finish'` means the file is complete and
 * visible; an `'error'` means it is not (and was never made visible).
 */
export class FileWriteStream extends Writable {
  readonly path: string;
  /** The inode, once created (and, after 'finish', as completed). */
  inode: Inode | undefined;
  /** Per block group: which shards are durable (the gap repair fills). */
  readonly blockGroups: BlockGroupOutcome[] = [];
  /** File bytes accepted so far. */
  bytesWritten = 0;

  private readonly context: WriterContext;
  private readonly options: WriteStreamOptions;
  private readonly shardTimeoutMs: number;
  private leaseId = '';
  private codec: ReedSolomon | undefined;
  private replicate = false;
  private group: GroupWriter | undefined;
  private stripe: Stripe | undefined;
  /** File bytes handed to block groups (the next group starts here). */
  private groupedBytes = 0;
  /** Unknown size: bytes waiting for their block group (at most UNKNOWN_SIZE_WINDOW_BYTES + a chunk). */
  private readonly pending: Buffer[] = [];
  private pendingBytes = 0;
  private readonly cells: Uint8Array[] = [];
  private stripeBuffers: StripeBuffers[] = [];
  private stripeTurn = 0;
  private completeCalled = false;
  /** The service takes the last block group's commit with CompleteFile (it allocated with Create). */
  private combinedCommit = false;
  /** finishAll has begun: no more bytes come (so the group that empties `pending` is the last). */
  private ending = false;
  /** The last block group's commit, held back to go with CompleteFile (combinedCommit). */
  private lastCommit: Init<BlockGroup> | undefined;
  /** Renews the write lease while the stream lives (a block group may take longer than a lease). */
  private renewTimer: NodeJS.Timeout | undefined;
  private renewing: Promise<void> | undefined;
  /** The Create with allocate, once sent; settles (never rejects) after createFile has finished. */
  private creating: Promise<void> | undefined;
  /** The command that makes the file appear (CompleteFile, or Create of an empty file), once sent. */
  private completing: Promise<unknown> | undefined;
  private fileAppeared = false;

  constructor(context: WriterContext, path: string, options: WriteStreamOptions = {}) {
    super({ highWaterMark: 1024 * 1024, decodeStrings: true });
    this.context = context;
    this.path = path;
    this.options = options;
    this.shardTimeoutMs = options.shardTimeoutMs ?? 30_000;
    if (options.size !== undefined) {
      assert(Number.isSafeInteger(options.size) && options.size >= 0, 'size must be a non-negative integer');
    }
    if (options.source !== undefined && options.size === undefined) {
      throw new DogfsError('INVALID_ARGUMENT', `${path}: a source needs its size`);
    }
  }

  /** True once CompleteFile has been asked (tests use it to prove a failed write never completes). */
  get completed(): boolean {
    return this.completeCalled;
  }

  /** True once the file is known to have appeared (its CompleteFile, or an empty file's Create, succeeded). */
  private abandonment: Promise<void> | undefined;

  get appeared(): boolean {
    return this.fileAppeared;
  }

  private metaOptions(): MetaCallOptions {
    return this.options.timeoutMs === undefined ? {} : { timeoutMs: this.options.timeoutMs };
  }

  /** This stream's Create, with the first block group (`allocate`) or as a finished empty file. */
  private createRequest(how: { allocate: true } | { complete: true }) {
    return {
      path: this.path,
      ec: this.options.ec ?? '',
      overwrite: this.options.overwrite ?? false,
      mode: this.options.mode ?? 0o644,
      ...how,
    };
  }

  /**
   * Creates the file (see createFile); remembers the Create in flight, which `abandoned` waits for: a
   * stream destroyed before its answer can only give the name back once that answer has come.
   */
  private create(): Promise<BlockGroup | undefined> {
    const creating = this.createFile();
    this.creating = creating.then(
      () => undefined,
      () => undefined,
    );
    return creating;
  }

  /**
   * Creates the file (nothing is created before the first bytes arrive, so a stream that ends empty
   * makes one command: see finishAll). With `allocate`, asks for the first block group in the same
   * command; resolves with it when the service gave one (older servers do not, nor does one that found
   * too few chunk servers: the caller then allocates it with AllocateBlockGroup).
   */
  private async createFile(): Promise<BlockGroup | undefined> {
    const created = await this.context.meta.mutate(
      this.context.session,
      'Create',
      this.createRequest({ allocate: true }),
      this.metaOptions(),
    );
    if (created.inode === undefined || created.inode === null || created.leaseId === '') {
      throw new DogfsError('INTERNAL', 'Create answered without an inode or lease');
    }
    this.inode = created.inode;
    this.leaseId = created.leaseId;
    if (this.destroyed) {
      // Destroyed while the Create was on its way (_destroy found no file to abandon then): give the
      // name back now, and start neither the renewals nor any shard write.
      this.abandon();
      throw new DogfsError('CANCELLED', 'write stream destroyed');
    }
    this.replicate = created.inode.ec.startsWith('replicate-');
    // The lease runs from the create's time (the pending inode's ctime) to leaseExpiresMs.
    const leaseMs = created.leaseExpiresMs - created.inode.ctimeMs;
    this.renewTimer = setInterval(() => this.renewLease(), Math.max(MIN_RENEW_MS, leaseMs / 4));
    this.renewTimer.unref();
    // A server that allocates with Create also commits the last block group with CompleteFile.
    this.combinedCommit = created.blockGroup !== undefined && created.blockGroup !== null;
    return created.blockGroup ?? undefined;
  }

  override _write(chunk: Buffer, _encoding: BufferEncoding, callback: (error?: Error | null) => void): void {
    this.accept(chunk).then(
      () => callback(),
      (error: unknown) => callback(this.pathError(error)),
    );
  }

  override _final(callback: (error?: Error | null) => void): void {
    const source = this.options.source;
    (source === undefined ? this.finishAll() : this.pull(source).then(() => this.finishAll())).then(
      () => callback(),
      (error: unknown) => callback(this.pathError(error)),
    );
  }

  override _destroy(error: Error | null, callback: (error?: Error | null) => void): void {
    this.group?.abort(error ?? new DogfsError('CANCELLED', 'write stream destroyed'));
    this.group = undefined;
    this.pending.length = 0;
    this.pendingBytes = 0;
    // The stripe memory goes with the stream (a caller may keep the stream object for long); sockets
    // still sending hold their own references.
    this.stripeBuffers = [];
    this.cells.length = 0;
    this.stripe = undefined;
    this.codec = undefined;
    clearInterval(this.renewTimer);
    if (this.writableFinished) {
      // After 'finish' (autoDestroy) the file is complete: nothing to abandon.
      callback(error);
      return;
    }
    if (this.completing !== undefined) {
      // The command that makes the file appear is on its way: abandoning now would race it, and the
      // file could appear after the name was given back. Its outcome decides: the stream closes once
      // it is known, with `appeared` saying which.
      this.completing.then(
        () => callback(error),
        () => {
          // It failed: the name goes back now (after it, so the two cannot race), not at lease expiry.
          this.abandon();
          callback(error);
        },
      );
      return;
    }
    // Destroyed before it finished, with or without an error (a caller cancelling): the file must not
    // appear.
    this.abandon();
    callback(error);
  }

  /**
   * Frees the name of a file being written now rather than when its lease expires; its block groups
   * become garbage. If this fails (no quorum), the lease expiry does the same later.
   */
  private abandon(): void {
    if (this.leaseId === '' || this.inode === undefined) return;
    this.abandonment = this.context.meta
      .mutate(
        this.context.session,
        'AbandonFile',
        { inodeId: this.inode.id, leaseId: this.leaseId },
        { timeoutMs: ABANDON_TIMEOUT_MS },
      )
      .then(
        () => undefined,
        () => undefined,
      );
  }

  /**
   * Settles once the AbandonFile sent when the stream was destroyed has been answered (or failed): a
   * process about to exit waits for it, or the request may never leave. Destroyed while its Create was
   * on its way, the stream abandons the file when the Create answers: this waits for that answer first
   * (bounded by the Create's deadline), then for the AbandonFile. Resolved at once if none was sent.
   */
  get abandoned(): Promise<void> {
    if (this.creating === undefined) return this.abandonment ?? Promise.resolve();
    // Read once the Create has settled: createFile has sent the AbandonFile by then, if it had to.
    return this.creating.then(() => this.abandonment);
  }

  /** One renewal at a time; a lease found lost fails the stream now instead of at its next commit. */
  private renewLease(): void {
    if (this.renewing !== undefined || this.completeCalled || this.destroyed || this.inode === undefined)
      return;
    this.renewing = this.context.meta
      .mutate(
        this.context.session,
        'RenewLease',
        { inodeId: this.inode.id, leaseId: this.leaseId },
        this.metaOptions(),
      )
      .then(
        () => undefined,
        (error: unknown) => {
          // A renewal that lands after CompleteFile (retried through a leader change) finds no pending
          // file: the write is done, not lost.
          if (this.completeCalled || this.destroyed) return;
          const e = toDogfsError(error);
          if (e.code === 'FAILED_PRECONDITION' || e.code === 'NOT_FOUND') this.destroy(this.pathError(e));
          // Anything else (no quorum for a while) is retried by the next tick.
        },
      )
      .finally(() => {
        this.renewing = undefined;
      });
  }

  private pathError(error: unknown): DogfsError {
    const e = toDogfsError(error);
    return e.message.startsWith(this.path)
      ? e
      : new DogfsError(e.code, `${this.path}: ${e.message}`, { cause: e });
  }

  private async accept(chunk: Buffer): Promise<void> {
    if (this.options.source !== undefined) {
      throw new DogfsError('INVALID_ARGUMENT', 'bytes written to a stream that reads its source');
    }
    const size = this.options.size;
    if (size !== undefined && this.bytesWritten + chunk.length > size) {
      throw new DogfsError('INVALID_ARGUMENT', `more bytes written than the announced size ${size}`);
    }
    this.bytesWritten += chunk.length;
    if (size !== undefined) {
      await this.feed(chunk.length, copyFrom(chunk));
      return;
    }
    this.pending.push(chunk);
    this.pendingBytes += chunk.length;
    while (this.pendingBytes >= UNKNOWN_SIZE_WINDOW_BYTES)
      await this.writePending(UNKNOWN_SIZE_WINDOW_BYTES, true);
  }

  /**
   * Unknown size: opens a block group for the next `bytes` buffered bytes (or fewer: whole stripes when
   * `moreFollows`) and writes them.
   */
  private async writePending(bytes: number, moreFollows = false): Promise<void> {
    await this.openGroup(bytes, moreFollows);
    const length = this.group!.length;
    let left = length;
    while (left > 0) {
      const head = this.pending[0]!;
      const take = Math.min(head.length, left);
      if (take === head.length) this.pending.shift();
      else this.pending[0] = head.subarray(take);
      this.pendingBytes -= take;
      left -= take;
      await this.feed(take, copyFrom(head));
    }
    assert(this.group === undefined, 'block group closed once its bytes are written');
  }

  /** Reads the whole source (of `size` bytes) straight into the stripe buffers. */
  private async pull(source: PositionalSource): Promise<void> {
    const size = this.options.size!;
    assert(this.bytesWritten === 0, 'a stream with a source takes no other bytes');
    await this.feed(size, async (stripe, at, offset, length) => {
      for (let done = 0; done < length; ) {
        const { bytesRead } = await source.read(stripe, at + done, length - done, offset + done);
        if (bytesRead <= 0) {
          throw new DogfsError(
            'INVALID_ARGUMENT',
            `the source ended after ${offset + done} of its announced ${size} bytes`,
          );
        }
        done += bytesRead;
      }
      this.bytesWritten += length;
      this.options.onProgress?.(this.bytesWritten);
    });
    // A source that grew after its size was taken (a log being appended to) would otherwise be stored
    // cut at the old size with success: as with bytes written past the announced size, the put fails.
    const { bytesRead } = await source.read(Buffer.alloc(1), 0, 1, size);
    if (bytesRead > 0) {
      throw new DogfsError(
        'INVALID_ARGUMENT',
        `the source has more than its announced ${size} bytes (did it grow during the put?)`,
      );
    }
  }

  /**
   * Fills stripes of the open block group with `length` bytes that `fill` puts in place (opening groups
   * as needed: known size): `fill(stripe, at, offset, n)` writes bytes [offset, offset + n) of the
   * input at stripe[at...].
   */
  private async feed(length: number, fill: StripeFill): Promise<void> {
    let offset = 0;
    while (offset < length) {
      if (this.group === undefined) await this.openGroup(this.options.size! - this.groupedBytes);
      const group = this.group!;
      const layout = group.layout;
      if (this.stripe === undefined) {
        const remaining = group.length - group.written;
        const buffers = this.nextStripeBuffers(layout);
        this.stripe = {
          data: buffers.data.subarray(0, Math.min(layout.stripeDataSize, remaining)),
          parity: buffers.parity,
          padding: buffers.padding,
          filled: 0,
        };
      }
      const stripe = this.stripe;
      const take = Math.min(stripe.data.length - stripe.filled, length - offset);
      assert(take > 0, 'no room in the stripe');
      await fill(stripe.data, stripe.filled, offset, take);
      stripe.filled += take;
      offset += take;
      if (stripe.filled === stripe.data.length) {
        this.stripe = undefined;
        await this.sendStripe(group, stripe);
        if (group.written === group.length) await this.closeGroup();
      }
    }
  }

  /**
   * Allocates the next block group, holding at most `wanted` bytes, and opens its K+M shard streams.
   * The first comes with the file's Create (one command for both) where the service gives it.
   * `moreFollows`: these are not the file's last bytes, so the group ends on a whole stripe when it can
   * (a short stripe in the middle of a file costs a reader's sink an extra copy); the rest waits for
   * the next group.
   */
  private async openGroup(wanted: number, moreFollows = false): Promise<void> {
    assert(this.group === undefined && wanted > 0, 'one group at a time');
    const offset = this.groupedBytes;
    let block = this.inode === undefined ? await this.create() : undefined;
    assert(this.inode !== undefined, 'file created');
    if (block === undefined) {
      const allocated = await this.context.meta.mutate(
        this.context.session,
        'AllocateBlockGroup',
        { inodeId: this.inode.id, leaseId: this.leaseId, offset },
        this.metaOptions(),
      );
      block = allocated.blockGroup ?? undefined;
    }
    if (block === undefined || block.dataShards < 1 || block.parityShards < 0) {
      throw new DogfsError('INTERNAL', 'AllocateBlockGroup answered without a usable block group');
    }
    const stripeSize = block.stripeSize > 0 ? block.stripeSize : DEFAULT_STRIPE_SIZE;
    const layout = new StripeLayout({ k: block.dataShards, m: block.parityShards, stripeSize });
    // The metadata may bound a group's data (block_group.length at allocation, e.g. a small block-group
    // size); else the layout's limit. Whole stripes, except in a file's last group.
    const limit = block.length > 0 ? Math.min(block.length, layout.groupDataSize) : layout.groupDataSize;
    const capacity = Math.max(layout.stripeDataSize, limit - (limit % layout.stripeDataSize));
    const whole = wanted - (wanted % layout.stripeDataSize);
    const length = Math.min(capacity, moreFollows && whole > 0 ? whole : wanted);
    if (this.codec === undefined || this.codec.k !== layout.k || this.codec.m !== layout.m) {
      this.codec = this.replicate || layout.m === 0 ? undefined : createCodec(layout.k, layout.m);
    }
    // Destroyed while the allocation was on its way (_destroy has aborted what was open and abandoned
    // the file): open no shard writes for it, which nothing would end before their deadline.
    if (this.destroyed) throw new DogfsError('CANCELLED', 'write stream destroyed');
    this.group = new GroupWriter(
      { ...block, offset, length },
      layout,
      length,
      this.context.transport,
      // One write per shard, not renewable midway: time for its bytes over a slow link.
      Date.now() + dataOperationMs(layout.shardLength(length)),
    );
    this.groupedBytes += length;
  }

  /** The stripe buffers to fill next (allocated on first use, again only if the layout changes). */
  private nextStripeBuffers(layout: StripeLayout): StripeBuffers {
    this.stripeTurn ^= 1;
    let buffers = this.stripeBuffers[this.stripeTurn];
    if (
      buffers === undefined ||
      buffers.data.length !== layout.stripeDataSize ||
      buffers.parity.length !== layout.m ||
      buffers.padding.length !== 2 * layout.cellSize
    ) {
      buffers = {
        data: Buffer.allocUnsafe(layout.stripeDataSize),
        parity: Array.from({ length: layout.m }, () => Buffer.allocUnsafe(layout.cellSize)),
        padding: Buffer.allocUnsafe(2 * layout.cellSize),
      };
      this.stripeBuffers[this.stripeTurn] = buffers;
    }
    return buffers;
  }

  /** Encodes a stripe and starts sending it; waits while the stripe before it is still being sent. */
  private async sendStripe(group: GroupWriter, stripe: Stripe): Promise<void> {
    const { layout } = group;
    const data = stripe.data;
    const cellLength = layout.splitStripe(data, this.cells, stripe.padding);
    const cells: Uint8Array[] = this.cells.slice(0, layout.k);
    if (this.codec === undefined) {
      for (let p = 0; p < layout.m; p++) cells.push(cells[0]!);
    } else {
      const parity = stripe.parity.map((buffer) => buffer.subarray(0, cellLength));
      await this.codec.encodeAsync(cells, parity);
      cells.push(...parity);
    }
    group.written += data.length;
    const previous = group.inFlight;
    const sending = previous.then(async () => {
      await group.send(cells, this.shardTimeoutMs);
      group.checkEnoughAlive();
    });
    sending.catch(() => {});
    group.inFlight = sending;
    await previous;
  }

  private async closeGroup(): Promise<void> {
    const group = this.group!;
    assert(group.written === group.length && this.stripe === undefined, 'block group written in full');
    await group.inFlight;
    const shards = await group.finish(this.shardTimeoutMs);
    if (this.destroyed) throw new DogfsError('CANCELLED', 'write stream destroyed');
    assert(this.inode !== undefined, 'file created');
    const blockGroup: Init<BlockGroup> = {
      id: group.block.id,
      dataShards: group.layout.k,
      parityShards: group.layout.m,
      stripeSize: group.block.stripeSize,
      offset: group.block.offset,
      length: group.length,
      shards,
    };
    // The file's last group: no byte follows (known size: all grouped; else the stream has ended and
    // nothing waits). Its commit goes with CompleteFile where the service takes it, in one command.
    const last =
      this.options.size !== undefined
        ? this.groupedBytes === this.options.size
        : this.ending && this.pendingBytes === 0;
    if (last && this.combinedCommit) {
      this.lastCommit = blockGroup;
    } else {
      await this.context.meta.mutate(
        this.context.session,
        'CommitBlockGroup',
        { inodeId: this.inode.id, leaseId: this.leaseId, blockGroup },
        this.metaOptions(),
      );
    }
    this.blockGroups.push(group.outcome());
    this.group = undefined;
  }

  private async finishAll(): Promise<void> {
    const size = this.options.size;
    this.ending = true;
    if (size === undefined) {
      for (let groups = 0; this.pendingBytes > 0; groups++) {
        assert(groups < 1024, 'bounded number of final block groups');
        await this.writePending(this.pendingBytes);
      }
    } else if (this.bytesWritten !== size) {
      throw new DogfsError('INVALID_ARGUMENT', `${this.bytesWritten} bytes written, ${size} announced`);
    }
    assert(
      this.group === undefined && this.groupedBytes === this.bytesWritten,
      'every byte in a block group',
    );
    if (this.inode === undefined) {
      // No bytes: an empty file, which appears in one command (Create with complete: no lease, no
      // CompleteFile) with the same refusals and overwrite semantics as a write.
      assert(this.bytesWritten === 0, 'bytes were written into a file never created');
      this.completeCalled = true;
      const creating = this.context.meta.mutate(
        this.context.session,
        'Create',
        this.createRequest({ complete: true }),
        this.metaOptions(),
      );
      this.completing = creating;
      const created = await creating;
      if (!created.inode) throw new DogfsError('INTERNAL', 'Create answered without an inode');
      this.inode = created.inode;
      this.fileAppeared = true;
      return;
    }
    clearInterval(this.renewTimer);
    await this.renewing;
    // Destroyed while the last commit or a renewal was on its way: _destroy abandoned the file, and
    // CompleteFile must not make it appear after all.
    if (this.destroyed) throw new DogfsError('CANCELLED', 'write stream destroyed');
    this.completeCalled = true;
    const completing = this.context.meta.mutate(
      this.context.session,
      'CompleteFile',
      {
        inodeId: this.inode.id,
        leaseId: this.leaseId,
        size: this.bytesWritten,
        ...(this.lastCommit === undefined ? {} : { blockGroup: this.lastCommit }),
      },
      this.metaOptions(),
    );
    this.completing = completing;
    const completed = await completing;
    this.fileAppeared = true;
    if (completed.inode) this.inode = completed.inode;
  }
}
