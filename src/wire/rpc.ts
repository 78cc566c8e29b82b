/**
 * wire/rpc — the one RPC layer: typed unary calls over the services generated from proto/, with a
 * deadline on every call, errors as DogfsError codes, explicit message-size limits, and retries (with
 * backoff and jitter) only for methods marked idempotent in proto/.
 *
 * The transport is gRPC, so any language can talk to DogFS from proto/. Both ends are lean unary-only
 * gRPC written on node:http2 (wire/grpc-client.ts, wire/grpc-server.ts): @grpc/grpc-js cost two to three
 * times the CPU per call, and a metadata leader's throughput is mostly that cost.
 * Handlers and callers see only decoded messages and DogfsErrors, never gRPC types, so a leaner
 * transport for hot internal paths can be added behind the same `RpcServer`/`RpcChannel` surface
 * (DESIGN section 5).
 */
import { createServer, type Server, type Socket } from 'node:net';
import { assert } from '../common/assert.js';
import { type Logger, ThrottledWarning } from '../common/log.js';
import { DogfsError, isRetryable, toDogfsError } from './errors.js';
import type { MethodDescriptor, ServiceDescriptor } from './gen/types.js';
import { GrpcConnection } from './grpc-client.js';
import { DEFAULT_MAX_ARRIVING_STREAMS, GrpcServer, type UnaryCall } from './grpc-server.js';
import { DEFAULT_MAX_RUNNING_HANDLERS, HandlerSlots } from './handler-slots.js';
import { LEAN_FIRST_BYTE } from './lean.js';
import { LeanConnection } from './lean-client.js';
import { FRAME_ASSEMBLY_TIMEOUT_MS, LeanServer } from './lean-server.js';
import { decodeMessage, encodeMessage, type Init, type MessageName } from './proto.js';

/** Largest message either side accepts (snapshot chunks and block reports are paged below this). */
export const DEFAULT_MAX_MESSAGE_BYTES = 16 * 1024 * 1024;
/** Deadline applied when a caller gives none: no call waits forever. */
export const DEFAULT_TIMEOUT_MS = 10_000;
/** Upper bound a server accepts for how long a call may run, whatever deadline the caller sent. */
export const MAX_SERVER_CALL_MS = 5 * 60_000;

export type RequestOf<M, K extends keyof M> = M[K] extends { request: infer Q } ? Q : never;
export type ResponseOf<M, K extends keyof M> = M[K] extends { response: infer R } ? R : never;

export interface CallContext {
  /** Absolute deadline, ms since the epoch. */
  readonly deadline: number;
  /** Aborted when the caller cancels or the deadline passes. */
  readonly signal: AbortSignal;
  readonly peer: string;
}

export type Handler<Q, R> = (request: Q, context: CallContext) => Promise<Init<R>> | Init<R>;
export type ServiceHandlers<M> = { [K in keyof M]: Handler<RequestOf<M, K>, ResponseOf<M, K>> };

export interface RpcServerOptions {
  maxMessageBytes?: number;
  /** Lean connections whose answers wait unsent this long with none taken are dropped (default 30 s). */
  unsentStallMs?: number;
  /**
   * A request arriving in pieces must be whole within this (60 s): a lean one from its head, or its
   * connection is cut; a gRPC one from its headers, or its stream is refused.
   */
  frameAssemblyMs?: number;
  /**
   * Handlers running at once on the whole server, both transports and every connection together,
   * cancelled calls whose handlers have not returned included; past it calls are refused with
   * RESOURCE_EXHAUSTED (default DEFAULT_MAX_RUNNING_HANDLERS).
   */
  maxRunningHandlers?: number;
  /** Called for handler failures that are not DogfsErrors (bugs): they still reach the caller as INTERNAL. */
  onInternalError?: (method: string, error: unknown) => void;
  /**
   * Connections open at once, both transports (default DEFAULT_MAX_CONNECTIONS). Past it a new one
   * takes the place of the oldest that has begun no request, or is closed if every one has.
   */
  maxConnections?: number;
  /** A connection that has begun no request this long after it was accepted is closed (20 s). */
  firstRequestMs?: number;
  /**
   * gRPC requests arriving at once on the whole server, from their headers until their bodies end
   * (default DEFAULT_MAX_ARRIVING_STREAMS); past it calls are refused with RESOURCE_EXHAUSTED. A lean
   * connection assembles one request at a time, so maxConnections bounds those.
   */
  maxArrivingStreams?: number;
  /** Where connections closed for the limits above are told, at most once per 10 s for each kind. */
  log?: Logger;
}

