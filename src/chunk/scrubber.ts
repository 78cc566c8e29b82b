/**
 * chunk/scrubber — background verification: re-reads every shard at a configured rate (bytes per
 * second; HDFS's default is 1 MiB/s per volume) and verifies every chunk, so corruption on disk is found
 * before a reader needs the shard. Corrupt shards are remembered by the store (`corruptList`), which
 * heartbeats report. One pass walks the inventory in id order; the next pass starts after the last.
 */
import { setTimeout as sleep } from 'node:timers/promises';
import { assert } from '../common/assert.js';
import type { Logger } from '../common/log.js';
import { DATA_CHUNK_SIZE, formatShardId } from '../wire/data-transfer.js';
import { DogfsError } from '../wire/errors.js';
import type { ShardId } from '../wire/gen/types.js';
import type { ChunkMetrics } from './metrics.js';
import type { ShardStore } from './store.js';

export const DEFAULT_SCRUB_BYTES_PER_SECOND = 1024 * 1024;
/** Bytes verified per disk read; the rate limiter also works in steps of this. */
const SCRUB_READ_BYTES = 16 * DATA_CHUNK_SIZE;
/** Shards listed from the inventory at a time. */
const SCRUB_PAGE = 1000;
/** Pause between passes when the inventory is empty or small, so an idle server does not spin. */
const MIN_PASS_INTERVAL_MS = 1000;
/** After a shard that could not be read (not corrupt: an error of the system), before the next one. */
const SCRUB_ERROR_PAUSE_MS = 1000;

export class Scrubber {
  private readonly abort = new AbortController();
  private running: Promise<void> | undefined;

  constructor(
    private readonly store: ShardStore,
    private readonly metrics: ChunkMetrics,
    private readonly log: Logger | undefined,
    private readonly bytesPerSecond: number,
  ) {
    assert(Number.isFinite(bytesPerSecond) && bytesPerSecond > 0, 'scrub rate is positive');
  }

  start(): void {
    assert(this.running === undefined, 'scrubber started twice');
    this.running = this.loop().catch((error: unknown) => {
      if (!this.abort.signal.aborted) this.log?.error('scrubber stopped', { error });
    });
  }

  async stop(): Promise<void> {
    this.abort.abort();
    await this.running;
  }

  private async loop(): Promise<void> {
    const signal = this.abort.signal;
    while (!signal.aborted) {
      const passStarted = Date.now();
      let cursor: ShardId | undefined;
      for (;;) {
        const page = this.store.list(cursor, SCRUB_PAGE);
        for (const record of page.shards) {
          if (signal.aborted) return;
          try {
            await this.scrubShard(record.id);
          } catch (error) {
            // One shard that could not be read (EMFILE, EIO, EACCES...) must not end scrubbing for good:
            // said, counted, and the pass goes on after a pause.
            this.metrics.add('scrub_errors');
            this.log?.warn('scrub could not read a shard', { shard: formatShardId(record.id), error });
            await sleep(SCRUB_ERROR_PAUSE_MS, undefined, { signal }).catch(() => {});
          }
          cursor = record.id;
        }
        if (!page.more || page.shards.length === 0) break;
      }
      this.metrics.add('scrub_passes');
      const rest = MIN_PASS_INTERVAL_MS - (Date.now() - passStarted);
      if (rest > 0) await sleep(rest, undefined, { signal }).catch(() => {});
    }
  }

  /** Verifies one shard; a corrupt one is reported by the store itself. */
  async scrubShard(id: ShardId): Promise<void> {
    const signal = this.abort.signal;
    let reader: Awaited<ReturnType<ShardStore['openRead']>>;
    try {
      reader = await this.store.openRead(id);
    } catch (error) {
      // NOT_FOUND: deleted meanwhile. CORRUPT: already reported by the store.
      if (error instanceof DogfsError && (error.code === 'NOT_FOUND' || error.code === 'CORRUPT')) {
        return;
      }
      throw error;
    }
    const buffer = Buffer.allocUnsafe(SCRUB_READ_BYTES);
    try {
      for (let position = 0; position < reader.length && !signal.aborted; position += SCRUB_READ_BYTES) {
        const bytes = Math.min(SCRUB_READ_BYTES, reader.length - position);
        const started = Date.now();
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
        // Rate limit: this read may take no less than bytes / rate.
        const owed = (bytes / this.bytesPerSecond) * 1000 - (Date.now() - started);
        if (owed > 0) await sleep(owed, undefined, { signal }).catch(() => {});
      }
      this.metrics.add('scrub_shards');
    } finally {
      await reader.close();
    }
  }
}
