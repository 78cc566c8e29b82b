/**
 * chunk/reporter — the chunk server's side of the metadata conversation: register, then send the whole
 * inventory (a block report, paged), then heartbeat (capacity, load, corrupt shards) at the interval the
 * metadata service asks for, with a fresh block report now and then.
 *
 * Any metadata server may be asked; one that is not the leader answers NOT_LEADER with the leader's
 * address, which is followed at once. Other failures move to the next known address with exponential
 * backoff and full jitter, and the call that failed is made again there: a heartbeat lost to a blip or
 * a leader change is sent again, not turned into a registration and a whole inventory. Those go only
 * when the metadata service asks (a heartbeat answered `reregister`, which a leader does until it has
 * had the server's whole block report in its term; a report refused as from an unknown server), because
 * location state on the metadata side is soft and the service knows what it has lost.
 */
import { setTimeout as sleep } from 'node:timers/promises';
import { assert } from '../common/assert.js';
import type { Logger } from '../common/log.js';
import { DogfsError, toDogfsError } from '../wire/errors.js';
import type { ShardId } from '../wire/gen/types.js';
import { MetadataService } from '../wire/gen/types.js';
import { type RpcChannel, RpcChannelPool } from '../wire/rpc.js';
import type { ShardStore } from './store.js';

/**
 * Automatic repair work this server takes: the cluster leader hands it files to rebuild in heartbeat
 * answers, and each heartbeat names the files it holds. The work itself is the client library's repair
 * (client/repair-worker.ts), which the `dogfs chunk` command plugs in here: chunk/ does not import client/.
 */
export interface RepairWork {
  /** Files the cluster leader handed over. */
  take(paths: readonly string[]): void;
  /** Files queued or being repaired now. */
  current(): readonly string[];
  /** Its latest repairs that did not finish, and why (what the leader shows in `admin report`). */
  failures(): readonly { path: string; reason: string }[];
}

/** Files a heartbeat names as being repaired, and a heartbeat answer may hand over. */
const MAX_REPAIR_PATHS = 64;
/** Unfinished repairs a heartbeat names. */
const MAX_REPAIR_FAILURES = 16;

export interface ReporterOptions {
  /** Metadata servers (gRPC host:port). */
  meta: string[];
  id: string;
  dataAddr: string;
  controlAddr: string;
  failureDomain: string;
  store: ShardStore;
  /**
   * The cluster this server belongs to: named in each registration, and recorded from the first answer.
   * Absent: the server names none (and records none).
   */
  membership?: { readonly clusterId: string; adopt(clusterId: string): Promise<void> };
  /** Transfers in progress, reported as load. */
  activeTransfers: () => number;
  /** Automatic repairs this server runs; absent: it takes none. */
  repairs?: RepairWork | undefined;
  log?: Logger | undefined;
  /** Shards per BlockReport page (bounded well below the RPC message limit). */
  blockReportPageSize?: number;
  /** A full block report is sent again after this long. */
  blockReportIntervalMs?: number;
  baseDelayMs?: number;
  maxDelayMs?: number;
  callTimeoutMs?: number;
  random?: () => number;
}

const MIN_HEARTBEAT_MS = 50;
const MAX_HEARTBEAT_MS = 60_000;
const DEFAULT_HEARTBEAT_MS = 3_000;
/**
 * The longest wait between attempts to reach the metadata leader: about the cluster's default heartbeat
 * interval. A new group 0 leader gives every chunk server one dead-timeout of safe mode to find it, and
 * a reporter whose backoff had grown to seconds while the election ran could miss that window (chaos saw
 * healthy servers declared dead that way). Retrying this often costs a metadata server a refused call
 * per chunk server per second while it has no leader.
 */
const MAX_RETRY_DELAY_MS = 1_000;
/**
 * A heartbeat gets two heartbeat intervals (at least this long) before the next address is tried, not the
 * calls' 5 s: a leader cut off from the network leaves its connections silent, and a new leader's safe
 * mode (one dead-timeout, 3 s in npm run chaos) ended before heartbeats waiting out 5 s reached it, so
 * healthy servers were declared dead (chaos with partitions saw 6 of 7).
 */
const MIN_HEARTBEAT_TIMEOUT_MS = 1_000;
const MAX_BLOCK_REPORT_PAGE = 10_000;
/** A registration refused as another cluster's is asked again after this long. */
const REFUSED_RETRY_MS = 30_000;
/** Most corrupt shards named in one heartbeat (the rest follow in later ones). */
const MAX_CORRUPT_PER_HEARTBEAT = 1_000;
/** Hints to addresses outside the configured list are followed, but only this many are remembered. */
const MAX_KNOWN_ADDRESSES = 64;

export interface ReporterState {
  registered: boolean;
  target: string;
  registrations: number;
  heartbeats: number;
  blockReports: number;
  lastError: string | undefined;
}

