/**
 * wire/grpc-client — a lean gRPC client for unary calls, straight on node:http2.
 *
 * Why not @grpc/grpc-js on this side: its client stack (resolver, load balancer, retry and interceptor
 * layers, a Metadata object and several promises per call) cost ~175 µs of CPU per call here against
 * ~60 µs for the same call written directly on node:http2 (same grpc-js server, 64 calls in flight,
 * bench notes in docs/ARCHITECTURE.md). DogFS's callers make one unary call at a time to an address they
 * already know, so none of those layers does work for them. The bytes on the wire are plain gRPC
 * (HTTP/2, length-prefixed messages, grpc-status trailers): it calls stock gRPC servers (etcd in the
 * benches, grpc-js in test/wire/rpc.test.ts) as well as DogFS's own (wire/grpc-server.ts).
 *
 * What it does: one HTTP/2 session per address, opened on first use and replaced when it closes or
 * fails; every call carries `grpc-timeout` and is cut locally at its deadline (RST_STREAM CANCEL, which
 * the server sees as a cancellation); an AbortSignal cancels; responses larger than the limit are cut and
 * refused; statuses come back as DogfsErrors (the server's `dogfs-code` trailer when present, otherwise
 * the gRPC status). A call that hits its deadline pings the session (one probe at a time per session): a
 * peer that does not answer the ping promptly gets the session dropped, so a vanished host is not waited
 * on call after call; TCP keepalive covers idle sessions. A session whose stream ids run out (2^31 calls)
 * is replaced. Deadlines beyond what a timer holds (~24.8 days) are cut to that.
 */
import http2 from 'node:http2';
import type { Socket } from 'node:net';
import { fromSourceAddress } from '../common/address.js';
import { DogfsError, type ErrorCode, isErrorCode } from './errors.js';

const {
  HTTP2_HEADER_METHOD,
  HTTP2_HEADER_PATH,
  HTTP2_HEADER_CONTENT_TYPE,
  HTTP2_HEADER_TE,
  HTTP2_HEADER_STATUS,
  NGHTTP2_CANCEL,
  NGHTTP2_REFUSED_STREAM,
  NGHTTP2_ENHANCE_YOUR_CALM,
} = http2.constants;

/** Trailers that carry DogFS's exact error code and a NOT_LEADER hint beside the gRPC status. */
export const CODE_KEY = 'dogfs-code';
export const LEADER_KEY = 'dogfs-leader';
/** The gRPC message prefix: 1 byte "compressed" flag + 4 bytes big-endian length. */
export const PREFIX_BYTES = 5;

/** The prefix of an uncompressed gRPC message of `length` bytes. */
export function messagePrefix(length: number): Buffer {
  const prefix = Buffer.allocUnsafe(PREFIX_BYTES);
  prefix[0] = 0;
  prefix.writeUInt32BE(length, 1);
  return prefix;
}

/** Requests and answers up to this size go as one buffer (prefix + copy); larger ones in two writes, uncopied. */
const COPY_BELOW_BYTES = 16 * 1024;

/**
 * Ends an HTTP/2 stream with one length-prefixed gRPC message: a small one copied behind its prefix (one
 * stream write costs less than two), a large one in two writes (it is not copied).
 */
export function endWithMessage(
  stream: { write(chunk: Uint8Array): unknown; end(chunk: Uint8Array): unknown },
  message: Uint8Array,
): void {
  if (message.byteLength <= COPY_BELOW_BYTES) {
    const framed = Buffer.allocUnsafe(PREFIX_BYTES + message.byteLength);
    framed.set(messagePrefix(message.byteLength), 0);
    framed.set(message, PREFIX_BYTES);
    stream.end(framed);
  } else {
    stream.write(messagePrefix(message.byteLength));
    stream.end(message);
  }
}
/** How long a connection may leave a ping unanswered after a call timed out before it is dropped. */
export const PING_TIMEOUT_MS = 2000;
/** Idle time before TCP keepalive probes start, on both ends of a connection. */
export const KEEPALIVE_MS = 30_000;
/** The longest a call may wait: what a timer can hold (2^31-1 ms, about 24.8 days). */
const MAX_CALL_MS = 2 ** 31 - 1;
/** grpc-timeout allows at most 8 digits per unit. */
const MAX_TIMEOUT_DIGITS = 99_999_999;

