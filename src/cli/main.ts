/**
 * cli — the `dogfs` command: argument parsing and dispatch to the server processes (`meta`, `chunk`), the
 * local-cluster supervisor (`up`) and the client library (put/get/ls/...). A user error prints one line on
 * stderr (`dogfs: ...`) and exits non-zero; never a stack trace.
 * May import: client, cluster, metadata, chunk, s3, daemon, codec (aligned memory for direct writes),
 * wire, common.
 */

import { setFlagsFromString } from 'node:v8';
import { AddressError, parseAddressList, sourceAddress } from '../common/address.js';
import { DirLockedError } from '../common/dirlock.js';
import { EcPolicyError, parseNewEcPolicy } from '../common/ec-policy.js';
import { DOGFS_VERSION } from '../common/version.js';
import { DogfsError } from '../wire/errors.js';
import {
  noPositionals,
  parseFlags,
  parseIntFlag,
  parseListenFlag,
  parseLogLevel,
  requireFlag,
  UsageError,
} from './args.js';
import { watchStdout } from './stdout.js';
import { FILE_COMMANDS_USAGE } from './usage.js';

const USAGE = `usage: dogfs <command> [options]

Local cluster:
  up --dir DIR [--meta N] [--chunk N] [--ec rs-K-M] [--restart] [--log-level L]
     [--distinct-hosts (each member on its own 127.0.1.N, so tests can cut the network between them)]

Servers:
  meta  --dir DIR [--listen HOST:PORT] [--id ID] [--peers ID=HOST:PORT,...] [--ec POLICY]
        [--gc-grace MS (garbage shards are deleted this long after their file went; 30000)]
        [--orphan-age MS (shard files no metadata records are deleted once this old; 600000; 0: never)]
        [--repair-delay MS|off (a file damaged this long is rebuilt by a chunk server; 60000)]
        [--metrics-listen HOST:PORT (Prometheus text at /metrics)] [--log-level L]
  chunk --dir DIR [--listen HOST:PORT] [--data-listen HOST:PORT] [--id ID] [--meta HOST:PORT,...]
        [--failure-domain NAME] [--capacity BYTES] [--scrub-rate BYTES_PER_S (0: off)]
        [--metrics-listen HOST:PORT (Prometheus text at /metrics)] [--repairs on|off (take automatic
        repair work from the cluster leader; on)] [--repair-rate BYTES_PER_S (bytes its repairs read and
        write per second at most; 67108864; at least 1048576; 0: no limit)] [--log-level L]

S3-compatible gateway (path-style: http://HOST:PORT/BUCKET/KEY; a bucket is a directory under /):
  s3    [--listen HOST:PORT (127.0.0.1:9000)] [--meta HOST:PORT,...]
        [--access-key KEY --secret-key SECRET (require SigV4 signatures; also $DOGFS_S3_ACCESS_KEY,
        $DOGFS_S3_SECRET_KEY; without them every request is accepted)] [--region R] [--log-level L]
        [--abort-uploads-after MS|off (a multipart upload idle this long is aborted; 604800000 = 7 days)]

${FILE_COMMANDS_USAGE}`;

/**
 * Errors whose message is for the user as it is (exit status 1). The server modules (`up`, `meta`,
 * `chunk`) are imported only by their own commands, which add their error classes here as they load:
 * a file command (put, ls, ...) then starts without loading the metadata server, Raft and the chunk
 * server (about 0.15 s of CPU per command here).
 */
const USER_ERRORS: (abstract new (...args: never[]) => Error)[] = [DirLockedError, DogfsError];

async function loadDaemonErrors(): Promise<void> {
  const { DaemonStartError } = await import('../daemon/daemon.js');
  USER_ERRORS.push(DaemonStartError);
}

const CLIENT_COMMANDS = new Set(['put', 'get', 'cat', 'ls', 'mkdir', 'touch', 'rm', 'mv', 'stat', 'admin']);

