/**
 * bench/meta-state — the namespace state machine alone (no Raft, no network), one JSON object per line:
 *   {"bench":"meta-state","metric":...,"value":...,"unit":...,...}
 * Every command goes through its byte encoding and `applyEncoded`, as a replica applies Raft log entries.
 * Reports heap bytes per file (target <= 1024) for 100,000 files written through the whole write path
 * (create, allocate an rs-6-3 block group on 9 servers, commit it, complete) in 100 directories, and for
 * empty files; commands applied per second; snapshot bytes per file, snapshot/restore rates, the longest
 * time one chunk of the streamed snapshot took, and what a change to a directory costs while one streams
 * (keeping the entry as it was).
 * Usage: node --expose-gc dist/bench/meta-state.js [--files 100000]
 */
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import {
  encodeNamespaceCommand,
  type NamespaceCommand,
  NamespaceState,
  STREAM_SNAPSHOT_CHUNK_BYTES,
  type Success,
} from '../src/metadata/state/index.js';

const filesArg = process.argv.indexOf('--files');
const FILES = filesArg > 0 ? Number(process.argv[filesArg + 1]) : 100_000;
const DIRS = 100;
const SERVERS = Array.from({ length: 12 }, (_, i) => `chunk-${i}`);

setFlagsFromString('--expose-gc');
const gc = runInNewContext('gc') as () => void;

/** A command without the fields the driver stamps (distributes over the union, so `op` discriminates). */
type CommandBody = NamespaceCommand extends infer C
  ? C extends NamespaceCommand
    ? Omit<C, 'timeMs' | 'session'>
    : never
  : never;

function heapUsed(): number {
  for (let i = 0; i < 3; i++) gc();
  return process.memoryUsage().heapUsed;
}

function print(metric: string, value: number, unit: string, extra: Record<string, unknown> = {}): void {
  console.log(
    JSON.stringify({ bench: 'meta-state', metric, value: Number(value.toFixed(2)), unit, ...extra }),
  );
}

function run(withData: boolean): void {
  const scenario = withData ? 'rs-6-3, one block group per file' : 'empty files';
  const ns = new NamespaceState({ group: 1 });
  let seq = 0;
  let time = 1_700_000_000_000;
  const opened = ns.applyEncoded(encodeNamespaceCommand({ op: 'openSession', timeMs: time, nonce: 'b0' }));
  if (!opened.ok || opened.op !== 'openSession') throw new Error('openSession failed');
  const clientId = opened.clientId;
  const send = <B extends CommandBody>(body: B): Success<B['op']> => {
    seq++;
    time++;
    const cmd = { ...body, timeMs: time, session: { clientId, seq, ackedBelow: seq } };
    const result = ns.applyEncoded(encodeNamespaceCommand(cmd as unknown as NamespaceCommand));
    if (!result.ok) throw new Error(`${body.op}: ${result.code} ${result.message}`);
    return result as Success<B['op']>;
  };
  for (let d = 0; d < DIRS; d++)
    send({ op: 'mkdir', path: `/data/dir-${d}`, parents: true, mode: 0o755, ec: '' });
  const before = heapUsed();
  const started = process.hrtime.bigint();
  let commands = 0;
  for (let i = 0; i < FILES; i++) {
    const path = `/data/dir-${i % DIRS}/file-${String(i).padStart(7, '0')}.dat`;
    const created = send({
      op: 'create',
      path,
      overwrite: false,
      mode: 0o644,
      ec: '',
      defaultEc: 'rs-6-3',
      leaseMs: 60_000,
    });
    commands += 2;
    let size = 0;
    if (withData) {
      const servers = Array.from({ length: 9 }, (_, s) => SERVERS[(i + s) % SERVERS.length]!);
      const allocated = send({
        op: 'allocateBlockGroup',
        inodeId: created.inode.id,
        leaseId: created.leaseId,
        offset: 0,
        stripeSize: 1 << 20,
        maxBytes: 6 * 256 * (1 << 20),
        servers,
      });
      size = 100_000 + i;
      const shardLength = Math.ceil(size / 6 / 4096) * 4096;
      send({
        op: 'commitBlockGroup',
        inodeId: created.inode.id,
        leaseId: created.leaseId,
        blockGroupId: allocated.blockGroup.id,
        length: size,
        shards: servers.map((_, index) => ({
          index,
          length: shardLength,
          crc32c: (i * 2654435761 + index) >>> 0,
          durable: true,
        })),
      });
      commands += 2;
    }
    send({ op: 'completeFile', inodeId: created.inode.id, leaseId: created.leaseId, size });
  }
  const seconds = Number(process.hrtime.bigint() - started) / 1e9;
  const after = heapUsed();
  print('heap_bytes_per_file', (after - before) / FILES, 'B', { scenario, files: FILES, target: 1024 });
  print('apply_commands_per_s', commands / seconds, 'cmd/s', {
    scenario,
    note: 'decode + apply, one thread',
  });
  print('files_per_s', FILES / seconds, 'files/s', { scenario });
  let t = process.hrtime.bigint();
  let bytes = 0;
  // The snapshot as the Raft host takes it (streamSnapshot, 64 KiB chunks): the longest single chunk is
  // what one slice of it can hold the event loop (the host drains chunks 2 ms at a time). Commands go
  // on meanwhile; a change to a directory the stream has yet to read keeps the entry as it was, which is
  // timed with one mkdir into the last directory while the stream is at its start.
  let longestChunkMs = 0;
  const stream = ns.streamSnapshot();
  let chunkStarted = performance.now();
  let copyOnWriteMs = Number.NaN;
  for (let next = stream.next(); next.done !== true; next = stream.next()) {
    bytes += next.value.length;
    const now = performance.now();
    longestChunkMs = Math.max(longestChunkMs, now - chunkStarted);
    if (Number.isNaN(copyOnWriteMs)) {
      send({
        op: 'mkdir',
        path: `/data/dir-${DIRS - 1}/during-snapshot`,
        parents: false,
        mode: 0o755,
        ec: '',
      });
      copyOnWriteMs = performance.now() - now;
    }
    chunkStarted = performance.now();
  }
  print('snapshot_longest_chunk_ms', longestChunkMs, 'ms', {
    scenario,
    chunkBytes: STREAM_SNAPSHOT_CHUNK_BYTES,
  });
  print('snapshot_copy_on_write_ms', copyOnWriteMs, 'ms', {
    scenario,
    entries: Math.ceil(FILES / DIRS),
    note: 'first change of a directory while a snapshot streams',
  });
  // The whole snapshot in one call, for the rate.
  t = process.hrtime.bigint();
  bytes = 0;
  for (const chunk of ns.snapshotChunks()) bytes += chunk.length;
  const snapSeconds = Number(process.hrtime.bigint() - t) / 1e9;
  print('snapshot_bytes_per_file', bytes / FILES, 'B', { scenario });
  print('snapshot_MB_per_s', bytes / 1e6 / snapSeconds, 'MB/s', { scenario });
  print('snapshot_ms', snapSeconds * 1000, 'ms', { scenario, files: FILES, note: 'in one call' });
  const snapshot = ns.snapshot();
  t = process.hrtime.bigint();
  const restored = NamespaceState.restore(snapshot);
  const restoreSeconds = Number(process.hrtime.bigint() - t) / 1e9;
  print('restore_MB_per_s', snapshot.length / 1e6 / restoreSeconds, 'MB/s', { scenario });
  if (restored.stateHash() !== ns.stateHash()) throw new Error('restored state differs');
}

run(true);
run(false);
