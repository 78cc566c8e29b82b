/**
 * wire/data-transfer — the bulk data path between clients (and repairing chunk servers) and chunk
 * servers: a streaming protocol over plain TCP (DESIGN section 5; proto/dogfs/v1/chunk.proto describes the
 * exchange). This file holds what both ends share — framing, limits, validation of shard ids — and the
 * client side, `DataTransferClient`: pooled connections, WriteShard with back-pressure, ReadShard as an
 * async iterable of verified bytes that can be cancelled, deadlines, and errors as DogfsError codes.
 *
 * Checksums: shard bytes are cut into DATA_CHUNK_SIZE chunks, and every packet carries the CRC32C of each
 * chunk it covers. Packets start on chunk boundaries, so the writer's chunk CRCs are exactly what the
 * chunk server stores, and on reads the stored CRCs travel back to the reader, which checks them again:
 * bytes are verified end to end without the server recomputing anything for the reader.
 *
 * wire may not import codec, so the CRC32C function is handed in (`crc32c` option): the codec's.
 */
import { connect, type NetConnectOpts, type OnReadOpts, Socket, type SocketConstructorOpts } from 'node:net';
import type { Readable } from 'node:stream';
import { fromSourceAddress } from '../common/address.js';
import { assert } from '../common/assert.js';
import { DogfsError, type ErrorCode, isErrorCode, toDogfsError } from './errors.js';
import { DataOp, type MessageTypes, type ShardId } from './gen/types.js';
import { decodeMessage, encodeMessage, type Init, type MessageName } from './proto.js';

/** Bytes per checksum chunk; the chunk server stores one CRC32C per chunk of this size. */
export const DATA_CHUNK_SIZE = 64 * 1024;
/** Largest protobuf header frame either side accepts. */
export const MAX_FRAME_HEADER_BYTES = 16 * 1024;
/** Largest packet payload; packets are whole chunks, so this is a multiple of DATA_CHUNK_SIZE. */
export const MAX_PACKET_BYTES = 4 * 1024 * 1024;
export const DEFAULT_PACKET_BYTES = 1024 * 1024;
/** Largest shard the protocol carries (a block group's shard is 256 MiB by default). */
export const MAX_SHARD_BYTES = 1024 * 1024 * 1024;
/** Shard indexes are below this (K+M of any policy; codec's MAX_TOTAL_SHARDS). */
export const MAX_SHARD_INDEX = 32;
/** Deadline of an operation whose caller gave none. */
export const DEFAULT_DATA_TIMEOUT_MS = 60_000;
/** Largest deadline a chunk server honours for one operation of up to ~112.5 MiB (see dataOperationMs). */
export const MAX_DATA_OPERATION_MS = 30 * 60_000;
/**
 * The slowest transfer an operation is given time for. A shard of a block group is one write that cannot
 * be renewed midway (256 MiB by default, 1 GiB at most): 30 minutes alone failed every put over a link
 * slower than ~146 KiB/s per shard stream. A dead or stalled peer is found by the stall timeouts on both
 * ends (client shardTimeoutMs, the server's idle cut), not by this deadline.
 */
export const MIN_DATA_RATE_BYTES_PER_SECOND = 64 * 1024;

/** The longest deadline an operation moving `bytes` may have: 30 minutes, or its bytes at 64 KiB/s. */
export function dataOperationMs(bytes: number): number {
  return Math.max(MAX_DATA_OPERATION_MS, Math.ceil((bytes / MIN_DATA_RATE_BYTES_PER_SECOND) * 1000));
}

const FRAME_PREFIX_BYTES = 4;

export type Crc32c = (data: Uint8Array, initial?: number) => number;

assert(MAX_PACKET_BYTES % DATA_CHUNK_SIZE === 0 && DEFAULT_PACKET_BYTES % DATA_CHUNK_SIZE === 0);

/**
 * A shard id from the wire, checked: numbers in range, never anything that could become a path. Throws
 * INVALID_ARGUMENT.
 */
export function checkShardId(shard: ShardId | null | undefined, what = 'shard'): ShardId {
  if (shard === null || shard === undefined) throw new DogfsError('INVALID_ARGUMENT', `${what}: missing`);
  const { blockGroupId, index, generation } = shard;
  if (!Number.isSafeInteger(blockGroupId) || blockGroupId < 0) {
    throw new DogfsError('INVALID_ARGUMENT', `${what}: block group id ${String(blockGroupId)} out of range`);
  }
  if (!Number.isSafeInteger(index) || index < 0 || index >= MAX_SHARD_INDEX) {
    throw new DogfsError(
      'INVALID_ARGUMENT',
      `${what}: index ${String(index)} out of range [0, ${MAX_SHARD_INDEX})`,
    );
  }
  if (!Number.isSafeInteger(generation) || generation < 0) {
    throw new DogfsError('INVALID_ARGUMENT', `${what}: generation ${String(generation)} out of range`);
  }
  return { blockGroupId, index, generation };
}

export function formatShardId(shard: ShardId): string {
  return `${shard.blockGroupId}/${shard.index}@${shard.generation}`;
}

/** A checked non-negative integer no larger than `max`. Throws INVALID_ARGUMENT. */
export function checkWireInteger(value: number, max: number, what: string): number {
  if (!Number.isSafeInteger(value) || value < 0 || value > max) {
    throw new DogfsError('INVALID_ARGUMENT', `${what} ${String(value)} out of range [0, ${max}]`);
  }
  return value;
}

/** One frame: 4-byte big-endian length, then the encoded message. */
export function encodeFrame<N extends MessageName>(name: N, message: Init<MessageTypes[N]>): Buffer {
  const body = encodeMessage(name, message);
  assert(body.length <= MAX_FRAME_HEADER_BYTES, `${name} frame of ${body.length} bytes exceeds the limit`);
  const frame = Buffer.allocUnsafe(FRAME_PREFIX_BYTES + body.length);
  frame.writeUInt32BE(body.length, 0);
  frame.set(body, FRAME_PREFIX_BYTES);
  return frame;
}

/** Bytes a connection reads ahead of the operation consuming them (then the socket is paused). */
export const DEFAULT_READ_AHEAD_BYTES = 256 * 1024;

/**
 * Bytes of one receive slab: the most one socket read takes in. Reads of 512 KiB-1 MiB cost a third of
 * the CPU per byte of 64 KiB ones here. A connection always holds one slab (the socket's next read goes
 * into it), so it is no larger: 1024 open connections hold at most 512 MiB, and only as far as touched.
 */