/** Where a command's one-line error prefix comes from: `dogfs up: ...`. */
class CommandFailure extends Error {
  constructor(
    readonly command: string,
    override readonly cause: unknown,
  ) {
    super(command);
  }
}

function ecFlag(value: string | undefined): string | undefined {
  if (value === undefined) return undefined;
  parseNewEcPolicy(value);
  return value;
}

async function up(argv: string[]): Promise<void> {
  const { flags, positionals } = parseFlags(argv, {
    dir: { type: 'string', env: 'DOGFS_DIR' },
    meta: { type: 'string' },
    chunk: { type: 'string' },
    ec: { type: 'string' },
    restart: { type: 'boolean' },
    'distinct-hosts': { type: 'boolean' },
    'log-level': { type: 'string', env: 'DOGFS_LOG_LEVEL' },
  });
  noPositionals(positionals);
  const { runUp, UpError } = await import('../cluster/up.js');
  USER_ERRORS.push(UpError);
  await runUp({
    dir: requireFlag(flags.dir, 'dir', 'DOGFS_DIR'),
    meta: flags.meta === undefined ? undefined : parseIntFlag(flags.meta, 'meta', 3, 1, 9),
    chunk: flags.chunk === undefined ? undefined : parseIntFlag(flags.chunk, 'chunk', 9, 1, 64),
    ec: ecFlag(flags.ec),
    restart: flags.restart,
    distinctHosts: flags['distinct-hosts'],
    logLevel: parseLogLevel(flags['log-level']),
  });
}

async function meta(argv: string[]): Promise<void> {
  const { flags, positionals } = parseFlags(argv, {
    dir: { type: 'string', env: 'DOGFS_DIR' },
    listen: { type: 'string', env: 'DOGFS_LISTEN' },
    id: { type: 'string', env: 'DOGFS_ID' },
    peers: { type: 'string', env: 'DOGFS_PEERS' },
    ec: { type: 'string', env: 'DOGFS_EC' },
    'gc-grace': { type: 'string', env: 'DOGFS_GC_GRACE_MS' },
    'orphan-age': { type: 'string', env: 'DOGFS_ORPHAN_AGE_MS' },
    'repair-delay': { type: 'string', env: 'DOGFS_REPAIR_DELAY_MS' },
    'metrics-listen': { type: 'string', env: 'DOGFS_METRICS_LISTEN' },
    'log-level': { type: 'string', env: 'DOGFS_LOG_LEVEL' },
  });
  noPositionals(positionals);
  sourceAddress(); // a bad DOGFS_SOURCE_ADDRESS stops the server now, not at its first connection
  const listen = parseListenFlag(flags.listen, 'listen', '127.0.0.1:0');
  const peers = flags.peers === undefined ? [] : flags.peers.split(',').filter((p) => p !== '');
  for (const peer of peers) {
    const [id, address] = peer.split('=');
    if (id === undefined || id === '' || address === undefined) {
      throw new UsageError(`invalid --peers entry '${peer}': expected ID=HOST:PORT`);
    }
    parseAddressList(address, '--peers address');
  }
  await loadDaemonErrors();
  const { startMetaServer } = await import('../metadata/server.js');
  await startMetaServer({
    dir: requireFlag(flags.dir, 'dir', 'DOGFS_DIR'),
    id: flags.id,
    listen,
    peers,
    defaultEc: ecFlag(flags.ec),
    gcGraceMs:
      flags['gc-grace'] === undefined
        ? undefined
        : parseIntFlag(flags['gc-grace'], 'gc-grace', 30_000, 0, 86_400_000),
    orphanAgeMs:
      flags['orphan-age'] === undefined
        ? undefined
        : parseIntFlag(flags['orphan-age'], 'orphan-age', 600_000, 0, 30 * 86_400_000),
    autoRepairDelayMs:
      flags['repair-delay'] === undefined
        ? undefined
        : flags['repair-delay'] === 'off'
          ? null
          : parseIntFlag(flags['repair-delay'], 'repair-delay', 60_000, 0, 30 * 86_400_000),
    metricsListen:
      flags['metrics-listen'] === undefined
        ? undefined
        : parseListenFlag(flags['metrics-listen'], 'metrics-listen', `${listen.host}:0`),
    logLevel: parseLogLevel(flags['log-level']),
  });
}

