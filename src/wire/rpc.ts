/**
 * wire/rpc — the one RPC layer: typed unary calls over the services generated from proto/, with a
 * deadline on every call, errors as DogfsError codes, explicit message-size limits, and retries (with
 * backoff and jitter) only for methods marked idempotent in proto/.
 *
 * The transport here is gRPC (@grpc/grpc-js), so any language can talk to DogFS from proto/. Handlers and
 * callers see only decoded messages and DogfsErrors, never gRPC types, so a leaner transport for hot
 * internal paths can be added behind the same `RpcServer`/`RpcChannel` surface (DESIGN section 5).
 */
import type { Server as NetServer, Socket } from 'node:net';
import * as grpc from '@grpc/grpc-js';
import { DogfsError, type ErrorCode, isErrorCode, isRetryable, toDogfsError } from './errors.js';
import type { MethodDescriptor, ServiceDescriptor } from './gen/types.js';
import { decodeMessage, encodeMessage, type Init, type MessageName } from './proto.js';

/** Largest message either side accepts (snapshot chunks and block reports are paged below this). */
export const DEFAULT_MAX_MESSAGE_BYTES = 16 * 1024 * 1024;
/** Deadline applied when a caller gives none: no call waits forever. */
export const DEFAULT_TIMEOUT_MS = 10_000;
/** Upper bound a server accepts for how long a call may run, whatever deadline the caller sent. */
export const MAX_SERVER_CALL_MS = 5 * 60_000;

// grpc-js prints its own lines to stderr; DogFS reports errors itself, as values with codes.
if (process.env['GRPC_VERBOSITY'] === undefined) grpc.setLogVerbosity(grpc.logVerbosity.NONE);

const CODE_KEY = 'dogfs-code';
const LEADER_KEY = 'dogfs-leader';

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

const GRPC_STATUS_OF: Record<ErrorCode, grpc.status> = {
  INVALID_ARGUMENT: grpc.status.INVALID_ARGUMENT,
  NOT_FOUND: grpc.status.NOT_FOUND,
  ALREADY_EXISTS: grpc.status.ALREADY_EXISTS,
  NOT_A_DIRECTORY: grpc.status.FAILED_PRECONDITION,
  IS_A_DIRECTORY: grpc.status.FAILED_PRECONDITION,
  NOT_EMPTY: grpc.status.FAILED_PRECONDITION,
  FAILED_PRECONDITION: grpc.status.FAILED_PRECONDITION,
  PERMISSION_DENIED: grpc.status.PERMISSION_DENIED,
  NOT_LEADER: grpc.status.FAILED_PRECONDITION,
  NO_QUORUM: grpc.status.UNAVAILABLE,
  UNAVAILABLE: grpc.status.UNAVAILABLE,
  DEADLINE_EXCEEDED: grpc.status.DEADLINE_EXCEEDED,
  CANCELLED: grpc.status.CANCELLED,
  RESOURCE_EXHAUSTED: grpc.status.RESOURCE_EXHAUSTED,
  NO_SPACE: grpc.status.RESOURCE_EXHAUSTED,
  CORRUPT: grpc.status.DATA_LOSS,
  UNIMPLEMENTED: grpc.status.UNIMPLEMENTED,
  INTERNAL: grpc.status.INTERNAL,
};

/** For errors produced by gRPC itself (no dogfs-code trailer): connection refused, too large, ... */
function codeOfGrpcStatus(status: grpc.status): ErrorCode {
  switch (status) {
    case grpc.status.INVALID_ARGUMENT:
      return 'INVALID_ARGUMENT';
    case grpc.status.NOT_FOUND:
      return 'NOT_FOUND';
    case grpc.status.ALREADY_EXISTS:
      return 'ALREADY_EXISTS';
    case grpc.status.DEADLINE_EXCEEDED:
      return 'DEADLINE_EXCEEDED';
    case grpc.status.CANCELLED:
      return 'CANCELLED';
    case grpc.status.RESOURCE_EXHAUSTED:
      return 'RESOURCE_EXHAUSTED';
    case grpc.status.UNIMPLEMENTED:
      return 'UNIMPLEMENTED';
    case grpc.status.UNAVAILABLE:
      return 'UNAVAILABLE';
    case grpc.status.DATA_LOSS:
      return 'CORRUPT';
    case grpc.status.PERMISSION_DENIED:
      return 'PERMISSION_DENIED';
    case grpc.status.FAILED_PRECONDITION:
      return 'FAILED_PRECONDITION';
    default:
      return 'INTERNAL';
  }
}

