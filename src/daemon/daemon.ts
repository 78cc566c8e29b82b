/**
 * daemon — what every DogFS server process does the same way, so meta and chunk servers differ only in
 * the services they add: own a data directory (lock + stable identity), log JSON lines, serve gRPC with
 * the Health service, tell a supervising parent when it is ready, and shut down cleanly on SIGTERM/SIGINT
 * or when the supervising parent disappears (so `dogfs up` never leaves orphans, even when SIGKILLed).
 * May import: wire, common.
 */
import { randomBytes } from 'node:crypto';
import { mkdirSync, readFileSync, renameSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { formatHostPort, type HostPort } from '../common/address.js';
import { type DirLock, lockDir } from '../common/dirlock.js';
import { createLogger, type Logger, type LogLevel } from '../common/log.js';
import { DOGFS_VERSION } from '../common/version.js';
import { HealthService } from '../wire/gen/types.js';
import { RpcServer } from '../wire/rpc.js';

export type Role = 'meta' | 'chunk';

export interface DaemonOptions {
  role: Role;
  dir: string;
  /** Identity to use; must match the one the directory already has, if any. */
  id?: string | undefined;
  listen: HostPort;
  logLevel: LogLevel;
}

export interface DaemonContext {
  readonly role: Role;
  readonly id: string;
  readonly dir: string;
  readonly log: Logger;
  readonly rpc: RpcServer;
  /**
   * Runs on shutdown, newest first: after the RPC server has stopped taking calls and the running ones
   * have returned (or SHUTDOWN_DRAIN_MS passed), before its connections close.
   */
  onShutdown(hook: () => Promise<void> | void): void;
  /**
   * Extra facts for the supervisor's ready message and the 'listening' log line; `dataAddr` is also
   * answered by Health. Set during setup.
   */
  readonly readyInfo: Record<string, string>;
}

export interface ReadyMessage {
  type: 'ready';
  role: Role;
  id: string;
  addr: string;
  pid: number;
  info: Record<string, string>;
}

export class DaemonStartError extends Error {
  override name = 'DaemonStartError';
}

interface Identity {
  role: Role;
  id: string;
}

const ID_PATTERN = /^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/;
/** How long a stopping server may take before it exits anyway. */
const SHUTDOWN_LIMIT_MS = 30_000;
/**
 * How long a stopping server waits for the calls it has taken before its hooks run anyway. Calls end in
 * milliseconds unless they wait on something stuck (a proposal without a quorum), which the hooks then
 * fail; `dogfs up` gives a member 8 s after SIGTERM, and the hooks and the close need their share.
 */
export const SHUTDOWN_DRAIN_MS = 3_000;
/** After the hooks, how long connections get to take their last answers before they are cut. */
const CLOSE_GRACE_MS = 2_000;

function loadOrCreateIdentity(dir: string, role: Role, requestedId: string | undefined): Identity {
  const path = join(dir, 'identity.json');
  let existing: Identity | undefined;
  try {
    existing = JSON.parse(readFileSync(path, 'utf8')) as Identity;
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code !== 'ENOENT') {
      throw new DaemonStartError(`${path} is unreadable: ${(error as Error).message}`);
    }
  }
  if (existing !== undefined) {
    if (existing.role !== role) {
      throw new DaemonStartError(`${dir} belongs to a ${existing.role} server, not a ${role} server`);
    }
    if (requestedId !== undefined && requestedId !== existing.id) {
      throw new DaemonStartError(`${dir} belongs to ${role} server '${existing.id}', not '${requestedId}'`);
    }
    return existing;
  }
  const id = requestedId ?? `${role}-${randomBytes(4).toString('hex')}`;
  if (!ID_PATTERN.test(id)) {
    throw new DaemonStartError(`invalid id '${id}': use 1-64 letters, digits, '.', '_' or '-'`);
  }
  const identity: Identity = { role, id };
  writeFileSync(`${path}.tmp`, `${JSON.stringify(identity)}\n`);
  renameSync(`${path}.tmp`, path);
  return identity;
}

/**
 * Starts the process's server and returns once it listens. `setup` adds the role's services. The
 * process exits by itself on a signal or when its supervising parent goes away.
 */
