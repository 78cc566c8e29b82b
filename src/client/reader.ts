/**
 * client/reader — the read path (DESIGN §4): a Node Readable over a file or a byte range of it. It reads
 * the needed ranges of the K data shards in parallel, straight from the chunk servers (the transport
 * checks every packet's CRC32C, the chunk server its stored chunk checksums). On a dead, slow or corrupt
 * shard it reads the same rows of parity shards and decodes (degraded read); a corrupt or missing copy
 * is reported to the metadata service (REPORTED_FAILURES says why only those). More than M shards of a
 * block group unavailable fails the stream with an error naming them. Memory is bounded: one stripe's
 * rows at a time, plus what the transport buffers.
 */
import { Readable } from 'node:stream';
import { createCodec } from '../codec/backends.js';
import type { ReedSolomon } from '../codec/rs.js';
import { type CellPiece, DEFAULT_STRIPE_SIZE, StripeLayout } from '../codec/stripe.js';
import { assert } from '../common/assert.js';
import { DogfsError, toDogfsError } from '../wire/errors.js';
import { type BlockGroup, FileType, type Inode, type ShardLocation } from '../wire/gen/types.js';
import type { MetaCallOptions, MetadataConnection } from './meta.js';
import { withStallTimeout } from './timeout.js';
import type { ShardReadHandle, ShardTransport } from './transport.js';

export interface ReadStreamOptions {
  /** First byte to read (default 0). */
  start?: number;
  /** Last byte to read, inclusive, as in fs.createReadStream (default: the end of the file). */
  end?: number;
  /** Deadline of each metadata call (default: the client's). */
  timeoutMs?: number;
  /** A shard that delivers nothing for this long is treated as dead and decoded around (5 s). */
  shardTimeoutMs?: number;
  /**
   * A shard read not drawn on for this long (the consumer paused) is reopened at its next use (60 s):
   * chunk servers cut data connections idle for 2 minutes.
   */
  shardIdleRenewMs?: number;
}

export interface ReaderContext {
  readonly meta: MetadataConnection;
  readonly transport: ShardTransport;
}

export interface BadShard {
  readonly blockGroupId: number;
  readonly index: number;
  readonly chunkServerId: string;
  readonly addr: string;
  readonly error: DogfsError;
}

/** Largest shard a read layout accepts (only a bound for range checks; real shards are far smaller). */
const READ_LAYOUT_MAX_SHARD_BYTES = 2 ** 40;
/** Deadline of one range read of a shard (renewed before it passes: see SHARD_READ_RENEW_MARGIN_MS). */
const SHARD_READ_DEADLINE_MS = 30 * 60_000;
/** A range read older than its deadline minus this is replaced rather than used further. */
const SHARD_READ_RENEW_MARGIN_MS = 5 * 60_000;
/**
 * A shard read not drawn on for this long is replaced by a new one at its next use: a chunk server cuts
 * a data connection that shows no activity for 2 minutes (its idle timeout), which is what a read whose
 * consumer has paused (back-pressure: `dogfs cat | less`) looks like from there.
 */
const DEFAULT_SHARD_IDLE_RENEW_MS = 60_000;
/** Bad-shard reports a stream keeps (each block group reports at most K+M). */
const MAX_REPORTS = 1024;
/**
 * The failures that say the stored copy itself is bad, and only these are reported to the metadata
 * service: a copy that fails its checksums, or is not on the server that should hold it. A server that
 * is down, refuses, or is slow says nothing about its copy, which is likely intact when it is back; the
 * cluster's liveness (a dead-timeout, then repair) deals with servers that stay away. A report is kept
 * until the shard is repaired, so an unavailable one would count an intact copy as lost: a chaos run
 * saw a block group with one corrupt shard, one never written and one reported while its server was
 * restarting, which repair then took for three lost of five and refused to rebuild, while the file read.
 * Bytes damaged on their way here (CORRUPT `inTransit`: the server had checked them) are not reported
 * either: a flaky link, NIC or this machine's memory explains them, and a client with such a fault
 * made the leader treat the intact copies it read as missing.
 */
