/**
 * wire/grpc-server — a lean gRPC server for unary calls, straight on node:http2 (the counterpart of
 * wire/grpc-client.ts).
 *
 * Why not @grpc/grpc-js: its server spent ~80-90 µs of CPU per unary call here against ~45 µs for the
 * same call answered directly on node:http2 (64 calls in flight on loopback), and a metadata leader
 * answers every client call of the cluster. The bytes on the wire stay plain gRPC — HTTP/2 with
 * `application/grpc`, 5-byte length prefixes, `grpc-timeout`, `grpc-status`/`grpc-message` trailers — so
 * stock gRPC clients in any language still talk to DogFS (test/wire/rpc.test.ts calls it with grpc-js).
 *
 * Limits, all explicit: concurrent streams per connection (256); handlers running per connection (768,
 * those of reset streams included) and on the whole server (wire/handler-slots.ts, shared with the lean
 * transport); bytes of one request and of all
 * requests in progress together (control calls with a reserve past it; counted while they arrive, so an oversized one is refused before it is
 * buffered, and the stream is then reset so the sender stops); how long a call may run, counted from its
 * headers whatever grpc-timeout it sent (a request that never finishes arriving is answered too); how
 * long a request's body may take to arrive whole (frameAssemblyMs from its headers, as the lean
 * transport allows a frame: past it the stream is refused and its bytes given back); requests arriving
 * at once on the whole server, from headers to the end of their bodies (4,096, control calls with a
 * reserve past it: a stream's state is kept from its headers, before any byte is counted); the
 * length of an error message (4 KiB); idle connections (closed after 10 minutes). Only identity encoding
 * is accepted (DogFS never compresses).
 */
import http2 from 'node:http2';
import type { Socket } from 'node:net';
import { DogfsError, type ErrorCode, toDogfsError } from './errors.js';
import {
  CODE_KEY,
  endWithMessage,
  GrpcStatus,
  KEEPALIVE_MS,
  LEADER_KEY,
  PREFIX_BYTES,
} from './grpc-client.js';
import { controlReserve, HandlerSlots, isControlPath } from './handler-slots.js';

const {
  HTTP2_HEADER_METHOD,
  HTTP2_HEADER_PATH,
  HTTP2_HEADER_STATUS,
  HTTP2_HEADER_CONTENT_TYPE,
  NGHTTP2_CANCEL,
  NGHTTP2_NO_ERROR,
  NGHTTP2_INTERNAL_ERROR,
} = http2.constants;

/** Streams one client connection may have open at once; more are refused by HTTP/2 itself. */
const MAX_CONCURRENT_STREAMS = 256;
/**
 * Handlers running for one connection, counting those whose streams were reset (cancelled) but which
 * have not returned; beyond, new calls are refused with RESOURCE_EXHAUSTED. A stream reset frees its
 * HTTP/2 slot at once, so without this a client could cancel its way past MAX_CONCURRENT_STREAMS.
 */
const MAX_RUNNING_HANDLERS_PER_SESSION = 3 * MAX_CONCURRENT_STREAMS;
/** grpc-message is cut to this many bytes: an error line, not a payload (and HTTP/2 frames are 16 KiB). */
const MAX_STATUS_MESSAGE_BYTES = 4096;
/** A connection without any stream for this long is closed. */
const IDLE_SESSION_MS = 10 * 60_000;

const GRPC_STATUS_OF: Record<ErrorCode, number> = {
  INVALID_ARGUMENT: GrpcStatus.INVALID_ARGUMENT,
  NOT_FOUND: GrpcStatus.NOT_FOUND,
  ALREADY_EXISTS: GrpcStatus.ALREADY_EXISTS,
  NOT_A_DIRECTORY: GrpcStatus.FAILED_PRECONDITION,
  IS_A_DIRECTORY: GrpcStatus.FAILED_PRECONDITION,
  NOT_EMPTY: GrpcStatus.FAILED_PRECONDITION,
  FAILED_PRECONDITION: GrpcStatus.FAILED_PRECONDITION,
  PERMISSION_DENIED: GrpcStatus.PERMISSION_DENIED,
  NOT_LEADER: GrpcStatus.FAILED_PRECONDITION,
  NO_QUORUM: GrpcStatus.UNAVAILABLE,
  UNAVAILABLE: GrpcStatus.UNAVAILABLE,
  DEADLINE_EXCEEDED: GrpcStatus.DEADLINE_EXCEEDED,
  CANCELLED: GrpcStatus.CANCELLED,
  RESOURCE_EXHAUSTED: GrpcStatus.RESOURCE_EXHAUSTED,
  TOO_LARGE: GrpcStatus.RESOURCE_EXHAUSTED,
  NO_SPACE: GrpcStatus.RESOURCE_EXHAUSTED,
  CORRUPT: GrpcStatus.DATA_LOSS,
  UNIMPLEMENTED: GrpcStatus.UNIMPLEMENTED,
  INTERNAL: GrpcStatus.INTERNAL,
};