/**
 * Connections one server keeps open unless told otherwise: far more than a cluster's own (clients,
 * peers, chunk servers, a connection or two each), far below the descriptors a process may hold, so a
 * crowd of connections cannot leave a server unable to open its own files.
 */
export const DEFAULT_MAX_CONNECTIONS = 4096;
/** How long an accepted connection may take to send its first byte (which says gRPC or lean). */
const FIRST_BYTE_TIMEOUT_MS = 10_000;
/**
 * How long an accepted connection may take to begin its first request. DogFS's clients open a
 * connection for a call and send it at once; without this a connection that sent only the lean magic
 * or the HTTP/2 preface was kept as long as an idle one that has served calls (10 minutes).
 */
export const FIRST_REQUEST_TIMEOUT_MS = 20_000;

/** Connections an RpcServer closed to keep its limits; monotonically increasing. */
export interface RpcServerStats {
  /** Closed on arrival: maxConnections were open and every one had begun a request. */
  connectionsRefused: number;
  /** Closed to make room for a new one: the oldest that had begun no request. */
  connectionsReplaced: number;
  /** Closed for beginning no request within firstRequestMs. */
  connectionsSilent: number;
}

/**
 * Serves typed unary handlers on one port, over both transports: gRPC (wire/grpc-server.ts) for any
 * client, and the lean framing (wire/lean-server.ts) DogFS's own processes use. A connection's first
 * byte tells which: HTTP/2 starts with "PRI", a lean connection with LEAN_MAGIC. Connections are
 * bounded here, for both transports: at most maxConnections open (see makeRoom), each closed if it has
 * not sent its first byte within 10 s or begun a request within firstRequestMs.
 */
export class RpcServer {
  private readonly grpc: GrpcServer;
  private readonly lean: LeanServer;
  private readonly listener: Server;
  private readonly sockets = new Set<Socket>();
  /** Connections whose first byte has not arrived yet. */
  private readonly deciding = new Set<Socket>();
  /**
   * Connections that have begun no request yet, oldest first (a Map keeps insertion order), each with
   * the timer that closes it at firstRequestMs.
   */
  private readonly unstarted = new Map<Socket, NodeJS.Timeout>();
  private readonly maxConnections: number;
  private readonly firstRequestMs: number;
  readonly stats: RpcServerStats = { connectionsRefused: 0, connectionsReplaced: 0, connectionsSilent: 0 };
  private readonly refusedWarning: ThrottledWarning | undefined;
  private readonly replacedWarning: ThrottledWarning | undefined;
  private readonly silentWarning: ThrottledWarning | undefined;
  private readonly onInternalError: (method: string, error: unknown) => void;
  /** Running handlers of both transports, against one server-wide limit. */
  private readonly slots: HandlerSlots;
  /** Set once the server stops accepting; resolves when every connection has ended. */
  private listenerClosed: Promise<void> | undefined;

