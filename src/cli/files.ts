/**
 * cli/files — the file commands of DESIGN §7 on the client library: put, get, cat, ls, mkdir, rm, mv,
 * stat, admin report, admin repair. Endpoints come from --meta, else $DOGFS_META, else $DOGFS_CLUSTER /
 * ./cluster.json. Every failure is one line on stderr (`dogfs: /a/b: No such file or directory`) and a
 * non-zero exit; put and get show a progress bar on stderr when it is a terminal.
 */

import { randomBytes } from 'node:crypto';
import { constants as fsConstants, type Stats } from 'node:fs';
import {
  chmod,
  type FileHandle,
  lstat as localLstat,
  stat as localStat,
  open,
  readFile,
  realpath,
  rename,
  unlink,
} from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import { Transform, type TransformCallback, type Writable } from 'node:stream';
import { finished, pipeline } from 'node:stream/promises';
import { isatty } from 'node:tty';
import {
  baseName,
  DogfsClient,
  type FileStatus,
  type FileWriteStream,
  joinPath,
  type MemberView,
  normalizePath,
  type ReadSink,
  type RepairOutcome,
} from '../client/index.js';
import { AddressError, parseAddressList } from '../common/address.js';
import { EcPolicyError, parseNewEcPolicy } from '../common/ec-policy.js';
import { DogfsError, type ErrorCode, toDogfsError } from '../wire/errors.js';
import type { ClusterReportResponse } from '../wire/gen/types.js';
import { clusterReportJson } from '../wire/report-json.js';
import { parseFlags, parseIntFlag, UsageError } from './args.js';
import { type ByteStreamOut, LocalFileSink, StdoutSink } from './local-file.js';
import {
  BROKEN_PIPE_STATUS,
  endOpenLines,
  errnoText,
  registerOpenLine,
  stdoutFailureLine,
} from './stdout.js';
import { FILE_COMMANDS_USAGE } from './usage.js';

/** Buffering between the stages of a put or get (the local file, the progress bar). */
const STREAM_BUFFER_BYTES = 8 * 1024 * 1024;

/** Familiar messages for the codes a person sees about a path. */
const FAMILIAR: Partial<Record<ErrorCode, string>> = {
  NOT_FOUND: 'No such file or directory',
  ALREADY_EXISTS: 'File exists',
  NOT_A_DIRECTORY: 'Not a directory',
  IS_A_DIRECTORY: 'Is a directory',
  NOT_EMPTY: 'Directory not empty',
  PERMISSION_DENIED: 'Permission denied',
  NO_SPACE: 'No space left on device',
};

/** An error about a local path (the user's machine, not DogFS). */
class LocalError extends Error {
  override name = 'LocalError';
}

function localError(path: string, error: unknown): LocalError {
  return new LocalError(`${path}: ${errnoText(error)}`);
}

/** The one line printed for an error (without the `dogfs: ` prefix) and the exit status. */
export function describeClientError(error: unknown, operand?: string): { line: string; status: number } {
  if (error instanceof UsageError)
    return { line: `${error.message} (run 'dogfs help' for usage)`, status: 2 };
  if (error instanceof AddressError || error instanceof EcPolicyError)
    return { line: error.message, status: 2 };
  if (error instanceof LocalError) return { line: error.message, status: 1 };
  if (error instanceof DogfsError) {
    const familiar = FAMILIAR[error.code];
    const firstLine = error.message.split('\n')[0] ?? '';
    if (familiar !== undefined) {
      const at = /^(\/[^:]*): /.exec(firstLine);
      const path = at?.[1] ?? operand;
      // A name held by a write in progress is not a file anyone can see yet: say which it is.
      const why =
        error.code === 'ALREADY_EXISTS' && /being written/.test(firstLine)
          ? `${familiar} (being written by another client, until that write ends or its lease expires)`
          : familiar;
      // About no path (a chunk server, a block group): the service's own words say what was not found.
      if (path === undefined) return { line: firstLine || why, status: 1 };
      return { line: `${path}: ${why}`, status: 1 };
    }
    if (error.code === 'INVALID_ARGUMENT' && operand !== undefined && !firstLine.startsWith('/')) {
      return { line: `${operand}: ${firstLine}`, status: 1 };
    }
    return { line: firstLine, status: 1 };
  }
  const code = (error as NodeJS.ErrnoException | undefined)?.code;
  if (error instanceof Error && typeof code === 'string') return { line: error.message, status: 1 };
  return {
    line: `internal error: ${error instanceof Error ? (error.stack ?? error.message) : String(error)}`,
    status: 70,
  };
}

/** Metadata endpoints: --meta, else $DOGFS_META, else $DOGFS_CLUSTER or ./cluster.json. */
export async function resolveEndpoints(
  flag: string | undefined,
  env: NodeJS.ProcessEnv = process.env,
): Promise<string[]> {
  const direct = flag ?? (env['DOGFS_META'] === '' ? undefined : env['DOGFS_META']);
  if (direct !== undefined) return parseAddressList(direct, flag === undefined ? '$DOGFS_META' : '--meta');
  const fromEnv = env['DOGFS_CLUSTER'];
  const file = fromEnv !== undefined && fromEnv !== '' ? fromEnv : 'cluster.json';
  let text: string;
  try {
    text = await readFile(file, 'utf8');
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'ENOENT' && (fromEnv === undefined || fromEnv === '')) {
      throw new UsageError(
        'no metadata servers given: use --meta HOST:PORT,..., $DOGFS_META, $DOGFS_CLUSTER or ./cluster.json',
      );
    }
    throw localError(file, error);
  }
  let meta: unknown;
  try {
    meta = (JSON.parse(text) as { meta?: unknown }).meta;
  } catch {
    throw new LocalError(`${file}: not valid JSON`);
  }
  if (!Array.isArray(meta) || meta.length === 0 || !meta.every((m) => typeof m === 'string')) {
    throw new LocalError(`${file}: no "meta" array of host:port strings`);
  }
  return parseAddressList((meta as string[]).join(','), `${file} meta`);
}

// ---------------------------------------------------------------------------------------------------
// Progress

function formatBytes(n: number): string {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let value = n;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit++;
  }
  return unit === 0 ? `${Math.round(n)} B` : `${value.toFixed(1)} ${units[unit]}`;
}

function formatDuration(seconds: number): string {
  if (!Number.isFinite(seconds) || seconds < 0) return '--:--';
  const s = Math.round(seconds);
  const h = Math.floor(s / 3600);
  const m = Math.floor((s % 3600) / 60);
  const rest = String(s % 60).padStart(2, '0');
  return h > 0 ? `${h}:${String(m).padStart(2, '0')}:${rest}` : `${m}:${rest}`;
}

