/**
 * chunk/server — the `dogfs chunk` process. Today it owns its data directory and answers Health; the
 * shard store, data-transfer protocol and ChunkControl service are added here (issue 5).
 */
import type { HostPort } from '../common/address.js';
import type { LogLevel } from '../common/log.js';
import { runDaemon } from '../daemon/daemon.js';

export interface ChunkServerOptions {
  dir: string;
  id?: string | undefined;
  listen: HostPort;
  /** Metadata servers to register with, host:port. */
  meta: string[];
  failureDomain: string;
  logLevel: LogLevel;
}

export function startChunkServer(options: ChunkServerOptions) {
  return runDaemon(
    { role: 'chunk', dir: options.dir, id: options.id, listen: options.listen, logLevel: options.logLevel },
    (context) => {
      context.readyInfo['failureDomain'] = options.failureDomain;
    },
  );
}