const REPORTED_FAILURES: ReadonlySet<string> = new Set(['CORRUPT', 'NOT_FOUND']);

/** A sequential reader of one shard range, able to hand out any later sub-range. */
class ShardCursor {
  readonly index: number;
  private readonly handle: ShardReadHandle;
  /** Shard offset of the first byte of `pending`. */
  position: number;
  readonly end: number;
  /** After this time the read is replaced by a new one before the chunk server's deadline cuts it. */
  readonly renewAt = Date.now() + SHARD_READ_DEADLINE_MS - SHARD_READ_RENEW_MARGIN_MS;
  /** When a take last ended (or the read began). */
  lastUsedAt = Date.now();
  private pending: Uint8Array | null = null;
  private closed = false;
  /** The running take's progress: the transport calls `arrived` as bytes come in, between pieces too. */
  private progressOfTake: (() => void) | undefined;

  constructor(index: number, handle: ShardReadHandle, start: number, end: number) {
    this.index = index;
    this.handle = handle;
    this.position = start;
    this.end = end;
  }

  /**
   * Copies bytes [offset, offset + length) of the shard to dest[at...]; offset must not be behind the
   * cursor. The transport's pieces are transient (valid until its next `next()`), so each is copied as
   * soon as it arrives; a cursor closed meanwhile (given up as slow or failed) copies nothing more.
   * `progress` is called with each piece: the shard is moving, however slowly.
   */
  async take(
    offset: number,
    length: number,
    dest: Uint8Array,
    at: number,
    progress: () => void,
  ): Promise<void> {
    assert(offset >= this.position && offset + length <= this.end, 'cursor read outside its range');
    this.progressOfTake = progress;
    try {
      await this.copyInto(offset, length, dest, at, progress);
    } finally {
      this.progressOfTake = undefined;
    }
  }

  /** Bytes of this read arrived (a piece may still be incomplete): progress for the take waiting on them. */
  arrived(): void {
    this.progressOfTake?.();
  }

  private async copyInto(...[offset, length, dest, at, progress]: Parameters<ShardCursor['take']>) {
    let needed = length;
    while (needed > 0) {
      if (this.pending === null || this.pending.length === 0) {
        this.pending = null;
        const next = await this.handle.next();
        if (this.closed) throw new DogfsError('CANCELLED', `shard ${this.index}: read given up`);
        if (next === null) {
          throw new DogfsError(
            'CORRUPT',
            `shard ${this.index}: stream ended at ${this.position} before ${this.end}`,
          );
        }
        this.pending = next;
        progress();
      }
      const skip = offset - this.position;
      if (skip > 0) {
        const drop = Math.min(skip, this.pending.length);
        this.pending = this.pending.subarray(drop);
        this.position += drop;
        continue;
      }
      const part = this.pending.subarray(0, Math.min(needed, this.pending.length));
      dest.set(part, at);
      at += part.length;
      this.pending = this.pending.subarray(part.length);
      this.position += part.length;
      offset += part.length;
      needed -= part.length;
    }
  }

  close(): void {
    this.closed = true;
    this.pending = null;
    this.handle.close();
  }
}

/** Reads one block group's part of the range. */
class GroupReader {
  private readonly context: ReaderContext;
  private readonly stream: FileReader;
  private readonly block: BlockGroup;
  readonly layout: StripeLayout;
  private readonly shards: (ShardLocation | undefined)[];
  private readonly cursors = new Map<number, ShardCursor>();
  private readonly failed = new Map<number, DogfsError>();
  /** Closed (the read was given up): no new shard reads, and a cancelled one is no failed shard. */
  private closed = false;
  /** Shards reported bad already, with how (readmitted ones may fail again). */
  private readonly reported = new Map<number, string>();
  private readonly codec: ReedSolomon | undefined;
  private readonly shardTimeoutMs: number;
  private readonly idleRenewMs: number;
  /** End of the shard bytes any read of this range may need. */
  private readonly spanEnd: number;