/** Counts bytes passing through (no copy) and draws a bar on a terminal's stderr. */
export class Progress extends Transform {
  private bytes = 0;
  private readonly started = Date.now();
  private lastDraw = 0;
  private readonly tty: boolean;
  /** Set while a drawn bar's line has no newline yet: unregisters the line's end (cli/stdout.ts). */
  private openLine: (() => void) | undefined;

  constructor(
    private readonly label: string,
    private readonly total: number | undefined,
    private readonly out: Pick<NodeJS.WriteStream, 'write' | 'isTTY' | 'columns'> = process.stderr,
  ) {
    // Passes chunks through without copying; a larger buffer than the 16 KiB default keeps the stages on
    // either side from waiting on each other chunk by chunk.
    super({ highWaterMark: STREAM_BUFFER_BYTES });
    this.tty = out.isTTY === true;
  }

  override _transform(chunk: Buffer, _encoding: BufferEncoding, callback: TransformCallback): void {
    this.update(this.bytes + chunk.length);
    callback(null, chunk);
  }

  override _flush(callback: TransformCallback): void {
    this.done();
    callback();
  }

  /** For bytes that do not pass through: `bytes` have been moved so far. */
  update(bytes: number): void {
    this.bytes = bytes;
    const now = Date.now();
    if (this.tty && now - this.lastDraw >= 200) {
      this.lastDraw = now;
      this.draw(now);
    }
  }

  /** The final state of the bar, and the end of its line. */
  done(): void {
    if (this.tty) {
      this.draw(Date.now(), true);
      this.endLine();
    }
  }

  /** After a failure: ends the bar's line if one was drawn, without drawing a final state. */
  abandon(): void {
    this.endLine();
  }

  /**
   * Ends the bar's line with a newline if it is open. Once: a line ended already (by an interrupt, or by
   * done before a later step failed) gets no empty line after it.
   */
  private endLine(): void {
    if (this.openLine === undefined) return;
    this.openLine();
    this.openLine = undefined;
    this.out.write('\n');
  }

  /** `final`: the transfer is over, and its average rate is worth showing however short it was. */
  private draw(now: number, final = false): void {
    const seconds = Math.max((now - this.started) / 1000, 0.001);
    const rate = this.bytes / seconds;
    const total = this.total;
    const width = 24;
    let bar = '';
    let eta = '';
    if (total !== undefined && total > 0) {
      const done = Math.min(1, this.bytes / total);
      const filled = Math.round(done * width);
      bar = `[${'#'.repeat(filled)}${'.'.repeat(width - filled)}] ${(done * 100).toFixed(0).padStart(3)}% `;
      // A rate from less than a second, or from nothing moved yet, predicts nothing.
      const known = final || (seconds >= 1 && this.bytes > 0);
      eta = ` ETA ${known ? formatDuration((total - this.bytes) / rate) : '--:--'}`;
    }
    const of = total === undefined ? '' : ` / ${formatBytes(total)}`;
    const speed = final || seconds >= 1 ? `${formatBytes(rate)}/s` : '--/s';
    const line = `${this.label} ${bar}${formatBytes(this.bytes)}${of}  ${speed}${eta}`;
    // A terminal of unknown size (a pseudo-terminal nobody sized) reports 0 columns: not a width.
    const columns = this.out.columns > 0 ? this.out.columns : 100;
    this.out.write(`\r${line.slice(0, columns - 1)}\x1b[K`);
    // Ended by done or abandon, or, should the process end first (a closed stdout kills it), before it.
    this.openLine ??= registerOpenLine(() => this.endLine());
  }
}

// ---------------------------------------------------------------------------------------------------
// Commands

interface Context {
  client: DogfsClient;
  stdout: Writable;
  stdin: NodeJS.ReadableStream;
  /**
   * Registers what an interrupt (SIGHUP, SIGINT, SIGTERM) must undo before the process exits: a put's
   * pending file abandoned, a get's temporary file removed. Returns the unregistering function.
   */
  onInterrupt(cleanup: () => Promise<void>): () => void;
}

/** Time an interrupted command gets to clean up (abandon its write, remove its temp file) before exit. */
const INTERRUPT_CLEANUP_MS = 3000;

/** The signals a file command cleans up after, with the status a shell shows for each (128 + number). */
const INTERRUPT_STATUS = { SIGHUP: 129, SIGINT: 130, SIGTERM: 143 } as const;
type InterruptSignal = keyof typeof INTERRUPT_STATUS;
const INTERRUPT_SIGNALS = Object.keys(INTERRUPT_STATUS) as InterruptSignal[];

/**
 * Destroys a write stream, which abandons its file, and waits until the service has had the word; a
 * Create still on its way is waited for first (its file is abandoned once it answers), within the
 * interrupt's time limit.
 */
async function abandonWrite(stream: FileWriteStream): Promise<void> {
  if (!stream.closed) {
    const closed = new Promise<void>((resolve) => stream.once('close', () => resolve()));
    stream.destroy(new DogfsError('CANCELLED', 'interrupted'));
    await closed;
  }
  await stream.abandoned;
}

function modeString(status: FileStatus): string {
  const bits = 'rwxrwxrwx';
  let out = status.type === 'dir' ? 'd' : '-';
  for (let i = 0; i < 9; i++) out += status.mode & (1 << (8 - i)) ? bits[i] : '-';
  return out;
}

function timeString(ms: number): string {
  return ms > 0 ? new Date(ms).toISOString().slice(0, 19).replace('T', ' ') : '-';
}

/** What `stat --json` and `ls --json` print for a name. */
export function statusJson(status: FileStatus): Record<string, unknown> {
  return {
    path: status.path,
    name: status.name,
    type: status.type,
    size: status.size,
    mtime: status.mtime,
    ec: status.ec,
    mode: `0${(status.mode & 0o7777).toString(8)}`,
    id: status.id,
  };
}

function lsLine(status: FileStatus): string {
  const name = status.type === 'dir' ? `${status.name}/` : status.name;
  return `${modeString(status)} ${String(status.size).padStart(12)} ${timeString(status.mtime)} ${(status.ec || '-').padEnd(8)} ${name}\n`;
}

/** Writes to stdout honouring back-pressure. */
async function print(out: Writable, text: string): Promise<void> {
  if (!out.write(text)) {
    await new Promise<void>((resolve, reject) => {
      const onError = (error: Error) => {
        out.off('drain', onDrain);
        reject(error);
      };
      const onDrain = () => {
        out.off('error', onError);
        resolve();
      };
      out.once('drain', onDrain);
      out.once('error', onError);
    });
  }
}

const MAX_LS_DEPTH = 256;

