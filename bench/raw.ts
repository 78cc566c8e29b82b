/**
 * bench/raw — the machine's raw limits that the data-path benches compare against in the same run
 * (sequential writes with fdatasync, a raw TCP socket over loopback), and per-process CPU and memory
 * figures read from /proc.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync, constants as fsConstants, mkdirSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { type FileHandle, open } from 'node:fs/promises';
import { connect } from 'node:net';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { STAGING_BYTES } from '../src/chunk/shard-file.js';
import { alignedAllocator } from '../src/codec/native.js';
import { RECEIVE_SLAB_BYTES } from '../src/wire/data-transfer.js';
import { percentile } from './lib.js';

export const MiB = 1024 * 1024;
/** The reused receive buffer of the `onread` raw socket: as large as the chunk server's reads. */
const RECEIVE_BUFFER_BYTES = RECEIVE_SLAB_BYTES;
const CLOCK_TICKS = 100;

/** CPU seconds (user + system) a process has used, from /proc. */
export function processCpuSeconds(pid: number): number {
  const fields = readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1]!.split(' ');
  return (Number(fields[11]) + Number(fields[12])) / CLOCK_TICKS;
}

/** A field of /proc/PID/status in bytes (VmRSS, VmHWM); 0 once the process is gone. */
export function processStatusBytes(pid: number, field: 'VmRSS' | 'VmHWM'): number {
  try {
    const line = readFileSync(`/proc/${pid}/status`, 'utf8')
      .split('\n')
      .find((l) => l.startsWith(`${field}:`));
    return Number(line?.split(/\s+/)[1] ?? 0) * 1024;
  } catch {
    return 0;
  }
}

export function selfCpuSeconds(): number {
  const usage = process.cpuUsage();
  return (usage.user + usage.system) / 1e6;
}

/**
 * This machine is a VM whose kernel hands free memory back to the hypervisor (virtio-balloon free page
 * reporting, in batches every 2 s or so). Writing new file data into pages that went back costs 1.5-1.9 s
 * of system CPU per GiB (`dd bs=1M count=1024 conv=fdatasync` after 10-30 s without freeing anything:
 * 330-500 MB/s); into pages freed a moment before, ~0.2 s (1.0-1.2 GB/s). A disk reference that runs
 * just after deleting files (as "best of two" runs do) is thus 2-3x faster than the same writes into
 * memory that has been free for a while. So that a ratio compares like with like, the benches start
 * every measured write, the reference's and the system's, just after freeing at least as many bytes as
 * it will write: both run in the machine's fastest state.
 */
/**
 * Writes `bytes` of scratch files under `dir` and deletes them, so that about as many bytes of new file
 * data written in the next few seconds land in just-freed pages.
 */
export async function freeMemoryJustBefore(dir: string, bytes: number): Promise<void> {
  mkdirSync(dir, { recursive: true });
  const block = Buffer.alloc(MiB, 1);
  const handle = await open(join(dir, 'scratch'), 'w');
  for (let offset = 0; offset < bytes; offset += MiB) await handle.write(block, 0, MiB, offset);
  await handle.close();
  rmSync(dir, { recursive: true, force: true });
}

/** Whether freed memory goes back to a hypervisor here (so `freeMemoryJustBefore` matters), for the output. */
export function freePageReporting(): string {
  const driver = '/sys/bus/virtio/drivers/virtio_balloon';
  const balloon = existsSync(driver) && readdirSync(driver).some((name) => name.startsWith('virtio'));
  const order = /page_reporting\.page_reporting_order=(\d+)/.exec(readFileSync('/proc/cmdline', 'utf8'))?.[1];
  if (!balloon) return 'none seen';
  return `virtio-balloon${order === undefined ? '' : ` (order ${order}: ${(4 << Number(order)) / 1024} MiB blocks)`}`;
}