  constructor(options: RpcServerOptions = {}) {
    this.onInternalError = options.onInternalError ?? (() => {});
    this.maxConnections = options.maxConnections ?? DEFAULT_MAX_CONNECTIONS;
    assert(
      Number.isSafeInteger(this.maxConnections) && this.maxConnections >= 1,
      `maxConnections must be 1 or more, not ${this.maxConnections}`,
    );
    this.firstRequestMs = options.firstRequestMs ?? FIRST_REQUEST_TIMEOUT_MS;
    const log = options.log;
    this.refusedWarning = log && new ThrottledWarning(log, 'RPC connection refused: too many open');
    this.replacedWarning =
      log && new ThrottledWarning(log, 'RPC connection closed for a new one: too many open');
    this.silentWarning = log && new ThrottledWarning(log, 'RPC connection closed: no request began in time');
    const maxMessageBytes = options.maxMessageBytes ?? DEFAULT_MAX_MESSAGE_BYTES;
    const limits = {
      maxMessageBytes,
      // Room for 16 largest messages at once; far more small ones.
      maxBufferedBytes: 16 * maxMessageBytes,
      maxCallMs: MAX_SERVER_CALL_MS,
      unsentStallMs: options.unsentStallMs,
      frameAssemblyMs: options.frameAssemblyMs ?? FRAME_ASSEMBLY_TIMEOUT_MS,
      maxArrivingStreams: options.maxArrivingStreams ?? DEFAULT_MAX_ARRIVING_STREAMS,
    };
    this.slots = new HandlerSlots(options.maxRunningHandlers ?? DEFAULT_MAX_RUNNING_HANDLERS);
    this.grpc = new GrpcServer(limits, { held: 0 }, this.slots);
    this.lean = new LeanServer(limits, this.grpc.handlers, this.grpc.requestBytes, this.slots);
    this.listener = createServer((socket) => this.sniff(socket));
  }

  /**
   * Makes room for a new connection at maxConnections: closes the oldest connection that has begun no
   * request, or, if every one has, the new one. Refusing every new connection at the limit would let
   * whoever holds that many idle connections lock out every client, for as long as it reconnects; and
   * connections that have begun requests are the clients being served, so none of them is closed for
   * room. A connection that has begun nothing for longest is the least likely to be a client: DogFS's
   * clients send their first request as they connect, so a new client loses its place only if more
   * than maxConnections others arrive before its first request does.
   */
  private makeRoom(incoming: Socket): boolean {
    if (this.sockets.size < this.maxConnections) return true;
    const oldest = this.unstarted.keys().next();
    if (oldest.done === true) {
      incoming.destroy();
      this.stats.connectionsRefused++;
      this.refusedWarning?.warn({
        peer: incoming.remoteAddress,
        maxConnections: this.maxConnections,
        refused: this.stats.connectionsRefused,
      });
      return false;
    }
    const replaced = oldest.value;
    this.forget(replaced);
    replaced.destroy();
    this.stats.connectionsReplaced++;
    this.replacedWarning?.warn({
      peer: replaced.remoteAddress,
      maxConnections: this.maxConnections,
      replaced: this.stats.connectionsReplaced,
    });
    return true;
  }

  /** Takes a connection out of every count (at once, rather than on its 'close', when closed for room). */
  private forget(socket: Socket): void {
    this.sockets.delete(socket);
    this.deciding.delete(socket);
    this.begun(socket);
  }

  /** The connection began a request: it no longer gives way to new ones, nor is closed as silent. */
  private begun(socket: Socket): void {
    const timer = this.unstarted.get(socket);
    if (timer === undefined) return;
    clearTimeout(timer);
    this.unstarted.delete(socket);
  }

  /** Reads a new connection's first byte and hands the connection to the transport it speaks. */
  private sniff(socket: Socket): void {
    if (!this.makeRoom(socket)) return;
    this.sockets.add(socket);
    this.deciding.add(socket);
    this.unstarted.set(
      socket,
      setTimeout(() => {
        this.forget(socket);
        socket.destroy();
        this.stats.connectionsSilent++;
        this.silentWarning?.warn({
          peer: socket.remoteAddress,
          firstRequestMs: this.firstRequestMs,
          silent: this.stats.connectionsSilent,
        });
      }, this.firstRequestMs),
    );
    socket.once('close', () => this.forget(socket));
    const onError = (): void => {
      // 'close' follows; a client that resets before its first byte is nobody's business.
    };
    socket.on('error', onError);
    const silent = (): void => {
      socket.destroy();
    };
    socket.setTimeout(FIRST_BYTE_TIMEOUT_MS, silent);
    socket.once('data', (head: Buffer) => {
      socket.pause();
      // The transport sets its own idle timeout; this one must not fire for it.
      socket.setTimeout(0);
      socket.off('timeout', silent);
      this.deciding.delete(socket);
      socket.off('error', onError);
      const begun = (): void => this.begun(socket);
      if (head[0] === LEAN_FIRST_BYTE) {
        this.lean.accept(socket, head, begun);
      } else {
        socket.unshift(head);
        this.grpc.accept(socket, begun);
      }
    });
  }

