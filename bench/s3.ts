/**
 * bench/s3 — what the S3 gateway costs over the native client, one JSON object per line:
 *   {"bench":"s3","metric":...,"value":...,"unit":...,...}
 * A `dogfs up` cluster (3 metadata servers, 9 chunk servers, rs-6-3) and a `dogfs s3` gateway (unsigned)
 * in front of it. Per run, one file (512 MiB by default) is put and got twice: by the `dogfs` CLI (the
 * reference, in the same minutes) and through the gateway by a plain HTTP client in this process (a
 * streamed PUT of the local file; a GET read to its end and checked by CRC32C). Reported: MB/s, the
 * ratio to the CLI's, the gateway's CPU seconds per GB and its peak resident memory.
 *
 * Usage: npm run bench:s3 [-- --mib 512 --runs 2]
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { createReadStream, existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { open } from 'node:fs/promises';
import { request } from 'node:http';
import { loadavg, tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { ClusterJson } from '../src/cluster/up.js';
import { crc32c } from '../src/codec/index.js';
import { emit as emitLine, machine } from './lib.js';
import { MiB, processCpuSeconds, processStatusBytes } from './raw.js';

function argNumber(name: string, fallback: number): number {
  const at = process.argv.indexOf(`--${name}`);
  return at > 0 ? Number(process.argv[at + 1]) : fallback;
}
const FILE_MIB = argNumber('mib', 512);
const RUNS = argNumber('runs', 1);
const BIN = fileURLToPath(new URL('../../bin/dogfs.js', import.meta.url));
const children: ChildProcess[] = [];
const env = (clusterPath: string) => ({ ...process.env, DOGFS_CLUSTER: clusterPath });

function emit(
  metric: string,
  value: number,
  unit: string,
  extra: Record<string, string | number | boolean> = {},
) {
  emitLine({ bench: 's3', metric, value: Number(value.toFixed(1)), unit, ...extra, ...machine() });
}

async function waitFor<T>(what: string, check: () => T | undefined, timeoutMs: number): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = check();
    if (value !== undefined) return value;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

/** Runs `dogfs ARGS` to its end; resolves with its wall-clock seconds. */
async function cli(args: string[], clusterPath: string): Promise<number> {
  const started = performance.now();
  const child = spawn(process.execPath, [BIN, ...args], {
    stdio: ['ignore', 'ignore', 'pipe'],
    env: env(clusterPath),
  });
  children.push(child);
  let stderr = '';
  child.stderr!.on('data', (d: Buffer) => {
    stderr += d.toString();
  });
  const code = await new Promise<number | null>((resolve) => child.once('exit', resolve));
  if (code !== 0) throw new Error(`dogfs ${args.join(' ')} exited ${code}: ${stderr.trim()}`);
  return (performance.now() - started) / 1000;
}

/** One HTTP exchange with the gateway: the body streamed from `upload`, the answer's bytes counted and CRC'd. */
function http(
  addr: string,
  method: string,
  path: string,
  upload?: { file: string; bytes: number },
): Promise<{ status: number; bytes: number; crc: number; seconds: number }> {
  const [host, port] = addr.split(':');
  const started = performance.now();
  return new Promise((resolve, reject) => {
    const req = request(
      {
        host,
        port: Number(port),
        method,
        path,
        headers: upload === undefined ? {} : { 'content-length': String(upload.bytes) },
      },
      (res) => {
        let bytes = 0;
        let crc = 0;
        res.on('data', (chunk: Buffer) => {
          bytes += chunk.length;
          crc = crc32c(chunk, crc);
        });
        res.on('end', () =>
          resolve({ status: res.statusCode ?? 0, bytes, crc, seconds: (performance.now() - started) / 1000 }),
        );
        res.on('error', reject);
      },
    );
    req.on('error', reject);
    if (upload === undefined) req.end();
    else createReadStream(upload.file, { highWaterMark: MiB }).pipe(req);
  });
}

async function makeInput(path: string, bytes: number): Promise<number> {
  const file = await open(path, 'w');
  let crc = 0;
  try {
    for (let at = 0; at < bytes; at += 8 * MiB) {
      const chunk = randomBytes(Math.min(8 * MiB, bytes - at));
      crc = crc32c(chunk, crc);
      await file.write(chunk);
    }
  } finally {
    await file.close();
  }
  return crc;
}