  constructor(
    context: ReaderContext,
    stream: FileReader,
    block: BlockGroup,
    offset: number,
    length: number,
    shardTimeoutMs: number,
    idleRenewMs: number,
  ) {
    this.context = context;
    this.stream = stream;
    this.block = block;
    this.shardTimeoutMs = shardTimeoutMs;
    this.idleRenewMs = idleRenewMs;
    const k = block.dataShards;
    const m = block.parityShards;
    if (k < 1 || m < 0) throw new DogfsError('CORRUPT', `block group ${block.id}: K=${k} M=${m}`);
    this.layout = new StripeLayout({
      k,
      m: Math.max(m, 1),
      stripeSize: block.stripeSize > 0 ? block.stripeSize : DEFAULT_STRIPE_SIZE,
      maxShardBytes: READ_LAYOUT_MAX_SHARD_BYTES,
    });
    this.shards = [];
    for (let i = 0; i < k + m; i++) {
      const location = block.shards.find((s) => s.index === i);
      this.shards.push(location);
      if (location === undefined || location.addr === '') {
        this.failed.set(i, new DogfsError('UNAVAILABLE', 'no location recorded'));
      } else if (!location.durable) {
        this.failed.set(i, new DogfsError('UNAVAILABLE', 'not durable (awaiting repair)'));
      }
    }
    this.codec = m === 0 || stream.replicate ? undefined : createCodec(k, m);
    this.spanEnd = this.layout.degradedSpan(offset, length, block.length).end;
  }

  /** Puts the range's bytes into `sink`, stripe by stripe. */
  async readInto(offset: number, length: number, sink: ReadSink): Promise<void> {
    const { layout } = this;
    const end = offset + length;
    try {
      for (let position = offset; position < end; ) {
        const stripe = Math.floor(position / layout.stripeDataSize);
        const stripeEnd = Math.min(end, (stripe + 1) * layout.stripeDataSize);
        const pieces = layout.mapRange(position, stripeEnd - position, this.block.length);
        const dest = sink.reserve(stripeEnd - position);
        assert(dest.length === stripeEnd - position, 'the sink reserved what was asked');
        await this.readStripe(pieces, dest);
        await sink.commit();
        position = stripeEnd;
      }
    } finally {
      this.close();
    }
  }

  /** Stops every shard read of this group (their connections close; nothing more is copied). */
  close(): void {
    this.closed = true;
    for (const cursor of this.cursors.values()) cursor.close();
    this.cursors.clear();
  }

  /** Fills `dest` with the pieces' bytes (piece p at p.rangeOffset), decoding around failed shards. */
  private async readStripe(pieces: CellPiece[], dest: Uint8Array): Promise<void> {
    if (!pieces.some((p) => this.failed.has(p.shard))) {
      const results = await Promise.allSettled(
        pieces.map((p) => this.take(p.shard, p.shardOffset, p.length, dest, p.rangeOffset)),
      );
      if (results.every((r) => r.status === 'fulfilled')) return;
      this.throwIfClosed();
      results.forEach((r, i) => {
        if (r.status === 'rejected') this.markFailed(pieces[i]!.shard, r.reason);
      });
    }
    await this.readStripeDegraded(pieces, dest);
  }

  /** A read given up (its stream destroyed) ends here: its cancelled shard reads are no failures. */
  private throwIfClosed(): void {
    if (this.closed) throw new DogfsError('CANCELLED', 'read closed');
  }