async function ls(ctx: Context, argv: string[]): Promise<string | undefined> {
  const { flags, positionals } = parseFlags(argv, {
    recursive: { type: 'boolean', short: 'R' },
    json: { type: 'boolean' },
    meta: { type: 'string' },
  });
  if (positionals.length > 1) throw new UsageError(`ls takes one PATH, got ${positionals.length}`);
  const path = normalizePath(positionals[0] ?? '/');
  const top = await ctx.client.stat(path);
  let first = true;
  if (flags.json) await print(ctx.stdout, '[');
  const emit = async (status: FileStatus) => {
    if (flags.json) {
      await print(ctx.stdout, `${first ? '\n' : ',\n'}${JSON.stringify(statusJson(status))}`);
    } else {
      await print(ctx.stdout, lsLine(status));
    }
    first = false;
  };
  if (top.type === 'file') {
    await emit(top);
  } else {
    const walk = async (dir: string, depth: number): Promise<void> => {
      if (depth > MAX_LS_DEPTH)
        throw new DogfsError('INVALID_ARGUMENT', `${dir}: deeper than ${MAX_LS_DEPTH} levels`);
      const subdirs: string[] = [];
      if (flags.recursive && !flags.json) await print(ctx.stdout, `${depth === 0 ? '' : '\n'}${dir}:\n`);
      try {
        for await (const entry of ctx.client.list(dir)) {
          await emit(entry);
          if (flags.recursive && entry.type === 'dir') subdirs.push(entry.path);
        }
      } catch (error) {
        // A subdirectory removed (or renamed) since its parent was listed: gone, as ls -R would skip it.
        if (depth > 0 && error instanceof DogfsError && error.code === 'NOT_FOUND') return;
        throw error;
      }
      for (const sub of subdirs) await walk(sub, depth + 1);
    };
    try {
      await walk(path, 0);
    } catch (error) {
      // Still a JSON document (the error goes to stderr, the exit status says it failed).
      if (flags.json) await print(ctx.stdout, first ? ']\n' : '\n]\n').catch(() => {});
      throw error;
    }
  }
  if (flags.json) await print(ctx.stdout, first ? ']\n' : '\n]\n');
  return path;
}

async function statCommand(ctx: Context, argv: string[]): Promise<void> {
  const { flags, positionals } = parseFlags(argv, { json: { type: 'boolean' }, meta: { type: 'string' } });
  const path = onePath(positionals, 'stat');
  const status = await ctx.client.stat(path);
  const groups = status.inode.blockGroups.map((g) => ({
    id: g.id,
    offset: g.offset,
    length: g.length,
    k: g.dataShards,
    m: g.parityShards,
    shards: g.shards.map((s) => ({
      index: s.index,
      chunkServer: s.chunkServerId,
      addr: s.addr,
      durable: s.durable,
    })),
  }));
  if (flags.json) {
    await print(ctx.stdout, `${JSON.stringify({ ...statusJson(status), blockGroups: groups })}\n`);
    return;
  }
  const durable = groups.reduce((a, g) => a + g.shards.filter((s) => s.durable).length, 0);
  const total = groups.reduce((a, g) => a + g.shards.length, 0);
  const lines = [
    `path: ${status.path}`,
    `type: ${status.type === 'dir' ? 'directory' : 'file'}`,
    `size: ${status.size}`,
    `mode: ${modeString(status)} (0${(status.mode & 0o7777).toString(8)})`,
    `mtime: ${status.mtime > 0 ? `${timeString(status.mtime)} UTC` : '-'}`,
    `ec: ${status.ec || '-'}`,
    `inode: ${status.id}`,
  ];
  if (status.type === 'file')
    lines.push(`block groups: ${groups.length} (${durable} of ${total} shards durable)`);
  await print(ctx.stdout, `${lines.join('\n')}\n`);
}

async function statIfExists(client: DogfsClient, path: string): Promise<FileStatus | undefined> {
  try {
    return await client.stat(path);
  } catch (error) {
    if (error instanceof DogfsError && error.code === 'NOT_FOUND') return undefined;
    throw error;
  }
}

function onePath(positionals: string[], command: string): string {
  if (positionals.length !== 1) throw new UsageError(`${command} takes one PATH`);
  return normalizePath(positionals[0]!);
}

async function put(ctx: Context, argv: string[]): Promise<string> {
  const { flags, positionals } = parseFlags(argv, {
    ec: { type: 'string' },
    force: { type: 'boolean', short: 'f' },
    meta: { type: 'string' },
  });
  if (positionals.length !== 2) throw new UsageError('put takes LOCAL REMOTE');
  const [local, remoteArg] = positionals as [string, string];
  if (flags.ec !== undefined) parseNewEcPolicy(flags.ec);
  let remote = normalizePath(remoteArg);
  // Putting into an existing directory stores the file under its own name there, as cp does.
  const existing = await statIfExists(ctx.client, remote);
  if (existing?.type === 'dir') {
    if (local === '-') throw new DogfsError('IS_A_DIRECTORY', `${remote}: Is a directory`);
    remote = joinPath(remote, basename(local));
  } else if (remoteArg.endsWith('/')) {
    // `put f /name/` means into a directory /name, as cp reads it: not a file named /name.
    throw new DogfsError('NOT_A_DIRECTORY', `${remote}: Not a directory`);
  }
  let size: number | undefined;
  let handle: Awaited<ReturnType<typeof open>> | undefined;
  if (local !== '-') {
    try {
      handle = await open(local, 'r');
      const info = await handle.stat();
      if (info.isDirectory()) {
        await handle.close();
        throw new LocalError(`${local}: Is a directory`);
      }
      size = info.isFile() ? info.size : undefined;
    } catch (error) {
      if (error instanceof LocalError) throw error;
      throw localError(local, error);
    }
  }
  const options = {
    ...(flags.ec === undefined ? {} : { ec: flags.ec }),
    ...(flags.force ? { overwrite: true } : {}),
  };
  const progress = new Progress(`put ${remote}`, size);
  if (handle === undefined || size === undefined) {
    // stdin, a pipe or a device: a stream of unknown length.
    const source = handle?.createReadStream({ highWaterMark: 1024 * 1024 }) ?? ctx.stdin;
    const sink = ctx.client.createWriteStream(remote, options);
    const unregister = ctx.onInterrupt(() => abandonWrite(sink));
    try {
      await pipeline(source, progress, sink);
    } catch (error) {
      progress.abandon();
      throw error;
    } finally {
      unregister();
    }
    return remote;
  }
  // A regular file: read straight into the writer's stripe buffers, no stream in between (each read
  // stream buffer is fresh memory, and its bytes were then copied into a stripe).
  const file = handle;
  let unregister = (): void => {};
  try {
    const sink = ctx.client.createWriteStream(remote, {
      ...options,
      size,
      source: {
        read: (buffer, offset, length, position) =>
          file.read(buffer, offset, length, position).catch((error: unknown) => {
            throw localError(local, error);
          }),
      },
      onProgress: (bytes) => progress.update(bytes),
    });
    unregister = ctx.onInterrupt(() => abandonWrite(sink));
    sink.end();
    await finished(sink);
    progress.done();
  } catch (error) {
    progress.abandon();
    // The failure of the put is what gets reported, not a failure to close after it.
    await file.close().catch(() => {});
    throw error;
  } finally {
    unregister();
  }
  await file.close();
  return remote;
}

