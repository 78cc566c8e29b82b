/**
 * client/transport — what the write and read paths need from the data plane, as a narrow interface:
 * stream one shard to a chunk server, and stream a byte range of one shard back. The real one speaks the
 * data-transfer protocol (wire/data-transfer.ts); tests may put a fault-injecting one in its place.
 */
import type { ShardId } from '../wire/gen/types.js';

export interface ShardTarget {
  /** Data-transfer address of the chunk server, host:port. */
  readonly addr: string;
  readonly shard: ShardId;
}

export interface ShardWriteResult {
  /** Bytes the chunk server made durable (fsynced). */
  readonly length: number;
  /** CRC32C of the whole shard as stored. */
  readonly crc32c: number;
}

export interface ShardWriteHandle {
  /**
   * Sends bytes. Resolves when the transport can take more (back-pressure) and has copied or sent
   * `data`: the caller may reuse it from then on (the writer refills its stripe buffers). Rejects with
   * a DogfsError if the shard failed.
   */
  write(data: Uint8Array): Promise<void>;
  /** Ends the shard; resolves when the chunk server answers that it is durable. */
  finish(): Promise<ShardWriteResult>;
  /** Drops the shard (the chunk server discards its temporary file). Idempotent. */
  abort(reason?: Error): void;
}

export interface OpenWriteOptions {
  /** Exact bytes the shard will hold. */
  readonly length: number;
  /** Absolute deadline, ms since the epoch, for the whole shard. */
  readonly deadline: number;
  /**
   * Called whenever more of the shard's bytes have left for the server (the real transport: as each
   * packet is taken by the socket), so a stall timeout can tell a slow shard from a stopped one.
   */
  readonly onProgress?: () => void;
}

export interface ShardReadHandle {
  /**
   * The next bytes of the range, in order; null after the last. Rejects with a DogfsError (CORRUPT when
   * a checksum fails, with `inTransit` when the bytes were damaged on their way here rather than in the
   * stored copy; UNAVAILABLE when the server is gone, NOT_FOUND when it has no such shard).
   */
  next(): Promise<Uint8Array | null>;
  /** Stops reading (closes the connection). Idempotent. */
  close(): void;
}

export interface OpenReadOptions {
  readonly deadline: number;
  /**
   * The shard's length as committed. A server whose copy has another length holds something other than
   * the committed shard (a stale or foreign copy, however self-consistent its chunk checksums): the
   * read fails CORRUPT before any byte is delivered.
   */
  readonly shardLength?: number;
  /**
   * Each piece `next` returns is valid only until the following `next` (the transport may reuse its
   * memory, saving a copy): for callers that copy or use the bytes at once.
   */
  readonly transient?: boolean;
  /** Called as bytes of the read arrive, however few: the shard is moving (a stall timeout's progress). */
  readonly onProgress?: () => void;
}

export interface ShardTransport {
  openWrite(target: ShardTarget, options: OpenWriteOptions): ShardWriteHandle;
  /** Bytes [offset, offset + length) of the shard, exactly. */
  openRead(target: ShardTarget, offset: number, length: number, options: OpenReadOptions): ShardReadHandle;
  close(): void;
}