const TIMEOUT_UNIT_MS: Record<string, number> = { H: 3_600_000, M: 60_000, S: 1000, m: 1, u: 1e-3, n: 1e-6 };

/** Milliseconds of a `grpc-timeout` header, or undefined when absent or malformed (then: no deadline sent). */
export function parseGrpcTimeout(value: string | undefined): number | undefined {
  if (value === undefined) return undefined;
  const match = /^(\d{1,8})([HMSmun])$/.exec(value);
  if (match === null) return undefined;
  return Number(match[1]) * TIMEOUT_UNIT_MS[match[2]!]!;
}

/** What a unary handler learns about its call. */
export interface UnaryCall {
  /** The encoded request message. */
  readonly request: Buffer;
  /** Milliseconds the call may still run: the caller's grpc-timeout, capped by the server's limit. */
  readonly timeoutMs: number;
  readonly peer: string;
  /** Called at most once, when the caller goes away before the answer (cancel, RST, connection lost). */
  onCancel(listener: () => void): void;
}

/** Answers with the encoded response message, or throws (a DogfsError for anything expected). */
export type UnaryHandler = (call: UnaryCall) => Promise<Uint8Array>;

function header(headers: http2.IncomingHttpHeaders, name: string): string | undefined {
  const value = headers[name];
  return Array.isArray(value) ? value[0] : value;
}

/**
 * grpc-message for `message`: at most MAX_STATUS_MESSAGE_BYTES of UTF-8 (lone surrogates replaced),
 * percent-encoded as the gRPC spec asks (printable ASCII other than '%' as is).
 */
export function encodeGrpcMessage(message: string): string {
  const bytes = Buffer.from(message, 'utf8').subarray(0, MAX_STATUS_MESSAGE_BYTES);
  let out = '';
  for (const byte of bytes) {
    out +=
      byte >= 0x20 && byte <= 0x7e && byte !== 0x25
        ? String.fromCharCode(byte)
        : `%${byte.toString(16).toUpperCase().padStart(2, '0')}`;
  }
  return out;
}

function isGrpcContentType(value: string): boolean {
  return (
    value === 'application/grpc' ||
    value.startsWith('application/grpc+') ||
    value.startsWith('application/grpc;')
  );
}

export interface GrpcServerLimits {
  /** Largest request message, in bytes. */
  readonly maxMessageBytes: number;
  /** Request bytes all calls together may hold while they arrive and run; beyond, RESOURCE_EXHAUSTED. */
  readonly maxBufferedBytes: number;
  /** Longest a call may run (from its headers), whatever grpc-timeout the caller sent. */
  readonly maxCallMs: number;
  /**
   * How long a request's body may take to arrive whole, from its headers (the lean transport's
   * FRAME_ASSEMBLY_TIMEOUT_MS): past it the stream is refused and its bytes are given back.
   */
  readonly frameAssemblyMs: number;
  /**
   * Requests arriving at once on the whole server, from their headers until their bodies end: past it
   * a call is refused (RESOURCE_EXHAUSTED, server busy) before anything of it is kept. The cluster's
   * control calls have a reserve past it (controlReserve).
   */
  readonly maxArrivingStreams: number;
}

/**
 * Requests one server lets arrive at once unless told otherwise. Each is a stream with its headers and
 * state (and bytes, which the byte budget counts); the streams per connection (256) times the
 * connections (4,096) would allow a million. A request arrives in well under a millisecond unless its
 * body is large or its client slow, so this is far more than clients keep arriving together.
 */
