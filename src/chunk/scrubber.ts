/**
 * chunk/scrubber — background verification: re-reads every shard at a configured rate (bytes per
 * second; HDFS's default is 1 MiB/s per volume) and verifies every chunk, so corruption on disk is found
 * before a reader needs the shard. Corrupt shards are remembered by the store (`corruptList`), which
 * heartbeats report. One pass walks the inventory in id order; the next pass starts after the last.
 *
 * The rate budget charges each shard opened SCRUB_OPEN_COST_BYTES on top of its data, so many small
 * shards are paced by the opens they cost, not only by their bytes. A pass goes on after the last shard
 * scrubbed when the scrubber is stopped and started again, and, with a cursor file, when the server
 * restarts: the position is written there (durably) every CURSOR_SAVE_INTERVAL_MS and at stop.
 */
import { constants as fsConstants } from 'node:fs';
import { open } from 'node:fs/promises';
import { setTimeout as sleep } from 'node:timers/promises';
import { assert } from '../common/assert.js';
import { writeFileDurably } from '../common/durable-file.js';
import type { Logger } from '../common/log.js';
import { Pacer } from '../common/pace.js';
import { checkShardId, DATA_CHUNK_SIZE, formatShardId } from '../wire/data-transfer.js';
import { DogfsError } from '../wire/errors.js';
import type { ShardId } from '../wire/gen/types.js';
import type { ChunkMetrics } from './metrics.js';
import type { ShardStore } from './store.js';

export const DEFAULT_SCRUB_BYTES_PER_SECOND = 1024 * 1024;
/**
 * What opening one shard costs in the rate budget, in bytes, on top of its data. An open reads the
 * header and the checksum block and costs the disk a seek or two whatever the shard's size; charged
 * nothing, a million tiny shards were opened as fast as the disk allowed, with the rate meant to keep
 * scrubbing in the background. 64 KiB (one data chunk) keeps the default 1 MiB/s to 16 opens a second
 * at most, about what a few milliseconds of seek each leave a spinning disk for its other work.
 */
export const SCRUB_OPEN_COST_BYTES = DATA_CHUNK_SIZE;
/** Bytes verified per disk read; the rate limiter also works in steps of this. */
const SCRUB_READ_BYTES = 16 * DATA_CHUNK_SIZE;
/** Shards listed from the inventory at a time. */
const SCRUB_PAGE = 1000;
/** Pause between passes when the inventory is empty or small, so an idle server does not spin. */
const MIN_PASS_INTERVAL_MS = 1000;
/** After a shard that could not be read (not corrupt: an error of the system), before the next one. */
const SCRUB_ERROR_PAUSE_MS = 1000;
/**
 * How often the position is written to the cursor file while a pass runs. A crash loses at most this
 * much scrubbing (it is done again); writing per shard would add fsyncs to every small shard's open.
 */
export const CURSOR_SAVE_INTERVAL_MS = 60_000;
/** The cursor file's name in the chunk server's directory (beside `cluster-id` and `leader-terms.json`). */
export const SCRUB_CURSOR_FILE = 'scrub-cursor.json';
/** A cursor file larger than this is not one this code wrote. */
const MAX_CURSOR_FILE_BYTES = 1024;

export class Scrubber {
  private abort = new AbortController();
  private running: Promise<void> | undefined;
  /** The last shard whose scrub ended (verified, found corrupt, gone or unreadable) in this pass. */
  private after: ShardId | undefined;
  /** Whether `after` has been read from the cursor file (once, at the first start). */
  private cursorLoaded = false;
  /** The scrub rate (common/pace.ts). */
  private readonly pacer: Pacer;

  constructor(
    private readonly store: ShardStore,
    private readonly metrics: ChunkMetrics,
    private readonly log: Logger | undefined,
    bytesPerSecond: number,
    /** Where the pass's position is kept across restarts; absent: within this process only. */
    private readonly cursorPath?: string,
  ) {
    assert(Number.isFinite(bytesPerSecond) && bytesPerSecond > 0, 'scrub rate is positive');
    this.pacer = new Pacer(bytesPerSecond);
  }

  /** The last shard whose scrub ended in the current pass (undefined: the pass starts at the first). */
  get cursor(): ShardId | undefined {
    return this.after;
  }

  start(): void {
    assert(this.running === undefined, 'scrubber started twice');
    const abort = new AbortController();
    this.abort = abort;
    this.running = this.run(abort.signal).catch((error: unknown) => {
      if (!abort.signal.aborted) this.log?.error('scrubber stopped', { error });
    });
  }

  async stop(): Promise<void> {
    this.abort.abort();
    await this.running;
    this.running = undefined;
  }

  private async run(signal: AbortSignal): Promise<void> {
    if (!this.cursorLoaded) {
      this.after = await this.loadCursor();
      this.cursorLoaded = true;
    }
    try {
      await this.loop(signal);
    } finally {
      await this.saveCursor();
    }
  }

