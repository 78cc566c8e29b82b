/**
 * chunk/server — the `dogfs chunk` process: the shard store in DIR/shards, the data-transfer server on
 * its own TCP port (`dataAddr`, answered by Health and in the ready message), the ChunkControl service
 * over gRPC beside Health, the scrubber, and the reporter that registers and heartbeats with the
 * metadata cluster.
 */
import { join } from 'node:path';
import { retainFreedMemory } from '../codec/native.js';
import { formatHostPort, type HostPort } from '../common/address.js';
import { type Logger, type LogLevel, ThrottledWarning } from '../common/log.js';
import { runDaemon } from '../daemon/daemon.js';
import { MetricsEndpoint } from '../daemon/metrics.js';
import { checkShardId, checkWireInteger, formatShardId, MAX_SHARD_BYTES } from '../wire/data-transfer.js';
import { DogfsError } from '../wire/errors.js';
import { ChunkControlService, type ShardId } from '../wire/gen/types.js';
import { ClusterMembership } from './cluster-id.js';
import { DataServer, type DataServerLimits } from './data-server.js';
import { LeaderFence } from './leader-fence.js';
import { ChunkMetrics, prometheusGauges } from './metrics.js';
import { MetadataReporter, type RepairWork } from './reporter.js';
import { DEFAULT_SCRUB_BYTES_PER_SECOND, SCRUB_CURSOR_FILE, Scrubber } from './scrubber.js';
import { diskFailure, type ShardRecord, ShardStore } from './store.js';

export interface ChunkServerOptions {
  dir: string;
  id?: string | undefined;
  listen: HostPort;
  /** Where the data-transfer protocol listens (port 0: any free port). */
  dataListen?: HostPort | undefined;
  /** Where the Prometheus endpoint (GET /metrics) listens; none when undefined. */
  metricsListen?: HostPort | undefined;
  /** Metadata servers to register with, host:port. */
  meta: string[];
  failureDomain: string;
  logLevel: LogLevel;
  /** Most bytes of shards to store; default: the size of the filesystem holding DIR. */
  capacityBytes?: number | undefined;
  /** Scrubber rate in bytes per second; 0 turns the scrubber off. Default 1 MiB/s. */
  scrubBytesPerSecond?: number | undefined;
  limits?: Partial<DataServerLimits> | undefined;
  /**
   * Write (and read) shards with O_DIRECT where the filesystem takes it (chunk/shard-file.ts). Default:
   * on, unless the environment has DOGFS_CHUNK_DIRECT_WRITES=0 (docs/ARCHITECTURE.md, "O_DIRECT", says
   * why, and why it was off until the chaos failures seen with it were explained).
   */
  directWrites?: boolean | undefined;
  /**
   * Automatic repair work this server takes (the `dogfs chunk` command plugs in the client library's
   * worker, client/repair-worker.ts); absent: it takes none.
   */
  repairs?: ((log: Logger) => RepairWork & { close(): Promise<void> }) | undefined;
}

const DEFAULT_LIST_LIMIT = 1_000;
const MAX_LIST_LIMIT = 10_000;
/** Corrupt shards named in one Status answer (heartbeats carry them too, bounded the same way). */
const MAX_STATUS_CORRUPT = 10_000;

/** DOGFS_CHUNK_DIRECT_WRITES: unset or 1, O_DIRECT; 0, the page cache; anything else is refused. */
function directWritesFromEnvironment(value: string | undefined): boolean {
  if (value === undefined || value === '' || value === '1') return true;
  if (value === '0') return false;
  throw new DogfsError(
    'INVALID_ARGUMENT',
    `DOGFS_CHUNK_DIRECT_WRITES must be 0 (page cache) or 1 (O_DIRECT, the default), not '${value.slice(0, 32)}'`,
  );
}

function memoryGauges() {
  const memory = process.memoryUsage();
  return { rssBytes: memory.rss, heapUsedBytes: memory.heapUsed, externalBytes: memory.external };
}

function shardInfo(record: ShardRecord) {
  return { shard: record.id, length: record.length, crc32c: record.crc32c, mtimeMs: record.mtimeMs };
}

