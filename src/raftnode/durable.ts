/**
 * raftnode/durable — the durable HostStorage: one append-only log file (DIR/raft.log) shared by every
 * hosted group, so a Ready round of all groups costs one durable (O_DSYNC) write (group commit).
 *
 * Record framing: [u32 payload length][u32 CRC32C of those 4 length bytes][u32 CRC32C of payload][payload =
 * WalRecord protobuf]. The length has its own checksum so a damaged length can never pass for a torn tail
 * (which would truncate every good record after it). On open the
 * file is replayed into a per-group mirror (hard state, latest snapshot, entries after it). A torn tail —
 * the last record cut short or failing its checksum, as a crash mid-write leaves it — is truncated away; a
 * bad record followed by good ones is corruption in the middle and is refused loudly, because acknowledged
 * data would be lost silently. Snapshot payloads go to their own files (temp, fsync, rename, fsync dir)
 * before the record that names them (a node's own snapshots are written off the event loop: a large state's
 * payload is hundreds of megabytes); the record carries the payload's length and CRC32C, computed as the
 * file is written, and a file that does not match them is refused at open like a damaged record. When the
 * file grows past a threshold it is rewritten from the mirror (temp file, fsync, rename), which drops
 * entries covered by snapshots.
 */
import {
  closeSync,
  constants,
  fsyncSync,
  openSync,
  readdirSync,
  readFileSync,
  renameSync,
  unlinkSync,
  writeSync,
  writevSync,
} from 'node:fs';
import { type FileHandle, open, rename } from 'node:fs/promises';
import { join } from 'node:path';
import { crc32c } from '@node-rs/crc32';
import { assert } from '../common/assert.js';
import { fsyncDir as fsyncDirAsync } from '../common/durable-file.js';
import {
  asIndex,
  asNodeId,
  asTerm,
  type Entry,
  type HardState,
  type RaftStorageState,
  type Snapshot,
  type SnapshotMeta,
} from '../consensus/index.js';
import type { ErrorCode } from '../wire/errors.js';
import type { WalRecord } from '../wire/gen/types.js';
import { decodeMessage, encodeMessage, type Init } from '../wire/proto.js';
import {
  entryFromWire,
  metaFromWire,
  metaToWire,
  spliceEntries,
  TAG_WAL_RECORD_ENTRIES,
} from './messages.js';
import type { GroupStorage, HostStorage } from './storage.js';

const LOG_FILE = 'raft.log';
const HEADER_BYTES = 12;
/** No single record may claim more than this: a larger length is corruption, not a record. */
const MAX_RECORD_BYTES = 64 << 20;
/**
 * The log is rewritten (what snapshots cover dropped) once it passes this size, or twice its size after
 * the last rewrite if that is more: a large state keeps more entries between its snapshots (host.ts,
 * SNAPSHOT_GROWTH_DIVISOR), and a log that stayed above a fixed threshold would be rewritten on every sync.
 */
const REWRITE_THRESHOLD_BYTES = 256 << 20;
/** Entries per record when the log is rewritten: at most about this many bytes (well under MAX_RECORD_BYTES). */
const REWRITE_RECORD_BYTES = 4 << 20;
/** An entry's bytes in a record beyond its data (index, term, type, tags and lengths; a configuration's voters), about. */
const ENTRY_OVERHEAD_BYTES = 64;
/**
 * The log is opened with O_DSYNC: a write returns once its data is durable, so a round's records cost one
 * writev instead of a writev and then an fdatasync.
 */
const LOG_FLAGS = constants.O_RDWR | constants.O_APPEND | constants.O_CREAT | constants.O_DSYNC;
/**
 * A snapshot of its own is written in the background in pieces of this size, each checksummed on the event
 * loop as it goes (~0.2 ms a piece): one CRC pass over a payload of hundreds of megabytes would hold the
 * loop for tens of milliseconds, which is what writing in the background avoids.
 */
const SNAPSHOT_WRITE_PIECE_BYTES = 1 << 20;

export class WalCorruptError extends Error {
  override name = 'WalCorruptError';
  readonly code: ErrorCode = 'CORRUPT';
}