export const RECEIVE_SLAB_BYTES = 512 * 1024;
/** A slab with less room than this left is retired: reads stay large. */
const MIN_RECEIVE_BYTES = 64 * 1024;
/**
 * Released slabs a connection keeps for reuse while an operation runs (more are left to the garbage
 * collector). A reader holds a packet (1 MiB by default, spanning up to three slabs) while the socket
 * reads the next one ahead (up to three more): six cycle. With three kept, every packet's slabs were
 * dropped and fresh ones faulted in (`dogfs get` of 1 GiB: 25k page faults and 140 MiB resident
 * against 15k and 99 MiB, about 0.25 s less client CPU here). Kept slabs were all in use at once
 * before, so this adds nothing to a connection's peak.
 */
const MAX_FREE_SLABS = 6;

interface Slab {
  readonly buffer: Buffer;
  /** Bytes received into the slab and not yet released. */
  outstanding: number;
  /** Reads have moved on to another slab: it is free once nothing of it is outstanding. */
  retired: boolean;
}

/**
 * The receive memory of one connection, for sockets that read through net's `onread` option. Node
 * otherwise allocates a new 64 KiB Buffer for every socket read; on loopback here those small reads
 * and the fresh pages each new buffer faults in cost about four times the CPU of the receive copy
 * itself (bench/chunk: the raw TCP receiver's CPU per GB with 'data' events and with `onread`). Reads
 * go instead into slabs of RECEIVE_SLAB_BYTES, as much as the kernel has per read, and the bytes are
 * handed out as slices of the slab (no copy). A slice stays valid until its holder gives it back with
 * `release`; a slab whose bytes were all released is reused. Release is only an optimisation: bytes
 * never released keep their slab alive as long as they are referenced, like any Buffer.
 */
class ReceiveArena {
  private readonly slabs = new WeakMap<ArrayBufferLike, Slab>();
  private readonly free: Buffer[] = [];
  private current: Slab;
  private used = 0;

  constructor() {
    this.current = this.newSlab();
  }

  private newSlab(): Slab {
    // allocUnsafeSlow: a slab owns its ArrayBuffer, which is how a slice finds its slab again.
    const buffer = this.free.pop() ?? Buffer.allocUnsafeSlow(RECEIVE_SLAB_BYTES);
    const slab: Slab = { buffer, outstanding: 0, retired: false };
    this.slabs.set(buffer.buffer, slab);
    return slab;
  }

  /** Where the next socket read goes: the rest of the current slab, or a new slab. */
  nextRegion(): Buffer {
    if (RECEIVE_SLAB_BYTES - this.used < MIN_RECEIVE_BYTES) {
      const old = this.current;
      old.retired = true;
      this.recycle(old);
      this.current = this.newSlab();
      this.used = 0;
    }
    return this.current.buffer.subarray(this.used);
  }

  /** Records that the socket read `bytes` into the region last returned; returns them. */
  received(bytes: number): Buffer {
    assert(bytes > 0 && this.used + bytes <= RECEIVE_SLAB_BYTES, 'read beyond the receive region');
    const data = this.current.buffer.subarray(this.used, this.used + bytes);
    this.used += bytes;
    this.current.outstanding += bytes;
    return data;
  }

  /** Gives bytes back; their memory may be reused from now on. Each byte is released at most once. */
  release(slice: Uint8Array): void {
    const slab = this.slabs.get(slice.buffer);
    if (slab === undefined || slice.length === 0) return;
    slab.outstanding -= slice.length;
    assert(slab.outstanding >= 0, 'receive bytes released twice');
    this.recycle(slab);
  }

  /** Lets go of the free slabs (a connection between operations keeps only the one it reads into). */
  trim(): void {
    this.free.length = 0;
  }

  private recycle(slab: Slab): void {
    if (!slab.retired || slab.outstanding > 0) return;
    this.slabs.delete(slab.buffer.buffer);
    if (this.free.length < MAX_FREE_SLABS) this.free.push(slab.buffer);
  }
}

/**
 * Reads frames and raw payloads from a socket. The socket flows until `readAheadBytes` are buffered,
 * then is paused until the consumer takes them (back-pressure: a consumer that stops pulling stops the
 * socket, and the kernel's window stops the peer). Payload bytes are handed out as slices of the memory
 * the socket read into, never copied — which is why this does not use the stream's own buffering,
 * whose `read()` concatenates whatever is buffered.
 *
 * Two ways to feed it: a socket constructed with `reader.onread` (the connection reads into the
 * reader's ReceiveArena; payload slices may be given back with `release`), or `attach` to any readable
 * stream ('data' events; `release` does nothing).
 */
export class FrameReader {
  private stream: Readable | undefined;
  private readonly arena: ReceiveArena | undefined;
  private readonly pending: Buffer[] = [];
  private pendingBytes = 0;
  private ended = false;
  private failure: Error | undefined;
  private wake: (() => void) | undefined;
  /**
   * Called when bytes arrive while the consumer waits for more (a packet half in): what a reader's
   * stall timeout takes for progress, so a slow link that keeps delivering is not taken for a dead one
   * (a 1 MiB packet at 150 KiB/s takes 7 s to come in whole).
   */
  onArrival: (() => void) | undefined;
  /** Bytes the waiting consumer needs buffered (0: nobody waits). */
  private wanted = 0;
  /** For a socket's `onread` option: reads go into this reader's receive arena. */
  readonly onread: OnReadOpts | undefined;

  /** A reader for a stream given now (`attach`ed), or, without one, for a socket built with `onread`. */
  constructor(
    stream: Readable | undefined,
    private readonly readAheadBytes = DEFAULT_READ_AHEAD_BYTES,
  ) {
    assert(readAheadBytes > 0);
    if (stream !== undefined) {
      this.attach(stream);
      return;
    }
    const arena = new ReceiveArena();
    this.arena = arena;
    this.onread = {
      buffer: () => arena.nextRegion(),
      callback: (bytes: number) => {
        this.push(arena.received(bytes));
        return true;
      },
    };
  }

  /** Starts reading `stream`: the socket built with `onread`, or any stream for 'data' events. */
  attach(stream: Readable): void {
    assert(this.stream === undefined, 'a reader reads one stream');
    this.stream = stream;
    if (this.arena === undefined) {
      stream.on('data', (chunk: Buffer) => {
        if (chunk.length > 0) this.push(chunk);
      });
    }
    const finish = () => {
      this.ended = true;
      this.notify();
    };
    stream.once('end', finish);
    stream.once('close', finish);
    stream.on('error', (error: Error) => {
      this.failure ??= error;
      finish();
    });
  }