export const DEFAULT_MAX_ARRIVING_STREAMS = 4096;

/**
 * Request bytes held now by calls still arriving or running, bounded by limits.maxBufferedBytes: one
 * count for both transports of a server (wire/rpc.ts), so that taking both does not hold twice as much.
 */
export interface RequestBytes {
  held: number;
}

/**
 * The request bytes all calls together may hold once a request of `path` is admitted: the budget, and a
 * sixteenth more for the cluster's control calls (isControlPath). The handler slots keep such a reserve
 * too, but slots alone did not let a heartbeat through: requests that fill the byte budget (sixteen of
 * the largest) refused every request with a body, so a crowd of uploads would have the metadata leader
 * declare live chunk servers dead. A sixteenth holds one largest BlockReport, or many heartbeats.
 */
export function requestByteCap(maxBufferedBytes: number, path: string): number {
  return isControlPath(path) ? maxBufferedBytes + Math.ceil(maxBufferedBytes / 16) : maxBufferedBytes;
}

export class GrpcServer {
  private readonly server: http2.Http2Server;
  readonly handlers = new Map<string, UnaryHandler>();
  private readonly sessions = new Set<http2.ServerHttp2Session>();
  /** Handlers not yet returned, per connection (see MAX_RUNNING_HANDLERS_PER_SESSION). */
  private readonly running = new WeakMap<http2.Http2Session, number>();
  /** Told once, when a connection's first call begins (its headers arrive); removed when told. */
  private readonly onBegun = new WeakMap<http2.Http2Session, () => void>();
  /** What accept() was given, for the session http2 makes while accept() runs. */
  private accepting: (() => void) | undefined;
  /** Requests whose headers have arrived and whose bodies have not ended (limits.maxArrivingStreams). */
  private arriving = 0;

  constructor(
    private readonly limits: GrpcServerLimits,
    readonly requestBytes: RequestBytes = { held: 0 },
    /** Handlers running on the whole server, this transport and the lean one together. */
    readonly slots: HandlerSlots = new HandlerSlots(),
  ) {
    this.server = http2.createServer({
      settings: { maxConcurrentStreams: MAX_CONCURRENT_STREAMS },
      // Requests of up to maxMessageBytes may arrive on several streams at once.
      maxSessionMemory: 256,
    });
    this.server.on('connection', (socket: Socket) => {
      // A small answer must not wait for the peer's delayed ACK under Nagle's algorithm.
      socket.setNoDelay(true);
      socket.setKeepAlive(true, KEEPALIVE_MS);
    });
    this.server.on('session', (session) => {
      this.sessions.add(session);
      if (this.accepting !== undefined) this.onBegun.set(session, this.accepting);
      this.accepting = undefined;
      session.on('close', () => this.sessions.delete(session));
      // A broken connection ends its streams, whose own handlers answer for them.
      session.on('error', () => {});
      // A connection with nothing to do for this long is closed (GOAWAY); clients simply dial again.
      session.setTimeout(IDLE_SESSION_MS, () => session.close());
    });
    this.server.on('stream', (stream, headers) => this.onStream(stream, headers));
  }

  /** Serves `path` (`/package.Service/Method`) with `handler`. */
  handle(path: string, handler: UnaryHandler): void {
    if (this.handlers.has(path)) throw new Error(`gRPC method ${path} registered twice`);
    this.handlers.set(path, handler);
  }

