/**
 * wire/lean — the lean RPC framing of DESIGN section 5, shared by wire/lean-client.ts and
 * wire/lean-server.ts: DogFS's own processes and client call each other with it, on the same port as
 * gRPC (the server tells the two apart by the connection's first byte: HTTP/2 starts "PRI", a lean
 * connection starts with LEAN_MAGIC). Same protobuf messages, same handlers, same error codes; what it
 * drops is HTTP/2's per-call machinery (a stream object, header lists, HPACK, trailers), which on a
 * metadata leader and in a client was most of the CPU of a small call (docs/ARCHITECTURE.md, Wire).
 *
 * A connection: the client sends LEAN_MAGIC, then frames both ways, each
 *   [u32 length of the rest][u8 type][u32 call id][type-specific body]   (big-endian)
 *   REQUEST  c→s  [u32 timeout ms][u16 path length][path][request message]
 *   CANCEL   c→s  (the caller gave up: the handler's signal fires)
 *   PING     c→s  (liveness probe after a call timed out; answered by PONG with the same id)
 *   RESPONSE s→c  [response message]
 *   ERROR    s→c  [u8 code length][code][u16 leader-hint length][leader hint][message, UTF-8]
 *   PONG     s→c
 *   GOAWAY   s→c  (the call id field is the last request the server took: it answers those, runs
 *                 nothing after; the client sends calls after it again on a new connection)
 * Calls are answered in any order (multiplexed by id). Every length is bounded: a frame by the
 * message limit plus FRAME_OVERHEAD_BYTES (a larger REQUEST or RESPONSE is read past and refused with
 * RESOURCE_EXHAUSTED; any other oversized frame closes the connection), a path by MAX_PATH_BYTES, an
 * error message by MAX_ERROR_MESSAGE_BYTES, calls in flight per connection by MAX_CALLS_PER_CONNECTION.
 */
import type { Socket } from 'node:net';
import { assert } from '../common/assert.js';
import { DogfsError } from './errors.js';

/** What a lean client sends first; its first byte is never HTTP/2's 'P'. */
export const LEAN_MAGIC = Buffer.from('DOGFSRPC1\n', 'latin1');
export const LEAN_FIRST_BYTE = LEAN_MAGIC[0]!;

export const FrameType = {
  REQUEST: 1,
  CANCEL: 2,
  PING: 3,
  RESPONSE: 4,
  ERROR: 5,
  PONG: 6,
  GOAWAY: 7,
} as const;
export type FrameType = (typeof FrameType)[keyof typeof FrameType];

const LENGTH_BYTES = 4;
/** type + call id */
const HEAD_BYTES = 5;
/** timeout + path length */
const REQUEST_FIXED_BYTES = 6;
export const MAX_PATH_BYTES = 1024;
/** An error's message is cut to this many bytes: an error line, not a payload. */
const MAX_ERROR_MESSAGE_BYTES = 4096;
const MAX_HINT_BYTES = 1024;
/** Room for everything a frame carries besides its message (the larger of a REQUEST's and an ERROR's). */
const FRAME_OVERHEAD_BYTES =
  HEAD_BYTES +
  Math.max(REQUEST_FIXED_BYTES + MAX_PATH_BYTES, 1 + 255 + 2 + MAX_HINT_BYTES + MAX_ERROR_MESSAGE_BYTES);

/** The largest frame either side reads for a given message limit. */
export function maxFrameBytes(maxMessageBytes: number): number {
  return maxMessageBytes + FRAME_OVERHEAD_BYTES;
}
/** Call ids on one connection only grow; past this, a client opens a new connection. */
export const MAX_CALL_ID = 0xffff_ffff;
/** Calls one connection may have in flight; a client queues beyond it, a server refuses beyond it. */
export const MAX_CALLS_PER_CONNECTION = 256;
/** The longest timeout a request can carry (u32 milliseconds, ~49.7 days). */
const MAX_TIMEOUT_MS = 0xffff_ffff;

/**
 * A frame's first bytes: length, type, call id, and room for `roomBytes` of body (the whole body, or all
 * of it but a large message that is written after it uncopied).
 */
