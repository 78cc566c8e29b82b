/**
 * bench/data — the whole data path through the CLI, one JSON object per line:
 *   {"bench":"data","metric":...,"value":...,"unit":...,...}
 * A `dogfs up` cluster (3 metadata servers, 9 chunk servers, rs-6-3, fsync on); `dogfs put` then
 * `dogfs get` of one file (1 GiB by default) as separate client processes, each timed from spawn to exit
 * (get twice: into a local file, the headline, and to stdout into /dev/null, which shows what writing
 * the local file costs);
 * in the same run the raw limits: sequential writes with fdatasync on the same filesystem, through the
 * page cache and with O_DIRECT (into just-freed memory, as the put and the get write: see bench/raw.ts),
 * the disk taking a put's shards (K + M files written at once by as many processes, as the chunk
 * servers take them: the most a put can do on this disk, which the put's `ratioToShardWrite` is to),
 * and a raw TCP socket over loopback. Ratios are to the better raw disk write (issue #6: put >= 0.5x,
 * get >= 0.7x); the get into a local file also has its ratio to the disk reading and writing at once
 * (raw-disk-copy), since it reads its shards from the disk it writes; both gets have their ratio to the
 * disk's direct read rate (raw-disk-read-direct), which bounds any get, however fast the rest. Also: the client process's peak resident memory (VmHWM, sampled from /proc; limit
 * 256 MiB), CPU seconds per GB of file data of the client (and its user/sys split), the chunk servers and the
 * metadata servers.
 * The file read back is compared with the original (outside the timing).
 *
 * Usage: npm run bench:data [-- --mib 1024 --runs 1]   (BENCH_REFERENCE_CLIENT: see below)
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { open } from 'node:fs/promises';
import { loadavg, tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { ClusterJson } from '../src/cluster/up.js';
import { crc32c } from '../src/codec/index.js';
import { parseEcPolicy, totalShards } from '../src/common/ec-policy.js';
import { machine } from './lib.js';
import {
  DISK_REFERENCE_RUNS,
  freeMemoryJustBefore,
  freePageReporting,
  MiB,
  processCpuSeconds,
  processStatusBytes,
  rawDiskCopy,
  rawDiskRead,
  rawDiskWriteJustFreed,
  rawDiskWriteShards,
  rawTcp,
} from './raw.js';

function argNumber(name: string, fallback: number): number {
  const at = process.argv.indexOf(`--${name}`);
  return at > 0 ? Number(process.argv[at + 1]) : fallback;
}
const FILE_MIB = argNumber('mib', 1024);
const RUNS = argNumber('runs', 1);
const MEMORY_LIMIT_MIB = 256;
const PUT_TARGET = 0.5;
const GET_TARGET = 0.7;
const BIN = fileURLToPath(new URL('../../bin/dogfs.js', import.meta.url));
/**
 * BENCH_REFERENCE_CLIENT=/path/to/other/checkout/bin/dogfs.js: each run also puts and gets with that
 * client (another version's CLI, against this run's cluster), first, and its lines say client:
 * "reference"; the current client's lines then carry the ratios of MB/s and client CPU to it.
 */
const REFERENCE_BIN = process.env['BENCH_REFERENCE_CLIENT'] || undefined;

function emit(metric: string, value: number, unit: string, extra: Record<string, unknown> = {}): void {
  const rounded = Number(value.toPrecision(4));
  process.stdout.write(`${JSON.stringify({ bench: 'data', metric, value: rounded, unit, ...extra })}\n`);
}

const work = mkdtempSync(join(tmpdir(), 'dogfs-bench-data-'));
const children: ChildProcess[] = [];
process.on('exit', () => {
  for (const child of children) if (child.exitCode === null) child.kill('SIGKILL');
  rmSync(work, { recursive: true, force: true });
});