  private push(chunk: Buffer): void {
    this.pending.push(chunk);
    this.pendingBytes += chunk.length;
    // Buffer up to the read-ahead, or up to what the waiting consumer needs if that is more (a
    // packet), and wake the consumer only once it has all it needs: one wake-up per packet.
    if (this.pendingBytes >= Math.max(this.readAheadBytes, this.wanted)) this.stream?.pause();
    if (this.wanted > 0 && this.pendingBytes >= this.wanted) this.notify();
    else if (this.wanted > 0) this.onArrival?.();
  }

  private notify(): void {
    const wake = this.wake;
    this.wake = undefined;
    wake?.();
  }

  /** Bytes received but not yet consumed. */
  get buffered(): number {
    return this.pendingBytes;
  }

  /** True once the peer closed the connection or it failed (a pooled connection is then stale). */
  get closed(): boolean {
    return this.ended;
  }

  /**
   * Gives back payload slices (from `readPayload`) the caller is done with, so their memory can take
   * new reads. Never release a slice still in use, nor one twice.
   */
  release(slices: readonly Uint8Array[]): void {
    if (this.arena === undefined) return;
    for (const slice of slices) this.arena.release(slice);
  }

  /** Between operations: gives up receive memory kept for reuse. */
  trim(): void {
    this.arena?.trim();
  }

  /** Waits until `bytes` are buffered; false if the stream ended first. */
  private async fill(bytes: number): Promise<boolean> {
    while (this.pendingBytes < bytes) {
      if (this.ended) {
        // A reset or destroyed socket: the peer is gone, which callers handle as UNAVAILABLE.
        if (this.failure !== undefined) {
          throw new DogfsError('UNAVAILABLE', `connection failed: ${this.failure.message}`, {
            cause: this.failure,
          });
        }
        return false;
      }
      assert(this.stream !== undefined, 'reading before the stream is attached');
      assert(this.wake === undefined, 'one reader at a time');
      this.wanted = bytes;
      if (this.stream.isPaused()) this.stream.resume();
      await new Promise<void>((resolve) => {
        this.wake = resolve;
      });
      this.wanted = 0;
    }
    return true;
  }

  /** After consuming: let the socket flow again once below the read-ahead. */
  private consumed(): void {
    if (this.pendingBytes < this.readAheadBytes && this.stream?.isPaused() === true && !this.ended)
      this.stream.resume();
  }

  /** Removes up to `bytes` from the front, as slices; the caller made sure they are buffered. */
  private take(bytes: number, out: Buffer[]): void {
    let remaining = bytes;
    while (remaining > 0) {
      const head = this.pending[0];
      assert(head !== undefined, 'take beyond buffered bytes');
      if (head.length <= remaining) {
        out.push(head);
        this.pending.shift();
        remaining -= head.length;
        this.pendingBytes -= head.length;
      } else {
        out.push(head.subarray(0, remaining));
        this.pending[0] = head.subarray(remaining);
        this.pendingBytes -= remaining;
        remaining = 0;
      }
    }
  }

  /**
   * Small contiguous read (frame headers), decoded by `use` at once: the bytes go back to the arena
   * right after, so `use` must not keep them. Copies only when they span receive buffers.
   */
  private takeContiguous<T>(bytes: number, use: (bytes: Buffer) => T): T {
    const parts: Buffer[] = [];
    this.take(bytes, parts);
    try {
      return use(parts.length === 1 ? parts[0]! : Buffer.concat(parts, bytes));
    } finally {
      this.release(parts);
    }
  }

  /**
   * The next frame decoded as `name`; undefined if the stream ended cleanly before it began. A frame
   * over `maxBytes`, or that fails to decode, is INVALID_ARGUMENT; a stream cut mid-frame is UNAVAILABLE.
   */
  async readFrame<N extends MessageName>(
    name: N,
    maxBytes = MAX_FRAME_HEADER_BYTES,
  ): Promise<MessageTypes[N] | undefined> {
    if (!(await this.fill(FRAME_PREFIX_BYTES))) {
      if (this.pendingBytes === 0) return undefined;
      throw new DogfsError('UNAVAILABLE', `connection closed inside a ${name} frame`);
    }
    const length = this.takeContiguous(FRAME_PREFIX_BYTES, (prefix) => prefix.readUInt32BE(0));
    if (length > maxBytes) {
      throw new DogfsError(
        'INVALID_ARGUMENT',
        `${name} frame of ${length} bytes exceeds the ${maxBytes}-byte limit`,
      );
    }
    if (!(await this.fill(length)))
      throw new DogfsError('UNAVAILABLE', `connection closed inside a ${name} frame`);
    // Decoded messages hold numbers and strings, never views of the bytes (no `bytes` fields).
    const message = this.takeContiguous(length, (body) => {
      try {
        return decodeMessage(name, body);
      } catch (error) {
        throw new DogfsError('INVALID_ARGUMENT', `malformed ${name}: ${(error as Error).message}`);
      }
    });
    this.consumed();
    return message;
  }

  /**
   * Exactly `bytes` of payload as slices (no copy), valid until given back with `release` (or for as
   * long as they are referenced, if never). The stream ending first is UNAVAILABLE.
   */
  async readPayload(bytes: number): Promise<Buffer[]> {
    assert(bytes >= 0 && bytes <= MAX_PACKET_BYTES, `payload of ${bytes} bytes`);
    if (!(await this.fill(bytes))) throw new DogfsError('UNAVAILABLE', 'connection closed inside a packet');
    const slices: Buffer[] = [];
    this.take(bytes, slices);
    this.consumed();
    return slices;
  }
}

/**
 * The connection a net.Server accepted, as a socket that reads into `reader`'s receive arena. Node 20
 * applies `onread` only to sockets built from options, never to accepted ones, so the accepted socket's
 * handle (the server must be created with `pauseOnConnect`, so nothing was read yet) moves into a new
 * Socket built with `reader.onread`, and the server's connection count moves with it: closing the new
 * socket counts for `maxConnections` and `server.close()`. This reaches into net's private `_handle` and
 * `_server`; if they are not there, the accepted socket is kept and read through 'data' events.
 */
export function adoptAcceptedSocket(accepted: Socket, reader: FrameReader): Socket {
  const inner = accepted as unknown as { _handle: unknown; _server: unknown; server: unknown };
  const handle = inner._handle as { readStart?: unknown; useUserBuffer?: unknown } | null;
  if (
    reader.onread === undefined ||
    handle === null ||
    typeof handle.readStart !== 'function' ||
    typeof handle.useUserBuffer !== 'function' ||
    inner._server === undefined
  ) {
    reader.attach(accepted);
    accepted.resume();
    return accepted;
  }
  const options = { handle, onread: reader.onread } as SocketConstructorOpts;
  const socket = new Socket(options);
  const adopted = socket as unknown as typeof inner;
  adopted._server = inner._server;
  adopted.server = inner.server;
  inner._server = null;
  inner.server = null;
  inner._handle = null;
  reader.attach(socket);
  return socket;
}