async function get(ctx: Context, argv: string[]): Promise<string> {
  const { positionals } = parseFlags(argv, { meta: { type: 'string' } });
  if (positionals.length !== 2) throw new UsageError('get takes REMOTE LOCAL');
  const [remoteArg, localArg] = positionals as [string, string];
  const remote = normalizePath(remoteArg);
  const status = await ctx.client.stat(remote);
  if (status.type === 'dir') throw new DogfsError('IS_A_DIRECTORY', `${remote}: Is a directory`);
  if (localArg === '-') {
    // The bar as for a get into a file, on stderr when that is a terminal, but not when stdout is one
    // too: it would be drawn among the file's bytes. (`cat` never draws one: see cat.)
    const toTerminal = process.stdout.isTTY === true;
    await toStdout(ctx, remote, toTerminal ? undefined : new Progress(`get ${remote}`, status.size));
    return remote;
  }
  let local = localArg;
  let localInfo = await localTarget(local);
  if (localInfo?.isDirectory()) {
    local = join(local, basename(remote));
    localInfo = await localTarget(local);
  } else if (localArg.endsWith('/')) {
    // `get /x name/` means into a directory, as cp reads it: not a file named `name`.
    throw new LocalError(`${localArg}: Not a directory`);
  }
  if (localInfo !== undefined && !localInfo.isFile() && !localInfo.isDirectory()) {
    // A device or a FIFO (/dev/null, a named pipe): written where it is, as cp does. The rename below
    // would replace it with a regular file.
    await toSpecialFile(ctx, remote, local, status.size);
    return remote;
  }
  // Through a symbolic link: the file it names is replaced (as cp writes through one), not the link.
  if (localInfo?.isFile()) {
    const named = local;
    local = await realpath(named).catch((error: unknown) => {
      throw localError(named, error);
    });
  }
  // Into a temporary file beside the target, renamed into place at the end: never half a file.
  // A short name of its own: the target's name plus a suffix could pass the 255 bytes a name may have.
  const temp = join(dirname(local), `.dogfs-get-${randomBytes(6).toString('hex')}.tmp`);
  let out: LocalFileSink;
  try {
    // Around the page cache where the filesystem allows (cli/local-file.ts says why).
    out = await LocalFileSink.create(temp, { mode: 0o644 });
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code;
    throw localError(
      code === 'ENOENT' || code === 'EACCES' || code === 'EROFS' ? dirname(local) : local,
      error,
    );
  }
  const unregister = ctx.onInterrupt(async () => {
    out.destroy();
    await unlink(temp).catch(() => {});
  });
  // A file replaced keeps its permissions exactly (a script stays executable), as cp's overwrite does;
  // the mode given at creation is cut by the umask.
  // Permission bits and the sticky bit only: set-user/group-ID are not carried onto new content, as a
  // write through cp clears them.
  const replacedMode = localInfo?.isFile() ? localInfo.mode & 0o1777 : undefined;
  const progress = new Progress(`get ${remote}`, status.size);
  try {
    // Each stripe is copied once, from the receive buffers straight into the file's staging memory.
    try {
      await ctx.client.readInto(remote, counted(out, progress));
    } catch (error) {
      out.destroy();
      throw error;
    }
    await finished(out.end());
    progress.done();
    // After the writes: a read-only mode set before them refused the file's later opens for writing.
    if (replacedMode !== undefined)
      await chmod(temp, replacedMode).catch((error: unknown) => {
        throw localError(local, error);
      });
    await rename(temp, local).catch((error: unknown) => {
      throw localError(local, error);
    });
  } catch (error) {
    progress.abandon();
    await unlink(temp).catch(() => {});
    // A failed write of the local file (a full disk) is about that file, not the remote one.
    throw out.failure === undefined ? error : localError(local, out.failure);
  } finally {
    unregister();
  }
  return remote;
}

/**
 * Like cat(1), prints the file and nothing else: no progress bar, even with stderr a terminal, since
 * its output usually goes to a pager (`dogfs cat f | less`) that a bar on the terminal would draw over.
 * `get REMOTE -` is the transfer command that shows one.
 */
async function cat(ctx: Context, argv: string[]): Promise<string> {
  const { positionals } = parseFlags(argv, { meta: { type: 'string' } });
  const remote = onePath(positionals, 'cat');
  await toStdout(ctx, remote);
  return remote;
}

/**
 * A file to stdout: the process's own through reused stripe buffers (StdoutSink), any other stream
 * (the tests' PassThrough, which keeps what it is given) through a read stream.
 */
async function toStdout(ctx: Context, remote: string, progress?: Progress): Promise<void> {
  if (ctx.stdout !== process.stdout) {
    await pipeline(ctx.client.createReadStream(remote), ctx.stdout, { end: false });
    return;
  }
  const out = new RecordingOut(process.stdout);
  try {
    await intoByteStream(ctx, remote, out, progress);
  } catch (error) {
    // The read path reports a failed write as its own failure, under the remote path: say it was stdout.
    // A closed pipe stays EPIPE, which ends the command silently.
    const failure = out.failure as NodeJS.ErrnoException | undefined;
    if (failure === undefined) throw error;
    throw failure.code === 'EPIPE' ? failure : new LocalError(stdoutFailureLine(failure));
  }
}

/** Passes writes on, keeping the first that failed. */
class RecordingOut implements ByteStreamOut {
  failure: Error | undefined;

  constructor(private readonly target: ByteStreamOut) {}

  write(chunk: Uint8Array, callback: (error?: Error | null) => void): boolean {
    return this.target.write(chunk, (error) => {
      if (error) this.failure ??= error;
      callback(error);
    });
  }
}

/**
 * What is at a local target path, following symbolic links; undefined if nothing is. A symbolic link
 * to nothing is refused, as cp refuses to write through one, rather than replaced by the file.
 */
async function localTarget(path: string): Promise<Stats | undefined> {
  try {
    return await localStat(path);
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code !== 'ENOENT') throw localError(path, error);
    const link = await localLstat(path).catch(() => undefined);
    if (link?.isSymbolicLink()) throw new LocalError(`${path}: not writing through a dangling symbolic link`);
    return undefined;
  }
}

