/**
 * npm run bench:raft — the Raft library in real processes on loopback, fsync on, against a 3-member etcd
 * in the same run where the `etcd` binary is installed (Debian: etcd-server).
 *
 * For 1 group and then 4 groups per process: 3 replicas of test/raftnode/kv-node.js, 256-byte puts at
 * concurrency 1/16/64/256 → ops/s, p50/p99, and CPU µs per put of each process. Four groups are measured
 * twice: leaders spread over the processes (balanceLeaders) and all on one process (preferredLeader),
 * lines tagged leaders "spread" / "one". Then leader failover after SIGKILL (median of 5). Prints one
 * JSON object per line. BENCH_SECONDS (default 5) sets each measurement's length; BENCH_REPEAT (below)
 * repeats the comparison and prints median ratios.
 */
import type { ChildProcess } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { RpcChannelPool } from '../src/wire/rpc.js';
import { KvClient, spawnKvNode } from '../test/raftnode/kv-client.js';
import { groupOfKey } from '../test/raftnode/kv-node.js';
import { closedLoop, emit, emitLoad, freePort, machine, measureEtcdPuts, randomLoopbackHost } from './lib.js';
import { processCpuSeconds, selfCpuSeconds } from './raw.js';

const SECONDS = Number(process.env['BENCH_SECONDS'] ?? '5');
/** BENCH_CONCURRENCY=64 (comma-separated) measures only those; ratios need etcd at the same ones. */
const CONCURRENCY = (process.env['BENCH_CONCURRENCY'] ?? '1,16,64,256').split(',').map(Number);
/** BENCH_FAILOVER=0 skips the failover measurement (quicker iterations on throughput). */
const FAILOVER = process.env['BENCH_FAILOVER'] !== '0';
/** BENCH_GROUPS=1 (or 4) measures only that layout (no ratio lines for the other). */
const GROUPS = (process.env['BENCH_GROUPS'] ?? '1,4').split(',').map(Number);
/** BENCH_ETCD=0 skips the etcd reference (profiling runs only: no ratio is printed then). */
const ETCD = process.env['BENCH_ETCD'] !== '0';
/**
 * Node options for the kv-nodes, e.g. BENCH_NODE_ARGS='--cpu-prof --cpu-prof-dir=/tmp/prof': the nodes
 * are then stopped by SIGTERM (a profile is written at exit) instead of SIGKILL.
 */
const NODE_ARGS = (process.env['BENCH_NODE_ARGS'] ?? '').split(' ').filter((a) => a !== '');

const VALUE = 'v'.repeat(256);

/**
 * User and system CPU seconds of a process (/proc/PID/stat utime, stime): a node's CPU per put is split
 * so that JavaScript work (user) and syscalls with the loopback and disk work they do (system) are told
 * apart; CPU profiles on this VM are skewed by preemption and cannot.
 */
function processCpuSplit(pid: number): { user: number; sys: number } {
  const fields = readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1]!.split(' ');
  const ticks = 100; // USER_HZ, as bench/raw.ts assumes
  return { user: Number(fields[11]) / ticks, sys: Number(fields[12]) / ticks };
}

interface KvCluster {
  addrs: string[];
  procs: (ChildProcess | undefined)[];
  dir: string;
  groups: number;
  leaders: Layout;
}

/** Where the leaders of several groups go: spread over the processes, or all on the first one. */
type Layout = 'spread' | 'one';
/** BENCH_LAYOUTS=one (or spread) measures only that layout of the multi-group runs. */
const LAYOUTS = (process.env['BENCH_LAYOUTS'] ?? 'spread,one').split(',') as Layout[];

async function startNode(cluster: KvCluster, i: number): Promise<void> {
  cluster.procs[i] = await spawnKvNode(
    cluster.addrs,
    i,
    cluster.dir,
    ['--groups', String(cluster.groups), ...(cluster.leaders === 'one' ? ['--prefer-leader', '1'] : [])],
    NODE_ARGS,
  );
}

async function startKvCluster(groups: number, leaders: Layout = 'spread'): Promise<KvCluster> {
  const dir = mkdtempSync(join(tmpdir(), 'dogfs-bench-raft-'));
  const addrs: string[] = [];
  const host = randomLoopbackHost();
  for (let i = 0; i < 3; i++) addrs.push(`${host}:${await freePort(host)}`);
  const cluster: KvCluster = { addrs, procs: [], dir, groups, leaders };
  await Promise.all(addrs.map((_, i) => startNode(cluster, i)));
  return cluster;
}