export interface RawDiskResult {
  mbps: number;
  cpuSecondsPerGB: number;
  /**
   * Median time from each file's last byte handed to the kernel to the file being durable (its final
   * fdatasync, and the one still running behind the writes): what a shard's finish cannot avoid.
   */
  fileSyncMsMedian: number;
}

/**
 * Sequential `messageBytes` writes into files of `fileBytes` under `dir`, with fdatasync: one per file,
 * plus (when `syncEveryBytes` is smaller) one in flight behind the writes every `syncEveryBytes`, as
 * the chunk server's buffered writes do. With `direct`, the files are opened O_DIRECT and written in
 * 4 MiB writes from 2 MiB-aligned memory, one in flight while the next is filled, then one fdatasync
 * per file — as the chunk server's direct writes do (`messageBytes` and `syncEveryBytes` are unused).
 */
export async function rawDiskWrite(options: {
  dir: string;
  totalBytes: number;
  fileBytes: number;
  messageBytes: number;
  syncEveryBytes: number;
  direct?: boolean;
}): Promise<RawDiskResult> {
  const { dir, totalBytes, fileBytes, messageBytes, syncEveryBytes } = options;
  const direct = options.direct === true;
  const allocate = alignedAllocator();
  if (direct && allocate === undefined) throw new Error('direct writes need the native addon');
  // Two buffers for direct writes: one on its way to disk while the other is filled (here: already is).
  const staging = direct ? [0, 1].map(() => allocate!(STAGING_BYTES, 2 * MiB)) : [];
  for (const b of staging) randomBytes(STAGING_BYTES).copy(b);
  const buffer = randomBytes(messageBytes);
  mkdirSync(dir);
  const cpu = selfCpuSeconds();
  const started = performance.now();
  const fileSyncMs: number[] = [];
  for (let file = 0; file * fileBytes < totalBytes; file++) {
    const path = join(dir, `f${file}`);
    let syncStarted: number;
    const handle: FileHandle = direct
      ? await open(
          path,
          fsConstants.O_WRONLY | fsConstants.O_CREAT | fsConstants.O_EXCL | fsConstants.O_DIRECT,
        )
      : await open(path, 'w');
    if (direct) {
      let writing: Promise<unknown> | undefined;
      for (let offset = 0, n = 0; offset < fileBytes; offset += STAGING_BYTES, n++) {
        await writing;
        writing = handle.write(staging[n % 2]!, 0, Math.min(STAGING_BYTES, fileBytes - offset), offset);
      }
      await writing;
      syncStarted = performance.now();
    } else {
      let syncing: Promise<void> | undefined;
      for (let offset = 0; offset < fileBytes; offset += messageBytes) {
        await handle.write(buffer, 0, messageBytes, offset);
        if ((offset + messageBytes) % syncEveryBytes === 0 && syncing === undefined) {
          syncing = handle.datasync().finally(() => {
            syncing = undefined;
          });
        }
      }
      // The sync behind the last write is part of making the file durable: timed with the last one.
      syncStarted = performance.now();
      await syncing;
    }
    await handle.datasync();
    fileSyncMs.push(performance.now() - syncStarted);
    await handle.close();
  }
  const seconds = (performance.now() - started) / 1000;
  const cpuSecondsPerGB = (selfCpuSeconds() - cpu) / (totalBytes / 1e9);
  rmSync(dir, { recursive: true, force: true });
  return {
    mbps: totalBytes / MiB / seconds,
    cpuSecondsPerGB,
    fileSyncMsMedian: percentile(
      fileSyncMs.sort((a, b) => a - b),
      50,
    ),
  };
}

/**
 * Reading and writing the same disk at once, as a get into a local file does (its shards are read with
 * O_DIRECT on the chunk servers while the client writes the file): a file of `totalBytes`, written first,
 * is read with O_DIRECT in 4 MiB reads, one in flight while the previous is consumed, while `rawDiskWrite`
 * (direct) writes as many new bytes. `mbps` is the pace of the pair (bytes / the slower one's time): the
 * most a copy from this disk to itself can do, which a virtual disk can hold well under either alone.
 */
