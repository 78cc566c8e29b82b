/**
 * cli/s3 — `dogfs s3`: runs the S3-compatible gateway (src/s3) in the foreground against a cluster's
 * metadata servers, until SIGINT or SIGTERM.
 */
import { DogfsClient } from '../client/index.js';
import { createLogger } from '../common/log.js';
import { DEFAULT_ABORT_UPLOADS_AFTER_MS, S3Gateway } from '../s3/index.js';
import {
  noPositionals,
  parseFlags,
  parseIntFlag,
  parseListenFlag,
  parseLogLevel,
  UsageError,
} from './args.js';
import { resolveEndpoints } from './files.js';

export async function runS3(argv: string[]): Promise<void> {
  const { flags, positionals } = parseFlags(argv, {
    listen: { type: 'string', env: 'DOGFS_S3_LISTEN' },
    meta: { type: 'string' },
    'access-key': { type: 'string', env: 'DOGFS_S3_ACCESS_KEY' },
    'secret-key': { type: 'string', env: 'DOGFS_S3_SECRET_KEY' },
    region: { type: 'string', env: 'DOGFS_S3_REGION' },
    'abort-uploads-after': { type: 'string', env: 'DOGFS_S3_ABORT_UPLOADS_AFTER_MS' },
    'log-level': { type: 'string', env: 'DOGFS_LOG_LEVEL' },
  });
  noPositionals(positionals);
  const listen = parseListenFlag(flags.listen, 'listen', '127.0.0.1:9000');
  const accessKey = flags['access-key'];
  const secretKey = flags['secret-key'];
  if ((accessKey === undefined) !== (secretKey === undefined))
    throw new UsageError(
      '--access-key and --secret-key go together (or neither, to accept unsigned requests)',
    );
  if (accessKey === '' || secretKey === '')
    throw new UsageError('--access-key and --secret-key must not be empty');
  const abortUploadsAfterMs =
    flags['abort-uploads-after'] === 'off'
      ? 0
      : parseIntFlag(
          flags['abort-uploads-after'],
          'abort-uploads-after',
          DEFAULT_ABORT_UPLOADS_AFTER_MS,
          1000,
          365 * 86_400_000,
        );
  const meta = await resolveEndpoints(flags.meta);
  const log = createLogger(parseLogLevel(flags['log-level']), { role: 's3', pid: process.pid });
  const client = new DogfsClient({ meta });
  const gateway = new S3Gateway({
    client,
    credentials: accessKey === undefined || secretKey === undefined ? undefined : { accessKey, secretKey },
    region: flags.region,
    abortUploadsAfterMs,
    // For tests only: how old an orphaned staged file must be to be removed (10 minutes otherwise),
    // and how long a completed upload's record is kept (an hour otherwise).
    stagedMaxAgeMs: testOnlyMs('DOGFS_S3_STAGED_MAX_AGE_MS'),
    completedKeptMs: testOnlyMs('DOGFS_S3_COMPLETED_KEPT_MS'),
    log,
  });
  const port = await gateway.listen(listen.host, listen.port);
  const endpoint = `http://${listen.host.includes(':') ? `[${listen.host}]` : listen.host}:${port}`;
  log.info('listening', { addr: `${listen.host}:${port}`, endpoint, meta, signed: accessKey !== undefined });
  gateway.startSweeping();
  if (accessKey === undefined && !isLoopback(listen.host))
    log.warn(
      'accepting unsigned requests on a non-loopback address: anyone who can reach it can read and write',
      {
        endpoint,
      },
    );
  const stop = () => {
    gateway.close().then(
      () => {
        client.close();
        process.exit(0);
      },
      () => process.exit(1),
    );
  };
  process.once('SIGINT', stop);
  process.once('SIGTERM', stop);
}

function isLoopback(host: string): boolean {
  return host.startsWith('127.') || host === '::1' || host === 'localhost';
}

/** A duration from environment variable `name` (tests shorten the gateway's waits with them). */
function testOnlyMs(name: string): number | undefined {
  const value = process.env[name];
  return value === undefined ? undefined : parseIntFlag(value, name, 0, 0, 86_400_000);
}