/**
 * A file into an existing device or FIFO, opened for writing as it is (nothing created or renamed).
 * A failed write (ENOSPC from /dev/full, EPIPE from a FIFO whose reader left) is an error naming it.
 */
async function toSpecialFile(ctx: Context, remote: string, local: string, size: number): Promise<void> {
  const handle = await open(local, fsConstants.O_WRONLY).catch((error: unknown) => {
    throw localError(local, error);
  });
  // A terminal (/dev/stdout, /dev/tty) would show the bar among the file's bytes, as for `get -`.
  const progress = isatty(handle.fd) ? undefined : new Progress(`get ${remote}`, size);
  const out = new DescriptorOut(handle);
  let failure: unknown;
  try {
    await intoByteStream(ctx, remote, out, progress);
  } catch (error) {
    // The read path reports a failed write as its own failure: name the local file instead.
    failure = out.failure === undefined ? error : localError(local, out.failure);
  }
  await handle.close().catch((error: unknown) => {
    failure ??= localError(local, error);
  });
  if (failure !== undefined) throw failure;
}

/** `sink`, telling `progress` the bytes put in so far after each commit. */
function counted(sink: ReadSink, progress: Progress | undefined): ReadSink {
  let bytes = 0;
  let reserved = 0;
  return {
    reserve: (length) => {
      reserved = length;
      return sink.reserve(length);
    },
    commit: async () => {
      await sink.commit();
      bytes += reserved;
      progress?.update(bytes);
    },
  };
}

/** Writes to an open descriptor in order, one write at a time (a device or a FIFO has no positions). */
class DescriptorOut implements ByteStreamOut {
  private tail: Promise<void> = Promise.resolve();
  /** The first write that failed; every later one fails with it, so nothing is skipped over. */
  failure: Error | undefined;

  constructor(private readonly handle: FileHandle) {}

  write(chunk: Uint8Array, callback: (error?: Error | null) => void): boolean {
    this.tail = this.tail.then(async () => {
      for (let done = 0; done < chunk.length; ) {
        const { bytesWritten } = await this.handle.write(chunk, done, chunk.length - done);
        if (bytesWritten <= 0) throw Object.assign(new Error('write made no progress'), { code: 'EIO' });
        done += bytesWritten;
      }
    });
    this.tail.then(
      () => callback(),
      (error: Error) => {
        this.failure ??= error;
        callback(error);
      },
    );
    return true;
  }
}

/** A file into `out`, with a progress bar when one is given (it draws only on a terminal's stderr). */
async function intoByteStream(
  ctx: Context,
  remote: string,
  out: ByteStreamOut,
  progress?: Progress,
): Promise<void> {
  const sink = new StdoutSink(out);
  try {
    await ctx.client.readInto(remote, counted(sink, progress));
    await sink.flush();
    progress?.done();
  } catch (error) {
    progress?.abandon();
    // The read's failure is the one reported; the writes still in flight are only waited for.
    await sink.flush().catch(() => {});
    throw error;
  }
}

/** Milliseconds as seconds for a person: '60 s', '1.5 s'. */
const seconds = (ms: number): string => `${Math.round(ms / 100) / 10} s`;

function formatReport(report: ClusterReportResponse): string {
  const lines: string[] = ['Metadata groups:'];
  lines.push('  group  leader                 term      commit  members');
  for (const g of report.groups) {
    lines.push(
      `  ${String(g.group).padEnd(5)}  ${(g.leader || '(none)').padEnd(21)}  ${String(g.term).padStart(4)}  ${String(g.commitIndex).padStart(10)}  ${g.members.join(',')}`,
    );
  }
  lines.push('', 'Chunk servers:');
  lines.push('  id           state  domain     used / capacity          shards  address');
  for (const c of report.chunkServers) {
    lines.push(
      `  ${c.id.padEnd(11)}  ${c.state.padEnd(5)}  ${(c.failureDomain || '-').padEnd(9)}  ${`${formatBytes(c.usedBytes)} / ${formatBytes(c.capacityBytes)}`.padEnd(23)}  ${String(c.shardCount).padStart(6)}  ${c.addr}${c.draining ? '  (draining)' : ''}`,
    );
  }
  const alive = report.chunkServers.filter((c) => c.state === 'alive').length;
  lines.push(`  ${alive} of ${report.chunkServers.length} alive`);
  const draining = report.chunkServers.filter((c) => c.draining).map((c) => c.id);
  if (draining.length > 0)
    lines.push(
      `  draining: ${draining.join(', ')}; files with a shard still on them: ${report.filesOnDrainingServers}`,
    );
  lines.push(
    '',
    `Files with missing shards: ${Math.max(report.filesWithMissingShardsCount, report.filesWithMissingShards.length)}`,
  );
  for (const f of report.filesWithMissingShards.slice(0, 100)) lines.push(`  ${f}`);
  if (report.filesWithMissingShardsCount > 100) lines.push('  ...');
  lines.push(
    '',
    report.autoRepair
      ? `Automatic repair: files damaged for ${seconds(report.autoRepairDelayMs)} are rebuilt by chunk servers; ${report.repairs.length} in progress`
      : 'Automatic repair: off (dogfs admin repair rebuilds damaged files)',
  );
  for (const r of report.repairs.slice(0, 100))
    lines.push(`  ${r.path} on ${r.chunkServerId} for ${seconds(Math.max(0, Date.now() - r.sinceMs))}`);
  if (report.unfinishedRepairs.length > 0) {
    lines.push(`  could not finish (tried again later): ${report.unfinishedRepairs.length}`);
    for (const u of report.unfinishedRepairs.slice(0, 100))
      lines.push(`  ${u.path} (${u.chunkServerId}): ${u.reason}`);
  }
  for (const r of report.rebalancing)
    lines.push(
      `  rebalancing: ${r.id} holds more than its share (${Math.round(r.usedFraction * 100)}% used, cluster ${Math.round(r.clusterFraction * 100)}%): shards move to emptier servers${report.filesWithMissingShardsCount > 0 || report.filesOnDrainingServers > 0 ? ' once no file is damaged or on a draining server' : ''}`,
    );
  if (report.codecBackend) lines.push('', `Codec backend: ${report.codecBackend}`);
  if (report.clusterId) lines.push(`Cluster id: ${report.clusterId}`);
  return `${lines.join('\n')}\n`;
}

const GROUP_NAMES: Readonly<Record<number, string>> = { 0: 'cluster', 1: 'namespace' };