export async function startChunkServer(options: ChunkServerOptions) {
  const metrics = new ChunkMetrics();
  let store: ShardStore | undefined;
  let dataServer: DataServer | undefined;
  let scrubber: Scrubber | undefined;
  let reporter: MetadataReporter | undefined;
  let repairs: RepairWork | undefined;
  let dataAddr = '';
  let logger: Logger | undefined;
  let membership: ClusterMembership | undefined;
  const daemon = await runDaemon(
    { role: 'chunk', dir: options.dir, id: options.id, listen: options.listen, logLevel: options.logLevel },
    async (context) => {
      context.readyInfo['failureDomain'] = options.failureDomain;
      const log = context.log;
      // Each connection's receive memory and each shard's buffers come back from the allocator instead
      // of as fresh pages (codec/native.ts says what a fresh page costs on this kind of machine).
      context.readyInfo['retainFreedMemory'] = String(retainFreedMemory());
      const ownCluster = await ClusterMembership.open(context.dir);
      membership = ownCluster;
      const fence = await LeaderFence.open(context.dir);
      /**
       * A control call naming a server or cluster (the metadata's address book may be out of date) is
       * refused by any other. A server that has not recorded a cluster yet (from before cluster ids, or
       * its disk refused the file) takes calls as it always did: refusing deletes could keep a full disk
       * full.
       */
      const checkAddressee = (request: { chunkServerId: string; clusterId: string }, what: string) => {
        if (request.chunkServerId !== '' && request.chunkServerId !== context.id)
          throw new DogfsError(
            'FAILED_PRECONDITION',
            `${what} meant for chunk server '${request.chunkServerId.slice(0, 128)}' reached '${context.id}'`,
          );
        const own = ownCluster.clusterId;
        if (request.clusterId !== '' && own !== '' && request.clusterId !== own)
          throw new DogfsError(
            'FAILED_PRECONDITION',
            `${what} from cluster ${request.clusterId.slice(0, 64)} reached a server of cluster ${own}`,
          );
      };
      const openedStore = await ShardStore.open({
        dir: context.dir,
        capacityBytes: options.capacityBytes,
        log,
        onCorrupt: () => metrics.add('corrupt_found'),
        directWrites:
          options.directWrites ?? directWritesFromEnvironment(process.env['DOGFS_CHUNK_DIRECT_WRITES']),
      });
      context.readyInfo['writeMode'] = openedStore.writeMode;
      store = openedStore;
      const server = new DataServer(openedStore, metrics, log, options.limits);
      dataServer = server;
      const dataListen = options.dataListen ?? { host: options.listen.host, port: 0 };
      const dataPort = await server.listen(dataListen.host, dataListen.port);
      dataAddr = formatHostPort({ host: dataListen.host, port: dataPort });
      context.readyInfo['dataAddr'] = dataAddr;
      context.onShutdown(() => server.close());

      if (options.metricsListen !== undefined) {
        const endpoint = new MetricsEndpoint(
          () =>
            metrics.prometheus(context.id) +
            prometheusGauges(context.id, {
              capacityBytes: openedStore.capacityBytes,
              usedBytes: openedStore.usedBytes,
              shards: openedStore.shardCount,
              corruptShards: openedStore.corruptList().length,
              activeWrites: server.activeWrites,
              activeReads: server.activeReads,
              rssBytes: process.memoryUsage.rss(),
            }),
        );
        const { host } = options.metricsListen;
        const port = await endpoint.listen(host, options.metricsListen.port);
        context.readyInfo['metricsAddr'] = formatHostPort({ host, port });
        context.onShutdown(() => endpoint.close());
      }

      const diskWarning = new ThrottledWarning(log, 'disk call failed');
      context.rpc.addService(ChunkControlService, {
        DeleteShard: async (request) => {
          const id = checkShardId(request.shard);
          checkAddressee(request, 'delete');
          const ifMtimeMs =
            request.ifMtimeMs === 0
              ? undefined
              : checkWireInteger(request.ifMtimeMs, Number.MAX_SAFE_INTEGER, 'if_mtime_ms');
          // Fenced only once it is known to be a valid call for this server of this cluster: another
          // cluster's leader (or a malformed call) must not raise the term this cluster's leader is
          // checked against.
          await fence.admit(request.namespaceGroup, request.leaderTerm);
          const existed = await openedStore
            .delete(id, ifMtimeMs)
            .catch((error: unknown) =>
              Promise.reject(diskFailure(error, `delete ${formatShardId(id)}`, diskWarning)),
            );
          if (existed) metrics.add('shards_deleted');
          return { existed };
        },
        StatShard: async (request) => {
          const id = checkShardId(request.shard);
          checkAddressee(request, 'stat');
          await fence.admit(request.namespaceGroup, request.leaderTerm);
          const found = await (request.claim ? openedStore.claim(id) : openedStore.stat(id)).catch(
            (error: unknown) => Promise.reject(diskFailure(error, `stat ${formatShardId(id)}`, diskWarning)),
          );
          return { info: shardInfo(found) };
        },
        ListShards: (request) => {
          const limit = request.limit === 0 ? DEFAULT_LIST_LIMIT : request.limit;
          checkWireInteger(limit, MAX_LIST_LIMIT, 'list limit');
          const startAfter: ShardId | undefined =
            request.startAfter === null || request.startAfter === undefined
              ? undefined
              : checkShardId(request.startAfter, 'start_after');
          const page = openedStore.list(startAfter, limit);
          return { shards: page.shards.map(shardInfo), more: page.more };
        },
        Status: () => ({
          id: context.id,
          dataAddr,
          capacityBytes: openedStore.capacityBytes,
          usedBytes: openedStore.usedBytes,
          shardCount: openedStore.shardCount,
          activeWrites: server.activeWrites,
          activeReads: server.activeReads,
          corruptShards: openedStore.corruptList().slice(0, MAX_STATUS_CORRUPT),
          counters: metrics.snapshot(),
          ...memoryGauges(),
        }),
      });

      const rate = options.scrubBytesPerSecond ?? DEFAULT_SCRUB_BYTES_PER_SECOND;
      if (rate > 0) {
        const started = new Scrubber(openedStore, metrics, log, rate, join(context.dir, SCRUB_CURSOR_FILE));
        scrubber = started;
        started.start();
        context.onShutdown(() => started.stop());
      }
      if (options.repairs !== undefined && options.meta.length > 0) {
        const worker = options.repairs(log);
        repairs = worker;
        context.onShutdown(() => worker.close());
      }
      // Hooks run newest first: the reporter (started below, once the gRPC address is known) stops first.
      context.onShutdown(() => reporter?.stop());
      logger = log;
      log.debug('chunk store ready', { shards: openedStore.shardCount, maxShardBytes: MAX_SHARD_BYTES });
    },
  );
  if (options.meta.length > 0) {
    if (store === undefined || dataServer === undefined || membership === undefined)
      throw new DogfsError('INTERNAL', 'chunk server setup incomplete');
    const server = dataServer;
    reporter = new MetadataReporter({
      meta: options.meta,
      id: daemon.id,
      dataAddr,
      controlAddr: daemon.addr,
      failureDomain: options.failureDomain,
      store,
      activeTransfers: () => server.activeWrites + server.activeReads,
      log: logger,
      membership,
      repairs,
    });
    reporter.start();
  }
  return { ...daemon, dataAddr, metrics, scrubber };
}
