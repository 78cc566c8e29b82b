/**
 * client/client — `DogfsClient`, the typed entry point: namespace calls (mkdir, stat, list, rename,
 * delete), the cluster report, and the write and read streams.
 */

import type { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { assert } from '../common/assert.js';
import { compareNames } from '../common/code-point-order.js';
import { DogfsError } from '../wire/errors.js';
import { type ClusterReportResponse, type ClusterSettings, FileType, type Inode } from '../wire/gen/types.js';
import type { Init } from '../wire/proto.js';
import { DataTransferShardTransport } from './data-transport.js';
import { type MemberView, type MetaCallOptions, MetadataConnection } from './meta.js';
import { joinPath, normalizePath } from './paths.js';
import {
  FileReader,
  FileReadStream,
  type ReadOutcome,
  type ReadSink,
  type ReadStreamOptions,
} from './reader.js';
import { type RepairOptions, type RepairOutcome, repairFile } from './repair.js';
import { ClientSession } from './session.js';
import type { ShardTransport } from './transport.js';
import { FileWriteStream, type WriteStreamOptions } from './writer.js';

export interface DogfsClientOptions {
  /** Metadata server addresses (host:port); any subset that includes a reachable one will do. */
  meta: readonly string[];
  /** Default deadline of each metadata call, retries included (10 s). */
  timeoutMs?: number;
  /** How long one attempt on one metadata server may take before another is tried (5 s). */
  attemptTimeoutMs?: number;
  /** The data plane; default: the data-transfer protocol over TCP. */
  transport?: ShardTransport;
}

export type FileKind = 'file' | 'dir';

/** What `stat` and `list` give for a name (`dogfs stat --json` prints this). */
export interface FileStatus {
  readonly path: string;
  readonly name: string;
  readonly type: FileKind;
  readonly size: number;
  /** Modification time, ms since the epoch. */
  readonly mtime: number;
  /** EC policy ("" for directories that inherit the cluster's). */
  readonly ec: string;
  readonly mode: number;
  readonly id: number;
  /** The raw inode, with block groups and shard locations. */
  readonly inode: Inode;
}

export interface ListOptions extends MetaCallOptions {
  /** Entries per page (the service bounds it). */
  pageSize?: number;
  /** Start after this name (paging cursor). */
  startAfter?: string;
}

/** Pages a single `list` walks at most; a directory bigger than this many pages is refused. */
const MAX_LIST_PAGES = 1_000_000;

export function toFileStatus(path: string, inode: Inode): FileStatus {
  const name = path === '/' ? '/' : path.slice(path.lastIndexOf('/') + 1);
  return {
    path,
    name,
    type: inode.type === FileType.DIRECTORY ? 'dir' : 'file',
    size: inode.size,
    mtime: inode.mtimeMs,
    ec: inode.ec,
    mode: inode.mode,
    id: inode.id,
    inode,
  };
}

export class DogfsClient {
  readonly session: ClientSession;
  private readonly meta: MetadataConnection;
  private transportInstance: ShardTransport | undefined;

  constructor(options: DogfsClientOptions) {
    this.meta = new MetadataConnection({
      seeds: options.meta,
      ...(options.timeoutMs === undefined ? {} : { timeoutMs: options.timeoutMs }),
      ...(options.attemptTimeoutMs === undefined ? {} : { attemptTimeoutMs: options.attemptTimeoutMs }),
    });
    this.session = new ClientSession();
    this.transportInstance = options.transport;
  }

  /** The metadata connection (leader tracking, raw calls). */
  get metadata(): MetadataConnection {
    return this.meta;
  }

  async mkdir(
    path: string,
    options: { parents?: boolean; mode?: number } & MetaCallOptions = {},
  ): Promise<FileStatus> {
    const p = normalizePath(path);
    const answer = await this.meta.mutate(
      this.session,
      'Mkdir',
      { path: p, parents: options.parents ?? false, mode: options.mode ?? 0o755 },
      options,
    );
    if (!answer.inode) throw new DogfsError('INTERNAL', `${p}: Mkdir answered without an inode`);
    return toFileStatus(p, answer.inode);
  }

  /**
   * Creates an empty file that appears at once (one metadata command: no write lease, no CompleteFile).
   * ALREADY_EXISTS if the name is taken, unless `overwrite` (which replaces a file, not a directory).
   */
  async touch(
    path: string,
    options: { ec?: string; overwrite?: boolean; mode?: number } & MetaCallOptions = {},
  ): Promise<FileStatus> {
    const p = normalizePath(path);
    const answer = await this.meta.mutate(
      this.session,
      'Create',
      {
        path: p,
        ec: options.ec ?? '',
        overwrite: options.overwrite ?? false,
        mode: options.mode ?? 0o644,
        complete: true,
      },
      options,
    );
    if (!answer.inode) throw new DogfsError('INTERNAL', `${p}: Create answered without an inode`);
    return toFileStatus(p, answer.inode);
  }

  async stat(path: string, options: MetaCallOptions = {}): Promise<FileStatus> {
    const p = normalizePath(path);
    const answer = await this.meta.call('Stat', { path: p }, options);
    if (!answer.inode) throw new DogfsError('NOT_FOUND', `${p}: No such file or directory`);
    return toFileStatus(p, answer.inode);
  }

  /** The entries of a directory, page by page (each page one List call), in name order. */
  async *list(path: string, options: ListOptions = {}): AsyncGenerator<FileStatus> {
    const p = normalizePath(path);
    let startAfter = options.startAfter ?? '';
    for (let page = 0; page < MAX_LIST_PAGES; page++) {
      const answer = await this.meta.call(
        'List',
        { path: p, startAfter, limit: options.pageSize ?? 1000 },
        options,
      );
      for (const entry of answer.entries) {
        if (!entry.inode) continue;
        yield toFileStatus(joinPath(p, entry.name), entry.inode);
      }
      const last = answer.entries[answer.entries.length - 1];
      if (!answer.more || last === undefined) return;
      assert(startAfter === '' || compareNames(last.name, startAfter) > 0, 'list pages must advance');
      startAfter = last.name;
    }
    throw new DogfsError('FAILED_PRECONDITION', `${p}: more than ${MAX_LIST_PAGES} pages`);
  }

  /**
   * Moves `src` to `dst`, replacing a file or empty directory there unless `noReplace` (ALREADY_EXISTS);
   * with `ifDstId`, only if dst is that inode now (FAILED_PRECONDITION otherwise): one atomic check.
   */
  async rename(
    src: string,
    dst: string,
    options: { noReplace?: boolean; ifDstId?: number } & MetaCallOptions = {},
  ): Promise<void> {
    await this.meta.mutate(
      this.session,
      'Rename',
      {
        src: normalizePath(src),
        dst: normalizePath(dst),
        noReplace: options.noReplace ?? false,
        ifDstId: options.ifDstId ?? 0,
      },
      options,
    );
  }

  /**
   * Joins complete files into one without copying a byte: `path` becomes the files named `sources` in
   * directory `sourceDir`, in that order, and they are gone (one metadata command; all must share one EC
   * policy). ALREADY_EXISTS if `path` exists, unless `overwrite`; with `sourceIds` (the inode ids the
   * caller checked, in order) FAILED_PRECONDITION if a source was replaced since.
   */
  async compose(
    path: string,
    sourceDir: string,
    sources: readonly string[],
    options: {
      overwrite?: boolean;
      mode?: number;
      sourceIds?: readonly number[];
      /** Replace `path` only if it is this inode now (FAILED_PRECONDITION otherwise; with overwrite). */
      ifDstId?: number;
    } & MetaCallOptions = {},
  ): Promise<FileStatus> {
    const p = normalizePath(path);
    const answer = await this.meta.mutate(
      this.session,
      'ComposeFile',
      {
        path: p,
        sourceDir: normalizePath(sourceDir),
        sources: [...sources],
        sourceIds: [...(options.sourceIds ?? [])],
        overwrite: options.overwrite ?? false,
        mode: options.mode ?? 0o644,
        ifDstId: options.ifDstId ?? 0,
      },
      options,
    );
    if (!answer.inode) throw new DogfsError('INTERNAL', `${p}: ComposeFile answered without an inode`);
    return toFileStatus(p, answer.inode);
  }

  async delete(path: string, options: { recursive?: boolean } & MetaCallOptions = {}): Promise<void> {
    await this.meta.mutate(
      this.session,
      'Delete',
      { path: normalizePath(path), recursive: options.recursive ?? false },
      options,
    );
  }

  /**
   * Changes cluster settings (stripe size, block-group size, timeouts, default EC policy); fields left out
   * keep their value. Resolves with the settings now in force. New files use them; existing ones keep theirs.
   */
  async setSettings(
    settings: Init<ClusterSettings>,
    options: MetaCallOptions = {},
  ): Promise<ClusterSettings> {
    const answer = await this.meta.call('SetSettings', { settings }, options);
    if (!answer.settings) throw new DogfsError('INTERNAL', 'SetSettings answered without settings');
    return answer.settings;
  }

  /**
   * Drains chunk server `id` (decommission: no new shards go to it, and automatic repair moves its shards
   * to other servers), or stops draining it. Resolves whether that changed anything.
   */
  async setDraining(id: string, draining: boolean, options: MetaCallOptions = {}): Promise<boolean> {
    return (await this.meta.call('SetDraining', { chunkServerId: id, draining }, options)).changed;
  }

  /**
   * What each metadata server (each seed) says of its own Raft groups — role, term, the leader it
   * follows, commit and applied index — without needing a quorum: what to look at when the cluster
   * refuses with "no quorum". Each seed gets `timeoutMs` (2 s) to answer.
   */
  members(options: { timeoutMs?: number } = {}): Promise<MemberView[]> {
    return this.meta.members(options.timeoutMs ?? 2000);
  }

  /** Groups, leaders and terms; chunk servers and their state; files missing shards. */
  report(options: MetaCallOptions & { damagedAfter?: string } = {}): Promise<ClusterReportResponse> {
    const { damagedAfter, ...callOptions } = options;
    return this.meta.call('ClusterReport', { damagedAfter: damagedAfter ?? '' }, callOptions);
  }

  /**
   * Rebuilds the missing shards of the file at `path` onto healthy chunk servers and commits their new
   * locations (client/repair.ts). Shards that could not be repaired are listed in the outcome.
   */
  repair(path: string, options: RepairOptions = {}): Promise<RepairOutcome> {
    return repairFile(
      { meta: this.meta, session: this.session, transport: this.transport() },
      normalizePath(path),
      options,
    );
  }

  /**
   * A writable stream that stores a file. The file appears, with all its bytes, when the stream
   * finishes ('finish'); on 'error' it does not appear.
   */
  createWriteStream(path: string, options: WriteStreamOptions = {}): FileWriteStream {
    return new FileWriteStream(
      { meta: this.meta, session: this.session, transport: this.transport() },
      normalizePath(path),
      options,
    );
  }

  /** A readable stream of a file or of bytes [start, end] (inclusive) of it. */
  createReadStream(path: string, options: ReadStreamOptions = {}): FileReadStream {
    return new FileReadStream({ meta: this.meta, transport: this.transport() }, normalizePath(path), options);
  }

  /**
   * Reads a file (or bytes [start, end] of it) into `sink`, stripe by stripe, each straight from the
   * shards' receive buffers into the memory the sink reserves (no stream, no buffer per stripe): what
   * `dogfs get` into a local file does. Degraded reads, checksums and reports as createReadStream.
   */
  async readInto(path: string, sink: ReadSink, options: ReadStreamOptions = {}): Promise<ReadOutcome> {
    const reader = new FileReader(
      { meta: this.meta, transport: this.transport() },
      normalizePath(path),
      options,
    );
    await reader.readInto(sink);
    return {
      inode: reader.inode!,
      bytes: reader.delivered,
      badShards: reader.badShards,
      reportErrors: reader.reportErrors,
    };
  }

  /** Stores `data` (bytes or a readable stream) as `path`; resolves once the file is complete. */
  async writeFile(
    path: string,
    data: Uint8Array | Readable,
    options: WriteStreamOptions = {},
  ): Promise<FileWriteStream> {
    const size = data instanceof Uint8Array ? data.length : options.size;
    const stream = this.createWriteStream(path, size === undefined ? options : { ...options, size });
    if (data instanceof Uint8Array) {
      await new Promise<void>((resolve, reject) => {
        stream.once('error', reject);
        stream.once('finish', resolve);
        stream.end(data);
      });
    } else {
      await pipeline(data, stream);
    }
    return stream;
  }

  /** A whole (small) file in memory. Use createReadStream for large ones. */
  async readFile(path: string, options: ReadStreamOptions = {}): Promise<Buffer> {
    const parts: Buffer[] = [];
    for await (const chunk of this.createReadStream(path, options)) parts.push(chunk as Buffer);
    return Buffer.concat(parts);
  }

  close(): void {
    this.meta.close();
    this.transportInstance?.close();
  }

  /** The default transport, built on first use. */
  private transport(): ShardTransport {
    this.transportInstance ??= new DataTransferShardTransport();
    return this.transportInstance;
  }
}