  private async loop(signal: AbortSignal): Promise<void> {
    let savedAt = Date.now();
    while (!signal.aborted) {
      const passStarted = Date.now();
      for (;;) {
        const page = this.store.list(this.after, SCRUB_PAGE);
        for (const record of page.shards) {
          await this.pace(SCRUB_OPEN_COST_BYTES, signal);
          if (signal.aborted) return;
          try {
            await this.scrubShard(record.id, signal);
          } catch (error) {
            // One shard that could not be read (EMFILE, EIO, EACCES...) must not end scrubbing for good:
            // said, counted, and the pass goes on after a pause.
            this.metrics.add('scrub_errors');
            this.log?.warn('scrub could not read a shard', { shard: formatShardId(record.id), error });
            await sleep(SCRUB_ERROR_PAUSE_MS, undefined, { signal }).catch(() => {});
          }
          // A scrub cut short by stop() is not done: the next start begins with that shard again.
          if (signal.aborted) return;
          this.after = record.id;
          if (Date.now() - savedAt >= CURSOR_SAVE_INTERVAL_MS) {
            await this.saveCursor();
            savedAt = Date.now();
          }
        }
        if (!page.more || page.shards.length === 0) break;
      }
      this.after = undefined;
      this.metrics.add('scrub_passes');
      const rest = MIN_PASS_INTERVAL_MS - (Date.now() - passStarted);
      if (rest > 0) await sleep(rest, undefined, { signal }).catch(() => {});
    }
  }

  private pace(bytes: number, signal: AbortSignal): Promise<void> {
    return this.pacer.pace(bytes, signal);
  }

  /** Verifies one shard; a corrupt one is reported by the store itself. */
  private async scrubShard(id: ShardId, signal: AbortSignal): Promise<void> {
    let reader: Awaited<ReturnType<ShardStore['openRead']>>;
    try {
      reader = await this.store.openRead(id);
    } catch (error) {
      // NOT_FOUND: deleted meanwhile, or its file lost (which the store marks corrupt, as it does CORRUPT).
      if (error instanceof DogfsError && (error.code === 'NOT_FOUND' || error.code === 'CORRUPT')) {
        return;
      }
      throw error;
    }
    const buffer = Buffer.allocUnsafe(SCRUB_READ_BYTES);
    try {
      for (let position = 0; position < reader.length; position += SCRUB_READ_BYTES) {
        const bytes = Math.min(SCRUB_READ_BYTES, reader.length - position);
        await this.pace(bytes, signal);
        if (signal.aborted) return;
        try {
          await reader.readChunks(position, bytes, buffer);
        } catch (error) {
          if (error instanceof DogfsError && error.code === 'CORRUPT') {
            this.log?.debug('scrub found corruption', { shard: formatShardId(id) });
            return;
          }
          throw error;
        }
        this.metrics.add('scrub_bytes', bytes);
      }
      this.metrics.add('scrub_shards');
    } finally {
      await reader.close();
    }
  }

  /** The position the cursor file holds; none (a pass from the first shard) when absent or unreadable. */
  private async loadCursor(): Promise<ShardId | undefined> {
    if (this.cursorPath === undefined) return undefined;
    let text: string;
    try {
      text = await readBounded(this.cursorPath, MAX_CURSOR_FILE_BYTES);
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code !== 'ENOENT')
        this.log?.warn('scrub cursor unreadable; scrubbing from the first shard', {
          path: this.cursorPath,
          error,
        });
      return undefined;
    }
    try {
      // Only a hint: a bad one costs a pass from the start, never a refusal to start the server.
      const parsed = JSON.parse(text) as { after?: unknown };
      if (parsed === null || typeof parsed !== 'object' || !('after' in parsed))
        throw new Error('no "after" field');
      if (parsed.after === null) return undefined;
      if (typeof parsed.after !== 'object') throw new Error('"after" is not a shard id');
      return checkShardId(parsed.after as ShardId, 'scrub cursor');
    } catch (error) {
      this.log?.warn('scrub cursor malformed; scrubbing from the first shard', {
        path: this.cursorPath,
        error: (error as Error).message,
      });
      return undefined;
    }
  }

  /** Writes the position to the cursor file; a failure is logged, and scrubbing goes on. */
  private async saveCursor(): Promise<void> {
    if (this.cursorPath === undefined) return;
    const after = this.after === undefined ? null : checkShardId(this.after);
    try {
      await writeFileDurably(this.cursorPath, `${JSON.stringify({ after })}\n`);
    } catch (error) {
      this.log?.warn('scrub cursor not saved', { path: this.cursorPath, error });
    }
  }
}

/**
 * The text of the regular file at `path`, refused if longer than `most` bytes, without reading more than
 * that: a cursor replaced by something huge, a FIFO or a link to /dev/zero must not hold up the scrubber
 * or fill its memory.
 */
async function readBounded(path: string, most: number): Promise<string> {
  // Non-blocking: opening a FIFO to read would wait for a writer.
  const handle = await open(path, fsConstants.O_RDONLY | fsConstants.O_NONBLOCK);
  try {
    const info = await handle.stat();
    if (!info.isFile()) throw new Error('not a regular file');
    if (info.size > most) throw new Error(`${info.size} bytes, more than ${most}`);
    const bytes = Buffer.alloc(most + 1);
    const { bytesRead } = await handle.read(bytes, 0, most + 1, 0);
    if (bytesRead > most) throw new Error(`more than ${most} bytes`);
    return bytes.subarray(0, bytesRead).toString('utf8');
  } finally {
    await handle.close();
  }
}