function membersJson(views: readonly MemberView[]) {
  return views.map((v) =>
    v.error !== undefined
      ? { addr: v.addr, error: { code: v.error.code, message: v.error.message } }
      : {
          addr: v.addr,
          groups: v.groups.map((g) => ({
            group: g.group,
            role: g.role,
            term: g.term,
            leader: g.leaderAddr,
            commitIndex: g.commitIndex,
            appliedIndex: g.appliedIndex,
          })),
        },
  );
}

/**
 * `admin members`: each server's own view, then per group who leads by those views (the leader named
 * at the highest term, by itself or by a follower: a cut-off old leader may still say so at an older
 * one), or that none of those that answered knows one.
 */
function formatMembers(views: readonly MemberView[]): string {
  const lines = ["Metadata servers, each one's own view (no quorum needed):"];
  lines.push(
    '  server                 group           role            term  leader                  commit   applied',
  );
  const leaders = new Map<number, { addr: string; term: number }>();
  const groups = new Set<number>();
  for (const v of views) {
    if (v.error !== undefined) {
      lines.push(`  ${v.addr.padEnd(21)}  no answer: ${v.error.message}`);
      continue;
    }
    for (const g of v.groups) {
      groups.add(g.group);
      // A follower names the leader it follows: with one seed given, that is all there is to go on.
      if (g.leaderAddr !== '' && g.term > (leaders.get(g.group)?.term ?? -1))
        leaders.set(g.group, { addr: g.leaderAddr, term: g.term });
      const name = `${g.group} (${GROUP_NAMES[g.group] ?? 'group'})`;
      lines.push(
        `  ${v.addr.padEnd(21)}  ${name.padEnd(14)}  ${g.role.padEnd(12)}  ${String(g.term).padStart(6)}  ${(g.leaderAddr || '(none)').padEnd(21)}  ${String(g.commitIndex).padStart(8)}  ${String(g.appliedIndex).padStart(8)}`,
      );
    }
  }
  lines.push('');
  for (const group of [...groups].sort((a, b) => a - b)) {
    const leader = leaders.get(group);
    lines.push(
      leader === undefined
        ? `Group ${group} (${GROUP_NAMES[group] ?? 'group'}): no leader — a majority of its metadata servers must be up and reach each other`
        : `Group ${group} (${GROUP_NAMES[group] ?? 'group'}): led by ${leader.addr}, term ${leader.term}`,
    );
  }
  return `${lines.join('\n')}\n`;
}

/** Deadline of each metadata call of a repair. */
const REPAIR_CALL_MS = 60_000;
/** Report pages (of up to 1000 damaged files) one `admin repair` without a PATH goes through. */
const MAX_REPAIR_PAGES = 100_000;

function formatRepair(o: RepairOutcome): string {
  if (o.damagedBlockGroups === 0) return `${o.path}: no missing shards`;
  // A moved shard copied from its holder is not rebuilt: said apart, and only when there is one.
  const copied = o.shardsCopied > 0 ? `, copied ${o.shardsCopied}` : '';
  const rebuilt = `${o.path}: rebuilt ${o.shardsRebuilt} shard(s)${copied} in ${o.repairedBlockGroups} of ${o.damagedBlockGroups} damaged block group(s), ${formatBytes(o.bytesWritten)} written`;
  return o.unrepaired.length === 0 ? rebuilt : `${rebuilt}; ${o.unrepaired.length} left: ${o.unrepaired[0]}`;
}