  addService<M>(service: ServiceDescriptor<M>, handlers: ServiceHandlers<M>): void {
    for (const name of Object.keys(service.methods) as (keyof M & string)[]) {
      const method: MethodDescriptor = service.methods[name];
      const handler = handlers[name] as Handler<unknown, unknown>;
      const path = `/${service.name}/${name}`;
      this.grpc.handle(path, (call) =>
        this.serve(path, method, handler, call).catch((error: unknown) => {
          if (!(error instanceof DogfsError)) this.onInternalError(path, error);
          throw error;
        }),
      );
    }
  }

  private async serve(
    path: string,
    method: MethodDescriptor,
    handler: Handler<unknown, unknown>,
    call: UnaryCall,
  ): Promise<Uint8Array> {
    let request: unknown;
    try {
      // Decoded here rather than by the transport, so malformed input becomes INVALID_ARGUMENT.
      request = decodeMessage(method.requestType as MessageName, call.request);
    } catch (error) {
      throw new DogfsError('INVALID_ARGUMENT', `${path}: malformed request: ${(error as Error).message}`);
    }
    const deadline = Date.now() + call.timeoutMs;
    // The signal (an AbortController, a deadline timer and a cancel listener) is made only for a handler
    // that asks for it: most never do, and on a metadata leader these were a visible share of each call.
    let abort: AbortController | undefined;
    let timer: NodeJS.Timeout | undefined;
    let returned = false;
    const context: CallContext = {
      deadline,
      get signal() {
        if (abort === undefined) {
          const controller = new AbortController();
          abort = controller;
          // Asked for first after the handler returned (by work it left running): the call is over, and
          // a deadline timer made now would be cleared by nothing, kept until the deadline.
          if (!returned) {
            timer = setTimeout(
              () => controller.abort(new DogfsError('DEADLINE_EXCEEDED', `${path}: deadline exceeded`)),
              Math.max(0, deadline - Date.now()),
            );
            call.onCancel(() =>
              controller.abort(new DogfsError('CANCELLED', `${path}: cancelled by the caller`)),
            );
          }
        }
        return abort.signal;
      },
      get peer() {
        return call.peer;
      },
    };
    try {
      const response = await handler(request, context);
      return encodeMessage(method.responseType as MessageName, response as Init<never>);
    } finally {
      returned = true;
      if (timer !== undefined) clearTimeout(timer);
    }
  }

  /** Binds host:port (port 0 picks a free one) and returns the port actually bound. */
  listen(host: string, port: number): Promise<number> {
    return new Promise((resolve, reject) => {
      const onError = (error: NodeJS.ErrnoException) => {
        const reason = error.code === 'EADDRINUSE' ? 'address already in use' : error.message;
        reject(
          new DogfsError('UNAVAILABLE', `cannot listen on ${host}:${port}: ${reason}`, { cause: error }),
        );
      };
      this.listener.once('error', onError);
      this.listener.listen(port, host, () => {
        this.listener.off('error', onError);
        resolve((this.listener.address() as { port: number }).port);
      });
    });
  }

  /**
   * Takes no more connections (the listener closes) and no more calls (GOAWAY on every connection: lean
   * refuses later requests with UNAVAILABLE, server shutting down; HTTP/2 refuses later streams); calls
   * already taken run on. Resolves once every connection has ended. Does its work once.
   */
  private stopAccepting(): Promise<void> {
    if (this.listenerClosed === undefined) {
      // Called once every connection has ended (at once, with an error, if the server never listened).
      this.listenerClosed = new Promise((resolve) => this.listener.close(() => resolve()));
      this.grpc.goAway();
      this.lean.goAway();
      // Connections still deciding which transport they speak have no calls to finish.
      for (const socket of this.deciding) socket.destroy();
    }
    return this.listenerClosed;
  }

