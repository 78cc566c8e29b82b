/**
 * metadata/server — the `dogfs meta` process. Today it owns its data directory and answers Health;
 * the Raft groups (cluster group 0 and namespace groups) and the Metadata service are added here as
 * they land (issues 3 and 6).
 */
import type { HostPort } from '../common/address.js';
import type { LogLevel } from '../common/log.js';
import { runDaemon } from '../daemon/daemon.js';

export interface MetaServerOptions {
  dir: string;
  id?: string | undefined;
  listen: HostPort;
  /** Other metadata servers, id=host:port. Not used until Raft is hosted here. */
  peers: string[];
  logLevel: LogLevel;
}

export function startMetaServer(options: MetaServerOptions) {
  return runDaemon(
    { role: 'meta', dir: options.dir, id: options.id, listen: options.listen, logLevel: options.logLevel },
    (context) => {
      context.readyInfo['peers'] = options.peers.join(',');
    },
  );
}