  private onStream(stream: http2.ServerHttp2Stream, headers: http2.IncomingHttpHeaders): void {
    stream.on('error', () => {});
    const path = header(headers, HTTP2_HEADER_PATH) ?? '';
    if (
      header(headers, HTTP2_HEADER_METHOD) !== 'POST' ||
      !isGrpcContentType(header(headers, HTTP2_HEADER_CONTENT_TYPE) ?? '')
    ) {
      // Not gRPC at all: plain HTTP refusal.
      stream.respond({ [HTTP2_HEADER_STATUS]: 415 }, { endStream: true });
      return;
    }
    const handler = this.handlers.get(path);
    if (handler === undefined) {
      this.fail(stream, new DogfsError('UNIMPLEMENTED', `${path}: no such method`));
      return;
    }
    const session = stream.session;
    const onBegun = session === undefined ? undefined : this.onBegun.get(session);
    if (session !== undefined && onBegun !== undefined) {
      this.onBegun.delete(session);
      onBegun();
    }
    const arrivingCap = isControlPath(path)
      ? this.limits.maxArrivingStreams + controlReserve(this.limits.maxArrivingStreams)
      : this.limits.maxArrivingStreams;
    if (this.arriving >= arrivingCap) {
      this.fail(
        stream,
        new DogfsError(
          'RESOURCE_EXHAUSTED',
          `${path}: server busy: ${this.arriving} requests already arriving`,
        ),
      );
      return;
    }
    this.arriving++;
    let arrived = false;
    /** The request is no longer arriving: its body ended, it was refused, or its stream closed. */
    const done = (): void => {
      if (arrived) return;
      arrived = true;
      this.arriving--;
    };
    const timeoutMs = parseGrpcTimeout(header(headers, 'grpc-timeout'));
    // The deadline runs from the headers, so a request that never finishes arriving is answered too.
    const callMs = Math.min(timeoutMs ?? this.limits.maxCallMs, this.limits.maxCallMs);
    const deadlineTimer = setTimeout(
      () => this.fail(stream, new DogfsError('DEADLINE_EXCEEDED', `${path}: deadline exceeded`)),
      callMs,
    );
    const byteCap = requestByteCap(this.limits.maxBufferedBytes, path);
    let held = 0;
    const release = (): void => {
      this.requestBytes.held -= held;
      held = 0;
    };
    /** A handler holds its request's bytes until it returns, whether or not its stream is still open. */
    let handlerRunning = false;
    const chunks: Buffer[] = [];
    let refused = false;
    const refuse = (error: DogfsError): void => {
      done();
      refused = true;
      chunks.length = 0;
      release();
      this.fail(stream, error);
    };
    // The call's deadline alone would let a body that never ends hold its bytes for up to maxCallMs
    // (5 minutes without grpc-timeout): sixteen such would refuse every request of both transports.
    // The lean transport cuts the same case at frameAssemblyMs, and so does this.
    const assemblyTimer = setTimeout(
      () =>
        refuse(
          new DogfsError(
            'DEADLINE_EXCEEDED',
            `${path}: request body not whole within ${this.limits.frameAssemblyMs} ms of its headers`,
          ),
        ),
      this.limits.frameAssemblyMs,
    );
    stream.once('close', () => {
      done();
      clearTimeout(deadlineTimer);
      clearTimeout(assemblyTimer);
      if (!handlerRunning) release();
    });
    stream.on('data', (chunk: Buffer) => {
      if (refused) return;
      held += chunk.byteLength;
      this.requestBytes.held += chunk.byteLength;
      if (held > this.limits.maxMessageBytes + PREFIX_BYTES) {
        refuse(
          new DogfsError(
            'TOO_LARGE',
            `${path}: request exceeds the ${this.limits.maxMessageBytes}-byte limit`,
          ),
        );
      } else if (this.requestBytes.held > byteCap) {
        refuse(
          new DogfsError(
            'RESOURCE_EXHAUSTED',
            `${path}: server busy: ${this.limits.maxBufferedBytes} bytes of requests already in progress`,
          ),
        );
      } else {
        chunks.push(chunk);
      }
    });
    stream.on('end', () => {
      done();
      clearTimeout(assemblyTimer);
      if (refused || stream.headersSent) return;
      const body = chunks.length === 1 ? chunks[0]! : Buffer.concat(chunks, held);
      const framing = this.checkFraming(path, body);
      if (framing !== undefined) {
        this.fail(stream, framing);
        return;
      }
      const running = session === undefined ? 0 : (this.running.get(session) ?? 0);
      if (running >= MAX_RUNNING_HANDLERS_PER_SESSION) {
        this.fail(
          stream,
          new DogfsError(
            'RESOURCE_EXHAUSTED',
            `${path}: ${running} handlers still running for this connection (cancelled calls included)`,
          ),
        );
        return;
      }
      const slot = this.slots.take(path);
      if (slot instanceof DogfsError) {
        this.fail(stream, slot);
        return;
      }
      const call: UnaryCall = {
        request: body.subarray(PREFIX_BYTES),
        timeoutMs: callMs,
        // Computed only if asked for: the session's socket is a proxy, and few handlers want the peer.
        get peer() {
          const socket = stream.session?.socket;
          return socket ? `${socket.remoteAddress}:${socket.remotePort}` : '';
        },
        onCancel: (listener) => {
          // 'close' before our answer was sent means the caller is gone (RST_STREAM or lost connection).
          // A listener added after that (the signal is made lazily) hears it at once.
          if (stream.closed) {
            if (!stream.headersSent) queueMicrotask(listener);
            return;
          }
          stream.once('close', () => {
            if (!stream.headersSent) listener();
          });
        },
      };
      handlerRunning = true;
      if (session !== undefined) this.running.set(session, running + 1);
      const returned = (): void => {
        handlerRunning = false;
        release();
        slot.release();
        if (session !== undefined) this.running.set(session, (this.running.get(session) ?? 1) - 1);
      };
      handler(call).then(
        (response) => {
          returned();
          this.answer(stream, response);
        },
        (error: unknown) => {
          returned();
          this.fail(stream, toDogfsError(error));
        },
      );
    });
  }