async function waitForFile(path: string, timeoutMs: number, up: ChildProcess): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!existsSync(path)) {
    if (up.exitCode !== null) throw new Error(`dogfs up exited with ${up.exitCode}`);
    if (Date.now() > deadline) throw new Error(`no ${path} after ${timeoutMs} ms`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

/** Fills `path` with `bytes` random bytes (page cache only: the put reads it back from memory). */
async function makeInput(path: string, bytes: number): Promise<number> {
  const handle = await open(path, 'w');
  const block = randomBytes(4 * MiB);
  let crc = 0;
  for (let offset = 0; offset < bytes; offset += block.length) {
    // Vary every block so no two stripes are equal.
    block.writeUInt32LE(offset / block.length, 0);
    const piece = block.subarray(0, Math.min(block.length, bytes - offset));
    crc = crc32c(piece, crc);
    await handle.write(piece, 0, piece.length, offset);
  }
  await handle.close();
  return crc >>> 0;
}

async function fileCrc(path: string): Promise<number> {
  const handle = await open(path, 'r');
  let crc = 0;
  for await (const piece of handle.createReadStream({ highWaterMark: 4 * MiB })) {
    crc = crc32c(piece as Buffer, crc);
  }
  return crc >>> 0;
}

/** User and system CPU seconds of a process so far (/proc/PID/stat utime, stime; 100 ticks a second). */
function processUserSysSeconds(pid: number): { user: number; sys: number } {
  const fields = readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1]!.split(' ');
  return { user: Number(fields[11]) / 100, sys: Number(fields[12]) / 100 };
}

interface ClientRun {
  seconds: number;
  peakRssBytes: number;
  cpuSeconds: number;
  /** The split of cpuSeconds: user (JavaScript, copies, codec) and sys (socket and file I/O). */
  userSeconds: number;
  sysSeconds: number;
  serverCpuSeconds: { chunk: number; meta: number };
}

/**
 * Runs one CLI command as its own process; samples its memory and CPU from /proc until it exits. Its
 * stdout goes to /dev/null.
 */
async function runClient(
  args: string[],
  cluster: ClusterJson,
  clusterPath: string,
  bin = BIN,
): Promise<ClientRun> {
  const cpuOf = (role: 'chunk' | 'meta') =>
    cluster.processes.filter((p) => p.role === role).reduce((sum, p) => sum + processCpuSeconds(p.pid), 0);
  const chunkCpu = cpuOf('chunk');
  const metaCpu = cpuOf('meta');
  const started = performance.now();
  const child = spawn(process.execPath, [bin, ...args], {
    stdio: ['ignore', 'ignore', 'pipe'],
    env: { ...process.env, DOGFS_CLUSTER: clusterPath },
  });
  children.push(child);
  let stderr = '';
  child.stderr!.on('data', (d: Buffer) => {
    stderr += d.toString();
  });
  let peakRssBytes = 0;
  let cpuSeconds = 0;
  let split = { user: 0, sys: 0 };
  // VmHWM is the kernel's own peak, so sampling only has to catch the last value before exit.
  const sample = () => {
    try {
      peakRssBytes = Math.max(peakRssBytes, processStatusBytes(child.pid!, 'VmHWM'));
      cpuSeconds = Math.max(cpuSeconds, processCpuSeconds(child.pid!));
      const now = processUserSysSeconds(child.pid!);
      if (now.user + now.sys >= split.user + split.sys) split = now;
    } catch {
      // exited between samples: the last sample stands
    }
  };
  const sampler = setInterval(sample, 20);
  const code = await new Promise<number | null>((resolve) => child.once('exit', resolve));
  clearInterval(sampler);
  const seconds = (performance.now() - started) / 1000;
  if (code !== 0) throw new Error(`dogfs ${args.join(' ')} exited with ${code}: ${stderr.trim()}`);
  return {
    seconds,
    peakRssBytes,
    cpuSeconds,
    userSeconds: split.user,
    sysSeconds: split.sys,
    serverCpuSeconds: { chunk: cpuOf('chunk') - chunkCpu, meta: cpuOf('meta') - metaCpu },
  };
}

function load(): string {
  return loadavg()
    .map((l) => l.toFixed(2))
    .join(' ');
}

async function main(): Promise<void> {
  emit('machine', 1, 'info', { ...machine(), freePageReporting: freePageReporting(), loadBefore: load() });
  const fileBytes = FILE_MIB * MiB;

  // The raw disk-write limit, into just-freed memory as the put and the get write (bench/raw.ts says
  // why that matters on this machine): through the page cache, syncing behind every 8 MiB as chunk
  // servers with DOGFS_CHUNK_DIRECT_WRITES=0 do, and with O_DIRECT in 4 MiB writes as the get's local
  // file and the chunk servers (by default) are written. The better of the two is the limit, so neither way of writing flatters the ratios.
  const buffered = await rawDiskWriteJustFreed({
    dir: join(work, 'raw-disk'),
    totalBytes: fileBytes,
    fileBytes: 64 * MiB,
    messageBytes: MiB,
    syncEveryBytes: 8 * MiB,
  });
  emit('raw-disk-write-fdatasync', buffered.mbps, 'MB/s', {
    memory: 'just freed',
    bestOf: DISK_REFERENCE_RUNS,
    fileMiB: 64,
    messageMiB: 1,
    syncEveryMiB: 8,
    totalMiB: FILE_MIB,
    cpuSecondsPerGB: Number(buffered.cpuSecondsPerGB.toFixed(3)),
  });
  const direct = await rawDiskWriteJustFreed({
    dir: join(work, 'raw-disk-direct'),
    totalBytes: fileBytes,
    fileBytes: 64 * MiB,
    messageBytes: MiB,
    syncEveryBytes: 64 * MiB,
    direct: true,
  });
  emit('raw-disk-write-direct', direct.mbps, 'MB/s', {
    memory: 'just freed',
    bestOf: DISK_REFERENCE_RUNS,
    fileMiB: 64,
    writeMiB: 4,
    totalMiB: FILE_MIB,
    cpuSecondsPerGB: Number(direct.cpuSecondsPerGB.toFixed(3)),
  });
  const disk = direct.mbps > buffered.mbps ? direct : buffered;
  // A get into a local file reads its shards from the disk it writes: the limit of that is the disk
  // reading and writing at once, which the ratio to the write limit alone does not show.
  const copy = await rawDiskCopy({ dir: join(work, 'raw-disk-copy'), totalBytes: fileBytes });
  emit('raw-disk-copy', copy.mbps, 'MB/s', {
    readMBps: Number(copy.readMbps.toFixed(1)),
    writeMBps: Number(copy.writeMbps.toFixed(1)),
    readWriteMiB: 4,
    totalMiB: FILE_MIB,
  });
  // A get reads its shards from the disk with O_DIRECT: however fast the rest, it is no faster than the
  // disk reads. Read as the get does (6 shard files at once, rs-6-3's K) and as one stream; the better.
  const reads = [
    await rawDiskRead({ dir: join(work, 'raw-disk-read-6'), totalBytes: fileBytes, streams: 6, inFlight: 2 }),
    await rawDiskRead({ dir: join(work, 'raw-disk-read-1'), totalBytes: fileBytes, streams: 1, inFlight: 4 }),
  ];
  const diskRead = Math.max(...reads.map((r) => r.mbps));
  emit('raw-disk-read-direct', diskRead, 'MB/s', {
    sixFilesMBps: Number(reads[0]!.mbps.toFixed(1)),
    oneFileMBps: Number(reads[1]!.mbps.toFixed(1)),
    readMiB: 4,
    totalMiB: FILE_MIB,
    ratioToDiskWrite: Number((diskRead / disk.mbps).toFixed(3)),
  });
  const tcp = await rawTcp({ totalBytes: fileBytes, messageBytes: MiB, direction: 'send', children });
  emit('raw-tcp-loopback', tcp.mbps, 'MB/s', { messageMiB: 1, totalMiB: FILE_MIB });

  const input = join(work, 'input.bin');
  const inputCrc = await makeInput(input, fileBytes);

  const clusterDir = join(work, 'cluster');
  const up = spawn(process.execPath, [BIN, 'up', '--dir', clusterDir, '--log-level', 'warn'], {
    stdio: ['ignore', 'ignore', 'inherit'],
  });
  children.push(up);
  const clusterPath = join(clusterDir, 'cluster.json');
  await waitForFile(clusterPath, 60_000, up);
  const cluster = JSON.parse(readFileSync(clusterPath, 'utf8')) as ClusterJson;
  const chunkServers = cluster.processes.filter((p) => p.role === 'chunk').length;
  const policy = parseEcPolicy(cluster.ec);
  const common = { fileMiB: FILE_MIB, ec: cluster.ec, chunkServers, metaServers: cluster.meta.length };
  // The disk taking what a put writes: the file's K + M shards, each by a process of its own at once, as
  // the chunk servers take them (with the cluster idle beside it, as during the put). The file's rate at
  // that pace is the most a put can do on this disk, however fast the software.
  const shardBytes = Math.ceil(fileBytes / policy.dataShards);
  const shardWrite = await rawDiskWriteShards({
    dir: join(work, 'raw-disk-shards'),
    streams: totalShards(policy),
    shardBytes,
    children,
  });
  const putBound = (shardWrite.mbps * policy.dataShards) / totalShards(policy);
  emit('raw-disk-write-shards', shardWrite.mbps, 'MB/s', {
    streams: totalShards(policy),
    shardMiB: Number((shardBytes / MiB).toFixed(1)),
    bestOf: DISK_REFERENCE_RUNS,
    fileMBpsAtThisPace: Number(putBound.toFixed(1)),
    ratioToDiskWrite: Number((putBound / disk.mbps).toFixed(3)),
  });
  const perGB = (seconds: number) => Number((seconds / (fileBytes / 1e9)).toFixed(3));
  const describe = (run: ClientRun, target: number, mbps: number) => ({
    ...common,
    seconds: Number(run.seconds.toFixed(2)),
    ratioToDisk: Number((mbps / disk.mbps).toFixed(3)),
    target,
    targetMet: mbps / disk.mbps >= target,
    ratioToTcp: Number((mbps / tcp.mbps).toFixed(3)),
    clientPeakRssMiB: Number((run.peakRssBytes / MiB).toFixed(1)),
    clientRssLimitMiB: MEMORY_LIMIT_MIB,
    clientCpuSecondsPerGB: perGB(run.cpuSeconds),
    clientUserSecondsPerGB: perGB(run.userSeconds),
    clientSysSecondsPerGB: perGB(run.sysSeconds),
    chunkServersCpuSecondsPerGB: perGB(run.serverCpuSeconds.chunk),
    metaServersCpuSecondsPerGB: perGB(run.serverCpuSeconds.meta),
    load: load(),
  });

  const clients: [string, string][] = [['this', BIN]];
  if (REFERENCE_BIN !== undefined) clients.unshift(['reference', REFERENCE_BIN]);
  for (let run = 0; run < RUNS; run++) {
    const reference = new Map<string, { mbps: number; cpu: number }>();
    for (const [client, bin] of clients) {
      /** The line's fields naming the client, and, for this client, its ratios to the reference. */
      const against = (metric: string, mbps: number, clientRun: ClientRun) => {
        const cpu = clientRun.cpuSeconds;
        if (client === 'reference') reference.set(metric, { mbps, cpu });
        const ref = client === 'this' ? reference.get(metric) : undefined;
        return {
          ...(REFERENCE_BIN === undefined ? {} : { client }),
          ...(ref === undefined
            ? {}
            : {
                ratioToReferenceMBps: Number((mbps / ref.mbps).toFixed(3)),
                ratioToReferenceClientCpu: Number((cpu / ref.cpu).toFixed(3)),
              }),
        };
      };
      const remote = `/bench-data-${client}-${run}.bin`;
      // The put stores (K+M)/K bytes of shards per byte of file.
      await freeMemoryJustBefore(
        join(work, 'scratch'),
        Math.ceil((fileBytes * totalShards(policy)) / policy.dataShards),
      );
      const put = await runClient(['put', input, remote], cluster, clusterPath, bin);
      const putMbps = FILE_MIB / put.seconds;
      emit('put', putMbps, 'MB/s', {
        run,
        ...describe(put, PUT_TARGET, putMbps),
        ratioToShardWrite: Number((putMbps / putBound).toFixed(3)),
        ...against('put', putMbps, put),
      });

      const output = join(work, `output-${run}.bin`);
      await freeMemoryJustBefore(join(work, 'scratch'), fileBytes);
      const get = await runClient(['get', remote, output], cluster, clusterPath, bin);
      const getMbps = FILE_MIB / get.seconds;
      const intact = (await fileCrc(output)) === inputCrc;
      emit('get', getMbps, 'MB/s', {
        run,
        into: 'local file',
        ...describe(get, GET_TARGET, getMbps),
        ratioToDiskCopy: Number((getMbps / copy.mbps).toFixed(3)),
        ratioToDiskRead: Number((getMbps / diskRead).toFixed(3)),
        intact,
        ...against('get', getMbps, get),
      });
      rmSync(output, { force: true });
      if (!intact) throw new Error(`${remote}: the bytes read back differ from those written`);
      const toStdout = await runClient(['get', remote, '-'], cluster, clusterPath, bin);
      const stdoutMbps = FILE_MIB / toStdout.seconds;
      emit('get-stdout', stdoutMbps, 'MB/s', {
        run,
        into: 'stdout to /dev/null',
        ...describe(toStdout, GET_TARGET, stdoutMbps),
        ratioToDiskRead: Number((stdoutMbps / diskRead).toFixed(3)),
        ...against('get-stdout', stdoutMbps, toStdout),
      });
    }
  }

  up.kill('SIGTERM');
  await new Promise((resolve) => up.once('exit', resolve));
}

await main();
process.exit(0);