export async function rawDiskCopy(options: { dir: string; totalBytes: number }): Promise<{
  mbps: number;
  readMbps: number;
  writeMbps: number;
}> {
  const { dir, totalBytes } = options;
  const allocate = alignedAllocator();
  if (allocate === undefined) throw new Error('direct reads need the native addon');
  mkdirSync(dir);
  const source = join(dir, 'source');
  const buffers = [0, 1].map(() => allocate(STAGING_BYTES, 2 * MiB));
  for (const b of buffers) randomBytes(STAGING_BYTES).copy(b);
  const flags = fsConstants.O_CREAT | fsConstants.O_EXCL | fsConstants.O_WRONLY | fsConstants.O_DIRECT;
  const writer = await open(source, flags);
  for (let offset = 0; offset < totalBytes; offset += STAGING_BYTES) {
    await writer.write(buffers[0]!, 0, Math.min(STAGING_BYTES, totalBytes - offset), offset);
  }
  await writer.datasync();
  await writer.close();
  const started = performance.now();
  const read = (async () => {
    const reader = await open(source, fsConstants.O_RDONLY | fsConstants.O_DIRECT);
    let reading: Promise<unknown> | undefined;
    for (let offset = 0, n = 0; offset < totalBytes; offset += STAGING_BYTES, n++) {
      await reading;
      reading = reader.read(buffers[n % 2]!, 0, Math.min(STAGING_BYTES, totalBytes - offset), offset);
    }
    await reading;
    await reader.close();
    return performance.now() - started;
  })();
  const [readMs, write] = await Promise.all([
    read,
    rawDiskWrite({
      dir: join(dir, 'written'),
      totalBytes,
      fileBytes: 64 * MiB,
      messageBytes: MiB,
      syncEveryBytes: 64 * MiB,
      direct: true,
    }),
  ]);
  const writeMs = (totalBytes / MiB / write.mbps) * 1000;
  rmSync(dir, { recursive: true, force: true });
  const mib = totalBytes / MiB;
  return {
    mbps: mib / (Math.max(readMs, writeMs) / 1000),
    readMbps: mib / (readMs / 1000),
    writeMbps: write.mbps,
  };
}

/**
 * The disk's read limit, as a get reads its K data shards: `streams` files of `totalBytes / streams`
 * each (written with O_DIRECT and fdatasynced first, outside the timing), all read at once with
 * O_DIRECT in 4 MiB reads, `inFlight` per file. Nothing comes from the page cache, as nothing does for
 * the chunk servers' direct reads. A virtual disk may read well below what it takes in writes (the
 * host can absorb writes); a get can go no faster than this however fast the rest of it is.
 */
export async function rawDiskRead(options: {
  dir: string;
  totalBytes: number;
  streams: number;
  inFlight: number;
}): Promise<{ mbps: number }> {
  const { dir, totalBytes, streams, inFlight } = options;
  const allocate = alignedAllocator();
  if (allocate === undefined) throw new Error('direct reads need the native addon');
  const fileBytes = Math.ceil(totalBytes / streams / STAGING_BYTES) * STAGING_BYTES;
  mkdirSync(dir);
  const source = allocate(STAGING_BYTES, 2 * MiB);
  randomBytes(STAGING_BYTES).copy(source);
  const paths = Array.from({ length: streams }, (_, i) => join(dir, `f${i}`));
  for (const path of paths) {
    const writer = await open(
      path,
      fsConstants.O_CREAT | fsConstants.O_EXCL | fsConstants.O_WRONLY | fsConstants.O_DIRECT,
    );
    for (let offset = 0; offset < fileBytes; offset += STAGING_BYTES) {
      await writer.write(source, 0, STAGING_BYTES, offset);
    }
    await writer.datasync();
    await writer.close();
  }
  const started = performance.now();
  await Promise.all(
    paths.map(async (path) => {
      const reader = await open(path, fsConstants.O_RDONLY | fsConstants.O_DIRECT);
      const buffers = Array.from({ length: inFlight }, () => allocate(STAGING_BYTES, 2 * MiB));
      let next = 0;
      // `inFlight` loops over one file, each taking the next 4 MiB: that many reads queued at the disk.
      await Promise.all(
        buffers.map(async (buffer) => {
          for (let offset = next; offset < fileBytes; offset = next) {
            next += STAGING_BYTES;
            await reader.read(buffer, 0, STAGING_BYTES, offset);
          }
        }),
      );
      await reader.close();
    }),
  );
  const seconds = (performance.now() - started) / 1000;
  rmSync(dir, { recursive: true, force: true });
  return { mbps: (fileBytes * streams) / MiB / seconds };
}