export class MetadataReporter {
  private readonly abort = new AbortController();
  private readonly channels = new RpcChannelPool();
  private readonly addresses: string[];
  private targetIndex = 0;
  private running: Promise<void> | undefined;
  private readonly pageSize: number;
  readonly state: ReporterState;

  constructor(private readonly options: ReporterOptions) {
    assert(options.meta.length > 0, 'at least one metadata address');
    this.addresses = [...options.meta];
    this.pageSize = Math.min(options.blockReportPageSize ?? 5_000, MAX_BLOCK_REPORT_PAGE);
    this.state = {
      registered: false,
      target: this.addresses[0]!,
      registrations: 0,
      heartbeats: 0,
      blockReports: 0,
      lastError: undefined,
    };
  }

  start(): void {
    assert(this.running === undefined, 'reporter started twice');
    this.running = this.loop().catch((error: unknown) => {
      if (!this.abort.signal.aborted) this.options.log?.error('metadata reporter stopped', { error });
    });
  }

  async stop(): Promise<void> {
    this.abort.abort();
    await this.running;
    this.channels.close();
  }

  private channel(address: string): RpcChannel {
    return this.channels.get(address);
  }

  private get target(): string {
    return this.addresses[this.targetIndex]!;
  }

  /** After a failure: follow a leader hint, or move on to the next address. */
  private retarget(error: DogfsError): void {
    const hint = error.code === 'NOT_LEADER' ? error.leaderHint : undefined;
    if (hint !== undefined && hint !== '') {
      let at = this.addresses.indexOf(hint);
      if (at < 0 && this.addresses.length < MAX_KNOWN_ADDRESSES) {
        this.addresses.push(hint);
        at = this.addresses.length - 1;
      }
      if (at >= 0) this.targetIndex = at;
    } else {
      this.targetIndex = (this.targetIndex + 1) % this.addresses.length;
    }
    this.state.target = this.target;
  }

  private async loop(): Promise<void> {
    const signal = this.abort.signal;
    const random = this.options.random ?? Math.random;
    const base = this.options.baseDelayMs ?? 100;
    const cap = this.options.maxDelayMs ?? MAX_RETRY_DELAY_MS;
    const timeoutMs = this.options.callTimeoutMs ?? 5_000;
    const reportEvery = this.options.blockReportIntervalMs ?? 3_600_000;
    let failures = 0;
    let refusals = 0;
    // What is owed to the metadata service next. A failed call is retried as the same step (at the
    // leader it names, or the next address): only the service decides that it needs a registration and
    // the whole inventory again (`reregister`, or a report refused as from an unknown server).
    let step: 'register' | 'report' | 'heartbeat' = 'register';
    let interval = DEFAULT_HEARTBEAT_MS;
    let lastReport = 0;
    let heartbeatAt = 0;
    while (!signal.aborted) {
      try {
        if (step === 'register') {
          interval = await this.register(timeoutMs);
          step = 'report';
        } else if (step === 'report') {
          await this.blockReport(timeoutMs);
          lastReport = Date.now();
          heartbeatAt = lastReport + interval;
          failures = 0;
          step = 'heartbeat';
        } else {
          const wait = heartbeatAt - Date.now();
          if (wait > 0) await sleep(wait, undefined, { signal }).catch(() => {});
          if (signal.aborted) return;
          const response = await this.heartbeat(
            Math.min(timeoutMs, Math.max(2 * interval, MIN_HEARTBEAT_TIMEOUT_MS)),
          );
          heartbeatAt = Date.now() + interval;
          failures = 0;
          if (response.reregister) {
            this.state.registered = false;
            step = 'register';
          } else if (Date.now() - lastReport >= reportEvery) step = 'report';
        }
        refusals = 0;
      } catch (error) {
        if (signal.aborted) return;
        const failure = toDogfsError(error, 'UNAVAILABLE');
        this.state.lastError = `${failure.code}: ${failure.message}`;
        if (failure.code === 'FAILED_PRECONDITION' && step === 'register') {
          // Refused (another cluster's server, or its id could not be recorded): said loudly. The other
          // addresses are tried first (one wrong address in --meta must not hold the server back), then
          // the server asks again slowly.
          this.options.log?.error('registration refused', { target: this.target, error: failure.message });
          this.retarget(failure);
          if (++refusals >= this.addresses.length) {
            refusals = 0;
            await sleep(REFUSED_RETRY_MS, undefined, { signal }).catch(() => {});
          }
          continue;
        }
        if (failure.code === 'FAILED_PRECONDITION') {
          // The service does not know this server (a report refused as unregistered; a heartbeat from an
          // unknown server is answered `reregister` instead): register again, where it was sent.
          this.options.log?.warn('metadata does not know this server; registering again', {
            target: this.target,
            error: failure.message,
          });
          this.state.registered = false;
          step = 'register';
        } else {
          this.retarget(failure);
        }
        refusals = 0;
        failures++;
        // A leader hint is followed at once the first time; otherwise back off. A heartbeat retried
        // goes as soon as the backoff allows, not an interval later: the server is overdue already.
        heartbeatAt = 0;
        const followHint = failure.code === 'NOT_LEADER' && failure.leaderHint !== undefined && failures <= 1;
        if (!followHint) {
          const delay = random() * Math.min(cap, base * 2 ** Math.min(failures - 1, 16));
          this.options.log?.debug('metadata unreachable, retrying', {
            error: this.state.lastError,
            step,
            delay,
          });
          await sleep(delay, undefined, { signal }).catch(() => {});
        }
      }
    }
  }