/** gRPC status codes (https://grpc.github.io/grpc/core/md_doc_statuscodes.html), numbers on the wire. */
export const GrpcStatus = {
  OK: 0,
  CANCELLED: 1,
  UNKNOWN: 2,
  INVALID_ARGUMENT: 3,
  DEADLINE_EXCEEDED: 4,
  NOT_FOUND: 5,
  ALREADY_EXISTS: 6,
  PERMISSION_DENIED: 7,
  RESOURCE_EXHAUSTED: 8,
  FAILED_PRECONDITION: 9,
  ABORTED: 10,
  OUT_OF_RANGE: 11,
  UNIMPLEMENTED: 12,
  INTERNAL: 13,
  UNAVAILABLE: 14,
  DATA_LOSS: 15,
  UNAUTHENTICATED: 16,
} as const;

/** For statuses made by gRPC itself, without a dogfs-code trailer: connection refused, too large, ... */
export function codeOfGrpcStatus(status: number): ErrorCode {
  switch (status) {
    case GrpcStatus.INVALID_ARGUMENT:
      return 'INVALID_ARGUMENT';
    case GrpcStatus.NOT_FOUND:
      return 'NOT_FOUND';
    case GrpcStatus.ALREADY_EXISTS:
      return 'ALREADY_EXISTS';
    case GrpcStatus.DEADLINE_EXCEEDED:
      return 'DEADLINE_EXCEEDED';
    case GrpcStatus.CANCELLED:
      return 'CANCELLED';
    case GrpcStatus.RESOURCE_EXHAUSTED:
      return 'RESOURCE_EXHAUSTED';
    case GrpcStatus.UNIMPLEMENTED:
      return 'UNIMPLEMENTED';
    case GrpcStatus.UNAVAILABLE:
      return 'UNAVAILABLE';
    case GrpcStatus.DATA_LOSS:
      return 'CORRUPT';
    case GrpcStatus.PERMISSION_DENIED:
      return 'PERMISSION_DENIED';
    case GrpcStatus.FAILED_PRECONDITION:
      return 'FAILED_PRECONDITION';
    default:
      return 'INTERNAL';
  }
}

/** A response without gRPC status: the HTTP status as the gRPC spec maps it. */
function codeOfHttpStatus(httpStatus: number): ErrorCode {
  switch (httpStatus) {
    case 401:
    case 403:
      return 'PERMISSION_DENIED';
    case 404:
      return 'UNIMPLEMENTED';
    case 429:
    case 502:
    case 503:
    case 504:
      return 'UNAVAILABLE';
    default:
      return 'INTERNAL';
  }
}

/** A stream the server reset without a status (the connection itself still up). */
function codeOfReset(rstCode: number | undefined): ErrorCode {
  switch (rstCode) {
    case NGHTTP2_REFUSED_STREAM:
      return 'UNAVAILABLE';
    case NGHTTP2_ENHANCE_YOUR_CALM:
      return 'RESOURCE_EXHAUSTED';
    case NGHTTP2_CANCEL:
      return 'CANCELLED';
    default:
      return 'INTERNAL';
  }
}

/** `grpc-timeout` for `ms` milliseconds: the unit is chosen so the value fits in 8 digits. */
export function grpcTimeout(ms: number): string {
  const whole = Math.max(1, Math.ceil(ms));
  if (whole <= MAX_TIMEOUT_DIGITS) return `${whole}m`;
  return `${Math.min(MAX_TIMEOUT_DIGITS, Math.ceil(whole / 1000))}S`;
}

function headerString(value: string | string[] | number | undefined): string | undefined {
  if (Array.isArray(value)) return value[0];
  return value === undefined ? undefined : String(value);
}

/** grpc-message and dogfs-leader are percent-encoded; a malformed one is shown as sent rather than lost. */
function decodeGrpcMessage(raw: string | undefined): string {
  if (raw === undefined) return '';
  try {
    return decodeURIComponent(raw);
  } catch {
    return raw;
  }
}

export interface UnaryOptions {
  /** Absolute deadline, ms since the epoch. */
  readonly deadline: number;
  readonly signal?: AbortSignal | undefined;
  /** Largest request or response message accepted, in bytes. */
  readonly maxMessageBytes: number;
  /** For error messages: what was called (e.g. "Create"). */
  readonly label: string;
}

/**
 * What every unary call checks before it goes out, on either transport: the request's size, a signal
 * already aborted, a deadline already past. Gives the call's label for errors and the milliseconds it
 * may run (at most what a timer holds: no DogFS server lets a call run anywhere near that long anyway).
 */