async function chunk(argv: string[]): Promise<void> {
  const { flags, positionals } = parseFlags(argv, {
    dir: { type: 'string', env: 'DOGFS_DIR' },
    listen: { type: 'string', env: 'DOGFS_LISTEN' },
    'data-listen': { type: 'string', env: 'DOGFS_DATA_LISTEN' },
    id: { type: 'string', env: 'DOGFS_ID' },
    meta: { type: 'string', env: 'DOGFS_META' },
    'failure-domain': { type: 'string', env: 'DOGFS_FAILURE_DOMAIN' },
    capacity: { type: 'string', env: 'DOGFS_CAPACITY' },
    'scrub-rate': { type: 'string', env: 'DOGFS_SCRUB_RATE' },
    'metrics-listen': { type: 'string', env: 'DOGFS_METRICS_LISTEN' },
    repairs: { type: 'string', env: 'DOGFS_CHUNK_REPAIRS' },
    'repair-rate': { type: 'string', env: 'DOGFS_REPAIR_RATE' },
    'log-level': { type: 'string', env: 'DOGFS_LOG_LEVEL' },
  });
  noPositionals(positionals);
  sourceAddress(); // a bad DOGFS_SOURCE_ADDRESS stops the server now, not at its first connection
  const listen = parseListenFlag(flags.listen, 'listen', '127.0.0.1:0');
  skipOptimizingCompiler();
  await loadDaemonErrors();
  const { startChunkServer } = await import('../chunk/server.js');
  const { DEFAULT_REPAIR_BYTES_PER_SECOND, MIN_REPAIR_BYTES_PER_SECOND, RepairWorker } = await import(
    '../client/repair-worker.js'
  );
  const meta = flags.meta === undefined ? [] : parseAddressList(flags.meta, '--meta');
  const takeRepairs = flags.repairs ?? 'on';
  const repairRate = parseIntFlag(
    flags['repair-rate'],
    'repair-rate',
    DEFAULT_REPAIR_BYTES_PER_SECOND,
    0,
    2 ** 40,
  );
  if (repairRate !== 0 && repairRate < MIN_REPAIR_BYTES_PER_SECOND)
    throw new UsageError(
      `--repair-rate must be 0 (no limit) or at least ${MIN_REPAIR_BYTES_PER_SECOND} (1 MiB/s: a slower repair would outlast its transfers' deadline), got ${repairRate}`,
    );
  if (takeRepairs !== 'on' && takeRepairs !== 'off')
    throw new UsageError(`--repairs must be on or off, got '${takeRepairs.slice(0, 32)}'`);
  await startChunkServer({
    repairs:
      takeRepairs === 'off'
        ? undefined
        : (log) => new RepairWorker({ meta, log, bytesPerSecond: repairRate }),
    dir: requireFlag(flags.dir, 'dir', 'DOGFS_DIR'),
    id: flags.id,
    listen,
    dataListen: parseListenFlag(flags['data-listen'], 'data-listen', `${listen.host}:0`),
    meta,
    failureDomain: flags['failure-domain'] ?? 'default',
    capacityBytes:
      flags.capacity === undefined
        ? undefined
        : parseIntFlag(flags.capacity, 'capacity', 0, 0, Number.MAX_SAFE_INTEGER),
    scrubBytesPerSecond: parseIntFlag(flags['scrub-rate'], 'scrub-rate', 1024 * 1024, 0, 2 ** 40),
    metricsListen:
      flags['metrics-listen'] === undefined
        ? undefined
        : parseListenFlag(flags['metrics-listen'], 'metrics-listen', `${listen.host}:0`),
    logLevel: parseLogLevel(flags['log-level']),
  });
}