  /**
   * The first half of stopping a server, before its process tears down what the handlers use: takes no
   * more connections or calls, then waits up to limitMs for the handlers already running (those of
   * cancelled calls included) to return. After that no handler starts at all (a gRPC request whose
   * headers came before the GOAWAY but whose body came after is refused with UNAVAILABLE), so only a
   * handler that outlived the limit can see the teardown. Resolves with how many still run (0: none).
   */
  async drain(limitMs: number): Promise<number> {
    void this.stopAccepting();
    let timer: NodeJS.Timeout | undefined;
    const limit = new Promise<void>((resolve) => {
      timer = setTimeout(resolve, limitMs);
    });
    await Promise.race([this.slots.idle(), limit]);
    clearTimeout(timer);
    this.slots.close();
    return this.slots.count;
  }

  /** Stops accepting connections and calls, lets running calls finish for up to graceMs, then cuts them. */
  close(graceMs = 2000): Promise<void> {
    const timer = setTimeout(() => {
      for (const socket of this.sockets) socket.destroy();
    }, graceMs);
    return this.stopAccepting().then(() => clearTimeout(timer));
  }
}

export interface CallOptions {
  /** Relative timeout; ignored when `deadline` is given. */
  timeoutMs?: number;
  /** Absolute deadline, ms since the epoch. */
  deadline?: number;
  signal?: AbortSignal;
}

/**
 * How a channel talks to its server: `lean` (wire/lean.ts) only reaches a DogFS server; `grpc` reaches
 * any gRPC server (etcd in the benches) and DogFS's too.
 */
export type RpcTransport = 'lean' | 'grpc';

/** The transport a channel uses unless told: DOGFS_RPC_TRANSPORT (`lean` or `grpc`), else lean. */
export function defaultTransport(): RpcTransport {
  const chosen = process.env['DOGFS_RPC_TRANSPORT'];
  if (chosen === undefined || chosen === '' || chosen === 'lean') return 'lean';
  if (chosen === 'grpc') return 'grpc';
  throw new DogfsError(
    'INVALID_ARGUMENT',
    `DOGFS_RPC_TRANSPORT is ${JSON.stringify(chosen)}: use lean or grpc`,
  );
}

export interface RpcChannelOptions {
  maxMessageBytes?: number;
  /** Default: defaultTransport(). */
  transport?: RpcTransport;
}

/**
 * A connection to one server address. Cheap to keep; reconnects by itself. Calls go over the lean
 * framing (wire/lean-client.ts) to DogFS servers, or over gRPC (wire/grpc-client.ts, HTTP/2 directly).
 */
export class RpcChannel {
  readonly address: string;
  readonly transport: RpcTransport;
  private readonly connection: GrpcConnection | LeanConnection;
  private readonly maxMessageBytes: number;

  constructor(address: string, options: RpcChannelOptions = {}) {
    this.address = address;
    this.maxMessageBytes = options.maxMessageBytes ?? DEFAULT_MAX_MESSAGE_BYTES;
    this.transport = options.transport ?? defaultTransport();
    this.connection =
      this.transport === 'lean'
        ? new LeanConnection(address, this.maxMessageBytes)
        : new GrpcConnection(address);
  }

  /** One attempt, no retry. Rejects with a DogfsError. */
  async call<M, K extends keyof M & string>(
    service: ServiceDescriptor<M>,
    method: K,
    request: Init<RequestOf<M, K>>,
    options: CallOptions = {},
  ): Promise<ResponseOf<M, K>> {
    const descriptor = service.methods[method];
    const requestBytes = encodeMessage(descriptor.requestType, request as Init<never>);
    const responseBytes = await this.callRaw(`/${service.name}/${method}`, requestBytes, options, method);
    try {
      return decodeMessage(descriptor.responseType, responseBytes) as ResponseOf<M, K>;
    } catch (decodeError) {
      throw new DogfsError('INTERNAL', `${this.address} ${method}: malformed response`, {
        cause: decodeError,
      });
    }
  }

