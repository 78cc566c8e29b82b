/**
 * wire/handler-slots — the handlers one RpcServer runs at once, counted across every connection of both
 * transports. Each transport also bounds its connections one by one (768 running handlers each), but
 * that bound alone let many connections run many handlers: a thousand clients, or one client opening
 * connections, could start any number. A handler holds its slot from its start until it returns,
 * cancelled and expired calls included, for the reason the per-connection counts do: cancelling a call
 * does not stop its handler.
 */
import { assert } from '../common/assert.js';
import { DogfsError } from './errors.js';

/**
 * Handlers one server runs at once unless told otherwise: sixteen connections each with a full 256
 * calls in flight. DogFS's own clients keep one connection to a server and rarely 64 calls on it, so
 * only a crowd (or a client misbehaving) meets it, and a server is no faster for starting more handlers
 * than it has answers for: it only holds more state.
 */
export const DEFAULT_MAX_RUNNING_HANDLERS = 4096;

/**
 * The cluster's own control calls (chunk servers' heartbeats, registrations and block reports, the Raft
 * port's discovery, health checks) may run in a reserve past the limit: a crowd of clients filling the
 * slots must not make the metadata leader refuse the heartbeats that keep chunk servers alive, or it
 * would declare healthy servers dead and start repairs under the very load that filled it.
 */
const CONTROL_PATHS: ReadonlySet<string> = new Set([
  '/dogfs.v1.Metadata/Heartbeat',
  '/dogfs.v1.Metadata/RegisterChunkServer',
  '/dogfs.v1.Metadata/BlockReport',
  '/dogfs.v1.RaftTransport/Endpoint',
  '/dogfs.v1.Health/Check',
]);
/**
 * Whether `path` is one of the cluster's control calls, which have a reserve past the server's limits
 * on running handlers (here) and on request bytes (wire/grpc-server.ts, requestByteCap).
 */
export function isControlPath(path: string): boolean {
  return CONTROL_PATHS.has(path);
}

/**
 * The reserve: a sixteenth of the limit, at least 16 (every chunk server's one call, for a cluster).
 * Also that of the gRPC requests arriving at once (wire/grpc-server.ts).
 */
export function controlReserve(limit: number): number {
  return Math.max(16, Math.ceil(limit / 16));
}

/** One running handler's place in the count, given back exactly once when its handler returns. */
export class HandlerSlot {
  private held = true;

  constructor(private readonly giveBack: () => void) {}

  release(): void {
    assert(this.held, 'a handler slot was released twice');
    this.held = false;
    this.giveBack();
  }
}

export class HandlerSlots {
  private running = 0;
  /** Set when the server stops for good: no handler starts after (see RpcServer.drain). */
  private closed = false;
  /** Resolves the promise handed out by idle(), once no handler runs; at most one is pending. */
  private wakeIdle: (() => void) | undefined;
  private idlePromise: Promise<void> | undefined;
  /** Made once, so a slot costs one small object and no closure. */
  private readonly giveBack = (): void => {
    this.running--;
    assert(this.running >= 0, 'more handler slots released than taken');
    if (this.running === 0 && this.wakeIdle !== undefined) {
      const wake = this.wakeIdle;
      this.wakeIdle = undefined;
      this.idlePromise = undefined;
      wake();
    }
  };

  private readonly reserve: number;

  constructor(readonly limit: number = DEFAULT_MAX_RUNNING_HANDLERS) {
    assert(Number.isSafeInteger(limit) && limit >= 1, `maxRunningHandlers must be 1 or more, not ${limit}`);
    this.reserve = controlReserve(limit);
  }

  /** Handlers running now (slots taken and not yet released). */
  get count(): number {
    return this.running;
  }

  /**
   * A slot for the handler of `path`, or why there is none: RESOURCE_EXHAUSTED when `limit` handlers
   * run (retryable: the client backs off, as for the per-connection limits), UNAVAILABLE once closed
   * (retryable elsewhere or later: the server is shutting down).
   */
  take(path: string): HandlerSlot | DogfsError {
    if (this.closed) return new DogfsError('UNAVAILABLE', `${path}: server is shutting down`);
    const cap = isControlPath(path) ? this.limit + this.reserve : this.limit;
    if (this.running >= cap) {
      return new DogfsError(
        'RESOURCE_EXHAUSTED',
        `${path}: server busy: ${this.running} handlers already running (cancelled calls included)`,
      );
    }
    this.running++;
    assert(this.running <= this.limit + this.reserve, 'more handlers running than the limit and its reserve');
    return new HandlerSlot(this.giveBack);
  }

  /** From now on every take() is refused with UNAVAILABLE; handlers already running go on. */
  close(): void {
    this.closed = true;
  }

  /** Resolves once no handler runs (at once if none does). */
  idle(): Promise<void> {
    if (this.running === 0) return Promise.resolve();
    this.idlePromise ??= new Promise<void>((resolve) => {
      this.wakeIdle = resolve;
    });
    return this.idlePromise;
  }
}