/**
 * The disk taking a put's shards: `streams` files of `shardBytes` each (one block group's K + M shards),
 * written all at once by as many processes (bench/disk-writer.ts), each as a chunk server writes a shard:
 * O_DIRECT, 4 MiB writes, one in flight, one fdatasync at the end. A virtual disk can take several
 * interleaved streams well below one stream's rate (here 9 took ~1.6 GB/s where one took ~2.0-2.4): the
 * most a put can do here is this, whatever the software does. `mbps` counts the shard bytes written.
 * Best of DISK_REFERENCE_RUNS; processes start (and allocate) outside the timing.
 */
export async function rawDiskWriteShards(options: {
  dir: string;
  streams: number;
  shardBytes: number;
  children: ChildProcess[];
}): Promise<{ mbps: number }> {
  const { dir, streams, shardBytes } = options;
  const script = fileURLToPath(new URL('./disk-writer.js', import.meta.url));
  let best = 0;
  for (let run = 0; run < DISK_REFERENCE_RUNS; run++) {
    mkdirSync(dir);
    const writers = Array.from({ length: streams }, (_, i) => {
      const child = spawn(process.execPath, [script, join(dir, `shard-${i}`), String(shardBytes)], {
        stdio: ['pipe', 'pipe', 'inherit'],
      });
      options.children.push(child);
      const lines = createInterface({ input: child.stdout! });
      const said = (word: string) =>
        new Promise<void>((resolve, reject) => {
          const onLine = (line: string) => {
            if (line !== word) return;
            lines.off('line', onLine);
            resolve();
          };
          lines.on('line', onLine);
          child.once('close', (code) => reject(new Error(`disk writer exited (${code}) before '${word}'`)));
        });
      return { child, ready: said('ready'), done: said('done') };
    });
    await Promise.all(writers.map((w) => w.ready));
    const started = performance.now();
    for (const { child } of writers) child.stdin!.write('go\n');
    await Promise.all(writers.map((w) => w.done));
    const seconds = (performance.now() - started) / 1000;
    rmSync(dir, { recursive: true, force: true });
    best = Math.max(best, (streams * shardBytes) / MiB / seconds);
  }
  return { mbps: best };
}

/** How many runs a disk reference takes the best of: a limit is the most the machine did. */
export const DISK_REFERENCE_RUNS = 2;

/** `rawDiskWrite` into just-freed memory, as every measured write of the benches starts; best of runs. */
export async function rawDiskWriteJustFreed(
  options: Parameters<typeof rawDiskWrite>[0],
): Promise<RawDiskResult> {
  let best: RawDiskResult | undefined;
  for (let run = 0; run < DISK_REFERENCE_RUNS; run++) {
    await freeMemoryJustBefore(`${options.dir}-scratch`, options.totalBytes);
    const result = await rawDiskWrite(options);
    if (best === undefined || result.mbps > best.mbps) best = result;
  }
  return best!;
}