  /**
   * One attempt of a unary call by path (`/package.Service/Method`) with an already encoded request;
   * resolves with the encoded response. For services DogFS does not generate types for (benchmarks).
   */
  callRaw(path: string, request: Uint8Array, options: CallOptions = {}, label = path): Promise<Buffer> {
    const deadline = options.deadline ?? Date.now() + (options.timeoutMs ?? DEFAULT_TIMEOUT_MS);
    return this.connection.unary(path, request, {
      deadline,
      signal: options.signal,
      maxMessageBytes: this.maxMessageBytes,
      label,
    });
  }

  close(): void {
    this.connection.close();
  }
}

/** One channel per address, made on first use and reused (a process talking to a few known servers). */
export class RpcChannelPool {
  private readonly channels = new Map<string, RpcChannel>();

  /** `maxChannels` bounds the addresses one pool may hold (they come from configuration or peers). */
  constructor(private readonly maxChannels = 1024) {}

  get(address: string): RpcChannel {
    let channel = this.channels.get(address);
    if (channel === undefined) {
      if (this.channels.size >= this.maxChannels)
        throw new DogfsError(
          'RESOURCE_EXHAUSTED',
          `more than ${this.maxChannels} addresses in one channel pool`,
        );
      channel = new RpcChannel(address);
      this.channels.set(address, channel);
    }
    return channel;
  }

  close(): void {
    for (const channel of this.channels.values()) channel.close();
    this.channels.clear();
  }
}

export interface RetryOptions {
  /** Absolute deadline for all attempts together. */
  deadline: number;
  /** Only idempotent calls are retried; anything else gets exactly one attempt. */
  idempotent: boolean;
  maxAttempts?: number;
  baseDelayMs?: number;
  maxDelayMs?: number;
  signal?: AbortSignal;
  /** Uniform [0,1); injectable so tests are deterministic. */
  random?: () => number;
}

/**
 * Runs `attempt` until it succeeds, a non-retryable error occurs, attempts run out or the deadline
 * would pass during the next backoff. Backoff is exponential with full jitter.
 */
export async function withRetry<T>(
  options: RetryOptions,
  attempt: (attemptNumber: number) => Promise<T>,
): Promise<T> {
  const maxAttempts = options.idempotent ? (options.maxAttempts ?? 8) : 1;
  const base = options.baseDelayMs ?? 25;
  const cap = options.maxDelayMs ?? 1000;
  const random = options.random ?? Math.random;
  for (let attemptNumber = 1; ; attemptNumber++) {
    try {
      return await attempt(attemptNumber);
    } catch (error) {
      const dogfsError = toDogfsError(error);
      if (!isRetryable(dogfsError.code) || attemptNumber >= maxAttempts) throw dogfsError;
      const delay = random() * Math.min(cap, base * 2 ** (attemptNumber - 1));
      if (Date.now() + delay >= options.deadline) throw dogfsError;
      if (options.signal?.aborted) throw new DogfsError('CANCELLED', 'cancelled', { cause: dogfsError });
      await new Promise((resolve) => setTimeout(resolve, delay));
    }
  }
}

/** A typed call through `withRetry`, retried only if the method is idempotent. */
export function callWithRetry<M, K extends keyof M & string>(
  channel: RpcChannel,
  service: ServiceDescriptor<M>,
  method: K,
  request: Init<RequestOf<M, K>>,
  options: CallOptions = {},
): Promise<ResponseOf<M, K>> {
  const deadline = options.deadline ?? Date.now() + (options.timeoutMs ?? DEFAULT_TIMEOUT_MS);
  return withRetry({ deadline, idempotent: service.methods[method].idempotent, signal: options.signal }, () =>
    channel.call(service, method, request, { deadline, signal: options.signal }),
  );
}
