/**
 * npm run bench:meta — the metadata service of a real `dogfs up` cluster (3 metadata replicas, fsync on,
 * loopback) against a 3-member etcd in the same run, where the `etcd` binary is installed.
 *
 * At concurrency 1/16/64, closed loop, through the client library (src/client: leader tracking, sessions):
 *   create  a put of an empty file through the client's write stream (what `dogfs put` of an empty file
 *           or of empty stdin does): one Raft command, Create with complete (before the write stream
 *           created lazily it was Create + CompleteFile, two). A put with data makes two commands for a
 *           one-block-group file (Create with the first allocation, CompleteFile with the last commit),
 *           which this bench does not measure (no chunk servers to write to);
 *   touch   an empty file through DogfsClient.touch (`dogfs touch`): the same one command, without the
 *           stream;
 *   stat    Stat of a created file (ReadIndex on the leader);
 *   list    a whole 10,000-entry directory, paged (lists/s and entries/s);
 *   rename  a created file to a new name in the same directory;
 *   delete  a created file.
 * First memory: the metadata leader's resident set growth per file over BENCH_META_FILES (100,000) creates,
 * and the bytes per file in its raft directory (BENCH_META_FILES=0 skips it). Then WARM_UP_SECONDS of
 * untimed creates and touches, so that what is measured is the servers' steady state and not V8 compiling
 * them (the first create phase on a fresh cluster measured 0.6-0.8x of the same phase run again). Each
 * measurement also reports CPU µs per operation of the client and of each metadata server. One JSON object
 * per line; BENCH_SECONDS (default 5) sets each measurement's length. The ratio line compares creates at
 * each concurrency with etcd's puts (256 B).
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { mkdtempSync, readdirSync, readFileSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { DogfsClient } from '../src/client/index.js';
import type { ClusterJson } from '../src/cluster/up.js';
import { closedLoop, emit, emitLoad, type LoadResult, machine, measureEtcdPuts } from './lib.js';
import { processCpuSeconds, selfCpuSeconds } from './raw.js';

const SECONDS = Number(process.env['BENCH_SECONDS'] ?? '5');
const MEMORY_FILES = Number(process.env['BENCH_META_FILES'] ?? '100000');
/** BENCH_CONCURRENCY=64 (comma-separated) measures only those. */
const CONCURRENCY = (process.env['BENCH_CONCURRENCY'] ?? '1,16,64').split(',').map(Number);
/** BENCH_META_OPS=create,touch measures only creates and touches (quicker iterations); default all. */
const ONLY_CREATES = process.env['BENCH_META_OPS'] === 'create,touch';
const LIST_ENTRIES = 10_000;
const EMPTY = new Uint8Array(0);
const CLIENTS = 8;
const DOGFS_BIN = fileURLToPath(new URL('../../bin/dogfs.js', import.meta.url));

interface Cluster {
  dir: string;
  up: ChildProcess;
  json: ClusterJson;
}

async function startCluster(): Promise<Cluster> {
  const dir = mkdtempSync(join(tmpdir(), 'dogfs-bench-meta-'));
  // Creates of empty files need no chunk server; one (replicate-1) keeps the cluster complete.
  const up = spawn(
    process.execPath,
    [DOGFS_BIN, 'up', '--dir', dir, '--meta', '3', '--chunk', '1', '--ec', 'replicate-1'],
    { stdio: ['ignore', 'ignore', 'inherit'] },
  );
  const deadline = Date.now() + 60_000;
  for (;;) {
    try {
      return { dir, up, json: JSON.parse(readFileSync(join(dir, 'cluster.json'), 'utf8')) as ClusterJson };
    } catch {
      if (Date.now() > deadline || up.exitCode !== null) throw new Error('dogfs up did not come up in 60 s');
      await new Promise((r) => setTimeout(r, 200));
    }
  }
}

async function stopCluster(cluster: Cluster): Promise<void> {
  const exited = new Promise((r) => cluster.up.once('exit', r));
  cluster.up.kill('SIGINT');
  await exited;
  rmSync(cluster.dir, { recursive: true, force: true });
}

/** A put of an empty file: the write stream, ended with no bytes. */
async function createFile(client: DogfsClient, path: string): Promise<void> {
  await client.writeFile(path, EMPTY);
}

function rssBytes(pid: number): number {
  const line = readFileSync(`/proc/${pid}/status`, 'utf8')
    .split('\n')
    .find((l) => l.startsWith('VmRSS:'));
  return Number(line?.split(/\s+/)[1] ?? Number.NaN) * 1024;
}

function dirBytes(path: string): number {
  let total = 0;
  for (const entry of readdirSync(path, { withFileTypes: true })) {
    const p = join(path, entry.name);
    total += entry.isDirectory() ? dirBytes(p) : statSync(p).size;
  }
  return total;
}