/**
 * CRC32C of each DATA_CHUNK_SIZE chunk of a payload given as slices (chunks may span slices). The
 * payload starts on a chunk boundary; its last chunk may be short.
 */
export function chunkChecksumsOfSlices(
  slices: readonly Uint8Array[],
  crc32c: Crc32c,
  out: number[] = [],
): number[] {
  let chunkCrc = 0;
  let chunkFill = 0;
  for (const slice of slices) {
    let offset = 0;
    while (offset < slice.length) {
      const take = Math.min(DATA_CHUNK_SIZE - chunkFill, slice.length - offset);
      chunkCrc = crc32c(slice.subarray(offset, offset + take), chunkCrc);
      chunkFill += take;
      offset += take;
      if (chunkFill === DATA_CHUNK_SIZE) {
        out.push(chunkCrc);
        chunkCrc = 0;
        chunkFill = 0;
      }
    }
  }
  if (chunkFill > 0) out.push(chunkCrc);
  return out;
}

// CRC32C of a concatenation from the CRCs of its parts (zlib's crc32_combine, for the Castagnoli
// polynomial): crc(A‖B) = shift(crc(A), |B|) ⊕ crc(B), where shift is a linear map over GF(2) kept as a
// 32×32 bit matrix (entry n = image of bit n). It lets the whole-shard CRC be folded from the chunk CRCs,
// so each byte is checksummed once per end instead of twice.

const CASTAGNOLI_REFLECTED = 0x82f63b78;

function gf2Times(matrix: Uint32Array, vector: number): number {
  let sum = 0;
  let v = vector >>> 0;
  for (let bit = 0; v !== 0; bit++, v >>>= 1) if (v & 1) sum ^= matrix[bit]!;
  return sum >>> 0;
}

/** The matrix of `outer` after `inner`. */
function gf2Compose(outer: Uint32Array, inner: Uint32Array): Uint32Array {
  const result = new Uint32Array(32);
  for (let bit = 0; bit < 32; bit++) result[bit] = gf2Times(outer, inner[bit]!);
  return result;
}

/** The shift through one zero byte. */
const ONE_BYTE_SHIFT: Uint32Array = (() => {
  let bitShift: Uint32Array = new Uint32Array(32);
  bitShift[0] = CASTAGNOLI_REFLECTED;
  for (let bit = 1; bit < 32; bit++) bitShift[bit] = (1 << (bit - 1)) >>> 0;
  for (let i = 0; i < 3; i++) bitShift = gf2Compose(bitShift, bitShift);
  return bitShift;
})();

/** The linear map that appends `bytes` zero bytes to a CRC32C register (binary exponentiation). */
export function crc32cShiftOperator(bytes: number): Uint32Array {
  assert(Number.isSafeInteger(bytes) && bytes >= 0);
  let result: Uint32Array = new Uint32Array(32);
  for (let bit = 0; bit < 32; bit++) result[bit] = (1 << bit) >>> 0;
  let power = ONE_BYTE_SHIFT;
  for (let n = bytes; n > 0; n = Math.floor(n / 2)) {
    if (n % 2 === 1) result = gf2Compose(power, result);
    if (n > 1) power = gf2Compose(power, power);
  }
  return result;
}

const CHUNK_SHIFT = crc32cShiftOperator(DATA_CHUNK_SIZE);

/** CRC32C of A‖B from crc(A), crc(B) and |B|. */
export function crc32cCombine(crcA: number, crcB: number, lengthB: number): number {
  const shift = lengthB === DATA_CHUNK_SIZE ? CHUNK_SHIFT : crc32cShiftOperator(lengthB);
  return (gf2Times(shift, crcA) ^ crcB) >>> 0;
}

/** The most bytes of `bytes` that are whole chunks. */
function wholeChunks(bytes: number): number {
  return bytes - (bytes % DATA_CHUNK_SIZE);
}

/** Chunks a payload of `bytes` covers. */
export function chunksIn(bytes: number): number {
  return Math.ceil(bytes / DATA_CHUNK_SIZE);
}

/** A socket error as a code the caller can act on. */
export function socketErrorCode(error: unknown): ErrorCode {
  if (error instanceof DogfsError) return error.code;
  const code = (error as NodeJS.ErrnoException | undefined)?.code;
  if (code === 'ETIMEDOUT') return 'DEADLINE_EXCEEDED';
  if (code === 'ABORT_ERR') return 'CANCELLED';
  return 'UNAVAILABLE';
}

function asDogfsError(error: unknown, context: string): DogfsError {
  if (error instanceof DogfsError) return error;
  const message = error instanceof Error ? error.message : String(error);
  return new DogfsError(socketErrorCode(error), `${context}: ${message}`, { cause: error });
}

function responseError(code: string, message: string, context: string): DogfsError {
  const known: ErrorCode = isErrorCode(code) ? code : 'INTERNAL';
  return new DogfsError(known, message === '' ? `${context}: ${code}` : message);
}

// ---------------------------------------------------------------------------------------------------
// Client

export interface DataTransferClientOptions {
  /** CRC32C (Castagnoli), e.g. the codec's `crc32c`. */
  crc32c: Crc32c;
  /** Idle connections kept per chunk server. */
  maxIdlePerAddress?: number;
  /** An idle pooled connection is closed after this long (below the server's idle timeout). */
  idleTimeoutMs?: number;
  connectTimeoutMs?: number;
  /** Payload bytes per write packet, and asked for on reads: a multiple of 64 KiB up to 4 MiB. */
  packetSize?: number;
}

export interface DataCallOptions {
  /** Absolute deadline, ms since the epoch. */
  deadline?: number;
  /** Relative timeout, when no deadline is given (default 60 s). */
  timeoutMs?: number;
  signal?: AbortSignal;
}

export interface ReadShardOptions extends DataCallOptions {
  /** First byte to read (default 0). */
  offset?: number;
  /** Bytes to read; clamped to the shard's end (default: to the end). */
  length?: number;
  /**
   * Each Buffer yielded is valid only until the next iteration: its memory is the connection's receive
   * memory, reused for what follows (no copy). For consumers that copy or use the bytes at once. Without
   * it, every packet is copied once into a Buffer the caller owns.
   */
  transient?: boolean;
  /**
   * The length the shard should have (as committed): a server answering with another holds a different
   * copy, and the read fails CORRUPT before any byte is yielded.
   */
  shardLength?: number;
  /** Called as the read's bytes arrive, however few (before a whole packet is in): it is moving. */
  onProgress?: () => void;
}

