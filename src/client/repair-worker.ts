/**
 * client/repair-worker — automatic repair's worker (DESIGN §4, "Repair"): the files a chunk server is
 * handed by the cluster leader, rebuilt one at a time with the code of `dogfs admin repair` (repair.ts).
 * It runs inside each `dogfs chunk` process (the command plugs it into the server's reporter), so repair
 * traffic goes chunk server to chunk server and the metadata servers stay out of the data path.
 *
 * One file at a time per server, with at most 8 handed over at once: that is the throttle that keeps
 * user traffic ahead of repair. The queue is bounded; a file that does not fit is dropped here and handed
 * out again by the leader, which sees it still damaged.
 */

import { assert } from '../common/assert.js';
import type { Logger } from '../common/log.js';
import { Pacer } from '../common/pace.js';
import { toDogfsError } from '../wire/errors.js';
import { DogfsClient } from './client.js';
import type { RepairOutcome } from './repair.js';

export interface RepairWorkerOptions {
  /** Metadata servers (host:port). */
  readonly meta: readonly string[];
  readonly log?: Logger | undefined;
  /** Files waiting behind the one being repaired (8). */
  readonly maxQueued?: number;
  /** Deadline of each metadata call of a repair (60 s, as `dogfs admin repair`). */
  readonly callTimeoutMs?: number;
  /**
   * Bytes this server's repairs read and write per second at most (DEFAULT_REPAIR_BYTES_PER_SECOND; at
   * least MIN_REPAIR_BYTES_PER_SECOND); 0: no limit beyond one file at a time.
   */
  readonly bytesPerSecond?: number;
  /** The client the repairs run through (a test seam); default: one made from `meta` when first needed. */
  readonly client?: Pick<DogfsClient, 'repair' | 'close'>;
}

/**
 * 64 MiB/s of repair reads and writes per chunk server: about a thirtieth of what this project's
 * development machine's disk writes (bench:data's raw-disk-write lines), so the repairs of a whole
 * cluster leave its disks and network to the users, while a lost server's few gigabytes are rebuilt in
 * minutes.
 */
export const DEFAULT_REPAIR_BYTES_PER_SECOND = 64 * 1024 * 1024;
/**
 * Below 1 MiB/s a repair of a large shard would outlast the deadline of its transfers (a block group's
 * data operation: 30 minutes, or its bytes at 64 KiB/s) and never finish.
 */
export const MIN_REPAIR_BYTES_PER_SECOND = 1024 * 1024;

const DEFAULT_MAX_QUEUED = 8;
const DEFAULT_CALL_TIMEOUT_MS = 60_000;
const CLOSE_WAIT_MS = 5_000;
/** Unfinished repairs remembered (and named in heartbeats), the latest kept. */
const MAX_FAILURES = 16;
const MAX_REASON_CHARS = 300;
/** How long an unfinished repair is named in heartbeats (the leader hands the file out again sooner). */
const UNFINISHED_KEPT_MS = 10 * 60_000;

export class RepairWorker {
  private readonly queue: string[] = [];
  private running: string | undefined;
  private working: Promise<void> | undefined;
  private client: Pick<DogfsClient, 'repair' | 'close'> | undefined;
  private readonly abort = new AbortController();
  private readonly maxQueued: number;
  /** Files repaired (whatever the outcome) and failed, since start: for tests and metrics. */
  readonly counts = { repaired: 0, failed: 0, dropped: 0 };
  /** Files whose latest repair here did not finish, why, and when; insertion order is age. */
  private readonly unfinished = new Map<string, { reason: string; atMs: number }>();

  private readonly pacer: Pacer | undefined;

  constructor(private readonly options: RepairWorkerOptions) {
    this.maxQueued = options.maxQueued ?? DEFAULT_MAX_QUEUED;
    this.client = options.client;
    const rate = options.bytesPerSecond ?? DEFAULT_REPAIR_BYTES_PER_SECOND;
    assert(rate === 0 || rate >= MIN_REPAIR_BYTES_PER_SECOND, 'a repair rate is 0 or at least 1 MiB/s');
    this.pacer = rate > 0 ? new Pacer(rate) : undefined;
  }

