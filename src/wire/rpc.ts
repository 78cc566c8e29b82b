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
import { DogfsError, isRetryable, toDogfsError } from './errors.js';
import type { MethodDescriptor, ServiceDescriptor } from './gen/types.js';
import { GrpcConnection } from './grpc-client.js';
import { GrpcServer, type UnaryCall } from './grpc-server.js';
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
  /** Called for handler failures that are not DogfsErrors (bugs): they still reach the caller as INTERNAL. */
  onInternalError?: (method: string, error: unknown) => void;
}

/** Serves typed unary handlers over gRPC (the lean HTTP/2 server of wire/grpc-server.ts). */
export class RpcServer {
  private readonly server: GrpcServer;
  private readonly onInternalError: (method: string, error: unknown) => void;

  constructor(options: RpcServerOptions = {}) {
    this.onInternalError = options.onInternalError ?? (() => {});
    const maxMessageBytes = options.maxMessageBytes ?? DEFAULT_MAX_MESSAGE_BYTES;
    this.server = new GrpcServer({
      maxMessageBytes,
      // Room for 16 largest messages at once; far more small ones.
      maxBufferedBytes: 16 * maxMessageBytes,
      maxCallMs: MAX_SERVER_CALL_MS,
    });
  }

  addService<M>(service: ServiceDescriptor<M>, handlers: ServiceHandlers<M>): void {
    for (const name of Object.keys(service.methods) as (keyof M & string)[]) {
      const method: MethodDescriptor = service.methods[name];
      const handler = handlers[name] as Handler<unknown, unknown>;
      const path = `/${service.name}/${name}`;
      this.server.handle(path, (call) =>
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
    const context: CallContext = {
      deadline,
      get signal() {
        if (abort === undefined) {
          const controller = new AbortController();
          abort = controller;
          timer = setTimeout(
            () => controller.abort(new DogfsError('DEADLINE_EXCEEDED', `${path}: deadline exceeded`)),
            Math.max(0, deadline - Date.now()),
          );
          call.onCancel(() =>
            controller.abort(new DogfsError('CANCELLED', `${path}: cancelled by the caller`)),
          );
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
      if (timer !== undefined) clearTimeout(timer);
    }
  }

  /** Binds host:port (port 0 picks a free one) and returns the port actually bound. */
  listen(host: string, port: number): Promise<number> {
    return this.server.listen(host, port);
  }

  /** Stops accepting calls, lets running ones finish for up to graceMs, then cuts them. */
  close(graceMs = 2000): Promise<void> {
    return this.server.close(graceMs);
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

/**
 * A connection to one server address. Cheap to keep; reconnects by itself. Calls go through the lean
 * gRPC client of wire/grpc-client.ts (HTTP/2 directly).
 */
export class RpcChannel {
  readonly address: string;
  private readonly connection: GrpcConnection;
  private readonly maxMessageBytes: number;

  constructor(address: string, options: RpcChannelOptions = {}) {
    this.address = address;
    this.connection = new GrpcConnection(address);
    this.maxMessageBytes = options.maxMessageBytes ?? DEFAULT_MAX_MESSAGE_BYTES;
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