export function checkCall(
  address: string,
  message: Uint8Array,
  options: UnaryOptions,
): { where: string; remaining: number } | DogfsError {
  const where = `${address} ${options.label}`;
  if (message.byteLength > options.maxMessageBytes) {
    return new DogfsError(
      'TOO_LARGE',
      `${where}: request of ${message.byteLength} bytes exceeds the ${options.maxMessageBytes}-byte limit`,
    );
  }
  if (options.signal?.aborted) return new DogfsError('CANCELLED', `${where}: cancelled`);
  const remaining = Math.min(options.deadline - Date.now(), MAX_CALL_MS);
  if (!(remaining > 0)) return new DogfsError('DEADLINE_EXCEEDED', `${where}: deadline exceeded`);
  return { where, remaining };
}

/** A lazily opened HTTP/2 session to one gRPC server; reopened after it closes. */
export class GrpcConnection {
  private session: http2.ClientHttp2Session | undefined;
  private readonly probing = new WeakSet<http2.ClientHttp2Session>();
  private closed = false;

  constructor(readonly address: string) {}

  private current(): http2.ClientHttp2Session {
    if (this.closed) throw new DogfsError('CANCELLED', `${this.address}: channel closed`);
    const existing = this.session;
    if (existing !== undefined && !existing.closed && !existing.destroyed) return existing;
    const session = http2.connect(
      `http://${this.address}`,
      fromSourceAddress({
        // Responses of up to 16 MiB may be in flight on several streams at once.
        maxSessionMemory: 256,
      }),
    );
    // TCP keepalive finds a vanished host under an idle session (grpc-js pinged every 30 s for this).
    session.on('connect', (_session: http2.ClientHttp2Session, socket: Socket) =>
      socket.setKeepAlive(true, KEEPALIVE_MS),
    );
    // Failures surface on the calls themselves (their streams error and close); the session only goes.
    session.on('error', () => this.forget(session));
    session.on('close', () => this.forget(session));
    session.on('goaway', () => this.forget(session));
    // Open sessions do not keep a process alive; a call in flight does, through its deadline timer.
    session.unref();
    this.session = session;
    return session;
  }

  private forget(session: http2.ClientHttp2Session): void {
    if (this.session === session) this.session = undefined;
  }

  /**
   * After a call timed out: drop the session unless the peer answers a ping promptly. One probe per
   * session at a time, so many calls timing out together (a stalled leader) cost one ping, not one each
   * (HTTP/2 peers limit outstanding pings, and Node refuses more than 10).
   */
  private probe(session: http2.ClientHttp2Session): void {
    if (session.closed || session.destroyed || this.probing.has(session)) return;
    this.probing.add(session);
    const timer = setTimeout(() => session.destroy(), PING_TIMEOUT_MS);
    timer.unref();
    const done = (alive: boolean): void => {
      clearTimeout(timer);
      this.probing.delete(session);
      if (!alive) session.destroy();
    };
    try {
      // false: too many pings already outstanding — that proves nothing about the peer; leave it.
      if (!session.ping((error) => done(error === null))) done(true);
    } catch {
      // ping() throws before the session is connected: a peer that never completed the handshake.
      done(false);
    }
  }