export interface WriteShardResult {
  /** Bytes made durable. */
  length: number;
  /** CRC32C of the whole shard, as the chunk server stored it. */
  crc32c: number;
}

interface Connection {
  readonly address: string;
  readonly socket: Socket;
  readonly reader: FrameReader;
  idleTimer: NodeJS.Timeout | undefined;
  /** Set once the connection served an operation: a failure before any answer may be a stale socket. */
  reused: boolean;
}

function parseAddress(address: string): { host: string; port: number } {
  const colon = address.lastIndexOf(':');
  const port = Number(address.slice(colon + 1));
  if (colon <= 0 || !Number.isInteger(port) || port <= 0 || port > 65535) {
    throw new DogfsError('INVALID_ARGUMENT', `invalid data address '${address}'`);
  }
  return { host: address.slice(0, colon), port };
}

/**
 * Enforces an operation's deadline and cancellation by destroying its socket: whatever awaits the
 * socket then fails, and `failure` says why.
 */
class OperationGuard {
  failure: DogfsError | undefined;
  private readonly timer: NodeJS.Timeout;
  private readonly onAbort: () => void;

  constructor(
    private readonly connection: Connection,
    private readonly context: string,
    private readonly deadline: number,
    private readonly signal: AbortSignal | undefined,
  ) {
    this.timer = setTimeout(
      () => this.fail(new DogfsError('DEADLINE_EXCEEDED', `${context}: deadline exceeded`)),
      Math.max(0, deadline - Date.now()),
    );
    this.onAbort = () => this.fail(new DogfsError('CANCELLED', `${context}: cancelled`));
    signal?.addEventListener('abort', this.onAbort, { once: true });
    // Aborted while the connection was being made: no 'abort' event is coming any more.
    if (signal?.aborted) this.onAbort();
  }

  fail(error: DogfsError): void {
    this.failure ??= error;
    this.connection.socket.destroy();
  }

  /** The reason to report for `error` raised while the guard was active. */
  explain(error: unknown): DogfsError {
    if (this.failure) return this.failure;
    // The server enforces the same deadline and may close the connection a moment before our own timer
    // fires: a connection lost at or past the deadline is the deadline's doing.
    if (Date.now() >= this.deadline) {
      return new DogfsError('DEADLINE_EXCEEDED', `${this.context}: deadline exceeded`, { cause: error });
    }
    return asDogfsError(error, this.context);
  }

  done(): void {
    clearTimeout(this.timer);
    this.signal?.removeEventListener('abort', this.onAbort);
  }
}

/**
 * Client side of the data-transfer protocol, shared by every operation of a process: one pool of
 * connections per chunk-server address, each carrying one operation at a time.
 */
export class DataTransferClient {
  private readonly crc32c: Crc32c;
  private readonly maxIdlePerAddress: number;
  private readonly idleTimeoutMs: number;
  private readonly connectTimeoutMs: number;
  readonly packetSize: number;
  private readonly idle = new Map<string, Connection[]>();
  private closed = false;

  constructor(options: DataTransferClientOptions) {
    this.crc32c = options.crc32c;
    this.maxIdlePerAddress = options.maxIdlePerAddress ?? 8;
    this.idleTimeoutMs = options.idleTimeoutMs ?? 30_000;
    this.connectTimeoutMs = options.connectTimeoutMs ?? 5_000;
    this.packetSize = options.packetSize ?? DEFAULT_PACKET_BYTES;
    if (
      !Number.isInteger(this.packetSize) ||
      this.packetSize <= 0 ||
      this.packetSize > MAX_PACKET_BYTES ||
      this.packetSize % DATA_CHUNK_SIZE !== 0
    ) {
      throw new DogfsError('INVALID_ARGUMENT', `packet size must be a multiple of 64 KiB up to 4 MiB`);
    }
  }

  /** Idle pooled connections (for tests and metrics). */
  idleConnections(address?: string): number {
    if (address !== undefined) return this.idle.get(address)?.length ?? 0;
    let total = 0;
    for (const list of this.idle.values()) total += list.length;
    return total;
  }

  private async acquire(address: string, deadline: number): Promise<Connection> {
    if (this.closed) throw new DogfsError('CANCELLED', 'data-transfer client closed');
    const pool = this.idle.get(address);
    while (pool !== undefined && pool.length > 0) {
      const connection = pool.pop()!;
      clearTimeout(connection.idleTimer);
      connection.idleTimer = undefined;
      if (!connection.socket.destroyed && !connection.reader.closed && connection.reader.buffered === 0) {
        connection.reused = true;
        return connection;
      }
      connection.socket.destroy();
    }
    return this.connect(address, deadline);
  }

  private connect(address: string, deadline: number): Promise<Connection> {
    const { host, port } = parseAddress(address);
    return new Promise((resolve, reject) => {
      // Read ahead a packet (see the server), and let a writer queue a second packet while the first
      // is still going out, so the connection never waits for the writer between packets.
      // (net.connect hands these Duplex options to the socket; @types/node does not list them.)
      const socketOptions: NetConnectOpts & { readableHighWaterMark: number; writableHighWaterMark: number } =
        {
          host,
          port,
          noDelay: true,
          readableHighWaterMark: this.packetSize,
          writableHighWaterMark: 2 * this.packetSize,
        };
      // The connection reads into the reader's receive arena: large reads into reused memory.
      const reader = new FrameReader(undefined, this.packetSize);
      const socket = connect(fromSourceAddress({ ...socketOptions, onread: reader.onread }));
      const timeoutMs = Math.max(0, Math.min(this.connectTimeoutMs, deadline - Date.now()));
      const timer = setTimeout(() => {
        socket.destroy();
        reject(new DogfsError('UNAVAILABLE', `${address}: connect timed out after ${timeoutMs} ms`));
      }, timeoutMs);
      const onError = (error: Error) => {
        clearTimeout(timer);
        reject(new DogfsError('UNAVAILABLE', `${address}: ${error.message}`, { cause: error }));
      };
      socket.once('error', onError);
      socket.once('connect', () => {
        clearTimeout(timer);
        socket.off('error', onError);
        // Errors surface through the reader and writes; this keeps an idle socket's error from crashing.
        socket.on('error', () => {});
        // Read ahead up to a packet: fewer pauses, and the bytes are counted by the caller's budget.
        reader.attach(socket);
        resolve({ address, socket, reader, idleTimer: undefined, reused: false });
      });
    });
  }