/** A snapshot payload's file as its record names it; name '' for an empty payload (no file). */
interface SnapshotFile {
  name: string;
  bytes: number;
  crc32c: number;
}

const NO_FILE: SnapshotFile = { name: '', bytes: 0, crc32c: 0 };

interface Mirror {
  hardState: HardState | undefined;
  snapshot: Snapshot | undefined;
  snapshotFile: SnapshotFile;
  entries: Entry[];
}

/** A replayed snapshot's payload before replay reads it (its file is read only if no later one replaces it). */
const NOT_YET_READ = new Uint8Array(0);

function snapshotFileName(groupId: number, snapshot: Snapshot): string {
  return `snap-${groupId}-${snapshot.meta.term}-${snapshot.meta.index}.bin`;
}

function allZero(bytes: Buffer, from: number): boolean {
  for (let i = from; i < bytes.byteLength; i++) if (bytes[i] !== 0) return false;
  return true;
}

function hex(crc: number): string {
  return `0x${crc.toString(16).padStart(8, '0')}`;
}

function fsyncDir(dir: string): void {
  const fd = openSync(dir, 'r');
  try {
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
}

function snapshotFrame(group: number, meta: SnapshotMeta, file: SnapshotFile): Buffer {
  return frame({
    group,
    snapshot: metaToWire(meta),
    snapshotFile: file.name,
    snapshotBytes: file.bytes,
    snapshotCrc32c: file.crc32c,
  });
}

function frame(record: Init<WalRecord>): Buffer {
  const payload = encodeMessage('dogfs.v1.WalRecord', record);
  const framed = Buffer.allocUnsafe(HEADER_BYTES + payload.byteLength);
  framed.set(payload, HEADER_BYTES);
  return withHeader(framed);
}

/** An entries record: the entries are written by hand behind the group (messages.ts spliceEntries). */
function entriesFrame(group: number, entries: readonly Entry[]): Buffer {
  const head = encodeMessage('dogfs.v1.WalRecord', { group });
  return withHeader(spliceEntries(HEADER_BYTES, head, TAG_WAL_RECORD_ENTRIES, entries));
}

/** Fills the record header in front of the payload that starts at HEADER_BYTES. */
function withHeader(framed: Buffer): Buffer {
  // Replay refuses a longer record as corruption: writing one would make the node unable to restart.
  assert(
    framed.byteLength - HEADER_BYTES <= MAX_RECORD_BYTES,
    `raft log record of ${framed.byteLength - HEADER_BYTES} bytes exceeds ${MAX_RECORD_BYTES}`,
  );
  framed.writeUInt32LE(framed.byteLength - HEADER_BYTES, 0);
  framed.writeUInt32LE(crc32c(framed.subarray(0, 4)), 4);
  framed.writeUInt32LE(crc32c(framed.subarray(HEADER_BYTES)), 8);
  return framed;
}

function appendEntries(mirror: Mirror, entries: readonly Entry[]): void {
  const first = entries[0];
  if (first === undefined) return;
  // The mirror's entries are contiguous (every append and snapshot keeps them so), so where `first`
  // goes is arithmetic, not a scan of up to snapshotEvery entries per round.
  const head = mirror.entries[0];
  if (head !== undefined && first.index < head.index + mirror.entries.length) {
    mirror.entries.length = Math.max(0, first.index - head.index);
  }
  const last = mirror.entries[mirror.entries.length - 1];
  const base = last?.index ?? mirror.snapshot?.meta.index ?? 0;
  assert(first.index <= base + 1, `log gap: appending ${first.index} after ${base}`);
  for (const e of entries) mirror.entries.push(e);
}

function applySnapshot(mirror: Mirror, meta: SnapshotMeta, data: Uint8Array, file: SnapshotFile): void {
  // The entries after the snapshot stay only if the log holds the snapshot's last entry itself (same
  // index and term): this node's own snapshot (compaction). A snapshot installed from a leader over a
  // log that diverged (an old leader's uncommitted tail) replaces the whole log, as the core does: kept,
  // that tail came back at restart after a snapshot of a later term, and the node could not start.
  const last = mirror.entries.find((e) => e.index === meta.index);
  const holdsLast =
    last !== undefined
      ? last.term === meta.term
      : mirror.snapshot?.meta.index === meta.index && mirror.snapshot.meta.term === meta.term;
  mirror.snapshot = { meta, data };
  mirror.snapshotFile = file;
  mirror.entries = holdsLast ? mirror.entries.filter((e) => e.index > meta.index) : [];
  // A snapshot beyond the log replaces the whole log.
  if (mirror.entries[0] !== undefined && mirror.entries[0].index !== meta.index + 1) mirror.entries = [];
}

export class DurableStorage implements HostStorage {
  private readonly dir: string;
  private readonly mirrors = new Map<number, Mirror>();
  private pending: Buffer[] = [];
  private handle: FileHandle;
  private size: number;
  private rewriteAtBytes: number;
  private readonly rewriteThresholdBytes: number;
  /** Snapshot files being written in the background (and their .tmp): not unreferenced garbage yet. */
  private readonly snapshotsInFlight = new Set<string>();

  private constructor(dir: string, handle: FileHandle, size: number, rewriteThresholdBytes: number) {
    this.dir = dir;
    this.handle = handle;
    this.size = size;
    this.rewriteThresholdBytes = rewriteThresholdBytes;
    this.rewriteAtBytes = rewriteThresholdBytes;
  }

  /** `rewriteThresholdBytes`: when the log is first rewritten (256 MiB; tests make it small). */
  static async open(
    dir: string,
    options: { readonly rewriteThresholdBytes?: number } = {},
  ): Promise<DurableStorage> {
    const path = join(dir, LOG_FILE);
    let bytes: Buffer;
    try {
      bytes = readFileSync(path);
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code !== 'ENOENT') throw error;
      bytes = Buffer.alloc(0);
    }
    const mirrors = new Map<number, Mirror>();
    const validBytes = DurableStorage.replay(dir, bytes, mirrors);
    const created = bytes.byteLength === 0;
    const handle = await open(path, LOG_FLAGS);
    // A new log's name must survive a power loss too, or its first term and vote go with it.
    if (created) await fsyncDirAsync(dir);
    if (validBytes < bytes.byteLength) {
      await handle.truncate(validBytes);
      await handle.datasync();
    }
    const threshold = options.rewriteThresholdBytes ?? REWRITE_THRESHOLD_BYTES;
    assert(Number.isSafeInteger(threshold) && threshold > 0, 'rewrite threshold');
    const storage = new DurableStorage(dir, handle, validBytes, threshold);
    for (const [g, m] of mirrors) storage.mirrors.set(g, m);
    storage.removeUnreferencedSnapshots();
    return storage;
  }

  /** Replays records into mirrors; returns how many bytes are valid (the rest is a torn tail). */
  private static replay(dir: string, bytes: Buffer, mirrors: Map<number, Mirror>): number {
    let offset = 0;
    while (offset < bytes.byteLength) {
      const remaining = bytes.byteLength - offset;
      if (remaining < HEADER_BYTES) return offset; // torn header
      const length = bytes.readUInt32LE(offset);
      if (crc32c(bytes.subarray(offset, offset + 4)) !== bytes.readUInt32LE(offset + 4)) {
        // Zeros to the end are a torn tail too: a crash can leave the file extended by blocks never
        // written. No record is all zeros (the CRC32C of a zero length is not zero), so nothing is lost.
        if (allZero(bytes, offset)) return offset;
        throw new WalCorruptError(`${join(dir, LOG_FILE)}: damaged record length at byte ${offset}`);
      }
      const crc = bytes.readUInt32LE(offset + 8);
      const end = offset + HEADER_BYTES + length;
      if (length > MAX_RECORD_BYTES) {
        throw new WalCorruptError(`${join(dir, LOG_FILE)}: record at byte ${offset} claims ${length} bytes`);
      }
      if (end > bytes.byteLength) return offset; // a checked length past the end: cut short by a crash
      const payload = bytes.subarray(offset + HEADER_BYTES, end);
      if (crc32c(payload) !== crc) {
        if (end === bytes.byteLength) return offset; // the last record, half written: torn tail
        throw new WalCorruptError(
          `${join(dir, LOG_FILE)}: checksum mismatch at byte ${offset} with ${bytes.byteLength - end} bytes after it; refusing to start rather than lose committed entries`,
        );
      }
      const record = decodeMessage('dogfs.v1.WalRecord', payload);
      let mirror = mirrors.get(record.group);
      if (mirror === undefined) {
        mirror = { hardState: undefined, snapshot: undefined, snapshotFile: NO_FILE, entries: [] };
        mirrors.set(record.group, mirror);
      }
      // A snapshot's payload is read once the whole log is replayed, and only the latest per group: the
      // files of snapshots that later ones superseded are collected at open while their records stay in
      // the log until it is next rewritten.
      if (record.snapshot)
        applySnapshot(mirror, metaFromWire(record.snapshot), NOT_YET_READ, {
          name: record.snapshotFile,
          bytes: record.snapshotBytes,
          crc32c: record.snapshotCrc32c,
        });
      if (record.entries.length > 0) appendEntries(mirror, record.entries.map(entryFromWire));
      if (record.hardState) {
        mirror.hardState = {
          term: asTerm(record.hardState.term),
          vote: asNodeId(record.hardState.vote),
          commit: asIndex(record.hardState.commit),
        };
      }
      offset = end;
    }
    for (const mirror of mirrors.values()) {
      const file = mirror.snapshotFile;
      if (mirror.snapshot === undefined || file.name === '') continue;
      let data: Buffer;
      try {
        data = readFileSync(join(dir, file.name));
      } catch (error) {
        throw new WalCorruptError(
          `${join(dir, LOG_FILE)}: the latest snapshot, ${file.name}, cannot be read (${(error as Error).message}); refusing to start without it`,
        );
      }
      const found: SnapshotFile = { name: file.name, bytes: data.byteLength, crc32c: crc32c(data) };
      // A record from before lengths and CRCs were recorded has 0 bytes (no file is written for an empty
      // payload): its file is loaded unchecked, as it always was, so a member's directory from before
      // still starts. What was loaded is what the next rewrite of the log records for it.
      if (file.bytes !== 0 && (found.bytes !== file.bytes || found.crc32c !== file.crc32c)) {
        // Loading it would restore damaged state, which then spreads to followers sent this snapshot.
        // Not starting is safe: the group's other replicas hold the state.
        throw new WalCorruptError(
          `${join(dir, file.name)}: damaged snapshot: the log records ${file.bytes} bytes with CRC32C ${hex(file.crc32c)}, the file has ${found.bytes} bytes with CRC32C ${hex(found.crc32c)}; refusing to start rather than load damaged state`,
        );
      }
      mirror.snapshotFile = found;
      mirror.snapshot = { meta: mirror.snapshot.meta, data };
    }
    return offset;
  }

  private removeUnreferencedSnapshots(alsoKeep: ReadonlySet<string> = new Set()): void {
    const referenced = new Set([...this.mirrors.values()].map((m) => m.snapshotFile.name));
    for (const name of alsoKeep) referenced.add(name);
    for (const name of readdirSync(this.dir)) {
      if (this.snapshotsInFlight.has(name)) continue;
      if ((name.startsWith('snap-') && !referenced.has(name)) || name.endsWith('.tmp'))
        unlinkSync(join(this.dir, name));
    }
  }

  private mirror(groupId: number): Mirror {
    let mirror = this.mirrors.get(groupId);
    if (mirror === undefined) {
      mirror = { hardState: undefined, snapshot: undefined, snapshotFile: NO_FILE, entries: [] };
      this.mirrors.set(groupId, mirror);
    }
    return mirror;
  }

  group(groupId: number): GroupStorage {
    const mirror = this.mirror(groupId);
    return {
      load: (): RaftStorageState | undefined => {
        if (mirror.hardState === undefined || mirror.snapshot === undefined) return undefined;
        return { hardState: mirror.hardState, snapshot: mirror.snapshot, entries: [...mirror.entries] };
      },
      append: (entries) => {
        if (entries.length === 0) return;
        appendEntries(mirror, entries);
        this.pending.push(entriesFrame(groupId, entries));
      },
      setHardState: (hardState) => {
        mirror.hardState = hardState;
        this.pending.push(frame({ group: groupId, hardState }));
      },
      saveSnapshot: (snapshot) => {
        const file = snapshot.data.byteLength === 0 ? NO_FILE : this.writeSnapshotFile(groupId, snapshot);
        this.stageSnapshot(groupId, mirror, snapshot, file);
      },
      saveOwnSnapshot: async (snapshot) => {
        const file =
          snapshot.data.byteLength === 0
            ? NO_FILE
            : await this.writeSnapshotFileInBackground(groupId, snapshot);
        try {
          if ((mirror.snapshot?.meta.index ?? -1) >= snapshot.meta.index) {
            // A newer snapshot (the leader's) was staged while this one was written: this one is garbage
            // (unless it is the very same file: the same term and index).
            if (file.name !== '' && file.name !== mirror.snapshotFile.name)
              unlinkSync(join(this.dir, file.name));
            return;
          }
          this.stageSnapshot(groupId, mirror, snapshot, file);
        } finally {
          this.snapshotsInFlight.delete(file.name);
        }
      },
    };
  }

  private stageSnapshot(groupId: number, mirror: Mirror, snapshot: Snapshot, file: SnapshotFile): void {
    assert(
      file.bytes === snapshot.data.byteLength,
      `snapshot ${file.name}: ${file.bytes} bytes written for a payload of ${snapshot.data.byteLength}`,
    );
    applySnapshot(mirror, snapshot.meta, snapshot.data, file);
    this.pending.push(snapshotFrame(groupId, snapshot.meta, file));
  }

  /**
   * writeSnapshotFile through the thread pool: temp file, write, fsync, rename, fsync of the directory.
   * The name stays in snapshotsInFlight (so a log rewrite meanwhile does not collect it) until the caller
   * has staged or dropped it.
   */
  private async writeSnapshotFileInBackground(groupId: number, snapshot: Snapshot): Promise<SnapshotFile> {
    const name = snapshotFileName(groupId, snapshot);
    const tmp = `${name}.tmp`;
    this.snapshotsInFlight.add(name);
    this.snapshotsInFlight.add(tmp);
    try {
      const data = snapshot.data;
      let crc = 0;
      const out = await open(join(this.dir, tmp), 'w');
      try {
        for (let at = 0; at < data.byteLength; ) {
          const piece = Math.min(SNAPSHOT_WRITE_PIECE_BYTES, data.byteLength - at);
          const { bytesWritten } = await out.write(data, at, piece);
          assert(bytesWritten > 0, `snapshot ${name}: wrote nothing at byte ${at}`);
          crc = crc32c(data.subarray(at, at + bytesWritten), crc);
          at += bytesWritten;
        }
        await out.sync();
      } finally {
        await out.close();
      }
      await rename(join(this.dir, tmp), join(this.dir, name));
      await fsyncDirAsync(this.dir);
      return { name, bytes: data.byteLength, crc32c: crc };
    } catch (error) {
      this.snapshotsInFlight.delete(name);
      throw error;
    } finally {
      this.snapshotsInFlight.delete(tmp);
    }
  }

  private writeSnapshotFile(groupId: number, snapshot: Snapshot): SnapshotFile {
    const name = snapshotFileName(groupId, snapshot);
    const tmp = join(this.dir, `${name}.tmp`);
    const fd = openSync(tmp, 'w');
    let crc = 0;
    try {
      // writeSync may write less than asked (a full disk): a short file must never be recorded.
      for (let at = 0; at < snapshot.data.byteLength; ) {
        const written = writeSync(fd, snapshot.data, at, snapshot.data.byteLength - at);
        assert(written > 0, `snapshot ${name}: wrote nothing at byte ${at}`);
        crc = crc32c(snapshot.data.subarray(at, at + written), crc);
        at += written;
      }
      fsyncSync(fd);
    } finally {
      closeSync(fd);
    }
    renameSync(tmp, join(this.dir, name));
    fsyncDir(this.dir);
    return { name, bytes: snapshot.data.byteLength, crc32c: crc };
  }

  /**
   * Writes the staged records with one pwritev on the calling thread: the event loop waits for the disk.
   * A host has nothing to do before its round is durable that cannot wait (its acks and its answers wait
   * for it anyway; what arrives meanwhile is read in one go afterwards, into the next round). Through the
   * thread pool the same write cost a hand-off and a wake-up to come back, and every ack or proposal
   * arriving during it woke the loop on its own; on this project's 2-core machine that was ~10% of a
   * follower's CPU per put, more on the leader, and bench:raft's throughput at concurrency 64 rose with it
   * (ARCHITECTURE, Raft figures).
   */
  async sync(): Promise<void> {
    if (this.pending.length === 0) return;
    const buffers = this.pending;
    this.pending = [];
    let bytes = 0;
    for (const b of buffers) bytes += b.byteLength;
    const bytesWritten = writevSync(this.handle.fd, buffers);
    assert(bytesWritten === bytes, `short write to the raft log: ${bytesWritten} of ${bytes} bytes`);
    this.size += bytes;
    if (this.size > this.rewriteAtBytes) await this.rewrite();
  }

  /** Rewrites the log as the mirror's current state: drops everything snapshots cover. */
  private async rewrite(): Promise<void> {
    const records: Buffer[] = [];
    // The snapshot files the new log names: kept below even if, while it is written, a snapshot taken in
    // the background is staged in their place (its record is then only pending, not on disk).
    const named = new Set<string>();
    for (const [group, m] of this.mirrors) {
      named.add(m.snapshotFile.name);
      if (m.snapshot) records.push(snapshotFrame(group, m.snapshot.meta, m.snapshotFile));
      // A group's tail in records of at most REWRITE_RECORD_BYTES: as one record, a large state's tail
      // (up to half its snapshot's size) passed MAX_RECORD_BYTES, which replay refuses as corruption.
      for (let start = 0; start < m.entries.length; ) {
        let end = start;
        let bytes = 0;
        while (end < m.entries.length && (end === start || bytes < REWRITE_RECORD_BYTES)) {
          const entry = m.entries[end]!;
          bytes += (entry.kind === 'normal' ? entry.data.byteLength : 0) + ENTRY_OVERHEAD_BYTES;
          end++;
        }
        records.push(entriesFrame(group, m.entries.slice(start, end)));
        start = end;
      }
      if (m.hardState) records.push(frame({ group, hardState: m.hardState }));
    }
    const path = join(this.dir, LOG_FILE);
    const tmp = `${path}.tmp`;
    let size = 0;
    for (const r of records) size += r.byteLength;
    const out = await open(tmp, 'w');
    try {
      // A write may take less than it was given (a full disk says so only at the next one): a short new
      // log renamed over the old one lost every record past the cut, acknowledged ones included. So each
      // record is written to its end, and a failure leaves the old log in place (the caller crashes the
      // node rather than go on without durability; the old log, intact, is what it restarts from).
      let position = 0;
      for (const record of records) {
        for (let at = 0; at < record.byteLength; ) {
          const { bytesWritten } = await out.write(record, at, record.byteLength - at, position);
          assert(bytesWritten > 0, `raft log rewrite: wrote nothing at byte ${position}`);
          at += bytesWritten;
          position += bytesWritten;
        }
      }
      assert(position === size, `raft log rewrite: ${position} of ${size} bytes`);
      await out.datasync();
    } catch (error) {
      await out.close();
      unlinkSync(tmp);
      throw error;
    }
    await out.close();
    await this.handle.close();
    renameSync(tmp, path);
    fsyncDir(this.dir);
    this.handle = await open(path, LOG_FLAGS);
    this.size = size;
    this.rewriteAtBytes = Math.max(this.rewriteThresholdBytes, 2 * size);
    this.removeUnreferencedSnapshots(named);
  }

  async close(): Promise<void> {
    await this.sync();
    await this.handle.close();
  }
}

export function openHostStorage(dir: string): Promise<DurableStorage> {
  return DurableStorage.open(dir);
}