function channelOptions(maxMessageBytes: number): grpc.ChannelOptions {
  return {
    'grpc.max_receive_message_length': maxMessageBytes,
    'grpc.max_send_message_length': maxMessageBytes,
    // Retries are ours (idempotent methods only); reconnect quickly so failover is not slowed by backoff.
    'grpc.enable_retries': 0,
    'grpc.initial_reconnect_backoff_ms': 100,
    'grpc.max_reconnect_backoff_ms': 1000,
    'grpc.keepalive_time_ms': 30_000,
  };
}

const passThrough = (value: Buffer): Buffer => value;

/** A Buffer view of encoded bytes, without copying them. */
function asBuffer(bytes: Uint8Array): Buffer {
  return Buffer.isBuffer(bytes) ? bytes : Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
}

export interface RpcServerOptions {
  maxMessageBytes?: number;
  /** Called for handler failures that are not DogfsErrors (bugs): they still reach the caller as INTERNAL. */
  onInternalError?: (method: string, error: unknown) => void;
}

export class RpcServer {
  private readonly server: grpc.Server;
  private readonly maxMessageBytes: number;
  private readonly onInternalError: (method: string, error: unknown) => void;

  constructor(options: RpcServerOptions = {}) {
    this.maxMessageBytes = options.maxMessageBytes ?? DEFAULT_MAX_MESSAGE_BYTES;
    this.onInternalError = options.onInternalError ?? (() => {});
    this.server = new grpc.Server(channelOptions(this.maxMessageBytes));
  }

  addService<M>(service: ServiceDescriptor<M>, handlers: ServiceHandlers<M>): void {
    const definition: Record<string, grpc.MethodDefinition<Buffer, Buffer>> = {};
    const implementation: grpc.UntypedServiceImplementation = {};
    for (const name of Object.keys(service.methods) as (keyof M & string)[]) {
      const method: MethodDescriptor = service.methods[name];
      const handler = handlers[name] as Handler<unknown, unknown>;
      const path = `/${service.name}/${name}`;
      definition[name] = {
        path,
        requestStream: false,
        responseStream: false,
        originalName: name,
        // Decoding happens inside the handler wrapper so malformed input becomes INVALID_ARGUMENT.
        requestSerialize: passThrough,
        requestDeserialize: passThrough,
        responseSerialize: passThrough,
        responseDeserialize: passThrough,
      };
      implementation[name] = ((
        call: grpc.ServerUnaryCall<Buffer, Buffer>,
        callback: grpc.sendUnaryData<Buffer>,
      ) => {
        this.serve(path, method, handler, call).then(
          (response) => callback(null, response),
          (error: unknown) => callback(this.toServiceError(path, error)),
        );
      }) as grpc.handleUnaryCall<Buffer, Buffer>;
    }
    this.server.addService(definition, implementation);
  }

  private async serve(
    path: string,
    method: MethodDescriptor,
    handler: Handler<unknown, unknown>,
    call: grpc.ServerUnaryCall<Buffer, Buffer>,
  ): Promise<Buffer> {
    let request: unknown;
    try {
      request = decodeMessage(method.requestType as MessageName, call.request);
    } catch (error) {
      throw new DogfsError('INVALID_ARGUMENT', `${path}: malformed request: ${(error as Error).message}`);
    }
    const callDeadline = call.getDeadline();
    const asked = callDeadline instanceof Date ? callDeadline.getTime() : Number(callDeadline);
    const deadline = Math.min(
      Number.isFinite(asked) ? asked : Number.POSITIVE_INFINITY,
      Date.now() + MAX_SERVER_CALL_MS,
    );
    const abort = new AbortController();
    const timer = setTimeout(
      () => abort.abort(new DogfsError('DEADLINE_EXCEEDED', `${path}: deadline exceeded`)),
      Math.max(0, deadline - Date.now()),
    );
    const onCancel = () => abort.abort(new DogfsError('CANCELLED', `${path}: cancelled by the caller`));
    call.once('cancelled', onCancel);
    try {
      const response = await handler(request, { deadline, signal: abort.signal, peer: call.getPeer() });
      return asBuffer(encodeMessage(method.responseType as MessageName, response as Init<never>));
    } finally {
      clearTimeout(timer);
      call.off('cancelled', onCancel);
    }
  }

  private toServiceError(path: string, error: unknown): Partial<grpc.StatusObject> {
    if (!(error instanceof DogfsError)) this.onInternalError(path, error);
    const dogfsError = toDogfsError(error);
    const metadata = new grpc.Metadata();
    metadata.set(CODE_KEY, dogfsError.code);
    if (dogfsError.leaderHint !== undefined) metadata.set(LEADER_KEY, dogfsError.leaderHint);
    return { code: GRPC_STATUS_OF[dogfsError.code], details: dogfsError.message, metadata };
  }