async function stopKvCluster(cluster: KvCluster): Promise<void> {
  if (NODE_ARGS.length > 0) {
    const live = cluster.procs.filter((p): p is ChildProcess => p !== undefined && p.exitCode === null);
    await Promise.all(live.map((p) => new Promise((r) => p.once('exit', r).kill('SIGTERM'))));
  }
  for (const p of cluster.procs) p?.kill('SIGKILL');
  rmSync(cluster.dir, { recursive: true, force: true });
}

/**
 * Puts into every group until the leaders the client finds (NOT_LEADER hints) are laid out as asked: all
 * on the first process, or spread (no process leads two groups more than another, where the balancer
 * stops: 2/1/1 for 4 groups on 3 processes). Measuring before then times leader transfers: the balancer
 * moves one group per 2 s, so a 5 s spread run started right after the first election (which one process
 * often wins for every group) measured that process leading most groups, a transfer or two, and the
 * client's calls redirected after each (kv-node stats: proposals moving between processes mid-run).
 */
async function awaitLayout(cluster: KvCluster, client: KvClient): Promise<void> {
  const keys = new Map<number, string>();
  for (let i = 0; keys.size < cluster.groups; i++)
    keys.set(groupOfKey(`layout${i}`, cluster.groups), `layout${i}`);
  const laidOut = (): boolean => {
    const leaders = [...keys.keys()].map((g) => client.leaderOfGroup(g));
    if (cluster.leaders === 'one') return leaders.every((a) => a === cluster.addrs[0]);
    const counts = cluster.addrs.map((a) => leaders.filter((l) => l === a).length);
    return Math.max(...counts) - Math.min(...counts) <= 1;
  };
  const deadline = Date.now() + 60_000;
  for (;;) {
    for (const key of keys.values()) await client.run({ op: 'put', key, value: 'x' }, deadline);
    if (laidOut()) return;
    if (Date.now() > deadline) throw new Error(`leaders not laid out (${cluster.leaders}) within 60 s`);
    await new Promise((r) => setTimeout(r, 200));
  }
}

async function measureDogfs(groups: number, leaders: Layout = 'spread'): Promise<Map<number, number>> {
  const cluster = await startKvCluster(groups, leaders);
  const rates = new Map<number, number>();
  try {
    // Eight sessions over one connection per node, as the etcd reference's clients have (bench/lib.ts) and
    // as a DogFS process has (one channel per server). A connection per session and node (up to 24) cost
    // the client and every node more CPU per put: each connection carried a few calls per read and write.
    const pool = new RpcChannelPool();
    const clients = Array.from(
      { length: 8 },
      (_, i) => new KvClient(cluster.addrs, `bench-${groups}-${i}`, groups, pool),
    );
    await clients[0]!.run({ op: 'put', key: 'warmup', value: 'x' }, Date.now() + 30_000);
    if (groups > 1) await awaitLayout(cluster, clients[0]!);
    const pids = cluster.procs.map((p) => p!.pid!);
    for (const c of CONCURRENCY) {
      // CPU per put of each process, over every put of the loop (its warm-up and drain included).
      let puts = 0;
      const cpu0 = pids.map(processCpuSeconds);
      const split0 = pids.map(processCpuSplit);
      const self0 = selfCpuSeconds();
      const r = await closedLoop(c, SECONDS * 1000, async (w, i) => {
        await clients[w % clients.length]!.run({ op: 'put', key: `k${w}-${i % 64}`, value: VALUE });
        puts++;
      });
      const perPut = (seconds: number) => Math.round((seconds * 1e6) / Math.max(1, puts));
      rates.set(c, r.opsPerSec);
      const tags: Record<string, string | number> = groups > 1 ? { groups, leaders } : { groups };
      emitLoad('raft', 'put', r, { system: 'dogfs', ...tags, concurrency: c });
      emit({
        bench: 'raft',
        metric: 'cpu_per_put',
        value: perPut(selfCpuSeconds() - self0),
        unit: 'us',
        process: 'client',
        ...tags,
        concurrency: c,
      });
      pids.forEach((pid, n) => {
        const leads = Array.from({ length: groups }, (_, g) => clients[0]!.leaderOfGroup(g + 1)).filter(
          (a) => a === cluster.addrs[n],
        ).length;
        emit({
          bench: 'raft',
          metric: 'cpu_per_put',
          value: perPut(processCpuSeconds(pid) - cpu0[n]!),
          unit: 'us',
          user_us: perPut(processCpuSplit(pid).user - split0[n]!.user),
          sys_us: perPut(processCpuSplit(pid).sys - split0[n]!.sys),
          process: `node${n + 1}`,
          leads,
          ...tags,
          concurrency: c,
        });
      });
    }
    pool.close();
  } finally {
    await stopKvCluster(cluster);
  }
  return rates;
}

