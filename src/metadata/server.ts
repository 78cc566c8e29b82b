/**
 * metadata/server — the `dogfs meta` process: the daemon lifecycle plus a Raft host (durable log in
 * DIR/raft) carrying group 0 (cluster) and group 1 (namespace), and the Metadata service.
 *
 * Raft node ids are positions in --peers (1-based), so every metadata server must be given the same list
 * in the same order (`dogfs up` does). Without --peers the server is a one-member cluster of itself.
 */
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { activeBackendName } from '../codec/index.js';
import { formatHostPort, type HostPort } from '../common/address.js';
import type { LogLevel } from '../common/log.js';
import { asNodeId } from '../consensus/index.js';
import { DaemonStartError, runDaemon } from '../daemon/daemon.js';
import { MetricsEndpoint } from '../daemon/metrics.js';
import { DurableStorage } from '../raftnode/durable.js';
import { RaftHost } from '../raftnode/host.js';
import { prometheusText } from './metrics.js';
import { MetadataNode } from './service.js';

export interface MetaServerOptions {
  dir: string;
  id?: string | undefined;
  listen: HostPort;
  /** Every metadata server, this one included, as id=host:port, in the same order on every server. */
  peers: string[];
  /** The cluster's default EC policy for files that name none (`dogfs up --ec`); else the built-in default. */
  defaultEc?: string | undefined;
  /** How long garbage block groups wait before their shards are deleted (default 30 s). */
  gcGraceMs?: number | undefined;
  /** Shard files no metadata records are deleted once this old (10 minutes; 0: never). */
  orphanAgeMs?: number | undefined;
  /** Automatic repair's delay (60 s); null: off. */
  autoRepairDelayMs?: number | null | undefined;
  /** Where the Prometheus endpoint (GET /metrics) listens; none when undefined. */
  metricsListen?: HostPort | undefined;
  logLevel: LogLevel;
}

interface Peer {
  id: string;
  addr: string;
}

function parsePeers(peers: string[]): Peer[] {
  return peers.map((p) => {
    const eq = p.indexOf('=');
    return { id: p.slice(0, eq), addr: p.slice(eq + 1) };
  });
}

/**
 * The fewest applied entries between two snapshots of a metadata group (raftnode/host.ts adds a rule on
 * bytes). A snapshot reads the whole namespace, so at a fixed count its cost per command grows with the
 * namespace until the byte rule takes over: at 100,000 empty files (~5 MB of snapshot) 30,000 rather than
 * 10,000 gave ~10% more creates per second in bench:meta (ARCHITECTURE, "Snapshots"). The price is a
 * longer log to replay at restart (30,000 commands apply in ~0.15 s) and to hold in memory (a few MB).
 * etcd's own default is 100,000.
 */
export const METADATA_SNAPSHOT_EVERY = 30_000;

/**
 * DOGFS_RAFT_SNAPSHOT_EVERY overrides METADATA_SNAPSHOT_EVERY. Tests set it low so that snapshots,
 * compaction and catching up from a snapshot happen within a short run.
 */
function snapshotEveryFromEnvironment(value: string | undefined): number {
  if (value === undefined || value === '') return METADATA_SNAPSHOT_EVERY;
  const every = Number(value);
  if (!Number.isSafeInteger(every) || every < 1) {
    throw new DaemonStartError(
      `DOGFS_RAFT_SNAPSHOT_EVERY must be a positive integer, not '${value.slice(0, 32)}'`,
    );
  }
  return every;
}

/**
 * DOGFS_COMMAND_CLOCK_OFFSET_MS: milliseconds added to the clock this server stamps into commands. For
 * tests only (a leader whose clock is far ahead); unset in any real deployment.
 */
function commandClockOffsetFromEnvironment(value: string | undefined): number {
  if (value === undefined || value === '') return 0;
  const offset = Number(value);
  if (!Number.isSafeInteger(offset) || Math.abs(offset) > 10 * 365 * 86_400_000) {
    throw new DaemonStartError(
      `DOGFS_COMMAND_CLOCK_OFFSET_MS must be a whole number of milliseconds within ten years, not '${value.slice(0, 32)}'`,
    );
  }
  return offset;
}

export function startMetaServer(options: MetaServerOptions) {
  return runDaemon(
    { role: 'meta', dir: options.dir, id: options.id, listen: options.listen, logLevel: options.logLevel },
    async (context) => {
      let peers = parsePeers(options.peers);
      if (peers.length === 0) peers = [{ id: context.id, addr: formatHostPort(options.listen) }];
      const position = peers.findIndex((p) => p.id === context.id);
      if (position < 0) {
        throw new DaemonStartError(`--peers does not name this server ('${context.id}')`);
      }
      if (new Set(peers.map((p) => p.id)).size !== peers.length)
        throw new DaemonStartError('--peers names a server twice');
      const raftDir = join(options.dir, 'raft');
      mkdirSync(raftDir, { recursive: true });
      const storage = await DurableStorage.open(raftDir);
      const host = new RaftHost({
        nodeId: asNodeId(position + 1),
        peers: peers.map((p, i) => ({ nodeId: asNodeId(i + 1), addr: p.addr })),
        storage,
        log: context.log,
        // The cluster group and the namespace group led from different servers where there are enough:
        // heartbeats, registration and repair planning do not share a leader's event loop with creates.
        balanceLeaders: true,
        // Heartbeats every 2 ticks (100 ms, etcd's default) instead of every tick: an idle cluster's three
        // metadata servers then use ~0.09 of a core instead of ~0.13 (each heartbeat wakes two processes
        // per group; measured with dogfs up, 3 meta + 9 chunk, idle, 2-core VM). Failure detection is
        // unchanged (followers still campaign after 10-20 ticks of silence) and ReadIndex does not wait for
        // a tick: it sends its own heartbeat round at once.
        configure: (c) => ({ ...c, heartbeatTicks: 2 }),
        snapshotEvery: snapshotEveryFromEnvironment(process.env['DOGFS_RAFT_SNAPSHOT_EVERY']),
      });
      const node = new MetadataNode(host, context.log, activeBackendName(), {
        defaultEc: options.defaultEc,
        ...(options.gcGraceMs === undefined ? {} : { gcGraceMs: options.gcGraceMs }),
        ...(options.orphanAgeMs === undefined ? {} : { orphanAgeMs: options.orphanAgeMs }),
        ...(options.autoRepairDelayMs === undefined ? {} : { autoRepairDelayMs: options.autoRepairDelayMs }),
        commandClockOffsetMs: commandClockOffsetFromEnvironment(process.env['DOGFS_COMMAND_CLOCK_OFFSET_MS']),
      });
      host.start(context.rpc);
      node.start(context.rpc);
      if (options.metricsListen !== undefined) {
        const endpoint = new MetricsEndpoint(() => prometheusText(context.id, node.metrics()));
        const { host: metricsHost } = options.metricsListen;
        const port = await endpoint.listen(metricsHost, options.metricsListen.port);
        context.readyInfo['metricsAddr'] = formatHostPort({ host: metricsHost, port });
        context.onShutdown(() => endpoint.close());
      }
      context.readyInfo['peers'] = peers.map((p) => `${p.id}=${p.addr}`).join(',');
      context.readyInfo['raftNode'] = String(position + 1);
      context.onShutdown(async () => {
        node.stop();
        await host.close();
      });
    },
  );
}