/**
 * A raw TCP socket between this process and a child that discards (`send`) or produces (`receive`)
 * `totalBytes` in `messageBytes` writes. `children` collects the child so the caller can kill it on exit.
 * The receiving end reads through 'data' events (a new 64 KiB Buffer per read, Node's default) or, with
 * `receiver: 'onread'`, into one reused buffer of `RECEIVE_BUFFER_BYTES` (net's `onread` option; for the
 * child's accepted socket, its handle moved into a socket built with it, as the chunk server does): the
 * cheapest way Node receives, so the better of the two is what a socket can carry here.
 */
export async function rawTcp(options: {
  totalBytes: number;
  messageBytes: number;
  direction: 'send' | 'receive';
  receiver?: 'data' | 'onread';
  children: ChildProcess[];
}): Promise<{ mbps: number; peerCpuSecondsPerGB: number }> {
  const { totalBytes, messageBytes, direction } = options;
  const onread = options.receiver === 'onread';
  const script = `
    const net = require('node:net');
    const buffer = Buffer.alloc(${messageBytes}, 7);
    const server = net.createServer({ pauseOnConnect: true }, (accepted) => {
      if (${direction === 'receive'}) {
        const socket = accepted;
        socket.resume();
        let sent = 0;
        const pump = () => {
          while (sent < ${totalBytes}) { sent += buffer.length; if (!socket.write(buffer)) return socket.once('drain', pump); }
          socket.end();
        };
        pump();
      } else {
        let got = 0;
        const done = (socket) => { if (got >= ${totalBytes}) socket.end('k'); };
        if (${onread}) {
          const socket = new net.Socket({ handle: accepted._handle, onread: {
            buffer: Buffer.allocUnsafe(${RECEIVE_BUFFER_BYTES}), callback: (n) => { got += n; done(socket); } } });
          accepted._handle = null;
        } else {
          accepted.on('data', (d) => { got += d.length; done(accepted); });
          accepted.resume();
        }
      }
    });
    server.listen(0, '127.0.0.1', () => process.stdout.write(String(server.address().port) + '\\n'));`;
  const child = spawn(process.execPath, ['-e', script], { stdio: ['ignore', 'pipe', 'inherit'] });
  options.children.push(child);
  const port = await new Promise<number>((resolve) =>
    child.stdout!.once('data', (d: Buffer) => resolve(Number(d.toString()))),
  );
  let received = 0;
  const receiveBuffer = Buffer.allocUnsafe(RECEIVE_BUFFER_BYTES);
  const socket = connect({
    host: '127.0.0.1',
    port,
    noDelay: true,
    ...(onread && direction === 'receive'
      ? {
          onread: {
            buffer: receiveBuffer,
            callback: (n: number) => {
              received += n;
              return true;
            },
          },
        }
      : {}),
  });
  await new Promise((resolve) => socket.once('connect', resolve));
  const peerCpu = processCpuSeconds(child.pid!);
  const started = performance.now();
  if (direction === 'send') {
    const buffer = randomBytes(messageBytes);
    for (let sent = 0; sent < totalBytes; sent += messageBytes) {
      if (!socket.write(buffer)) await new Promise((resolve) => socket.once('drain', resolve));
    }
    await new Promise((resolve) => socket.once('data', resolve));
  } else if (onread) {
    await new Promise((resolve) => socket.once('end', resolve));
    if (received !== totalBytes) throw new Error(`raw TCP: received ${received} of ${totalBytes} bytes`);
  } else {
    for await (const _ of socket) {
      // Count nothing: the loop ends when the child has sent everything.
    }
  }
  const seconds = (performance.now() - started) / 1000;
  const peerCpuSecondsPerGB = (processCpuSeconds(child.pid!) - peerCpu) / (totalBytes / 1e9);
  socket.destroy();
  child.kill();
  return { mbps: totalBytes / MiB / seconds, peerCpuSecondsPerGB };
}