function head(type: FrameType, callId: number, bodyBytes: number, roomBytes = bodyBytes): Buffer {
  const frame = Buffer.allocUnsafe(LENGTH_BYTES + HEAD_BYTES + roomBytes);
  frame.writeUInt32BE(HEAD_BYTES + bodyBytes, 0);
  frame[LENGTH_BYTES] = type;
  frame.writeUInt32BE(callId, LENGTH_BYTES + 1);
  return frame;
}

/** Messages up to this size are copied behind their frame's head (one write); larger ones follow it uncopied. */
const COPY_BELOW_BYTES = 16 * 1024;

function copiedBytes(message: Uint8Array): number {
  return message.byteLength <= COPY_BELOW_BYTES ? message.byteLength : 0;
}

/** The buffers of a frame whose message starts at `at`: one, or the head then the message itself. */
function withMessage(frame: Buffer, at: number, message: Uint8Array): Buffer[] {
  if (message.byteLength <= COPY_BELOW_BYTES) {
    frame.set(message, at);
    return [frame];
  }
  return [frame, Buffer.from(message.buffer, message.byteOffset, message.byteLength)];
}

/** A frame with no body (CANCEL, PING, PONG, GOAWAY). */
export function encodeEmptyFrame(type: FrameType, callId: number): Buffer {
  return head(type, callId, 0);
}

/**
 * A REQUEST frame as the buffers to write (see withMessage). The message is not copied when large: it
 * must not change until written.
 */
export function requestFrame(callId: number, path: string, timeoutMs: number, message: Uint8Array): Buffer[] {
  const pathBytes = Buffer.byteLength(path, 'latin1');
  assert(pathBytes <= MAX_PATH_BYTES, `method path longer than ${MAX_PATH_BYTES} bytes`);
  const at = LENGTH_BYTES + HEAD_BYTES;
  const fixed = REQUEST_FIXED_BYTES + pathBytes;
  const frame = head(FrameType.REQUEST, callId, fixed + message.byteLength, fixed + copiedBytes(message));
  frame.writeUInt32BE(Math.min(MAX_TIMEOUT_MS, Math.max(0, Math.ceil(timeoutMs))), at);
  frame.writeUInt16BE(pathBytes, at + 4);
  frame.write(path, at + REQUEST_FIXED_BYTES, 'latin1');
  return withMessage(frame, at + fixed, message);
}

/** A REQUEST frame in one buffer. */
export function encodeRequest(callId: number, path: string, timeoutMs: number, message: Uint8Array): Buffer {
  return Buffer.concat(requestFrame(callId, path, timeoutMs, message));
}

export interface LeanRequest {
  readonly timeoutMs: number;
  readonly path: string;
  readonly message: Buffer;
}

/** Reads a REQUEST body; a body that does not hold what it claims is INVALID_ARGUMENT. */
export function decodeRequest(body: Buffer): LeanRequest {
  if (body.byteLength < REQUEST_FIXED_BYTES)
    throw new DogfsError('INVALID_ARGUMENT', `request frame of ${body.byteLength} bytes is truncated`);
  const timeoutMs = body.readUInt32BE(0);
  const pathBytes = body.readUInt16BE(4);
  if (pathBytes > MAX_PATH_BYTES || REQUEST_FIXED_BYTES + pathBytes > body.byteLength)
    throw new DogfsError('INVALID_ARGUMENT', `request frame claims a ${pathBytes}-byte method path`);
  const path = body.toString('latin1', REQUEST_FIXED_BYTES, REQUEST_FIXED_BYTES + pathBytes);
  return { timeoutMs, path, message: body.subarray(REQUEST_FIXED_BYTES + pathBytes) };
}

/**
 * The method path of a REQUEST from the start of its body, or undefined if the path has not all arrived
 * yet (or the body does not hold a valid one: decodeRequest says why once the frame is whole).
 */
export function requestPathOf(start: Buffer): string | undefined {
  if (start.byteLength < REQUEST_FIXED_BYTES) return undefined;
  const pathBytes = start.readUInt16BE(4);
  if (pathBytes > MAX_PATH_BYTES || REQUEST_FIXED_BYTES + pathBytes > start.byteLength) return undefined;
  return start.toString('latin1', REQUEST_FIXED_BYTES, REQUEST_FIXED_BYTES + pathBytes);
}

/** A RESPONSE frame as the buffers to write (see requestFrame). */
export function responseFrame(callId: number, message: Uint8Array): Buffer[] {
  const frame = head(FrameType.RESPONSE, callId, message.byteLength, copiedBytes(message));
  return withMessage(frame, LENGTH_BYTES + HEAD_BYTES, message);
}