/** Runs `op` in a closed loop and emits its lines; a worker's files are named by (worker, i). */
async function measure(
  op: string,
  concurrency: number,
  fn: (client: DogfsClient, worker: number, i: number) => Promise<void>,
  clients: DogfsClient[],
): Promise<LoadResult> {
  const metas = currentCluster!.json.processes.filter((p) => p.role === 'meta');
  const cpu0 = metas.map((p) => processCpuSeconds(p.pid));
  const self0 = selfCpuSeconds();
  let ops = 0;
  const r = await closedLoop(concurrency, SECONDS * 1000, async (w, i) => {
    await fn(clients[w % clients.length]!, w, i);
    ops++;
  });
  emitLoad('meta', op, r, { system: 'dogfs', concurrency });
  // CPU per operation of the client library and of each metadata server (every op of the loop).
  const cpu = [
    { process: 'client', seconds: selfCpuSeconds() - self0 },
    ...metas.map((p, n) => ({ process: p.id, seconds: processCpuSeconds(p.pid) - cpu0[n]! })),
  ];
  for (const { process, seconds } of cpu) {
    const value = Math.round((seconds * 1e6) / Math.max(1, ops));
    emit({ bench: 'meta', metric: `cpu_per_${op}`, value, unit: 'us', process, concurrency });
  }
  return r;
}

const WARM_UP_SECONDS = 4;

/** Untimed creates, touches and stats at concurrency 64 in a directory of their own. */
async function warmUp(clients: DogfsClient[]): Promise<void> {
  await clients[0]!.mkdir('/warm-up');
  const until = Date.now() + WARM_UP_SECONDS * 1000;
  let n = 0;
  await Promise.all(
    Array.from({ length: 64 }, async (_, w) => {
      const client = clients[w % clients.length]!;
      while (Date.now() < until) {
        const i = n++;
        if (i % 2 === 0) await createFile(client, `/warm-up/c${i}`);
        else await client.touch(`/warm-up/t${i}`);
        await client.stat(`/warm-up/${i % 2 === 0 ? 'c' : 't'}${i}`);
      }
    }),
  );
}

/** Runs `fn` for i in [0, n) from `concurrency` workers. */
async function forAll(n: number, concurrency: number, fn: (i: number) => Promise<void>): Promise<void> {
  let next = 0;
  await Promise.all(
    Array.from({ length: concurrency }, async () => {
      while (next < n) await fn(next++);
    }),
  );
}

/** The cluster being measured (for the CPU figures of its metadata servers). */
let currentCluster: Cluster | undefined;

async function measureDogfs(): Promise<{ creates: Map<number, number>; touches: Map<number, number> }> {
  const cluster = await startCluster();
  currentCluster = cluster;
  const creates = new Map<number, number>();
  const touches = new Map<number, number>();
  const clients = Array.from({ length: CLIENTS }, () => new DogfsClient({ meta: cluster.json.meta }));
  try {
    await clients[0]!.mkdir('/warmup');
    // Memory first, on a fresh leader, so the other phases' garbage does not blur the baseline.
    if (MEMORY_FILES > 0) await measureMemory(cluster, clients);
    await warmUp(clients);
    for (const c of CONCURRENCY) {
      const base = `/c${c}`;
      await clients[0]!.mkdir(base);
      // Each worker's files by their current names: the later phases stat, rename and delete them.
      const files: string[][] = Array.from({ length: c }, () => []);
      const r = await measure(
        'create',
        c,
        async (client, w, i) => {
          const path = `${base}/w${w}-${i}`;
          await createFile(client, path);
          files[w]!.push(path);
        },
        clients,
      );
      creates.set(c, r.opsPerSec);
      const touched = await measure(
        'touch',
        c,
        async (client, w, i) => {
          const path = `${base}/t${w}-${i}`;
          await client.touch(path);
          files[w]!.push(path);
        },
        clients,
      );
      touches.set(c, touched.opsPerSec);
      if (ONLY_CREATES) continue;
      const pick = (w: number, i: number) => {
        const mine = files[w]!;
        if (mine.length === 0) throw new Error('worker has no file');
        return i % mine.length;
      };
      await measure('stat', c, (client, w, i) => client.stat(files[w]![pick(w, i)]!).then(), clients);
      await measure(
        'rename',
        c,
        async (client, w, i) => {
          const j = pick(w, i);
          const to = `${base}/r${w}-${j}-${i}`;
          await client.rename(files[w]![j]!, to);
          files[w]![j] = to;
        },
        clients,
      );
      // A delete is one command where a create is two: top the pool up (untimed) so it cannot run dry.
      const extra = files.reduce((n, f) => n + f.length, 0) * 2;
      await forAll(extra, 64, async (k) => {
        const w = k % c;
        const path = `${base}/x${w}-${k}`;
        await createFile(clients[k % CLIENTS]!, path);
        files[w]!.push(path);
      });
      await measure(
        'delete',
        c,
        async (client, w) => {
          const path = files[w]!.pop();
          if (path === undefined) throw new Error('out of files to delete');
          await client.delete(path);
        },
        clients,
      );
    }

    if (ONLY_CREATES) return { creates, touches };
    await clients[0]!.mkdir('/list');
    await forAll(LIST_ENTRIES, 64, (i) => createFile(clients[i % CLIENTS]!, `/list/f${i}`));
    for (const c of CONCURRENCY) {
      const r = await measure(
        'list',
        c,
        async (client) => {
          let n = 0;
          for await (const _ of client.list('/list')) n++;
          if (n !== LIST_ENTRIES) throw new Error(`listed ${n} of ${LIST_ENTRIES} entries`);
        },
        clients,
      );
      emit({
        bench: 'meta',
        metric: 'list_entries',
        value: Math.round(r.opsPerSec * LIST_ENTRIES),
        unit: 'entries/s',
        system: 'dogfs',
        concurrency: c,
        directory: LIST_ENTRIES,
      });
    }
  } finally {
    for (const c of clients) c.close();
    await stopCluster(cluster);
  }
  return { creates, touches };
}