async function measureFailover(): Promise<void> {
  const cluster = await startKvCluster(1);
  const times: number[] = [];
  try {
    const client = new KvClient(cluster.addrs, 'failover');
    await client.run({ op: 'put', key: 'a', value: 'b' }, Date.now() + 30_000);
    for (let round = 0; round < 5; round++) {
      await client.run({ op: 'put', key: 'a', value: `r${round}` });
      const leaderAddr = client.leader;
      const i = cluster.addrs.indexOf(leaderAddr);
      const t0 = performance.now();
      cluster.procs[i]!.kill('SIGKILL');
      await client.run({ op: 'put', key: 'a', value: `after${round}` }, Date.now() + 30_000);
      times.push(performance.now() - t0);
      await startNode(cluster, i);
    }
    client.close();
  } finally {
    await stopKvCluster(cluster);
  }
  times.sort((a, b) => a - b);
  emit({
    bench: 'raft',
    metric: 'failover_median',
    value: Math.round(times[2]!),
    unit: 'ms',
    system: 'dogfs',
    samples: times.map(Math.round).join(','),
  });
}

async function measureEtcd(): Promise<Map<number, number> | undefined> {
  return measureEtcdPuts('raft', CONCURRENCY, SECONDS, VALUE);
}

/**
 * BENCH_REPEAT=N (default 1) runs the whole comparison N times, etcd first in odd repeats and last in even
 * ones, and then prints the median of each ratio: on this shared 2-core VM one run's ratio moves by ±30%
 * with whatever else the machine does, and a drift in load then favours whichever system ran in the
 * quieter minute.
 */
const REPEAT = Number(process.env['BENCH_REPEAT'] ?? '1');

type Ratios = Map<string, { tags: Record<string, string | number>; values: number[] }>;

async function compareOnce(repeat: number, ratios: Ratios): Promise<void> {
  const etcdFirst = repeat % 2 === 1;
  let etcd = ETCD && etcdFirst ? await measureEtcd() : undefined;
  const dogfs: [Record<string, string | number>, Map<number, number>][] = [];
  for (const groups of GROUPS) {
    if (groups === 1) dogfs.push([{ groups }, await measureDogfs(groups)]);
    else
      for (const leaders of LAYOUTS) dogfs.push([{ groups, leaders }, await measureDogfs(groups, leaders)]);
  }
  if (ETCD && !etcdFirst) etcd = await measureEtcd();
  if (!etcd) return;
  for (const c of CONCURRENCY) {
    for (const [tags, rates] of dogfs) {
      const value = +(rates.get(c)! / etcd.get(c)!).toFixed(2);
      const all = { ...tags, concurrency: c };
      emit({ bench: 'raft', metric: 'ratio_vs_etcd', value, unit: 'x', ...all, ...repeatTag(repeat) });
      const key = JSON.stringify(all);
      const entry = ratios.get(key) ?? { tags: all, values: [] as number[] };
      entry.values.push(value);
      ratios.set(key, entry);
    }
  }
}

function repeatTag(repeat: number): Record<string, number> {
  return REPEAT > 1 ? { repeat } : {};
}

async function main(): Promise<void> {
  emit({ bench: 'raft', metric: 'machine', value: 0, unit: 'none', ...machine() });
  const ratios: Ratios = new Map();
  for (let repeat = 1; repeat <= REPEAT; repeat++) await compareOnce(repeat, ratios);
  if (REPEAT > 1) {
    for (const { tags, values } of ratios.values()) {
      const sorted = [...values].sort((a, b) => a - b);
      const mid = sorted.length >> 1;
      const median = sorted.length % 2 === 1 ? sorted[mid]! : (sorted[mid - 1]! + sorted[mid]!) / 2;
      emit({
        bench: 'raft',
        metric: 'ratio_vs_etcd_median',
        value: +median.toFixed(2),
        unit: 'x',
        ...tags,
        samples: values.join(','),
      });
    }
  }
  if (FAILOVER) await measureFailover();
}

await main();