/** A RESPONSE frame in one buffer. */
export function encodeResponse(callId: number, message: Uint8Array): Buffer {
  return Buffer.concat(responseFrame(callId, message));
}

/** UTF-8 of `text` cut to at most `limit` bytes without splitting a character (lone surrogates replaced). */
function utf8Cut(text: string, limit: number): Buffer {
  const bytes = Buffer.from(text, 'utf8');
  if (bytes.byteLength <= limit) return bytes;
  let end = limit;
  // Back off continuation bytes (10xxxxxx) so the cut falls on a character boundary.
  while (end > 0 && (bytes[end]! & 0xc0) === 0x80) end--;
  return bytes.subarray(0, end);
}

/** An ERROR frame carrying a DogfsError (message cut to MAX_ERROR_MESSAGE_BYTES). */
export function encodeError(callId: number, error: DogfsError): Buffer {
  const code = Buffer.from(error.code, 'latin1');
  const hint = utf8Cut(error.leaderHint ?? '', MAX_HINT_BYTES);
  const message = utf8Cut(error.message, MAX_ERROR_MESSAGE_BYTES);
  const frame = head(FrameType.ERROR, callId, 1 + code.byteLength + 2 + hint.byteLength + message.byteLength);
  let at = LENGTH_BYTES + HEAD_BYTES;
  frame[at++] = code.byteLength;
  frame.set(code, at);
  at += code.byteLength;
  frame.writeUInt16BE(hint.byteLength, at);
  at += 2;
  frame.set(hint, at);
  frame.set(message, at + hint.byteLength);
  return frame;
}

export interface LeanError {
  readonly code: string;
  readonly leaderHint: string;
  readonly message: string;
}

/** Reads an ERROR body; undefined when it does not hold what it claims. */
export function decodeError(body: Buffer): LeanError | undefined {
  if (body.byteLength < 1) return undefined;
  const codeBytes = body[0]!;
  if (1 + codeBytes + 2 > body.byteLength) return undefined;
  const code = body.toString('latin1', 1, 1 + codeBytes);
  const hintBytes = body.readUInt16BE(1 + codeBytes);
  const hintAt = 1 + codeBytes + 2;
  if (hintAt + hintBytes > body.byteLength) return undefined;
  return {
    code,
    leaderHint: body.toString('utf8', hintAt, hintAt + hintBytes),
    message: body.toString('utf8', hintAt + hintBytes),
  };
}

export interface FrameHandlers {
  /** A whole frame: `body` is what follows the call id (a view into the received bytes, or a copy). */
  frame(type: number, callId: number, body: Buffer): void;
  /**
   * A REQUEST or RESPONSE frame longer than the limit, or one `admit` turned away: its bytes are read
   * past, never held, and the call is refused. Any other type over the limit is a protocol error (the
   * reader throws).
   */
  oversized(type: number, callId: number, length: number): void;
  /**
   * Optional: asked before a frame longer than the bytes at hand is assembled in a buffer of its own
   * (`length` bytes held until it is whole). False reads past it instead (then `oversized`); true
   * holds those bytes until `released` is called with the same length, when the frame is whole (a
   * connection that ends mid-frame gives back `assemblingBytes` itself). `start` is the frame's body as
   * far as it has arrived (perhaps nothing of it).
   */
  admit?(type: number, callId: number, length: number, start: Buffer): boolean;
  released?(length: number): void;
}

/**
 * Splits a byte stream into frames without copying small ones (they are views into the chunk that
 * carried them) and copying a large one once, into a buffer of its size allocated when its length is
 * known. Throws INVALID_ARGUMENT on a frame too short to hold a type and call id, or an oversized frame
 * that is not a REQUEST or RESPONSE; the caller then drops the connection.
 */
export class FrameReader {
  /** Bytes of a length prefix or frame head cut by a chunk boundary. */
  private partialHead: Buffer = Buffer.alloc(0);
  /** The large frame being assembled, and how much of it has arrived. */
  private assembling: Buffer | undefined;
  private assembled = 0;
  /** Bytes of an oversized frame still to read past. */
  private skipping = 0;

  constructor(
    private readonly maxFrameBytes: number,
    private readonly handlers: FrameHandlers,
  ) {}