  /**
   * The filesystem's free space read again before it is reported (in `capacityBytes`): other data may fill
   * the disk while the server runs. A statfs that fails leaves the last value, and is said: the call that
   * keeps this server alive must not fail for it.
   */
  private async refreshSpace(): Promise<void> {
    await this.options.store.refreshSpace().catch((error: unknown) => {
      this.options.log?.warn('free space not read; reporting the last known', { error });
    });
  }

  /** Registers with the current target; the heartbeat interval it asks for. */
  private async register(timeoutMs: number): Promise<number> {
    const { store } = this.options;
    await this.refreshSpace();
    const registered = await this.channel(this.target).call(
      MetadataService,
      'RegisterChunkServer',
      {
        id: this.options.id,
        addr: this.options.dataAddr,
        controlAddr: this.options.controlAddr,
        failureDomain: this.options.failureDomain,
        capacityBytes: store.capacityBytes,
        usedBytes: store.usedBytes,
        clusterId: this.options.membership?.clusterId ?? '',
      },
      { timeoutMs, signal: this.abort.signal },
    );
    // The first registration tells the server which cluster it belongs to; it is kept before anything
    // else happens (an older metadata service answers none).
    if (registered.clusterId !== '')
      await this.options.membership?.adopt(registered.clusterId).catch((error: unknown) => {
        const e = toDogfsError(error);
        throw new DogfsError(
          'FAILED_PRECONDITION',
          e.code === 'FAILED_PRECONDITION'
            ? e.message
            : `cannot record the cluster id in the chunk server's directory: ${e.message}`,
        );
      });
    this.state.registered = true;
    this.state.registrations++;
    this.state.lastError = undefined;
    const interval = Math.min(
      MAX_HEARTBEAT_MS,
      Math.max(MIN_HEARTBEAT_MS, registered.heartbeatIntervalMs || DEFAULT_HEARTBEAT_MS),
    );
    this.options.log?.info('registered with metadata', { target: this.target, heartbeatMs: interval });
    return interval;
  }

  private async heartbeat(timeoutMs: number): Promise<{ reregister: boolean }> {
    const { store } = this.options;
    await this.refreshSpace();
    const corrupt: ShardId[] = store.corruptList().slice(0, MAX_CORRUPT_PER_HEARTBEAT);
    const response = await this.channel(this.target).call(
      MetadataService,
      'Heartbeat',
      {
        id: this.options.id,
        capacityBytes: store.capacityBytes,
        usedBytes: store.usedBytes,
        shardCount: store.shardCount,
        activeTransfers: this.options.activeTransfers(),
        corruptShards: corrupt,
        repairs: this.options.repairs !== undefined,
        repairing: this.options.repairs?.current().slice(0, MAX_REPAIR_PATHS) ?? [],
        repairFailures: this.options.repairs?.failures().slice(0, MAX_REPAIR_FAILURES) ?? [],
      },
      { timeoutMs, signal: this.abort.signal },
    );
    if (response.repairPaths.length > 0)
      this.options.repairs?.take(response.repairPaths.slice(0, MAX_REPAIR_PATHS));
    this.state.heartbeats++;
    this.state.lastError = undefined;
    return response;
  }

  /** The whole inventory, in pages: first..last replace what the metadata service knew. */
  private async blockReport(timeoutMs: number): Promise<void> {
    const signal = this.abort.signal;
    let cursor: ShardId | undefined;
    let first = true;
    for (;;) {
      const page = this.options.store.list(cursor, this.pageSize);
      await this.channel(this.target).call(
        MetadataService,
        'BlockReport',
        {
          id: this.options.id,
          shards: page.shards.map((r) => ({
            shard: r.id,
            length: r.length,
            crc32c: r.crc32c,
            mtimeMs: r.mtimeMs,
          })),
          first,
          last: !page.more,
        },
        { timeoutMs, signal },
      );
      first = false;
      const last = page.shards[page.shards.length - 1];
      if (!page.more || last === undefined) break;
      cursor = last.id;
    }
    this.state.blockReports++;
  }
}
