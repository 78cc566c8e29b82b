/**
 * bench/lib — shared by the benchmarks: JSON-line results, the machine they ran on, latency percentiles,
 * closed-loop load at a fixed concurrency, and free loopback ports.
 */
import { spawn, spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { cpus, tmpdir, totalmem } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import protobuf from 'protobufjs/light.js';
import { freePort, randomLoopbackHost } from '../src/common/ports.js';
import { RpcChannel } from '../src/wire/rpc.js';
import { processCpuSeconds, selfCpuSeconds } from './raw.js';

export interface BenchResult {
  bench: string;
  metric: string;
  value: number;
  unit: string;
  [extra: string]: string | number | boolean;
}

export function emit(result: BenchResult): void {
  process.stdout.write(`${JSON.stringify(result)}\n`);
}

export function machine(): Record<string, string | number> {
  let model = cpus()[0]?.model ?? 'unknown';
  try {
    const line = readFileSync('/proc/cpuinfo', 'utf8')
      .split('\n')
      .find((l) => l.startsWith('model name'));
    if (line) model = line.split(':')[1]?.trim() ?? model;
  } catch {
    // not Linux: os.cpus() already answered
  }
  return {
    cpu: model,
    cores: cpus().length,
    memGiB: Math.round(totalmem() / 2 ** 30),
    node: process.version,
  };
}

export function percentile(sorted: readonly number[], p: number): number {
  if (sorted.length === 0) return Number.NaN;
  const i = Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length));
  return sorted[i]!;
}

export interface LoadResult {
  ops: number;
  errors: number;
  seconds: number;
  opsPerSec: number;
  p50Ms: number;
  p99Ms: number;
  /** The slowest op: a closed loop hides a stall of the whole service from p99 (only `concurrency` ops wait). */
  maxMs: number;
}

/** Runs `op` from `concurrency` closed-loop workers for `durationMs`, after a short warm-up. */
export async function closedLoop(
  concurrency: number,
  durationMs: number,
  op: (worker: number, i: number) => Promise<void>,
): Promise<LoadResult> {
  const latencies: number[] = [];
  let errors = 0;
  let measuring = false;
  let stop = false;
  const workers = Array.from({ length: concurrency }, async (_, worker) => {
    for (let i = 0; !stop; i++) {
      const started = performance.now();
      try {
        await op(worker, i);
        if (measuring) latencies.push(performance.now() - started);
      } catch {
        if (measuring) errors++;
        // A failing op may reject at once: yield to the timers, or the loop starves the clock that stops it.
        await new Promise((r) => setImmediate(r));
      }
    }
  });
  await new Promise((r) => setTimeout(r, Math.min(1000, durationMs / 5)));
  measuring = true;
  const t0 = performance.now();
  await new Promise((r) => setTimeout(r, durationMs));
  measuring = false;
  const seconds = (performance.now() - t0) / 1000;
  stop = true;
  await Promise.all(workers);
  latencies.sort((a, b) => a - b);
  return {
    ops: latencies.length,
    errors,
    seconds,
    opsPerSec: latencies.length / seconds,
    p50Ms: percentile(latencies, 50),
    p99Ms: percentile(latencies, 99),
    maxMs: latencies.length > 0 ? latencies[latencies.length - 1]! : 0,
  };
}

export { freePort, randomLoopbackHost };

/** Emits the put_ops, put_p50 and put_p99 lines of one closed-loop measurement. */
export function emitLoad(
  bench: string,
  op: string,
  r: LoadResult,
  extra: Record<string, string | number>,
): void {
  const all = { ...extra, errors: r.errors };
  emit({ bench, metric: `${op}_ops`, value: Math.round(r.opsPerSec), unit: 'ops/s', ...all });
  emit({ bench, metric: `${op}_p50`, value: +r.p50Ms.toFixed(2), unit: 'ms', ...all });
  emit({ bench, metric: `${op}_p99`, value: +r.p99Ms.toFixed(2), unit: 'ms', ...all });
  emit({ bench, metric: `${op}_max`, value: +r.maxMs.toFixed(2), unit: 'ms', ...all });
}

const ETCD = '/usr/bin/etcd';

