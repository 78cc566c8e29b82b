/**
 * Test helpers: temporary directories, waiting on conditions with deadlines (never sleeping as
 * synchronisation), and running the real `dogfs` command as a child process.
 */
import assert from 'node:assert/strict';
import { type ChildProcess, spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { ClusterJson } from '../../src/cluster/up.js';
import type { ClusterReportResponse } from '../../src/wire/gen/types.js';

export const DOGFS_BIN = fileURLToPath(new URL('../../../bin/dogfs.js', import.meta.url));

export function tempDir(prefix = 'dogfs-test-'): { path: string; remove: () => void } {
  const path = mkdtempSync(join(tmpdir(), prefix));
  return { path, remove: () => rmSync(path, { recursive: true, force: true }) };
}

/** A gate for handlers in tests: `passed` resolves once `open()` is called (calling it again is harmless). */
export function gate(): { passed: Promise<void>; open: () => void } {
  let open!: () => void;
  const passed = new Promise<void>((resolve) => {
    open = resolve;
  });
  return { passed, open };
}

/** Polls `condition` until it returns a value other than undefined/false, or throws at the deadline. */
export async function waitFor<T>(
  what: string,
  condition: () => T | undefined | false | Promise<T | undefined | false>,
  timeoutMs = 10_000,
  pollMs = 25,
): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  let lastError: unknown;
  for (;;) {
    try {
      const value = await condition();
      if (value !== undefined && value !== false) return value;
    } catch (error) {
      lastError = error;
    }
    if (Date.now() >= deadline) {
      const detail = lastError instanceof Error ? ` (last error: ${lastError.message})` : '';
      throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}${detail}`);
    }
    await new Promise((r) => setTimeout(r, pollMs));
  }
}

export interface CliResult {
  status: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
}

/** Runs `dogfs ARGS` to completion (bounded by timeoutMs) and collects its output. */
export function runDogfs(
  args: string[],
  options: {
    env?: NodeJS.ProcessEnv;
    timeoutMs?: number;
    /**
     * Run on a pseudo-terminal (util-linux script(1)), as a person at a terminal would: the command's
     * stdout and stderr then both arrive in `stdout`, with the terminal's line endings.
     */
    terminal?: boolean;
    /** With `terminal`: the command's stdout goes to this file instead (stderr stays on the terminal). */
    stdoutTo?: string;
  } = {},
): Promise<CliResult> {
  return new Promise((resolve, reject) => {
    const command = [process.execPath, DOGFS_BIN, ...args];
    const quote = (a: string) => `'${a.replaceAll("'", "'\\''")}'`;
    const redirect = options.stdoutTo === undefined ? '' : ` > ${quote(options.stdoutTo)}`;
    const quoted = `${command.map(quote).join(' ')}${redirect}`;
    const [file, argv] =
      options.terminal === true
        ? ['script', ['--quiet', '--return', '--command', quoted, '/dev/null']]
        : [command[0]!, command.slice(1)];
    const child = spawn(file, argv, {
      env: options.env ?? process.env,
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let stdout = '';
    let stderr = '';
    child.stdout.setEncoding('utf8').on('data', (d: string) => {
      stdout += d;
    });
    child.stderr.setEncoding('utf8').on('data', (d: string) => {
      stderr += d;
    });
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      reject(new Error(`dogfs ${args.join(' ')} did not finish in ${options.timeoutMs ?? 20_000} ms`));
    }, options.timeoutMs ?? 20_000);
    child.once('error', reject);
    child.once('close', (status, signal) => {
      clearTimeout(timer);
      resolve({ status, signal, stdout, stderr });
    });
  });
}

/** Starts a long-running `dogfs ARGS` (a server or `up`), collecting its output. */
/**
 * Servers started by tests repair nothing by themselves unless the test asks (DOGFS_REPAIR_DELAY_MS in its
 * environment): most tests watch damage stay until they repair it, and a slow run must not let automatic
 * repair (60 s by default) change what they look at. test/e2e/auto-repair.test.ts and chaos turn it on.
 */
function withAutoRepairDefault(env: NodeJS.ProcessEnv): NodeJS.ProcessEnv {
  return env['DOGFS_REPAIR_DELAY_MS'] === undefined ? { ...env, DOGFS_REPAIR_DELAY_MS: 'off' } : env;
}

export function startDogfs(args: string[], env: NodeJS.ProcessEnv = process.env) {
  const child: ChildProcess = spawn(process.execPath, [DOGFS_BIN, ...args], {
    env: withAutoRepairDefault(env),
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  const output = { stdout: '', stderr: '' };
  child.stdout?.setEncoding('utf8').on('data', (d: string) => {
    output.stdout += d;
  });
  child.stderr?.setEncoding('utf8').on('data', (d: string) => {
    output.stderr += d;
  });
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) => {
    child.once('exit', (code, signal) => resolve({ code, signal }));
  });
  return { child, output, exited };
}

/** The gRPC address a server started by `startDogfs` listens on, from its 'listening' log line. */
export function listeningAddr(server: ReturnType<typeof startDogfs>): Promise<string> {
  return waitFor('listening log line', () => {
    const line = server.output.stderr.split('\n').find((l) => l.includes('"msg":"listening"'));
    return line === undefined ? undefined : (JSON.parse(line) as { addr: string }).addr;
  });
}

export function processAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (error) {
    return (error as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/** A user-facing error is one line on stderr: no stack traces, no second line. */
export function assertOneLineError(stderr: string): string {
  const lines = stderr.trim().split('\n');
  if (lines.some((l) => /^\s+at /.test(l))) throw new Error(`stack trace on stderr:\n${stderr}`);
  if (lines.length !== 1) throw new Error(`${lines.length} lines on stderr, not one:\n${stderr}`);
  return lines[0] ?? '';
}

/** dogfs up's output and the last log lines of every member under `clusterDir`, for a failure message. */
export function clusterDiagnosis(clusterDir: string, output: { stdout: string; stderr: string }): string {
  const parts = [
    `dogfs up stdout:\n${output.stdout.slice(-2000)}`,
    `dogfs up stderr:\n${output.stderr.slice(-2000)}`,
  ];
  let members: string[] = [];
  try {
    members = readdirSync(clusterDir);
  } catch {
    // no directory yet: nothing more to show
  }
  for (const member of members) {
    const log = join(clusterDir, member, 'dogfs.log');
    if (!existsSync(log)) continue;
    const lines = readFileSync(log, 'utf8').trim().split('\n');
    parts.push(`${member}/dogfs.log (last lines):\n${lines.slice(-8).join('\n')}`);
  }
  return parts.join('\n');
}

/**
 * `dogfs up --dir TMP/c ARGS` in a fresh temporary directory. `ready()` waits for its cluster.json (written
 * once the cluster can serve); `stop()` stops it (SIGINT) and removes the directory.
 */
export function startCluster(args: string[], env: NodeJS.ProcessEnv = process.env) {
  const dir = tempDir('dogfs-cluster-');
  const clusterDir = join(dir.path, 'c');
  const clusterPath = join(clusterDir, 'cluster.json');
  const up = startDogfs(['up', '--dir', clusterDir, ...args], env);
  return {
    dir,
    clusterDir,
    clusterPath,
    up,
    ready: async (): Promise<ClusterJson> => {
      // Polls for cluster.json; fails at once if dogfs up exits first, and either way says why.
      const deadline = Date.now() + 60_000;
      for (;;) {
        if (existsSync(clusterPath)) {
          try {
            return JSON.parse(readFileSync(clusterPath, 'utf8')) as ClusterJson;
          } catch {
            // written atomically, so only a torn read of a concurrent rename: poll again
          }
        }
        const exited = up.child.exitCode !== null || up.child.signalCode !== null;
        if (exited || Date.now() >= deadline) {
          const why = exited
            ? `dogfs up exited (${up.child.signalCode ?? up.child.exitCode}) before writing cluster.json`
            : 'timed out after 60000 ms waiting for cluster.json';
          throw new Error(`${why}\n${clusterDiagnosis(clusterDir, up.output)}`);
        }
        await new Promise((r) => setTimeout(r, 50));
      }
    },
    stop: async (): Promise<void> => {
      up.child.kill('SIGINT');
      await up.exited;
      dir.remove();
    },
  };
}

/**
 * The `dogfs` command against a cluster of `startCluster`, and the two checks end-to-end tests make most:
 * `admin report --json` parsed, and a file read back (into a local file) byte for byte.
 */
export function clusterCommands(cluster: {
  readonly clusterPath: string;
  readonly dir: { readonly path: string };
}) {
  const env = { ...process.env, DOGFS_CLUSTER: cluster.clusterPath };
  const dogfs = (args: string[], timeoutMs = 120_000) => runDogfs(args, { env, timeoutMs });
  const report = async (): Promise<ClusterReportResponse> => {
    const r = await dogfs(['admin', 'report', '--json']);
    assert.equal(r.status, 0, r.stderr);
    return JSON.parse(r.stdout) as ClusterReportResponse;
  };
  const sameBytes = async (remote: string, expected: Buffer, what: string): Promise<void> => {
    const local = join(cluster.dir.path, `got-${randomBytes(4).toString('hex')}`);
    const get = await dogfs(['get', remote, local]);
    assert.equal(get.status, 0, `${what}: ${get.stderr}`);
    assert.ok(readFileSync(local).equals(expected), `${what}: bytes identical`);
  };
  return { env, dogfs, report, sameBytes };
}

/**
 * What automatic repair did, summed from chunk servers' logs (the JSON lines of each `dogfs.log`, or a
 * server's captured stderr): files handled, and shards copied from their holder or rebuilt from others.
 */
export function autoRepairTotals(logs: readonly string[]): {
  files: number;
  copied: number;
  rebuilt: number;
} {
  const totals = { files: 0, copied: 0, rebuilt: 0 };
  for (const line of logs.flatMap((log) => log.split('\n'))) {
    if (!line.includes('"msg":"automatic repair ')) continue;
    const entry = JSON.parse(line) as { msg: string; shardsCopied?: number; shardsRebuilt?: number };
    if (entry.msg !== 'automatic repair done' && entry.msg !== 'automatic repair incomplete') continue;
    totals.files++;
    totals.copied += entry.shardsCopied ?? 0;
    totals.rebuilt += entry.shardsRebuilt ?? 0;
  }
  return totals;
}

/** A member's log (`dogfs up` writes each member's to DIR/<id>/dogfs.log); '' before it has one. */
export function memberLog(member: { readonly dir: string }): string {
  const path = join(member.dir, 'dogfs.log');
  return existsSync(path) ? readFileSync(path, 'utf8') : '';
}

/** The file of shard `index` of block group `blockGroupId` under a chunk server's directory, if any. */
export function shardFile(root: string, blockGroupId: number, index: number): string | undefined {
  for (const e of readdirSync(root, { withFileTypes: true, recursive: true })) {
    if (e.isFile() && e.name.startsWith(`b${blockGroupId}_i${index}_`) && e.name.endsWith('.shard'))
      return join(e.parentPath, e.name);
  }
  return undefined;
}

/**
 * The arguments that start chunk server `id` of a `dogfs up` cluster again by hand, as it was (same
 * directory, identity and port; the cluster's metadata servers), e.g. after the test killed it.
 */
export function chunkRestartArgs(clusterDir: string, id: string, dir: string): string[] {
  const members = JSON.parse(readFileSync(join(clusterDir, 'members.json'), 'utf8')) as {
    members: { role: string; id: string; port: number }[];
  };
  const port = members.members.find((m) => m.id === id)!.port;
  const meta = members.members
    .filter((m) => m.role === 'meta')
    .map((m) => `127.0.0.1:${m.port}`)
    .join(',');
  return ['chunk', '--dir', dir, '--id', id, '--listen', `127.0.0.1:${port}`, '--meta', meta];
}

/**
 * SIGKILLs chunk servers and waits until the metadata service has declared each dead (`report` is a
 * client's `report()`); `timeoutMs` bounds the wait for the declaration.
 */
export async function killChunkServers(
  victims: readonly { readonly id: string; readonly pid: number }[],
  report: () => Promise<{ chunkServers: readonly { id: string; state: string }[] }>,
  timeoutMs = 30_000,
): Promise<void> {
  for (const victim of victims) process.kill(victim.pid, 'SIGKILL');
  await waitFor('the chunk servers to die', () => victims.every((v) => !processAlive(v.pid)));
  await waitFor(
    `${victims.map((v) => v.id).join(', ')} to be declared dead`,
    async () => {
      const servers = (await report()).chunkServers;
      return victims.every((v) => servers.find((c) => c.id === v.id)?.state === 'dead');
    },
    timeoutMs,
  );
}

/**
 * `bytes` random bytes stored at `remote` by the real CLI (`dogfs put`) in the cluster of `up` (from
 * startCluster); returns them and the local file they were put from (under the cluster's temporary
 * directory).
 */
export async function putRandomFile(
  up: { readonly dir: { readonly path: string }; readonly clusterPath: string },
  remote: string,
  bytes: number,
): Promise<{ data: Buffer; local: string }> {
  const data = randomBytes(bytes);
  const local = join(up.dir.path, `put-${remote.replace(/[^A-Za-z0-9]/g, '_')}`);
  writeFileSync(local, data);
  const put = await runDogfs(['put', local, remote], {
    env: { ...process.env, DOGFS_CLUSTER: up.clusterPath },
  });
  if (put.status !== 0) throw new Error(`dogfs put ${remote} exited ${put.status}: ${put.stderr}`);
  return { data, local };
}

/**
 * Runs a compiled script with Node to its end: its exit status and its stdout and stderr, interleaved. At
 * `timeoutMs` its whole process group is killed (a script that started a cluster in a namespace of its
 * own would otherwise outlive the test) and the status is null.
 */
export async function runNodeScript(
  script: string,
  args: string[] = [],
  timeoutMs = 240_000,
): Promise<{ status: number | null; output: string }> {
  const child = spawn(process.execPath, [script, ...args], {
    stdio: ['ignore', 'pipe', 'pipe'],
    detached: true,
  });
  const timer = setTimeout(() => {
    try {
      if (child.pid !== undefined) process.kill(-child.pid, 'SIGKILL');
    } catch {
      // already gone
    }
  }, timeoutMs);
  let output = '';
  child.stdout.setEncoding('utf8').on('data', (d: string) => {
    output += d;
  });
  child.stderr.setEncoding('utf8').on('data', (d: string) => {
    output += d;
  });
  const status = await new Promise<number | null>((resolve) => child.once('close', (code) => resolve(code)));
  clearTimeout(timer);
  return { status, output };
}