export async function runDaemon(
  options: DaemonOptions,
  setup: (context: DaemonContext) => Promise<void> | void,
): Promise<{ addr: string; id: string; shutdown: () => Promise<void> }> {
  mkdirSync(options.dir, { recursive: true });
  const lock: DirLock = lockDir(options.dir);
  const hooks: (() => Promise<void> | void)[] = [];
  let rpc: RpcServer | undefined;
  try {
    const identity = loadOrCreateIdentity(options.dir, options.role, options.id);
    const log = createLogger(options.logLevel, { role: options.role, id: identity.id, pid: process.pid });
    // A server process only: an exception nothing caught, or a rejection nothing handled, is a bug whose
    // state is unknown. It is logged as a JSON line like everything else (Node printed a bare stack) and
    // the process exits 70, as a broken invariant does, telling it apart from a failed start (1).
    const fatal = (what: string) => (error: unknown) => {
      log.error(what, { error });
      lock.release();
      process.exit(70);
    };
    process.on('uncaughtException', fatal('fatal: an exception nothing caught'));
    process.on('unhandledRejection', fatal('fatal: a rejection nothing handled'));
    const startedAt = Date.now();
    let addr = '';
    const readyInfo: Record<string, string> = {};
    rpc = new RpcServer({
      onInternalError: (method, error) => log.error('handler failed', { method, error }),
      log,
    });
    const server = rpc;
    server.addService(HealthService, {
      Check: () => ({
        role: options.role,
        id: identity.id,
        version: DOGFS_VERSION,
        pid: process.pid,
        uptimeMs: Date.now() - startedAt,
        addr,
        dataAddr: readyInfo['dataAddr'] ?? '',
      }),
    });
    await setup({
      role: options.role,
      id: identity.id,
      dir: options.dir,
      log,
      rpc: server,
      readyInfo,
      onShutdown: (hook) => hooks.push(hook),
    });
    const port = await server.listen(options.listen.host, options.listen.port);
    addr = formatHostPort({ host: options.listen.host, port });

    let stopping: Promise<void> | undefined;
    const shutdown = (): Promise<void> => {
      stopping ??= (async () => {
        log.info('shutting down');
        // A hook that never returns (a disk or Raft wait) must not keep a stopping server alive for good.
        const watchdog = setTimeout(() => {
          log.error('shutdown did not finish within 30 s; exiting');
          process.exit(1);
        }, SHUTDOWN_LIMIT_MS);
        watchdog.unref();
        // The hooks tear down what handlers use (Raft groups, the store), so first no call may start and
        // the running ones finish against whole state; they used to run on while it went away.
        const stillRunning = await server.drain(SHUTDOWN_DRAIN_MS);
        if (stillRunning > 0) {
          log.warn('calls still running after the drain limit; stopping anyway', {
            handlers: stillRunning,
            limitMs: SHUTDOWN_DRAIN_MS,
          });
        }
        let failed = false;
        for (const hook of hooks.reverse()) {
          try {
            await hook();
          } catch (error) {
            failed = true;
            log.error('shutdown hook failed', { error });
          }
        }
        await server.close(CLOSE_GRACE_MS);
        lock.release();
        clearTimeout(watchdog);
        log.info('stopped');
        if (failed) throw new Error('a shutdown hook failed (logged)');
      })();
      return stopping;
    };
    const exitAfterShutdown = (reason: string) => {
      log.info('stop requested', { reason });
      shutdown().then(
        () => process.exit(0),
        () => process.exit(1),
      );
    };
    process.once('SIGTERM', () => exitAfterShutdown('SIGTERM'));
    process.once('SIGINT', () => exitAfterShutdown('SIGINT'));
    if (process.send !== undefined && !process.connected) {
      // Supervised, and the supervisor died while this server started: its 'disconnect' is past.
      exitAfterShutdown('supervisor gone');
    } else if (process.send !== undefined) {
      // Supervised by `dogfs up` over an IPC channel: when the parent dies, the channel closes.
      process.once('disconnect', () => exitAfterShutdown('supervisor gone'));
      const ready: ReadyMessage = {
        type: 'ready',
        role: options.role,
        id: identity.id,
        addr,
        pid: process.pid,
        info: readyInfo,
      };
      process.send(ready);
    }
    log.info('listening', { addr, version: DOGFS_VERSION, ...readyInfo });
    return { addr, id: identity.id, shutdown };
  } catch (error) {
    await rpc?.close(0);
    lock.release();
    throw error;
  }
}