// etcd's KV.Put: PutRequest { bytes key = 1; bytes value = 2; }
function encodePut(key: string, value: string): Buffer {
  const w = protobuf.Writer.create();
  w.uint32(10).bytes(Buffer.from(key));
  w.uint32(18).bytes(Buffer.from(value));
  return Buffer.from(w.finish());
}

/**
 * The reference: a 3-member etcd (Debian's etcd-server) on loopback with its default durability (fsync
 * per batch), `value`-byte puts from closed-loop workers spread over the three members' client ports,
 * one measurement per concurrency with DogFS's Node gRPC client (client "node-grpc") and, where it can be
 * built, one with etcd's own Go client (client "go", bench/etcd-put). Emits put_ops/p50/p99/max and
 * cpu_per_put lines with system "etcd-3.4" and returns, per concurrency, the better of the two ops/s, or
 * undefined (after an etcd_unavailable line) where etcd is not installed.
 */
export async function measureEtcdPuts(
  bench: string,
  concurrencies: readonly number[],
  seconds: number,
  value: string,
): Promise<Map<number, number> | undefined> {
  if (!existsSync(ETCD)) {
    emit({
      bench,
      metric: 'etcd_unavailable',
      value: 0,
      unit: 'none',
      note: 'install etcd-server to compare',
    });
    return undefined;
  }
  const dir = mkdtempSync(join(tmpdir(), 'dogfs-bench-etcd-'));
  const host = randomLoopbackHost();
  const members = await Promise.all(
    [0, 1, 2].map(async (i) => ({
      name: `e${i}`,
      client: await freePort(host),
      peer: await freePort(host),
    })),
  );
  const initial = members.map((m) => `${m.name}=http://${host}:${m.peer}`).join(',');
  const procs = members.map((m) =>
    spawn(
      ETCD,
      [
        ...['--name', m.name, '--data-dir', join(dir, m.name)],
        ...['--listen-client-urls', `http://${host}:${m.client}`],
        ...['--advertise-client-urls', `http://${host}:${m.client}`],
        ...['--listen-peer-urls', `http://${host}:${m.peer}`],
        ...['--initial-advertise-peer-urls', `http://${host}:${m.peer}`],
        ...['--initial-cluster', initial, '--initial-cluster-state', 'new', '--log-level', 'error'],
      ],
      { stdio: 'ignore' },
    ),
  );
  // Two clients, one after the other at each concurrency: DogFS's Node gRPC client (wire/grpc-client.ts),
  // and etcd's own Go client (bench/etcd-put) where it can be built. The ratios are taken against the
  // better of the two figures.
  const goClient = buildGoEtcdClient(bench);
  const clients = members.map((m) => new RpcChannel(`${host}:${m.client}`, { transport: 'grpc' }));
  const put = async (client: RpcChannel, key: string): Promise<void> => {
    await client.callRaw('/etcdserverpb.KV/Put', encodePut(key, value), { timeoutMs: 10_000 }, 'Put');
  };
  const rates = new Map<number, number>();
  try {
    const deadline = Date.now() + 30_000;
    for (;;) {
      try {
        await put(clients[0]!, 'warmup');
        break;
      } catch (error) {
        if (Date.now() > deadline) throw error;
        await new Promise((r) => setTimeout(r, 200));
      }
    }
    for (const c of concurrencies) {
      // CPU per put of the client and of each member, over every put of the loop, as bench:raft
      // reports its own: where the two systems spend the machine's two cores.
      let puts = 0;
      const cpu0 = procs.map((p) => processCpuSeconds(p.pid!));
      const self0 = selfCpuSeconds();
      const r = await closedLoop(c, seconds * 1000, async (w, i) => {
        await put(clients[w % clients.length]!, `k${w}-${i % 64}`);
        puts++;
      });
      const perPut = (cpuSeconds: number) => Math.round((cpuSeconds * 1e6) / Math.max(1, puts));
      rates.set(c, r.opsPerSec);
      const tags = { system: 'etcd-3.4', client: 'node-grpc', groups: 1, concurrency: c };
      emitLoad(bench, 'put', r, tags);
      const cpu = [
        { process: 'client', seconds: selfCpuSeconds() - self0 },
        ...procs.map((p, n) => ({ process: `etcd${n + 1}`, seconds: processCpuSeconds(p.pid!) - cpu0[n]! })),
      ];
      for (const { process, seconds } of cpu)
        emit({ bench, metric: 'cpu_per_put', value: perPut(seconds), unit: 'us', process, ...tags });
      if (goClient !== undefined) {
        const endpoints = members.map((m) => `${host}:${m.client}`).join(',');
        const goCpu0 = procs.map((p) => processCpuSeconds(p.pid!));
        const go = runGoEtcdClient(goClient, endpoints, c, seconds, value.length);
        const goTags = { ...tags, client: 'go' };
        emitLoad(bench, 'put', go, goTags);
        const goPerPut = (cpuSeconds: number) => Math.round((cpuSeconds * 1e6) / Math.max(1, go.allPuts));
        const goCpu = [
          { process: 'client', seconds: go.cpuSeconds },
          ...procs.map((p, n) => ({
            process: `etcd${n + 1}`,
            seconds: processCpuSeconds(p.pid!) - goCpu0[n]!,
          })),
        ];
        for (const { process, seconds } of goCpu)
          emit({ bench, metric: 'cpu_per_put', value: goPerPut(seconds), unit: 'us', process, ...goTags });
        rates.set(c, Math.max(r.opsPerSec, go.opsPerSec));
      }
    }
  } finally {
    for (const c of clients) c.close();
    for (const p of procs) p.kill('SIGKILL');
    rmSync(dir, { recursive: true, force: true });
  }
  return rates;
}