  /**
   * Lets shards that failed for a reason that may pass (unavailable, slow, busy) be tried again, once per
   * stripe: a server restarted or a stall that ended since. Without it a long read (a block group is up
   * to 1.5 GiB) fails once M + 1 shards have each failed once, though never more than M at a time.
   * Corrupt and missing copies stay failed. True when any was let back.
   */
  private readmitTransient(readmitted: Set<number>): boolean {
    let any = false;
    for (const [index, error] of this.failed) {
      if (readmitted.has(index) || this.shards[index]?.durable !== true || this.shards[index]?.addr === '')
        continue;
      // RESOURCE_EXHAUSTED: a chunk server busy (its read limits) or short of file handles, for now.
      if (!['UNAVAILABLE', 'DEADLINE_EXCEEDED', 'RESOURCE_EXHAUSTED'].includes(error.code)) continue;
      readmitted.add(index);
      this.failed.delete(index);
      any = true;
    }
    return any;
  }

  /** Reads the rows the pieces cover from K healthy shards and rebuilds the missing data cells. */
  private async readStripeDegraded(pieces: CellPiece[], dest: Uint8Array): Promise<void> {
    const k = this.layout.k;
    const total = this.shards.length;
    const rowStart = Math.min(...pieces.map((p) => p.shardOffset));
    const rowEnd = Math.max(...pieces.map((p) => p.shardOffset + p.length));
    const rowLength = rowEnd - rowStart;
    const needed = new Set(pieces.map((p) => p.shard));
    const readmitted = new Set<number>();
    for (let round = 0; round <= 2 * total; round++) {
      this.throwIfClosed();
      const order = [...needed];
      for (let i = 0; i < total; i++) if (!needed.has(i)) order.push(i);
      let sources = order.filter((i) => !this.failed.has(i)).slice(0, k);
      if (sources.length < k && this.readmitTransient(readmitted))
        sources = order.filter((i) => !this.failed.has(i)).slice(0, k);
      if (sources.length < k) throw this.unavailableError();
      const rows: (Uint8Array | null)[] = new Array<Uint8Array | null>(total).fill(null);
      for (const i of sources) rows[i] = Buffer.allocUnsafe(rowLength);
      const results = await Promise.allSettled(
        sources.map((i) => this.take(i, rowStart, rowLength, rows[i]!, 0)),
      );
      let ok = true;
      if (results.some((r) => r.status === 'rejected')) this.throwIfClosed();
      results.forEach((r, j) => {
        if (r.status === 'rejected') {
          ok = false;
          this.markFailed(sources[j]!, r.reason);
        }
      });
      if (!ok) continue;
      const missing = [...needed].filter((i) => rows[i] === null);
      if (missing.length > 0) {
        if (this.codec === undefined) {
          // Replicas: every shard holds the same bytes.
          for (const i of missing) rows[i] = rows[sources[0]!]!;
        } else {
          for (const i of missing) rows[i] = Buffer.allocUnsafe(rowLength);
          await this.codec.reconstructAsync(rows, missing);
        }
      }
      for (const p of pieces) {
        const from = p.shardOffset - rowStart;
        dest.set(rows[p.shard]!.subarray(from, from + p.length), p.rangeOffset);
      }
      return;
    }
    throw this.unavailableError();
  }