  /** Returns a connection that finished an operation cleanly to the pool. */
  private release(connection: Connection): void {
    const pool = this.idle.get(connection.address) ?? [];
    if (this.closed || connection.socket.destroyed || pool.length >= this.maxIdlePerAddress) {
      connection.socket.destroy();
      return;
    }
    connection.idleTimer = setTimeout(() => {
      const list = this.idle.get(connection.address);
      const at = list?.indexOf(connection) ?? -1;
      if (list !== undefined && at >= 0) list.splice(at, 1);
      connection.socket.destroy();
    }, this.idleTimeoutMs);
    connection.idleTimer.unref();
    pool.push(connection);
    this.idle.set(connection.address, pool);
  }

  private deadlineOf(options: DataCallOptions): number {
    return options.deadline ?? Date.now() + (options.timeoutMs ?? DEFAULT_DATA_TIMEOUT_MS);
  }

  /**
   * Starts writing a shard of exactly `length` bytes. Feed it with `write` (which resolves when the
   * connection can take more: back-pressure) and end with `finish`, which resolves once the chunk
   * server has made the shard durable. `write` copies its bytes: they may be reused once it resolves.
   */
  async openWrite(
    address: string,
    shard: ShardId,
    length: number,
    options: DataCallOptions & { onProgress?: () => void } = {},
  ): Promise<ShardWriter> {
    checkShardId(shard);
    checkWireInteger(length, MAX_SHARD_BYTES, 'shard length');
    if (options.signal?.aborted)
      throw new DogfsError('CANCELLED', `write ${formatShardId(shard)}: cancelled`);
    const deadline = this.deadlineOf(options);
    const connection = await this.acquire(address, deadline);
    const context = `${address} write ${formatShardId(shard)}`;
    const guard = new OperationGuard(connection, context, deadline, options.signal);
    return new ShardWriter(
      connection,
      guard,
      this.crc32c,
      this.packetSize,
      shard,
      length,
      deadline,
      (ok) => {
        guard.done();
        if (ok) this.release(connection);
        else connection.socket.destroy();
      },
      options.onProgress,
    );
  }

  /** Writes a whole shard from bytes or a stream of bytes, with back-pressure. */
  async writeShard(
    address: string,
    shard: ShardId,
    data: Uint8Array | Iterable<Uint8Array> | AsyncIterable<Uint8Array>,
    options: DataCallOptions & { length?: number } = {},
  ): Promise<WriteShardResult> {
    const length = data instanceof Uint8Array ? data.length : options.length;
    if (length === undefined)
      throw new DogfsError('INVALID_ARGUMENT', 'writeShard of a stream needs its length');
    const writer = await this.openWrite(address, shard, length, options);
    try {
      if (data instanceof Uint8Array) await writer.write(data);
      else for await (const piece of data) await writer.write(piece);
      return await writer.finish();
    } catch (error) {
      writer.abort(error);
      throw writer.failure ?? toDogfsError(error);
    }
  }

  /**
   * Reads shard bytes [offset, offset+length) (clamped to the shard's end) as verified Buffers, in order.
   * Stop iterating (or abort the signal) to cancel: the connection is closed rather than drained.
   */
  readShard(
    address: string,
    shard: ShardId,
    options: ReadShardOptions = {},
  ): AsyncGenerator<Buffer, void, undefined> {
    return this.readShardGenerator(address, shard, options);
  }

  /** A whole range in one Buffer (for small reads and tests). */
  async readShardBytes(address: string, shard: ShardId, options: ReadShardOptions = {}): Promise<Buffer> {
    const parts: Buffer[] = [];
    for await (const part of this.readShard(address, shard, options)) parts.push(part);
    return parts.length === 1 ? parts[0]! : Buffer.concat(parts);
  }

  private async *readShardGenerator(
    address: string,
    shard: ShardId,
    options: ReadShardOptions,
  ): AsyncGenerator<Buffer, void, undefined> {
    checkShardId(shard);
    const offset = checkWireInteger(options.offset ?? 0, MAX_SHARD_BYTES, 'read offset');
    const length = checkWireInteger(options.length ?? MAX_SHARD_BYTES, MAX_SHARD_BYTES, 'read length');
    const deadline = this.deadlineOf(options);
    const context = `${address} read ${formatShardId(shard)}`;
    if (options.signal?.aborted) throw new DogfsError('CANCELLED', `${context}: cancelled`);
    const request = encodeFrame('dogfs.v1.DataRequestHeader', {
      op: DataOp.READ_SHARD,
      shard,
      offset,
      length,
      packetSize: this.packetSize,
      deadlineMs: deadline,
    });

    // A pooled connection the server closed while idle fails before any answer: retry once on a new one.
    let connection: Connection | undefined;
    let guard: OperationGuard | undefined;
    let response: MessageTypes['dogfs.v1.DataResponseHeader'] | undefined;
    for (let attempt = 0; response === undefined; attempt++) {
      connection = await this.acquire(address, deadline);
      guard = new OperationGuard(connection, context, deadline, options.signal);
      try {
        connection.socket.write(request);
        response = await connection.reader.readFrame('dogfs.v1.DataResponseHeader');
        if (response === undefined) throw new DogfsError('UNAVAILABLE', `${context}: connection closed`);
      } catch (error) {
        guard.done();
        connection.socket.destroy();
        const failure = guard.explain(error);
        if (!connection.reused || attempt > 0 || guard.failure !== undefined) throw failure;
        response = undefined;
      }
    }
    assert(connection !== undefined && guard !== undefined);
    let complete = false;
    try {
      if (response.code !== 'OK') throw responseError(response.code, response.message, context);
      // Chunk checksums only show that the bytes are those the server stored, not that they are this
      // shard's: a copy of another length is not the one committed, whatever its checksums say.
      if (options.shardLength !== undefined && response.shardLength !== options.shardLength) {
        throw new DogfsError(
          'CORRUPT',
          `${context}: the server holds ${response.shardLength} bytes, ${options.shardLength} were committed`,
        );
      }
      const alignedStart = response.offset;
      const alignedLength = response.length;
      const wantEnd = Math.min(offset + length, response.shardLength);
      if (
        alignedStart % DATA_CHUNK_SIZE !== 0 ||
        alignedStart > offset ||
        alignedStart + alignedLength > response.shardLength ||
        response.shardLength > MAX_SHARD_BYTES ||
        // It must cover what was asked (a server refuses an offset past the shard's end).
        offset > response.shardLength ||
        (wantEnd > offset && alignedStart + alignedLength < wantEnd)
      ) {
        throw new DogfsError('INTERNAL', `${context}: server answered an inconsistent range`);
      }
      let position = alignedStart;
      const end = alignedStart + alignedLength;
      const crcs: number[] = [];
      connection.reader.onArrival = options.onProgress;
      while (position < end) {
        const packet = await connection.reader.readFrame('dogfs.v1.DataPacketHeader');
        if (packet === undefined)
          throw new DogfsError('UNAVAILABLE', `${context}: connection closed mid-read`);
        if (packet.errorCode !== '') throw responseError(packet.errorCode, packet.errorMessage, context);
        if (
          packet.length === 0 ||
          packet.length > MAX_PACKET_BYTES ||
          packet.length > end - position ||
          (packet.length % DATA_CHUNK_SIZE !== 0 && position + packet.length !== end) ||
          packet.chunkCrc32c.length !== chunksIn(packet.length)
        ) {
          throw new DogfsError('INTERNAL', `${context}: malformed packet from the server`);
        }
        const slices = await connection.reader.readPayload(packet.length);
        crcs.length = 0;
        chunkChecksumsOfSlices(slices, this.crc32c, crcs);
        for (let i = 0; i < crcs.length; i++) {
          if (crcs[i] !== packet.chunkCrc32c[i]) {
            // The server checked this chunk against its stored checksum before sending it: the copy
            // on its disk is not in question (a reader must not report it bad).
            throw new DogfsError(
              'CORRUPT',
              `${context}: chunk at offset ${position + i * DATA_CHUNK_SIZE} damaged in transit (checksum mismatch)`,
              { inTransit: true },
            );
          }
        }
        // Trim to the asked range: the server sends whole chunks so they can be verified here.
        const packetStart = position;
        position += packet.length;
        const from = Math.max(offset, packetStart);
        const to = Math.min(wantEnd, position);
        if (options.transient === true) {
          let sliceStart = packetStart;
          for (const slice of slices) {
            const sliceEnd = sliceStart + slice.length;
            if (Math.min(to, sliceEnd) > Math.max(from, sliceStart)) {
              yield slice.subarray(
                Math.max(from, sliceStart) - sliceStart,
                Math.min(to, sliceEnd) - sliceStart,
              );
            }
            sliceStart = sliceEnd;
          }
        } else if (to > from) {
          // One copy into memory the caller owns, so the receive memory can take the next packet.
          const owned = Buffer.allocUnsafeSlow(to - from);
          let at = 0;
          let sliceStart = packetStart;
          for (const slice of slices) {
            const sliceEnd = sliceStart + slice.length;
            const start = Math.max(from, sliceStart);
            const stop = Math.min(to, sliceEnd);
            if (stop > start) at += slice.copy(owned, at, start - sliceStart, stop - sliceStart);
            sliceStart = sliceEnd;
          }
          assert(at === owned.length);
          connection.reader.release(slices);
          yield owned;
          continue;
        }
        connection.reader.release(slices);
      }
      complete = true;
    } catch (error) {
      throw guard.explain(error);
    } finally {
      // The connection goes back to the pool: the next operation on it is not this read's progress.
      connection.reader.onArrival = undefined;
      guard.done();
      if (complete && guard.failure === undefined) this.release(connection);
      else connection.socket.destroy();
    }
  }

