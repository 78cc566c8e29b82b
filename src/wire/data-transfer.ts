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
import { connect, type NetConnectOpts, type Socket } from 'node:net';
import type { Readable } from 'node:stream';
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
/** Largest deadline a chunk server honours for one operation. */
export const MAX_DATA_OPERATION_MS = 30 * 60_000;

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
 * Reads frames and raw payloads from a socket. The socket flows until `readAheadBytes` are buffered,
 * then is paused until the consumer takes them (back-pressure: a consumer that stops pulling stops the
 * socket, and the kernel's window stops the peer). Payload bytes are handed out as slices of the buffers
 * the socket produced, never copied — which is why this does not use the stream's own buffering, whose
 * `read()` concatenates whatever is buffered.
 */
export class FrameReader {
  private readonly pending: Buffer[] = [];
  private pendingBytes = 0;
  private ended = false;
  private failure: Error | undefined;
  private wake: (() => void) | undefined;
  /** Bytes the waiting consumer needs buffered (0: nobody waits). */
  private wanted = 0;

  constructor(
    private readonly stream: Readable,
    private readonly readAheadBytes = DEFAULT_READ_AHEAD_BYTES,
  ) {
    assert(readAheadBytes > 0);
    stream.on('data', (chunk: Buffer) => {
      if (chunk.length === 0) return;
      this.pending.push(chunk);
      this.pendingBytes += chunk.length;
      // Buffer up to the read-ahead, or up to what the waiting consumer needs if that is more (a
      // packet), and wake the consumer only once it has all it needs: one wake-up per packet.
      if (this.pendingBytes >= Math.max(this.readAheadBytes, this.wanted)) stream.pause();
      if (this.wanted > 0 && this.pendingBytes >= this.wanted) this.notify();
    });
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
    if (this.pendingBytes < this.readAheadBytes && this.stream.isPaused() && !this.ended)
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

  /** Small contiguous read (frame headers): copies only when the bytes span socket buffers. */
  private takeContiguous(bytes: number): Buffer {
    const head = this.pending[0];
    if (head !== undefined && head.length >= bytes) {
      const slice = head.subarray(0, bytes);
      if (head.length === bytes) this.pending.shift();
      else this.pending[0] = head.subarray(bytes);
      this.pendingBytes -= bytes;
      return slice;
    }
    const parts: Buffer[] = [];
    this.take(bytes, parts);
    return Buffer.concat(parts, bytes);
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
    const length = this.takeContiguous(FRAME_PREFIX_BYTES).readUInt32BE(0);
    if (length > maxBytes) {
      throw new DogfsError(
        'INVALID_ARGUMENT',
        `${name} frame of ${length} bytes exceeds the ${maxBytes}-byte limit`,
      );
    }
    if (!(await this.fill(length)))
      throw new DogfsError('UNAVAILABLE', `connection closed inside a ${name} frame`);
    const body = this.takeContiguous(length);
    this.consumed();
    try {
      return decodeMessage(name, body);
    } catch (error) {
      throw new DogfsError('INVALID_ARGUMENT', `malformed ${name}: ${(error as Error).message}`);
    }
  }

  /** Exactly `bytes` of payload as slices (no copy). The stream ending first is UNAVAILABLE. */
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
      const socket = connect(socketOptions);
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
        const reader = new FrameReader(socket, this.packetSize);
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
    options: DataCallOptions = {},
  ): Promise<ShardWriter> {
    checkShardId(shard);
    checkWireInteger(length, MAX_SHARD_BYTES, 'shard length');
    if (options.signal?.aborted)
      throw new DogfsError('CANCELLED', `write ${formatShardId(shard)}: cancelled`);
    const deadline = this.deadlineOf(options);
    const connection = await this.acquire(address, deadline);
    const context = `${address} write ${formatShardId(shard)}`;
    const guard = new OperationGuard(connection, context, deadline, options.signal);
    return new ShardWriter(connection, guard, this.crc32c, this.packetSize, shard, length, deadline, (ok) => {
      guard.done();
      if (ok) this.release(connection);
      else connection.socket.destroy();
    });
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
      const alignedStart = response.offset;
      const alignedLength = response.length;
      if (
        alignedStart % DATA_CHUNK_SIZE !== 0 ||
        alignedStart > offset ||
        alignedStart + alignedLength > response.shardLength ||
        response.shardLength > MAX_SHARD_BYTES
      ) {
        throw new DogfsError('INTERNAL', `${context}: server answered an inconsistent range`);
      }
      const wantEnd = Math.min(offset + length, response.shardLength);
      let position = alignedStart;
      const end = alignedStart + alignedLength;
      const crcs: number[] = [];
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
            throw new DogfsError(
              'CORRUPT',
              `${context}: chunk at offset ${position + i * DATA_CHUNK_SIZE} damaged in transit (checksum mismatch)`,
            );
          }
        }
        // Trim to the asked range: the server sends whole chunks so they can be verified here.
        for (const slice of slices) {
          const sliceStart = position;
          position += slice.length;
          const from = Math.max(offset, sliceStart);
          const to = Math.min(wantEnd, position);
          if (to > from) yield slice.subarray(from - sliceStart, to - sliceStart);
        }
      }
      complete = true;
    } catch (error) {
      throw guard.explain(error);
    } finally {
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
 * One WriteShard in progress. Bytes are copied into two packet buffers the writer owns, which take
 * turns: one fills while the other is on its way into the socket (so the caller may reuse its bytes as
 * soon as `write` resolves, and nothing is allocated per packet). Packets are cut on chunk boundaries;
 * each carries its chunks' CRC32C. At most two packets per shard are queued in the socket, which is the
 * back-pressure: a slow server makes `write` wait for the older packet to be taken by the kernel.
 * The chunk server may answer early with an error (no space, too busy, bad request): the next `write`
 * or `finish` rejects with it.
 */
export class ShardWriter {
  private readonly buffers: Buffer[];
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
  ) {
    const bufferBytes = Math.min(packetSize, length);
    this.buffers = [Buffer.allocUnsafe(bufferBytes), Buffer.allocUnsafe(bufferBytes)];
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
    while (offset < data.length) {
      if (this.fill === 0) await this.bufferFree(this.turn);
      const buffer = this.buffers[this.turn]!;
      const take = Math.min(buffer.length - this.fill, data.length - offset);
      buffer.set(data.subarray(offset, offset + take), this.fill);
      this.checksum(buffer.subarray(this.fill, this.fill + take));
      this.fill += take;
      offset += take;
      if (this.fill === buffer.length) this.flushPacket();
    }
    this.written += data.length;
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
    if (this.chunkFill > 0) this.endChunk();
    const socket = this.connection.socket;
    socket.cork();
    socket.write(
      encodeFrame('dogfs.v1.DataPacketHeader', { length: this.fill, chunkCrc32c: this.packetCrcs }),
    );
    // The callback runs once the kernel has the bytes, or with an error when the socket is destroyed.
    this.inSocket[this.turn] = new Promise<void>((resolve) =>
      socket.write(this.buffers[this.turn]!.subarray(0, this.fill), () => resolve()),
    );
    socket.uncork();
    this.turn ^= 1;
    this.fill = 0;
    this.packetCrcs.length = 0;
  }

  /** Ends the shard; resolves once the chunk server has made it durable. */
  async finish(): Promise<WriteShardResult> {
    this.check();
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