async function admin(ctx: Context, argv: string[]): Promise<string | undefined> {
  const [sub, ...rest] = argv;
  if (sub === 'report') {
    const { flags, positionals } = parseFlags(rest, { json: { type: 'boolean' }, meta: { type: 'string' } });
    if (positionals.length > 0) throw new UsageError(`unexpected argument '${positionals[0]}'`);
    const report = await ctx.client.report();
    await print(
      ctx.stdout,
      flags.json ? `${JSON.stringify(clusterReportJson(report), null, 2)}\n` : formatReport(report),
    );
    return undefined;
  }
  if (sub === 'settings') {
    const { flags, positionals } = parseFlags(rest, {
      json: { type: 'boolean' },
      meta: { type: 'string' },
      'stripe-size': { type: 'string' },
      'block-group-size': { type: 'string' },
      'dead-after': { type: 'string' },
      lease: { type: 'string' },
      heartbeat: { type: 'string' },
      'default-ec': { type: 'string' },
    });
    if (positionals.length > 0) throw new UsageError(`unexpected argument '${positionals[0]}'`);
    type NumberFlag = 'stripe-size' | 'block-group-size' | 'dead-after' | 'lease' | 'heartbeat';
    const number = (flag: NumberFlag, max: number) => parseIntFlag(flags[flag], flag, 0, 1, max);
    const ec = flags['default-ec'];
    if (ec !== undefined) parseNewEcPolicy(ec);
    const update = {
      stripeSize: number('stripe-size', 2 ** 31),
      blockGroupMaxBytes: number('block-group-size', 2 ** 50),
      deadAfterMs: number('dead-after', 2 ** 31),
      leaseMs: number('lease', 2 ** 31),
      heartbeatIntervalMs: number('heartbeat', 2 ** 31),
      defaultEc: ec ?? '',
    };
    const changing = Object.values(update).some((v) => v !== 0 && v !== '');
    const settings = changing ? await ctx.client.setSettings(update) : (await ctx.client.report()).settings;
    if (!settings) throw new DogfsError('INTERNAL', 'the cluster report carried no settings');
    const plain = {
      defaultEc: settings.defaultEc,
      stripeSize: settings.stripeSize,
      blockGroupMaxBytes: settings.blockGroupMaxBytes,
      heartbeatIntervalMs: settings.heartbeatIntervalMs,
      deadAfterMs: settings.deadAfterMs,
      leaseMs: settings.leaseMs,
    };
    await print(
      ctx.stdout,
      flags.json
        ? `${JSON.stringify(plain, null, 2)}\n`
        : [
            `default EC        ${plain.defaultEc}`,
            `stripe size       ${plain.stripeSize} (${formatBytes(plain.stripeSize)})`,
            `block-group size  ${plain.blockGroupMaxBytes} (${formatBytes(plain.blockGroupMaxBytes)})`,
            `heartbeat         ${plain.heartbeatIntervalMs} ms`,
            `dead after        ${plain.deadAfterMs} ms`,
            `write lease       ${plain.leaseMs} ms`,
            '',
          ].join('\n'),
    );
    return undefined;
  }
  if (sub === 'repair') {
    const { flags, positionals } = parseFlags(rest, { json: { type: 'boolean' }, meta: { type: 'string' } });
    if (positionals.length > 1) throw new UsageError('admin repair takes at most one PATH');
    const outcomes: RepairOutcome[] = [];
    const failed: string[] = [];
    const report = async (outcome: RepairOutcome) => {
      outcomes.push(outcome);
      if (!flags.json) await print(ctx.stdout, `${formatRepair(outcome)}\n`);
    };
    /** One file's repair, with the bytes rebuilt so far on stderr when it is a terminal. */
    const repairOne = async (path: string): Promise<RepairOutcome> => {
      const progress = new Progress(`repair ${path}`, undefined);
      try {
        const outcome = await ctx.client.repair(path, {
          timeoutMs: REPAIR_CALL_MS,
          onProgress: (written) => progress.update(written),
        });
        progress.done();
        return outcome;
      } catch (error) {
        progress.abandon();
        throw error;
      }
    };
    if (positionals[0] !== undefined) {
      await report(await repairOne(normalizePath(positionals[0])));
    } else {
      // Every damaged file the cluster leader knows of, page by page in the namespace's walk order (a
      // report names at most 1000); one file that cannot be repaired does not stop the others.
      let after = '';
      for (let page = 0; page < MAX_REPAIR_PAGES; page++) {
        const damaged = (await ctx.client.report({ damagedAfter: after })).filesWithMissingShards;
        if (damaged.length === 0) break;
        for (const path of damaged) {
          try {
            await report(await repairOne(path));
          } catch (error) {
            const e = toDogfsError(error);
            // Deleted or replaced since the report: nothing left to repair there.
            if (e.code === 'NOT_FOUND') continue;
            failed.push(`${path}: ${e.message}`);
            if (!flags.json) await print(ctx.stdout, `${path}: not repaired: ${e.message}\n`);
          }
        }
        after = damaged[damaged.length - 1]!;
      }
    }
    if (flags.json) await print(ctx.stdout, `${JSON.stringify(outcomes, null, 2)}\n`);
    const left = [...failed, ...outcomes.flatMap((o) => o.unrepaired.map((u) => `${o.path}: ${u}`))];
    if (left.length > 0)
      throw new DogfsError('UNAVAILABLE', `${left.length} shard(s) could not be repaired, first: ${left[0]}`);
    const copied = outcomes.reduce((n, o) => n + o.shardsCopied, 0);
    if (!flags.json && positionals[0] === undefined)
      await print(
        ctx.stdout,
        `repair: ${outcomes.length} damaged file(s), ${outcomes.reduce((n, o) => n + o.shardsRebuilt, 0)} shard(s) rebuilt${copied > 0 ? `, ${copied} copied` : ''}\n`,
      );
    return undefined;
  }
  if (sub === 'members') {
    const { flags, positionals } = parseFlags(rest, { json: { type: 'boolean' }, meta: { type: 'string' } });
    if (positionals.length > 0) throw new UsageError(`unexpected argument '${positionals[0]}'`);
    const views = await ctx.client.members();
    if (views.every((v) => v.error !== undefined))
      throw new DogfsError(
        'UNAVAILABLE',
        `no metadata server answers: ${views.map((v) => `${v.addr}: ${v.error?.message}`).join('; ')}`,
      );
    await print(
      ctx.stdout,
      flags.json ? `${JSON.stringify(membersJson(views), null, 2)}\n` : formatMembers(views),
    );
    return undefined;
  }
  if (sub === 'drain') {
    const { flags, positionals } = parseFlags(rest, {
      cancel: { type: 'boolean' },
      meta: { type: 'string' },
    });
    const [id, extra] = positionals;
    if (id === undefined || id === '') throw new UsageError('admin drain needs a chunk server ID');
    if (extra !== undefined) throw new UsageError(`unexpected argument '${extra}'`);
    const draining = flags.cancel !== true;
    const changed = await ctx.client.setDraining(id, draining);
    const was = changed ? '' : ' (already)';
    await print(
      ctx.stdout,
      draining
        ? `${id}: draining${was}: no new shards go to it, and its shards are moved to other servers; once \`dogfs admin report\` shows no file on draining servers, it can be stopped\n`
        : `${id}: no longer draining${was}\n`,
    );
    return undefined;
  }
  throw new UsageError(
    sub === undefined
      ? 'admin needs a subcommand: report, members, settings, repair or drain'
      : `unknown admin command '${sub}'`,
  );
}

/** The leading operand of a command, for errors that do not name their path. */
function operandOf(command: string, argv: string[]): string | undefined {
  // The values of flags that take one are not operands (`--meta HOST:PORT`, `--ec rs-6-3`).
  const positionals: string[] = [];
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i]!;
    if (arg === '--meta' || arg === '--ec') i++;
    else if (!arg.startsWith('-') || arg === '-') positionals.push(arg);
  }
  if (command === 'get' || command === 'put' || command === 'mv') {
    const remote = command === 'put' ? positionals[1] : positionals[0];
    return remote === undefined || remote === '' ? undefined : remote.startsWith('/') ? remote : `/${remote}`;
  }
  const first =
    command === 'admin' ? (positionals[0] === 'repair' ? positionals[1] : undefined) : positionals[0];
  if (first === undefined || first === '') return undefined;
  return first.startsWith('/') ? first : `/${first}`;
}

/**
 * Ends the process by SIGHUP itself once a hangup's cleanups are done (a shell shows 129). Not
 * process.exit: Node 20 aborts (SIGABRT, an assertion in its ResetStdio) when it exits after its
 * terminal hung up, as putting the terminal's modes back fails with EIO. Removing the last listener
 * gives the signal back its default action (libuv restores it), so raising it then kills the process.
 */
function dieOfHangup(listener: (signal: InterruptSignal) => void): void {
  process.off('SIGHUP', listener);
  process.kill(process.pid, 'SIGHUP');
}

/**
 * Runs one file command; prints its one-line error (if any) and returns the exit status. Never throws.
 */