  /** Closes every pooled connection; operations in progress keep theirs until they end. */
  close(): void {
    this.closed = true;
    for (const list of this.idle.values()) {
      for (const connection of list) {
        clearTimeout(connection.idleTimer);
        connection.socket.destroy();
      }
    }
    this.idle.clear();
  }
}

/**
 * One WriteShard in progress. Packets are cut on chunk boundaries; each carries its chunks' CRC32C.
 * Whole packets of the caller's bytes (or runs of whole chunks of at least half a packet) are sent as
 * they are, and `write` resolves once the socket has taken them; smaller pieces are copied into two
 * packet buffers the writer owns (allocated when first needed). Packets take turns in two slots: one
 * is on its way into the socket while the next is cut, so at most two packets per shard are queued in
 * the socket, which is the back-pressure: a slow server makes `write` wait for the older packet to be
 * taken by the kernel. Either way the caller may reuse its
 * bytes as soon as `write` resolves, and nothing is allocated per packet.
 * The chunk server may answer early with an error (no space, too busy, bad request): the next `write`
 * or `finish` rejects with it.
 */
export class ShardWriter {
  /** The two packet buffers, allocated when first needed (whole packets are not copied). */
  private readonly buffers: (Buffer | undefined)[] = [undefined, undefined];
  private readonly packetBytes: number;
  /** Per buffer: resolves once the socket has taken the packet last sent from it. */
  private readonly inSocket: (Promise<void> | undefined)[] = [undefined, undefined];
  private turn = 0;
  private fill = 0;
  private readonly packetCrcs: number[] = [];
  private chunkCrc = 0;
  private chunkFill = 0;
  private wholeCrc = 0;
  private written = 0;
  private settled = false;
  private finishing = false;
  /** The server's answer; it may arrive before `finish` when the server refuses the write. */
  private readonly response: Promise<MessageTypes['dogfs.v1.DataResponseHeader'] | undefined>;
  /** Settles with the answer or the end of the connection: ends any wait on the socket. */
  private readonly answered: Promise<void>;
  /** Set when the answer (or the end of the connection) arrived: before `finish`, always a failure. */
  private early: DogfsError | undefined;
  failure: DogfsError | undefined;

  constructor(
    private readonly connection: Connection,
    private readonly guard: OperationGuard,
    private readonly crc32c: Crc32c,
    packetSize: number,
    private readonly shard: ShardId,
    readonly length: number,
    deadline: number,
    private readonly onDone: (ok: boolean) => void,
    /** Called as each packet is taken by the socket (a stall timeout restarts on it). */
    private readonly onProgress?: () => void,
  ) {
    this.packetBytes = Math.min(packetSize, length);
    connection.socket.write(
      encodeFrame('dogfs.v1.DataRequestHeader', {
        op: DataOp.WRITE_SHARD,
        shard,
        length,
        packetSize,
        deadlineMs: deadline,
      }),
    );
    this.response = connection.reader.readFrame('dogfs.v1.DataResponseHeader');
    this.response.then(
      (response) => {
        if (response === undefined)
          this.early = new DogfsError('UNAVAILABLE', `${this.context}: connection closed`);
        else if (response.code !== 'OK')
          this.early = responseError(response.code, response.message, this.context);
      },
      (error: unknown) => {
        this.early = asDogfsError(error, this.context);
      },
    );
    this.answered = this.response.then(
      () => undefined,
      () => undefined,
    );
  }

  private get context(): string {
    return `${this.connection.address} write ${formatShardId(this.shard)}`;
  }

  private check(): void {
    if (this.failure !== undefined) throw this.failure;
    if (this.guard.failure !== undefined) throw this.fail(this.guard.failure);
    if (this.early !== undefined) throw this.fail(this.guard.explain(this.early));
    if (this.connection.socket.destroyed) {
      throw this.fail(
        this.guard.explain(new DogfsError('UNAVAILABLE', `${this.context}: connection closed`)),
      );
    }
  }