  /** One unary call: `message` is the encoded request; resolves with the encoded response. */
  unary(path: string, message: Uint8Array, options: UnaryOptions): Promise<Buffer> {
    const checked = checkCall(this.address, message, options);
    if (checked instanceof DogfsError) return Promise.reject(checked);
    const { where, remaining } = checked;
    let session: http2.ClientHttp2Session;
    let stream: http2.ClientHttp2Stream;
    try {
      session = this.current();
      stream = session.request({
        [HTTP2_HEADER_METHOD]: 'POST',
        [HTTP2_HEADER_PATH]: path,
        [HTTP2_HEADER_CONTENT_TYPE]: 'application/grpc',
        [HTTP2_HEADER_TE]: 'trailers',
        'grpc-timeout': grpcTimeout(remaining),
      });
    } catch (error) {
      return Promise.reject(
        error instanceof DogfsError
          ? error
          : new DogfsError('UNAVAILABLE', `${where}: ${(error as Error).message}`, { cause: error }),
      );
    }
    return new Promise<Buffer>((resolve, reject) => {
      const chunks: Buffer[] = [];
      let received = 0;
      let settled = false;
      /** A transport failure seen on the stream; the outcome is decided when it closes. */
      let streamError: DogfsError | undefined;
      let status: http2.IncomingHttpHeaders | undefined;
      let httpStatus: number | undefined;

      const finish = (outcome: Buffer | DogfsError): void => {
        if (settled) return;
        settled = true;
        clearTimeout(timer);
        options.signal?.removeEventListener('abort', onAbort);
        if (outcome instanceof DogfsError) reject(outcome);
        else resolve(outcome);
      };
      /** Ends the call now with `error`, whatever the stream is doing (even still waiting to connect). */
      const cut = (error: DogfsError): void => {
        if (settled) return;
        finish(error);
        if (stream.pending) stream.destroy();
        else stream.close(NGHTTP2_CANCEL);
      };
      const timer = setTimeout(() => {
        cut(new DogfsError('DEADLINE_EXCEEDED', `${where}: deadline exceeded`));
        this.probe(session);
      }, remaining);
      const onAbort = (): void => cut(new DogfsError('CANCELLED', `${where}: cancelled`));
      options.signal?.addEventListener('abort', onAbort, { once: true });

      stream.on('response', (headers) => {
        httpStatus = Number(headers[HTTP2_HEADER_STATUS]);
        // Trailers-only responses (errors) carry grpc-status in the headers.
        if (headers['grpc-status'] !== undefined) status = headers;
      });
      stream.on('trailers', (trailers) => {
        status = trailers;
      });
      stream.on('data', (chunk: Buffer) => {
        if (settled) return;
        received += chunk.byteLength;
        if (received > options.maxMessageBytes + PREFIX_BYTES) {
          chunks.length = 0;
          cut(
            new DogfsError(
              'TOO_LARGE',
              `${where}: response exceeds the ${options.maxMessageBytes}-byte limit`,
            ),
          );
          return;
        }
        chunks.push(chunk);
      });
      stream.on('error', (error: NodeJS.ErrnoException) => {
        // Stream ids run out after 2^31 calls on one connection: the next call needs a new one.
        if (error.code === 'ERR_HTTP2_OUT_OF_STREAMS') {
          this.forget(session);
          session.close();
        }
        streamError ??= new DogfsError('UNAVAILABLE', `${where}: ${error.message}`, { cause: error });
      });
      stream.on('close', () => {
        if (settled) return;
        if (status === undefined && streamError !== undefined) finish(streamError);
        else finish(this.outcome(where, status, httpStatus, stream.rstCode, session, chunks, received));
      });
      endWithMessage(stream, message);
    });
  }

  /** The response message, or the error the server (or a broken response) gave. */
  private outcome(
    where: string,
    status: http2.IncomingHttpHeaders | undefined,
    httpStatus: number | undefined,
    rstCode: number | undefined,
    session: http2.ClientHttp2Session,
    chunks: Buffer[],
    received: number,
  ): Buffer | DogfsError {
    if (status === undefined) {
      if (httpStatus !== undefined && httpStatus !== 200) {
        return new DogfsError(codeOfHttpStatus(httpStatus), `${where}: HTTP status ${httpStatus}`);
      }
      if (session.destroyed || session.closed) {
        return new DogfsError('UNAVAILABLE', `${where}: connection lost before the answer`);
      }
      return new DogfsError(
        codeOfReset(rstCode),
        `${where}: the stream ended without a gRPC status (RST_STREAM ${rstCode ?? 'none'})`,
      );
    }
    const grpcStatus = Number(headerString(status['grpc-status']));
    if (grpcStatus !== GrpcStatus.OK) {
      const sent = headerString(status[CODE_KEY]);
      // Percent-encoded by the server as grpc-message is (an IPv6 zone's '%', anything not ASCII).
      const leader = decodeGrpcMessage(headerString(status[LEADER_KEY]));
      const message = decodeGrpcMessage(headerString(status['grpc-message']));
      const code = sent !== undefined && isErrorCode(sent) ? sent : codeOfGrpcStatus(grpcStatus);
      // Server-sent errors carry their own message; others get the address so they make sense alone.
      return new DogfsError(code, sent !== undefined ? message : `${where}: ${message}`, {
        leaderHint: leader !== undefined && leader !== '' ? leader : undefined,
      });
    }
    const body = chunks.length === 1 ? chunks[0]! : Buffer.concat(chunks, received);
    if (body.byteLength < PREFIX_BYTES)
      return new DogfsError('INTERNAL', `${where}: response without a message`);
    if (body[0] !== 0) return new DogfsError('INTERNAL', `${where}: compressed response (not negotiated)`);
    const length = body.readUInt32BE(1);
    if (length !== body.byteLength - PREFIX_BYTES) {
      return new DogfsError('INTERNAL', `${where}: response of ${body.byteLength} bytes frames ${length}`);
    }
    return body.subarray(PREFIX_BYTES);
  }

  close(): void {
    this.closed = true;
    this.session?.close();
    this.session = undefined;
  }
}