/**
 * A chunk server's work per byte is native (socket copies, CRC32C, disk I/O); its JavaScript runs a few
 * times per packet of up to 1 MiB, so it turns hot slowly and a fresh server kept compiling and
 * deoptimizing with V8's optimizing compiler through its first gigabytes: about a fifth of its CPU
 * during a put, more than the optimized code saved (figures in docs/ARCHITECTURE.md). An explicit
 * `node --opt` or `--no-opt` is left as given.
 */
function skipOptimizingCompiler(): void {
  if (process.execArgv.some((flag) => flag === '--opt' || flag === '--no-opt')) return;
  setFlagsFromString('--no-opt');
}

/** One line for a person; the codes of errors that are the user's to fix. */
function describe(error: unknown): { line: string; status: number } {
  if (error instanceof UsageError) return { line: `${error.message} (${shortUsageHint()})`, status: 2 };
  if (error instanceof AddressError || error instanceof EcPolicyError)
    return { line: error.message, status: 2 };
  if (USER_ERRORS.some((kind) => error instanceof kind)) return { line: (error as Error).message, status: 1 };
  if (error instanceof Error && typeof (error as NodeJS.ErrnoException).code === 'string') {
    return { line: error.message, status: 1 };
  }
  return {
    line: `internal error: ${error instanceof Error ? (error.stack ?? error.message) : String(error)}`,
    status: 70,
  };
}

function shortUsageHint(): string {
  return "run 'dogfs help' for usage";
}

export async function main(argv: string[]): Promise<number> {
  const [command, ...rest] = argv;
  // The servers and `up` log on stderr and keep running whatever happens to stdout (up.ts); the
  // one-shot commands end on a closed stdout as a C program does (cli/stdout.ts).
  const oneShot = command !== 'up' && command !== 'meta' && command !== 'chunk' && command !== 's3';
  const finish = oneShot ? watchStdout() : (status: number) => status;
  try {
    switch (command) {
      case undefined:
        // An error like any other: one line on stderr (the usage is `dogfs help`).
        throw new UsageError('no command given');
      case 'help':
      case '--help':
      case '-h':
        process.stdout.write(USAGE);
        return finish(0);
      case '--version':
      case 'version':
        process.stdout.write(`dogfs ${DOGFS_VERSION}\n`);
        return finish(0);
      case 'up':
        await up(rest).catch((error: unknown) => Promise.reject(new CommandFailure('up', error)));
        return 0;
      case 'meta':
        await meta(rest).catch((error: unknown) => Promise.reject(new CommandFailure('meta', error)));
        return 0;
      case 'chunk':
        await chunk(rest).catch((error: unknown) => Promise.reject(new CommandFailure('chunk', error)));
        return 0;
      case 's3': {
        const { runS3 } = await import('./s3.js');
        await runS3(rest).catch((error: unknown) => Promise.reject(new CommandFailure('s3', error)));
        return 0;
      }
      default:
        if (CLIENT_COMMANDS.has(command)) {
          // Loaded by file commands only: the servers (`meta`, `chunk`), `up` and `--version` start without
          // the client library, its codec and data path (about 50 ms of start-up each, here).
          const { runFileCommand } = await import('./files.js');
          return finish(await runFileCommand(command, rest, { signals: true }));
        }
        throw new UsageError(`unknown command '${command}'`);
    }
  } catch (error) {
    const failure = error instanceof CommandFailure ? error : undefined;
    const { line, status } = describe(failure ? failure.cause : error);
    process.stderr.write(`dogfs${failure ? ` ${failure.command}` : ''}: ${line}\n`);
    return status;
  }
}

const status = await main(process.argv.slice(2));
// Servers keep the event loop alive; a command that finished sets the exit status and lets Node exit.
if (status !== 0) process.exit(status);