  private async take(
    index: number,
    offset: number,
    length: number,
    dest: Uint8Array,
    at: number,
  ): Promise<void> {
    this.throwIfClosed();
    let cursor = this.cursors.get(index);
    // Behind the cursor, near the end of its read's deadline, or idle long enough that its server may
    // have cut the connection (a paused consumer): a fresh range read.
    const now = Date.now();
    if (
      cursor !== undefined &&
      (cursor.position > offset || now > cursor.renewAt || now - cursor.lastUsedAt > this.idleRenewMs)
    ) {
      cursor.close();
      this.cursors.delete(index);
      cursor = undefined;
    }
    if (cursor === undefined) {
      const location = this.shards[index]!;
      let opened: ShardCursor | undefined;
      const handle = this.context.transport.openRead(
        {
          addr: location.addr,
          shard: { blockGroupId: this.block.id, index, generation: location.generation },
        },
        offset,
        this.spanEnd - offset,
        {
          deadline: Date.now() + SHARD_READ_DEADLINE_MS,
          // Transient: pieces are copied into their place as they arrive (ShardCursor.take).
          transient: true,
          // A server holding a copy of another length is CORRUPT for this shard (read around, reported).
          // 0: a record without lengths, nothing to hold the copy to.
          ...(location.length > 0 ? { shardLength: location.length } : {}),
          // Bytes arriving inside a packet count as progress: a packet is 1 MiB, which a slow link
          // (150 KiB/s) takes longer than the stall timeout to bring in whole.
          onProgress: () => opened?.arrived(),
        },
      );
      cursor = new ShardCursor(index, handle, offset, this.spanEnd);
      opened = cursor;
      this.cursors.set(index, cursor);
    }
    const taking = cursor;
    try {
      // The timeout runs from the last piece, not from the start of the take: a cell is 1-2 MiB, and a
      // bound on all of it failed every read over a link slower than ~205 KiB/s per shard (a put over
      // the same link works: data-transfer sizes deadlines for 64 KiB/s).
      await withStallTimeout(
        (progress) => taking.take(offset, length, dest, at, progress),
        this.shardTimeoutMs,
        `shard ${index}`,
        'UNAVAILABLE',
      );
    } finally {
      taking.lastUsedAt = Date.now();
    }
  }

  private markFailed(index: number, reason: unknown): void {
    const error = toDogfsError(reason, 'UNAVAILABLE');
    const again = this.reported.get(index) === error.code;
    this.failed.set(index, error);
    this.cursors.get(index)?.close();
    this.cursors.delete(index);
    // A shard let back and failing again the same way is reported once per group, not per stripe.
    if (again) return;
    this.reported.set(index, error.code);
    const location = this.shards[index];
    this.stream.reportBadShard({
      blockGroupId: this.block.id,
      index,
      chunkServerId: location?.chunkServerId ?? '',
      addr: location?.addr ?? '',
      error,
    });
  }

  private unavailableError(): DogfsError {
    const names = [...this.failed.entries()]
      .sort((a, b) => a[0] - b[0])
      .map(([i, e]) => {
        const s = this.shards[i];
        return `shard ${i} on ${s?.chunkServerId || '?'} (${s?.addr || '?'}): ${e.message}`;
      });
    return new DogfsError(
      'UNAVAILABLE',
      `block group ${this.block.id}: ${this.failed.size} of ${this.shards.length} shards unavailable, at most ${this.shards.length - this.layout.k} may be: ${names.join('; ')}`,
    );
  }
}

/** Where `DogfsClient.readInto` puts a file's bytes: stripe by stripe, straight from the shards. */
export interface ReadSink {
  /**
   * Memory for the next `length` bytes of the range (at most a stripe): exactly `length` bytes, all of
   * which the reader fills before it calls `commit`. It may be written and rewritten until then (a
   * degraded read redoes a stripe).
   */
  reserve(length: number): Uint8Array;
  /** The bytes last reserved are in place; resolves when the sink can take more (back-pressure). */
  commit(): Promise<void>;
}

/** What a finished `readInto` read. */
export interface ReadOutcome {
  readonly inode: Inode;
  /** Bytes put into the sink. */
  readonly bytes: number;
  /** Shards that failed (and were reported) while reading; their bytes were decoded from others. */
  readonly badShards: readonly BadShard[];
  /** Reports to the metadata service that failed (the read itself still succeeded). */
  readonly reportErrors: readonly DogfsError[];
}

/**
 * One read of a file or a range of it, for both `readInto` and `FileReadStream`: checks the path,
 * reads block group by block group into a sink, and reports bad shards.
 */
export class FileReader {
  readonly path: string;
  inode: Inode | undefined;
  readonly badShards: BadShard[] = [];
  readonly reportErrors: DogfsError[] = [];
  replicate = false;
  /** Bytes put into the sink so far. */
  delivered = 0;
  /** Called with each bad shard as it is found. */
  onBadShard: ((bad: BadShard) => void) | undefined;