async function main(): Promise<void> {
  const work = mkdtempSync(join(tmpdir(), 'dogfs-bench-s3-'));
  try {
    const fileBytes = FILE_MIB * MiB;
    const input = join(work, 'input.bin');
    const inputCrc = await makeInput(input, fileBytes);
    const clusterDir = join(work, 'cluster');
    const up = spawn(process.execPath, [BIN, 'up', '--dir', clusterDir, '--log-level', 'warn'], {
      stdio: ['ignore', 'ignore', 'inherit'],
    });
    children.push(up);
    const clusterPath = join(clusterDir, 'cluster.json');
    await waitFor('cluster.json', () => (existsSync(clusterPath) ? true : undefined), 60_000);
    const cluster = JSON.parse(readFileSync(clusterPath, 'utf8')) as ClusterJson;
    const gateway = spawn(process.execPath, [BIN, 's3', '--listen', '127.0.0.1:0'], {
      stdio: ['ignore', 'ignore', 'pipe'],
      env: env(clusterPath),
    });
    children.push(gateway);
    let gatewayLog = '';
    gateway.stderr!.on('data', (d: Buffer) => {
      gatewayLog += d.toString();
    });
    const addr = await waitFor(
      'the gateway to listen',
      () => {
        const line = gatewayLog.split('\n').find((l) => l.includes('"msg":"listening"'));
        return line === undefined ? undefined : (JSON.parse(line) as { addr: string }).addr;
      },
      30_000,
    );
    const created = await http(addr, 'PUT', '/bench');
    if (created.status !== 200) throw new Error(`CreateBucket answered ${created.status}`);
    const common = {
      fileMiB: FILE_MIB,
      ec: cluster.ec,
      chunkServers: cluster.processes.filter((p) => p.role === 'chunk').length,
    };
    const load = () => Number(loadavg()[0]!.toFixed(2));
    const gatewayCpu = () => processCpuSeconds(gateway.pid!);
    const perGB = (seconds: number) => Number((seconds / (fileBytes / 1e9)).toFixed(3));
    for (let run = 1; run <= RUNS; run++) {
      const cliPut = await cli(['put', input, `/bench/cli-${run}`], clusterPath);
      const cpuBeforePut = gatewayCpu();
      const put = await http(addr, 'PUT', `/bench/s3-${run}`, { file: input, bytes: fileBytes });
      if (put.status !== 200) throw new Error(`PutObject answered ${put.status}`);
      const putCpu = gatewayCpu() - cpuBeforePut;
      const cliGet = await cli(['get', `/bench/cli-${run}`, '-'], clusterPath);
      const cpuBeforeGet = gatewayCpu();
      const get = await http(addr, 'GET', `/bench/s3-${run}`);
      const getCpu = gatewayCpu() - cpuBeforeGet;
      if (get.status !== 200 || get.bytes !== fileBytes || get.crc !== inputCrc)
        throw new Error(`GetObject answered ${get.status} with ${get.bytes} bytes: not the file put`);
      const mbps = (seconds: number) => fileBytes / 1e6 / seconds;
      const peakRssMiB = Number((processStatusBytes(gateway.pid!, 'VmHWM') / MiB).toFixed(1));
      emit('dogfs-put', mbps(cliPut), 'MB/s', { run, ...common, load: load() });
      emit('s3-put', mbps(put.seconds), 'MB/s', {
        run,
        ...common,
        ratioToDogfsPut: Number((cliPut / put.seconds).toFixed(3)),
        gatewayCpuSecondsPerGB: perGB(putCpu),
        gatewayPeakRssMiB: peakRssMiB,
        load: load(),
      });
      emit('dogfs-get-stdout', mbps(cliGet), 'MB/s', { run, ...common, load: load() });
      emit('s3-get', mbps(get.seconds), 'MB/s', {
        run,
        ...common,
        ratioToDogfsGet: Number((cliGet / get.seconds).toFixed(3)),
        gatewayCpuSecondsPerGB: perGB(getCpu),
        gatewayPeakRssMiB: peakRssMiB,
        load: load(),
      });
      for (const path of [`/bench/cli-${run}`, `/bench/s3-${run}`]) await cli(['rm', path], clusterPath);
    }
  } finally {
    for (const child of children) child.kill('SIGINT');
    await Promise.all(
      children.map((c) =>
        c.exitCode === null && c.signalCode === null ? new Promise((r) => c.once('exit', r)) : null,
      ),
    );
    rmSync(work, { recursive: true, force: true });
  }
}

await main();