export async function runFileCommand(
  command: string,
  argv: string[],
  io: {
    stdin?: NodeJS.ReadableStream;
    stdout?: Writable;
    stderr?: Writable;
    env?: NodeJS.ProcessEnv;
    /** Handle SIGHUP, SIGINT and SIGTERM (the CLI process; not a test running commands in-process). */
    signals?: boolean;
  } = {},
): Promise<number> {
  const stdout = io.stdout ?? process.stdout;
  const stderr = io.stderr ?? process.stderr;
  let client: DogfsClient | undefined;
  const cleanups = new Set<() => Promise<void>>();
  let interrupted = false;
  // Node's default for these signals ends the process at once: a put's name then stayed taken until its
  // lease expired, a get left its temporary file. Undo those first (bounded), then exit as a signal does.
  // SIGHUP too: a closed terminal (or ssh session) sends it, and Node resets it to its default at start
  // even under nohup, so it ended the command without its cleanups.
  const onSignal = (signal: InterruptSignal): void => {
    if (interrupted) return;
    interrupted = true;
    const status = INTERRUPT_STATUS[signal];
    // If nothing else keeps the process alive meanwhile, it still ends with the signal's status.
    process.exitCode = status;
    if (signal === 'SIGHUP') {
      // The terminal is likely gone: each write to it fails (EIO), and an 'error' event with no
      // listener would end the process here, before the cleanups. Nobody is left to be told.
      for (const stream of new Set([stderr, process.stderr])) stream.on('error', () => {});
    }
    // On a line of its own: a progress bar may be drawn on the current one (ended here, so the put's or
    // get's own abandon adds no empty line), or the terminal's echo of ^C.
    const barEnded = endOpenLines();
    const newline = !barEnded && (stderr as NodeJS.WriteStream).isTTY === true;
    stderr.write(`${newline ? '\n' : ''}dogfs: interrupted\n`);
    const bound = new Promise<void>((resolve) => setTimeout(resolve, INTERRUPT_CLEANUP_MS).unref());
    void Promise.race([Promise.allSettled([...cleanups].map((cleanup) => cleanup())), bound]).then(() => {
      if (signal === 'SIGHUP') dieOfHangup(onSignal);
      process.exit(status);
    });
  };
  if (io.signals === true) for (const signal of INTERRUPT_SIGNALS) process.on(signal, onSignal);
  let brokenPipe = false;
  let stdoutFailure: Error | undefined;
  const onStdoutError = (error: NodeJS.ErrnoException) => {
    if (error.code === 'EPIPE') brokenPipe = true;
    else stdoutFailure ??= error;
  };
  stdout.on('error', onStdoutError);
  try {
    // Help needs no cluster: asked for before the endpoints are looked up (and their absence reported).
    const options = argv.includes('--') ? argv.slice(0, argv.indexOf('--')) : argv;
    if (options.includes('--help') || options.includes('-h')) {
      stdout.write(FILE_COMMANDS_USAGE);
      return 0;
    }
    const metaFlag = extractMetaFlag(argv);
    const endpoints = await resolveEndpoints(metaFlag, io.env ?? process.env);
    const timeoutMs = timeoutFromEnvironment((io.env ?? process.env)['DOGFS_TIMEOUT_MS']);
    client = new DogfsClient({ meta: endpoints, ...(timeoutMs === undefined ? {} : { timeoutMs }) });
    const ctx: Context = {
      client,
      stdout,
      stdin: io.stdin ?? process.stdin,
      onInterrupt: (cleanup) => {
        cleanups.add(cleanup);
        return () => cleanups.delete(cleanup);
      },
    };
    switch (command) {
      case 'put':
        await put(ctx, argv);
        break;
      case 'get':
        await get(ctx, argv);
        break;
      case 'cat':
        await cat(ctx, argv);
        break;
      case 'ls':
        await ls(ctx, argv);
        break;
      case 'mkdir': {
        const { flags, positionals } = parseFlags(argv, {
          parents: { type: 'boolean', short: 'p' },
          meta: { type: 'string' },
        });
        await client.mkdir(onePath(positionals, 'mkdir'), { parents: flags.parents });
        break;
      }
      case 'touch': {
        const { flags, positionals } = parseFlags(argv, { ec: { type: 'string' }, meta: { type: 'string' } });
        if (flags.ec !== undefined) parseNewEcPolicy(flags.ec);
        const path = onePath(positionals, 'touch');
        // Like touch(1) without the time update: an existing file or directory is left as it is.
        const touching = ctx.client;
        await touching
          .touch(path, flags.ec === undefined ? {} : { ec: flags.ec })
          .catch(async (error: unknown) => {
            const exists =
              error instanceof DogfsError &&
              (error.code === 'ALREADY_EXISTS' || error.code === 'IS_A_DIRECTORY');
            if (!exists) throw error;
            await touching.stat(path);
          });
        break;
      }
      case 'rm': {
        const { flags, positionals } = parseFlags(argv, {
          recursive: { type: 'boolean', short: 'r' },
          meta: { type: 'string' },
        });
        await client.delete(onePath(positionals, 'rm'), { recursive: flags.recursive });
        break;
      }
      case 'mv': {
        const { positionals } = parseFlags(argv, { meta: { type: 'string' } });
        if (positionals.length !== 2) throw new UsageError('mv takes SRC DST');
        const src = normalizePath(positionals[0]!);
        let dst = normalizePath(positionals[1]!);
        // Into an existing directory, keeping the name, as mv does.
        if ((await statIfExists(client, dst))?.type === 'dir') dst = joinPath(dst, baseName(src));
        await client.rename(src, dst);
        break;
      }
      case 'stat':
        await statCommand(ctx, argv);
        break;
      case 'admin':
        await admin(ctx, argv);
        break;
      default:
        throw new UsageError(`unknown command '${command}'`);
    }
    return 0;
  } catch (error) {
    // Its reader gone: silent, as a C program killed by SIGPIPE (main.ts makes the process die of it).
    if (brokenPipe || (error as NodeJS.ErrnoException | undefined)?.code === 'EPIPE')
      return BROKEN_PIPE_STATUS;
    // Interrupted: the signal handler reports it and exits once its cleanups are done.
    if (interrupted) await new Promise<never>(() => {});
    // About stdout (`> /dev/full`), not about the command's path.
    const { line, status } =
      error === stdoutFailure
        ? { line: stdoutFailureLine(error), status: 1 }
        : describeClientError(error, operandOf(command, argv));
    stderr.write(`dogfs: ${line}\n`);
    return status;
  } finally {
    stdout.off('error', onStdoutError);
    if (io.signals === true) for (const signal of INTERRUPT_SIGNALS) process.off(signal, onSignal);
    client?.close();
  }
}

/** $DOGFS_TIMEOUT_MS: the deadline of each metadata call, whole milliseconds (unset or empty: 10 s). */
function timeoutFromEnvironment(value: string | undefined): number | undefined {
  if (value === undefined || value === '') return undefined;
  if (!/^\d{1,9}$/.test(value) || Number(value) < 1)
    throw new UsageError(
      `$DOGFS_TIMEOUT_MS must be a whole number of milliseconds, at least 1, not '${value.slice(0, 32)}'`,
    );
  return Number(value);
}

/** `--meta X` / `--meta=X` anywhere in argv (each command also accepts it in its own flags). */
function extractMetaFlag(argv: string[]): string | undefined {
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i]!;
    if (arg === '--meta') {
      const value = argv[i + 1];
      if (value === undefined) throw new UsageError("option '--meta <value>' argument missing");
      return value;
    }
    if (arg.startsWith('--meta=')) return arg.slice('--meta='.length);
  }
  return undefined;
}