  private readonly context: ReaderContext;
  private readonly options: ReadStreamOptions;
  private readonly reports: Promise<void>[] = [];
  private group: GroupReader | undefined;
  private closed = false;

  constructor(context: ReaderContext, path: string, options: ReadStreamOptions = {}) {
    this.context = context;
    this.path = path;
    this.options = options;
    for (const [name, value] of [
      ['start', options.start],
      ['end', options.end],
    ] as const) {
      if (value !== undefined && !(Number.isSafeInteger(value) && value >= 0)) {
        throw new DogfsError('INVALID_ARGUMENT', `${name} must be a non-negative integer, got ${value}`);
      }
    }
  }

  private metaOptions(): MetaCallOptions {
    return this.options.timeoutMs === undefined ? {} : { timeoutMs: this.options.timeoutMs };
  }

  /** Looks the file up (a directory or a missing name is an error); the inode to read. */
  async open(): Promise<Inode> {
    try {
      const answer = await this.context.meta.call('Stat', { path: this.path }, this.metaOptions());
      const inode = answer.inode;
      if (inode === undefined || inode === null) {
        throw new DogfsError('NOT_FOUND', `${this.path}: No such file or directory`);
      }
      if (inode.type === FileType.DIRECTORY) {
        throw new DogfsError('IS_A_DIRECTORY', `${this.path}: Is a directory`);
      }
      this.inode = inode;
      this.replicate = inode.ec.startsWith('replicate-');
      return inode;
    } catch (error) {
      throw this.pathError(error);
    }
  }

  /** Reads the range into `sink`; waits for the bad-shard reports before it resolves. */
  async readInto(sink: ReadSink): Promise<void> {
    try {
      await this.read(this.inode ?? (await this.open()), sink);
      await Promise.all(this.reports);
    } catch (error) {
      throw this.pathError(error);
    } finally {
      this.close();
    }
  }

  /** Stops reading now: open shard reads are closed, and the read in progress fails. */
  close(): void {
    this.closed = true;
    this.group?.close();
  }

  private async read(inode: Inode, sink: ReadSink): Promise<void> {
    const size = inode.size;
    const start = this.options.start ?? 0;
    const endExclusive = Math.min(size, this.options.end === undefined ? size : this.options.end + 1);
    if (start >= endExclusive) return;
    const groups = [...inode.blockGroups].sort((a, b) => a.offset - b.offset);
    const counting: ReadSink = {
      reserve: (length) => sink.reserve(length),
      commit: async () => {
        if (this.closed) throw new DogfsError('CANCELLED', 'read closed');
        await sink.commit();
        if (this.closed) throw new DogfsError('CANCELLED', 'read closed');
      },
    };
    let before = 0;
    let expectedOffset = 0;
    for (const block of groups) {
      if (block.offset !== expectedOffset) {
        throw new DogfsError(
          'CORRUPT',
          `block group ${block.id} starts at ${block.offset}, expected ${expectedOffset}`,
        );
      }
      expectedOffset += block.length;
      const from = Math.max(start, block.offset);
      const to = Math.min(endExclusive, block.offset + block.length);
      if (from >= to) continue;
      if (this.closed) throw new DogfsError('CANCELLED', 'read closed');
      const reader = new GroupReader(
        this.context,
        this,
        block,
        from - block.offset,
        to - from,
        this.options.shardTimeoutMs ?? 5000,
        Math.max(1, this.options.shardIdleRenewMs ?? DEFAULT_SHARD_IDLE_RENEW_MS),
      );
      this.group = reader;
      await reader.readInto(from - block.offset, to - from, counting);
      this.group = undefined;
      before += to - from;
      this.delivered = before;
    }
    if (before !== endExclusive - start) {
      throw new DogfsError(
        'CORRUPT',
        `block groups hold ${before} of the ${endExclusive - start} bytes asked for (file size ${size})`,
      );
    }
  }