const GO_ETCD_CLIENT_SOURCE = fileURLToPath(new URL('../../bench/etcd-put/main.go', import.meta.url));
/** Where Debian's golang-etcd-server-dev puts etcd's Go sources (GOPATH layout). */
const DEBIAN_GOPATH = '/usr/share/gocode';

/**
 * Builds bench/etcd-put with Debian's Go and etcd sources (`apt-get install golang-go
 * golang-etcd-server-dev`; GOPATH mode, nothing downloaded). Undefined, after an etcd_go_client_unavailable
 * line, where they are not installed or the build fails.
 */
function buildGoEtcdClient(bench: string): string | undefined {
  const out = join(tmpdir(), 'dogfs-bench-etcd-put');
  const unavailable = (note: string): undefined => {
    emit({ bench, metric: 'etcd_go_client_unavailable', value: 0, unit: 'none', note });
    return undefined;
  };
  if (!existsSync(join(DEBIAN_GOPATH, 'src/go.etcd.io/etcd/etcdserver/etcdserverpb')))
    return unavailable(
      'apt-get install golang-go golang-etcd-server-dev to measure etcd with its own client',
    );
  const built = spawnSync('go', ['build', '-o', out, GO_ETCD_CLIENT_SOURCE], {
    env: {
      ...process.env,
      GO111MODULE: 'off',
      GOPATH: DEBIAN_GOPATH,
      GOCACHE: join(tmpdir(), 'dogfs-bench-gocache'),
    },
    encoding: 'utf8',
  });
  if (built.error !== undefined || built.status !== 0)
    return unavailable(`go build failed: ${(built.error?.message ?? built.stderr).slice(0, 300)}`);
  return out;
}

interface GoLoadResult extends LoadResult {
  allPuts: number;
  cpuSeconds: number;
}

/** One closed-loop measurement with etcd's Go client (blocking: this process only waits meanwhile). */
function runGoEtcdClient(
  binary: string,
  endpoints: string,
  concurrency: number,
  seconds: number,
  valueBytes: number,
): GoLoadResult {
  const run = spawnSync(
    binary,
    [
      ...['-endpoints', endpoints, '-concurrency', String(concurrency)],
      ...['-seconds', String(seconds), '-value-bytes', String(valueBytes)],
    ],
    { encoding: 'utf8', timeout: (seconds + 60) * 1000 },
  );
  if (run.status !== 0) throw new Error(`etcd-put failed: ${run.error?.message ?? run.stderr}`);
  return JSON.parse(run.stdout) as GoLoadResult;
}