  /** Files handed over; those already here are not queued twice. */
  take(paths: readonly string[]): void {
    if (this.abort.signal.aborted) return;
    for (const path of paths) {
      if (path === this.running || this.queue.includes(path)) continue;
      if (this.queue.length >= this.maxQueued) {
        this.counts.dropped++;
        this.options.log?.debug('automatic repair: queue full, file left for the leader to hand out again', {
          path,
        });
        continue;
      }
      this.queue.push(path);
    }
    this.kick();
  }

  private kick(): void {
    if (this.working !== undefined || this.abort.signal.aborted) return;
    this.working = this.drain().finally(() => {
      this.working = undefined;
      // A file taken between the drain's last look at the queue and now would wait for the next take.
      if (this.queue.length > 0) this.kick();
    });
  }

  /** Files queued or being repaired. */
  current(): readonly string[] {
    return this.running === undefined ? [...this.queue] : [this.running, ...this.queue];
  }

  /** The latest repairs here that did not finish, and why (a later one that finishes clears its file). */
  failures(): readonly { path: string; reason: string }[] {
    // An old one may have been repaired since by another server: it is not said for ever.
    const oldest = Date.now() - UNFINISHED_KEPT_MS;
    return [...this.unfinished]
      .filter(([, u]) => u.atMs >= oldest)
      .map(([path, u]) => ({ path, reason: u.reason }));
  }

  private noteUnfinished(path: string, reason: string | undefined): void {
    this.unfinished.delete(path);
    if (reason === undefined) return;
    if (this.unfinished.size >= MAX_FAILURES) {
      const oldest = this.unfinished.keys().next();
      if (!oldest.done) this.unfinished.delete(oldest.value);
    }
    this.unfinished.set(path, { reason: reason.slice(0, MAX_REASON_CHARS), atMs: Date.now() });
  }

  private async drain(): Promise<void> {
    const signal = this.abort.signal;
    for (let path = this.queue.shift(); path !== undefined && !signal.aborted; path = this.queue.shift()) {
      this.running = path;
      const startedMs = Date.now();
      try {
        this.client ??= new DogfsClient({ meta: this.options.meta });
        const pacer = this.pacer;
        const outcome = await this.client.repair(path, {
          timeoutMs: this.options.callTimeoutMs ?? DEFAULT_CALL_TIMEOUT_MS,
          signal,
          ...(pacer === undefined ? {} : { pace: (bytes: number) => pacer.pace(bytes, signal) }),
        });
        this.counts.repaired++;
        this.logOutcome(outcome, Date.now() - startedMs);
        const [first, ...more] = outcome.unrepaired;
        this.noteUnfinished(
          path,
          first === undefined ? undefined : more.length > 0 ? `${first} (and ${more.length} more)` : first,
        );
      } catch (error) {
        if (signal.aborted) return;
        this.counts.failed++;
        const e = toDogfsError(error);
        // The leader sees the file still damaged and hands it out again, after a backoff.
        this.options.log?.warn('automatic repair failed', { path, code: e.code, error: e.message });
        this.noteUnfinished(path, `${e.code}: ${e.message}`);
      } finally {
        this.running = undefined;
      }
    }
  }

  private logOutcome(o: RepairOutcome, ms: number): void {
    const fields = {
      path: o.path,
      shardsRebuilt: o.shardsRebuilt,
      shardsCopied: o.shardsCopied,
      blockGroups: `${o.repairedBlockGroups}/${o.damagedBlockGroups}`,
      bytesWritten: o.bytesWritten,
      ms,
    };
    if (o.unrepaired.length === 0) this.options.log?.info('automatic repair done', fields);
    else this.options.log?.warn('automatic repair incomplete', { ...fields, unrepaired: o.unrepaired });
  }

  /** Stops: the repair running is abandoned (its rebuilt copies, uncommitted, become orphans). */
  async close(): Promise<void> {
    this.abort.abort();
    this.queue.length = 0;
    // Closing the client fails the repair's calls and transfers in flight, so the drain ends soon; a
    // shutdown still waits for it at most CLOSE_WAIT_MS.
    this.client?.close();
    let timer: NodeJS.Timeout | undefined;
    await Promise.race([
      this.working,
      new Promise((resolve) => {
        timer = setTimeout(resolve, CLOSE_WAIT_MS);
      }),
    ]);
    clearTimeout(timer);
  }
}