  /** Binds host:port (port 0 picks a free one) and returns the port actually bound. */
  listen(host: string, port: number): Promise<number> {
    return new Promise((resolve, reject) => {
      this.server.bindAsync(
        `${host}:${port}`,
        grpc.ServerCredentials.createInsecure(),
        (error, boundPort) => {
          if (error) {
            const inUse = /EADDRINUSE|address already in use/i.test(error.message);
            const reason = inUse ? 'address already in use' : error.message;
            reject(
              new DogfsError('UNAVAILABLE', `cannot listen on ${host}:${port}: ${reason}`, { cause: error }),
            );
          } else {
            this.disableNagle();
            resolve(boundPort);
          }
        },
      );
    });
  }

  /**
   * grpc-js sets TCP_NODELAY on client sockets but not on server sockets, so a small response can wait for
   * the peer's delayed ACK (up to 40 ms on Linux) under Nagle's algorithm. Its server keeps the underlying
   * http2 servers in a private map; set NODELAY on each accepted connection (a no-op if that changes).
   */
  private disableNagle(): void {
    const servers = (this.server as unknown as { http2Servers?: Map<unknown, unknown> }).http2Servers;
    if (!(servers instanceof Map)) return;
    for (const candidate of servers.keys()) {
      const server = candidate as { on?: unknown; __dogfsNoDelay?: boolean };
      if (typeof server.on !== 'function' || server.__dogfsNoDelay) continue;
      server.__dogfsNoDelay = true;
      (candidate as NetServer).on('connection', (socket: Socket) => socket.setNoDelay(true));
    }
  }

  /** Stops accepting calls, lets running ones finish for up to graceMs, then cuts them. */
  close(graceMs = 2000): Promise<void> {
    return new Promise((resolve) => {
      const timer = setTimeout(() => {
        this.server.forceShutdown();
        resolve();
      }, graceMs);
      this.server.tryShutdown(() => {
        clearTimeout(timer);
        resolve();
      });
    });
  }
}

export interface CallOptions {
  /** Relative timeout; ignored when `deadline` is given. */
  timeoutMs?: number;
  /** Absolute deadline, ms since the epoch. */
  deadline?: number;
  signal?: AbortSignal;
}

export interface RpcChannelOptions {
  maxMessageBytes?: number;
}

/** A connection to one server address. Cheap to keep; reconnects by itself. */
export class RpcChannel {
  readonly address: string;
  private readonly client: grpc.Client;

  constructor(address: string, options: RpcChannelOptions = {}) {
    this.address = address;
    this.client = new grpc.Client(
      address,
      grpc.credentials.createInsecure(),
      channelOptions(options.maxMessageBytes ?? DEFAULT_MAX_MESSAGE_BYTES),
    );
  }

  /** One attempt, no retry. Rejects with a DogfsError. */
  call<M, K extends keyof M & string>(
    service: ServiceDescriptor<M>,
    method: K,
    request: Init<RequestOf<M, K>>,
    options: CallOptions = {},
  ): Promise<ResponseOf<M, K>> {
    const descriptor = service.methods[method];
    const deadline = options.deadline ?? Date.now() + (options.timeoutMs ?? DEFAULT_TIMEOUT_MS);
    const requestBytes = asBuffer(encodeMessage(descriptor.requestType, request as Init<never>));
    return new Promise((resolve, reject) => {
      if (options.signal?.aborted) {
        reject(new DogfsError('CANCELLED', `${this.address} ${method}: cancelled`));
        return;
      }
      const call = this.client.makeUnaryRequest(
        `/${service.name}/${method}`,
        passThrough,
        passThrough,
        requestBytes,
        new grpc.Metadata(),
        { deadline },
        (error, responseBytes) => {
          options.signal?.removeEventListener('abort', onAbort);
          if (error) {
            reject(this.toDogfsError(method, error));
            return;
          }
          try {
            resolve(decodeMessage(descriptor.responseType, responseBytes as Buffer) as ResponseOf<M, K>);
          } catch (decodeError) {
            reject(
              new DogfsError('INTERNAL', `${this.address} ${method}: malformed response`, {
                cause: decodeError,
              }),
            );
          }
        },
      );
      const onAbort = () => call.cancel();
      options.signal?.addEventListener('abort', onAbort, { once: true });
    });
  }

  private toDogfsError(method: string, error: grpc.ServiceError): DogfsError {
    const sent = error.metadata?.get(CODE_KEY)[0];
    const leader = error.metadata?.get(LEADER_KEY)[0];
    const code = typeof sent === 'string' && isErrorCode(sent) ? sent : codeOfGrpcStatus(error.code);
    // Server-sent errors carry their own message; transport errors get the address so they make sense alone.
    const message = typeof sent === 'string' ? error.details : `${this.address} ${method}: ${error.details}`;
    return new DogfsError(code, message, {
      leaderHint: typeof leader === 'string' && leader !== '' ? leader : undefined,
      cause: error,
    });
  }

  close(): void {
    this.client.close();
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