  private fail(error: DogfsError): DogfsError {
    this.failure ??= error;
    if (!this.settled) {
      this.settled = true;
      this.onDone(false);
    }
    return this.failure;
  }

  /** Copies bytes into the packet buffers; resolves when they may be reused and more can be taken. */
  async write(data: Uint8Array): Promise<void> {
    this.check();
    if (this.written + data.length > this.length) {
      throw this.fail(
        new DogfsError(
          'INVALID_ARGUMENT',
          `${this.context}: more than the declared ${this.length} bytes written`,
        ),
      );
    }
    let offset = 0;
    /** Resolves once the socket has taken the last packet sent straight from `data`. */
    let sentDirectly: Promise<void> | undefined;
    while (offset < data.length) {
      if (this.fill === 0) await this.bufferFree(this.turn);
      // Whole chunks of the caller's bytes, up to a packet, go out as they are when they make at least
      // half a packet (a 1.5 MiB cell: a 1 MiB packet and a 512 KiB one, no copy); smaller runs are
      // copied into the packet buffers, since a small packet costs about what the copy does. A direct
      // packet takes the turn of a buffer, so at most two packets are still queued in the socket.
      const direct = this.fill === 0 ? Math.min(this.packetBytes, wholeChunks(data.length - offset)) : 0;
      if (direct > 0 && direct >= this.packetBytes / 2) {
        const piece = data.subarray(offset, offset + direct);
        this.checksum(piece);
        sentDirectly = this.sendPacket(piece);
        offset += piece.length;
        continue;
      }
      this.buffers[this.turn] ??= Buffer.allocUnsafe(this.packetBytes);
      const buffer = this.buffers[this.turn]!;
      const take = Math.min(buffer.length - this.fill, data.length - offset);
      buffer.set(data.subarray(offset, offset + take), this.fill);
      this.checksum(buffer.subarray(this.fill, this.fill + take));
      this.fill += take;
      offset += take;
      if (this.fill === buffer.length) this.flushPacket();
    }
    this.written += data.length;
    // The caller may reuse `data` once this resolves: its packets must be in the kernel by then.
    if (sentDirectly !== undefined) {
      await Promise.race([sentDirectly, this.answered]);
      this.check();
    }
  }

  /** Waits until the socket has taken the packet last sent from buffer `turn` (or the write ended). */
  private async bufferFree(turn: number): Promise<void> {
    const pending = this.inSocket[turn];
    if (pending !== undefined) {
      await Promise.race([pending, this.answered]);
      this.inSocket[turn] = undefined;
    }
    this.check();
  }

  private checksum(piece: Uint8Array): void {
    let offset = 0;
    while (offset < piece.length) {
      const take = Math.min(DATA_CHUNK_SIZE - this.chunkFill, piece.length - offset);
      this.chunkCrc = this.crc32c(piece.subarray(offset, offset + take), this.chunkCrc);
      this.chunkFill += take;
      offset += take;
      if (this.chunkFill === DATA_CHUNK_SIZE) this.endChunk();
    }
  }

  private endChunk(): void {
    this.packetCrcs.push(this.chunkCrc);
    this.wholeCrc = crc32cCombine(this.wholeCrc, this.chunkCrc, this.chunkFill);
    this.chunkCrc = 0;
    this.chunkFill = 0;
  }

  /** Sends the filled buffer as one packet and turns to the other buffer. */
  private flushPacket(): void {
    if (this.fill === 0) return;
    this.sendPacket(this.buffers[this.turn]!.subarray(0, this.fill));
    this.fill = 0;
  }

  /**
   * Sends `payload` (whose chunks were checksummed) as one packet in the current turn, and turns to the
   * other buffer. Resolves once the socket has taken the payload.
   */
  private sendPacket(payload: Uint8Array): Promise<void> {
    // A packet ends on a chunk boundary or at the end of the shard: a short last chunk ends with it.
    if (this.chunkFill > 0) this.endChunk();
    assert(this.packetCrcs.length === chunksIn(payload.length), 'a packet carries one CRC per chunk');
    const socket = this.connection.socket;
    socket.cork();
    socket.write(
      encodeFrame('dogfs.v1.DataPacketHeader', { length: payload.length, chunkCrc32c: this.packetCrcs }),
    );
    // The callback runs once the kernel has the bytes, or with an error when the socket is destroyed.
    const taken = new Promise<void>((resolve) =>
      socket.write(payload, (error) => {
        if (error === undefined || error === null) this.onProgress?.();
        resolve();
      }),
    );
    this.inSocket[this.turn] = taken;
    socket.uncork();
    this.turn ^= 1;
    this.packetCrcs.length = 0;
    return taken;
  }

  /** Ends the shard; resolves once the chunk server has made it durable. */
  async finish(): Promise<WriteShardResult> {
    this.check();
    // Once only: a second trailer would go out on the connection, which may be back in the pool by then.
    if (this.finishing) throw new DogfsError('FAILED_PRECONDITION', `${this.context}: finish called twice`);
    this.finishing = true;
    if (this.written !== this.length) {
      throw this.fail(
        new DogfsError(
          'INVALID_ARGUMENT',
          `${this.context}: ${this.written} of ${this.length} declared bytes written`,
        ),
      );
    }
    this.flushPacket();
    this.connection.socket.write(
      encodeFrame('dogfs.v1.WriteShardTrailer', { length: this.length, crc32c: this.wholeCrc }),
    );
    let response: MessageTypes['dogfs.v1.DataResponseHeader'] | undefined;
    try {
      response = await this.response;
    } catch (error) {
      throw this.fail(this.guard.explain(error));
    }
    if (response === undefined) {
      throw this.fail(
        this.guard.explain(new DogfsError('UNAVAILABLE', `${this.context}: connection closed`)),
      );
    }
    if (response.code !== 'OK') throw this.fail(responseError(response.code, response.message, this.context));
    if (response.length !== this.length || response.crc32c >>> 0 !== this.wholeCrc >>> 0) {
      throw this.fail(
        new DogfsError('CORRUPT', `${this.context}: server stored a different length or checksum`),
      );
    }
    this.settled = true;
    this.onDone(true);
    return { length: response.length, crc32c: response.crc32c >>> 0 };
  }

  /** Gives up: the connection is closed, and the server discards what it received. */
  abort(reason?: unknown): void {
    if (this.settled) return;
    this.fail(toDogfsError(reason ?? new DogfsError('CANCELLED', `${this.context}: aborted`), 'CANCELLED'));
  }
}