  push(chunk: Buffer): void {
    let data = chunk;
    if (this.skipping > 0) {
      const skipped = Math.min(this.skipping, data.byteLength);
      this.skipping -= skipped;
      data = data.subarray(skipped);
    }
    if (this.assembling !== undefined) {
      const take = Math.min(this.assembling.byteLength - this.assembled, data.byteLength);
      data.copy(this.assembling, this.assembled, 0, take);
      this.assembled += take;
      data = data.subarray(take);
      if (this.assembled < this.assembling.byteLength) return;
      const whole = this.assembling;
      this.assembling = undefined;
      this.handlers.released?.(whole.byteLength);
      this.deliver(whole);
    }
    if (this.partialHead.byteLength > 0) {
      // Rare: a chunk ended inside a length prefix or head. Join just enough to go on.
      data = Buffer.concat([this.partialHead, data]);
      this.partialHead = Buffer.alloc(0);
    }
    let at = 0;
    // Bounded: each turn consumes at least LENGTH_BYTES + HEAD_BYTES bytes of `data`, or leaves.
    while (data.byteLength - at >= LENGTH_BYTES) {
      const length = data.readUInt32BE(at);
      if (length < HEAD_BYTES)
        throw new DogfsError('INVALID_ARGUMENT', `frame of ${length} bytes is shorter than its head`);
      if (data.byteLength - at < LENGTH_BYTES + HEAD_BYTES) break;
      if (length > this.maxFrameBytes) {
        const type = data[at + LENGTH_BYTES]!;
        if (type !== FrameType.REQUEST && type !== FrameType.RESPONSE) {
          throw new DogfsError(
            'INVALID_ARGUMENT',
            `frame of ${length} bytes exceeds the ${this.maxFrameBytes}-byte limit`,
          );
        }
        this.handlers.oversized(type, data.readUInt32BE(at + LENGTH_BYTES + 1), length);
        const available = data.byteLength - at - LENGTH_BYTES;
        if (available >= length) {
          at += LENGTH_BYTES + length;
          continue;
        }
        this.skipping = length - available;
        return;
      }
      const end = at + LENGTH_BYTES + length;
      if (end <= data.byteLength) {
        this.deliver(data.subarray(at + LENGTH_BYTES, end));
        at = end;
        continue;
      }
      // A frame longer than what is here: assemble it in its own buffer (one copy), if admitted.
      const type = data[at + LENGTH_BYTES]!;
      const callId = data.readUInt32BE(at + LENGTH_BYTES + 1);
      const start = data.subarray(at + LENGTH_BYTES + HEAD_BYTES);
      if (this.handlers.admit?.(type, callId, length, start) === false) {
        if (type !== FrameType.REQUEST && type !== FrameType.RESPONSE) {
          throw new DogfsError('INVALID_ARGUMENT', `frame type ${type} of ${length} bytes not admitted`);
        }
        this.handlers.oversized(type, callId, length);
        this.skipping = length - (data.byteLength - at - LENGTH_BYTES);
        return;
      }
      this.assembling = Buffer.allocUnsafe(length);
      this.assembled = data.copy(this.assembling, 0, at + LENGTH_BYTES);
      return;
    }
    if (at < data.byteLength) this.partialHead = Buffer.from(data.subarray(at));
  }

  /** Bytes held for a frame being assembled (what `admit` let in and `released` has not given back). */
  get assemblingBytes(): number {
    return this.assembling?.byteLength ?? 0;
  }

  private deliver(frame: Buffer): void {
    this.handlers.frame(frame[0]!, frame.readUInt32BE(1), frame.subarray(HEAD_BYTES));
  }
}

/**
 * Writes frames so that those written in one turn of the event loop leave together: the socket is
 * corked at the first and uncorked on the next tick, one writev for, say, every answer of a Raft round
 * or every request a burst of callbacks made.
 */
export class TickBatchedWriter {
  private corked = false;

  constructor(private readonly socket: Socket) {}

  /** One frame: a buffer, or the buffers of one frame in order. */
  write(frame: Buffer | readonly Buffer[]): void {
    const socket = this.socket;
    if (!this.corked) {
      this.corked = true;
      socket.cork();
      process.nextTick(() => {
        this.corked = false;
        socket.uncork();
      });
    }
    if (Buffer.isBuffer(frame)) socket.write(frame);
    else for (const part of frame) socket.write(part);
  }
}