  /**
   * Records a bad shard, and reports it to the metadata service if its copy is bad (REPORTED_FAILURES;
   * best effort: a failed report is kept in `reportErrors`).
   */
  reportBadShard(bad: BadShard): void {
    if (this.badShards.length >= MAX_REPORTS) return;
    this.badShards.push(bad);
    this.onBadShard?.(bad);
    if (!REPORTED_FAILURES.has(bad.error.code) || bad.error.inTransit) return;
    this.reports.push(
      this.context.meta
        .call(
          'ReportBadShard',
          {
            blockGroupId: bad.blockGroupId,
            index: bad.index,
            chunkServerId: bad.chunkServerId,
            reason: `${bad.error.code}: ${bad.error.message}`.slice(0, 500),
          },
          this.metaOptions(),
        )
        .then(
          () => undefined,
          (error: unknown) => {
            this.reportErrors.push(toDogfsError(error));
          },
        ),
    );
  }

  pathError(error: unknown): DogfsError {
    const e = toDogfsError(error);
    return e.message.startsWith(this.path)
      ? e
      : new DogfsError(e.code, `${this.path}: ${e.message}`, { cause: e });
  }
}

/**
 * The readable stream `DogfsClient.createReadStream` returns. `badShards` lists the shards that failed
 * (and were reported) while reading. Each stripe is read into a buffer of its own, which is pushed:
 * what a stream pushes belongs to its consumer.
 */
export class FileReadStream extends Readable {
  readonly path: string;
  private readonly reader: FileReader;
  private running: Promise<void> | undefined;
  /** Wakes the read loop once the consumer wants more. */
  private wanted: (() => void) | undefined;
  private reserved: Buffer | undefined;
  /** The consumer asked for more since the last push. */
  private pulled = false;

  constructor(context: ReaderContext, path: string, options: ReadStreamOptions = {}) {
    super({ highWaterMark: 1024 * 1024 });
    this.path = path;
    this.reader = new FileReader(context, path, options);
    this.reader.onBadShard = (bad) => this.emit('badshard', bad);
  }

  get inode(): Inode | undefined {
    return this.reader.inode;
  }

  get badShards(): readonly BadShard[] {
    return this.reader.badShards;
  }

  /** Reports to the metadata service that failed (the read itself still succeeded). */
  get reportErrors(): readonly DogfsError[] {
    return this.reader.reportErrors;
  }

  override _construct(callback: (error?: Error | null) => void): void {
    this.reader.open().then(
      () => callback(),
      (error: unknown) => callback(error as Error),
    );
  }

  override _read(): void {
    if (this.running === undefined) {
      this.running = this.reader
        .readInto({
          reserve: (length) => {
            this.reserved = Buffer.allocUnsafeSlow(length);
            return this.reserved;
          },
          commit: async () => {
            // Destroyed meanwhile: a push would be refused and no _read would come to wake the wait.
            if (this.destroyed) throw new DogfsError('CANCELLED', 'read stream destroyed');
            const bytes = this.reserved!;
            this.reserved = undefined;
            this.pulled = false;
            // Full: wait for the consumer's next _read (unless it came during the push itself).
            if (!this.push(bytes) && !this.pulled) {
              await new Promise<void>((resolve) => {
                this.wanted = resolve;
              });
            }
          },
        })
        .then(
          () => {
            this.push(null);
          },
          (error: unknown) => {
            if (!this.destroyed) this.destroy(error as Error);
          },
        );
      return;
    }
    this.pulled = true;
    const wake = this.wanted;
    this.wanted = undefined;
    wake?.();
  }

  override _destroy(error: Error | null, callback: (error?: Error | null) => void): void {
    this.reader.close();
    const wake = this.wanted;
    this.wanted = undefined;
    wake?.();
    const running = this.running;
    if (running === undefined) {
      callback(error);
      return;
    }
    running.then(
      () => callback(error),
      () => callback(error),
    );
  }
}