  private checkFraming(path: string, body: Buffer): DogfsError | undefined {
    if (body.byteLength < PREFIX_BYTES)
      return new DogfsError('INVALID_ARGUMENT', `${path}: no request message`);
    if (body[0] !== 0)
      return new DogfsError('UNIMPLEMENTED', `${path}: compressed requests are not supported`);
    const length = body.readUInt32BE(1);
    if (length !== body.byteLength - PREFIX_BYTES) {
      return new DogfsError(
        'INVALID_ARGUMENT',
        `${path}: request framed as ${length} bytes but ${body.byteLength - PREFIX_BYTES} arrived`,
      );
    }
    return undefined;
  }

  private answer(stream: http2.ServerHttp2Stream, response: Uint8Array): void {
    if (stream.destroyed || stream.closed || stream.headersSent) return;
    try {
      stream.respond(
        { [HTTP2_HEADER_STATUS]: 200, [HTTP2_HEADER_CONTENT_TYPE]: 'application/grpc' },
        { waitForTrailers: true },
      );
      stream.once('wantTrailers', () => stream.sendTrailers({ 'grpc-status': '0' }));
      endWithMessage(stream, response);
    } catch {
      // The stream died under us (its peer went away); nothing is left to tell.
      stream.close(NGHTTP2_INTERNAL_ERROR);
    }
  }

  /**
   * A trailers-only answer carrying the error: the closest gRPC status plus DogFS's exact code. If the
   * request was still arriving, the stream is then reset with NO_ERROR so the caller stops sending.
   */
  private fail(stream: http2.ServerHttp2Stream, error: DogfsError): void {
    if (stream.destroyed || stream.closed) return;
    if (stream.headersSent) {
      stream.close(NGHTTP2_CANCEL);
      return;
    }
    try {
      const headers: http2.OutgoingHttpHeaders = {
        [HTTP2_HEADER_STATUS]: 200,
        [HTTP2_HEADER_CONTENT_TYPE]: 'application/grpc',
        'grpc-status': String(GRPC_STATUS_OF[error.code]),
        'grpc-message': encodeGrpcMessage(error.message),
        [CODE_KEY]: error.code,
      };
      if (error.leaderHint !== undefined) headers[LEADER_KEY] = encodeGrpcMessage(error.leaderHint);
      stream.respond(headers, { endStream: true });
      if (!stream.readableEnded) stream.close(NGHTTP2_NO_ERROR);
    } catch {
      stream.close(NGHTTP2_INTERNAL_ERROR);
    }
  }

  /**
   * Serves HTTP/2 on a connection the RpcServer accepted (and saw start like HTTP/2); `begun` is called
   * when its first call's headers arrive.
   */
  accept(socket: Socket, begun: () => void = () => {}): void {
    // http2 makes the connection's session within this emit ('session' above pairs the two).
    this.accepting = begun;
    try {
      this.server.emit('connection', socket);
    } finally {
      this.accepting = undefined;
    }
  }

  /** Every session: GOAWAY (no new streams), closing once its running streams are answered. */
  goAway(): void {
    for (const session of this.sessions) session.close();
  }
}