/** The leader's RSS and raft directory before and after MEMORY_FILES more files (64 workers). */
async function measureMemory(cluster: Cluster, clients: DogfsClient[]): Promise<void> {
  const leaderAddr = (await clients[0]!.metadata.call('FindLeader', { group: 1 })).leaderAddr;
  const leader = cluster.json.processes.find((p) => p.role === 'meta' && p.addr === leaderAddr);
  if (leader === undefined) throw new Error(`leader ${leaderAddr} is not in cluster.json`);
  const raftDir = join(leader.dir, 'raft');
  await clients[0]!.mkdir('/mem');
  await new Promise((r) => setTimeout(r, 3000));
  const rss0 = rssBytes(leader.pid);
  const disk0 = dirBytes(raftDir);
  const t0 = performance.now();
  const dirs = Math.ceil(MEMORY_FILES / 10_000);
  for (let d = 0; d < dirs; d++) await clients[0]!.mkdir(`/mem/d${d}`);
  await forAll(MEMORY_FILES, 64, (i) =>
    createFile(clients[i % CLIENTS]!, `/mem/d${Math.floor(i / 10_000)}/f${i}`),
  );
  const seconds = (performance.now() - t0) / 1000;
  // Right after the load (garbage included), then once settled: sampled every second until it has not
  // fallen for 45 s (at most 150 s). V8's memory reducer gives back what only garbage held only after the
  // allocation rate has stayed low for a while: here it started 20-37 s after the load, so a shorter
  // window reported the garbage as if files held it.
  await new Promise((r) => setTimeout(r, 3000));
  const rssLoaded = rssBytes(leader.pid);
  let rss1 = rssLoaded;
  for (let s = 0, still = 0; s < 150 && still < 45; s++) {
    await new Promise((r) => setTimeout(r, 1000));
    const now = rssBytes(leader.pid);
    still = now < rss1 - (1 << 20) ? 0 : still + 1;
    rss1 = Math.min(rss1, now);
  }
  const disk1 = dirBytes(raftDir);
  const extra = { system: 'dogfs', files: MEMORY_FILES, leader: leader.id };
  emit({
    bench: 'meta',
    metric: 'memory_create_rate',
    value: Math.round(MEMORY_FILES / seconds),
    unit: 'files/s',
    ...extra,
  });
  emit({
    bench: 'meta',
    metric: 'leader_rss_before',
    value: Math.round(rss0 / 2 ** 20),
    unit: 'MiB',
    ...extra,
  });
  emit({
    bench: 'meta',
    metric: 'leader_rss_after',
    value: Math.round(rss1 / 2 ** 20),
    unit: 'MiB',
    ...extra,
  });
  emit({
    bench: 'meta',
    metric: 'leader_rss_per_file_right_after_load',
    value: Math.round((rssLoaded - rss0) / MEMORY_FILES),
    unit: 'B/file',
    ...extra,
  });
  emit({
    bench: 'meta',
    metric: 'leader_rss_per_file',
    settled: true,
    value: Math.round((rss1 - rss0) / MEMORY_FILES),
    unit: 'B/file',
    target: 1024,
    ...extra,
  });
  emit({ bench: 'meta', metric: 'raft_dir_bytes', value: disk1, unit: 'B', ...extra });
  emit({
    bench: 'meta',
    metric: 'raft_dir_per_file',
    value: Math.round((disk1 - disk0) / MEMORY_FILES),
    unit: 'B/file',
    ...extra,
  });
}

async function main(): Promise<void> {
  emit({ bench: 'meta', metric: 'machine', value: 0, unit: 'none', ...machine() });
  const etcd = await measureEtcdPuts('meta', CONCURRENCY, SECONDS, 'v'.repeat(256));
  const { creates, touches } = await measureDogfs();
  if (etcd) {
    for (const c of CONCURRENCY) {
      emit({
        bench: 'meta',
        metric: 'create_ratio_vs_etcd_put',
        value: +(creates.get(c)! / etcd.get(c)!).toFixed(2),
        unit: 'x',
        concurrency: c,
        target: c === 64 ? 1 : 0,
      });
      emit({
        bench: 'meta',
        metric: 'touch_ratio_vs_etcd_put',
        value: +(touches.get(c)! / etcd.get(c)!).toFixed(2),
        unit: 'x',
        concurrency: c,
      });
    }
  }
}

await main();
