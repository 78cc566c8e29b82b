/**
 * wire/lean-server — serves unary calls over the lean framing of wire/lean.ts, beside the gRPC server
 * on the same port (wire/rpc.ts hands it the connections that start with LEAN_MAGIC). Handlers are the
 * ones gRPC calls (`UnaryHandler`), so the two transports cannot answer differently.
 *
 * Limits, all explicit: calls in flight per connection (MAX_CALLS_PER_CONNECTION; more are refused with
 * RESOURCE_EXHAUSTED, which a DogFS client never meets: it queues beyond the same number); the size of
 * a request (read past and refused) and of all requests in flight together; how long a call may run,
 * whatever timeout it carried (a handler still running at its deadline is answered DEADLINE_EXCEEDED);
 * unsent answers per connection (above HIGH_WATER_BYTES the connection's requests are not read until the
 * client has taken its answers: back-pressure, not buffering); idle connections (closed after 10 minutes
 * without a call).
 */
import type { Socket } from 'node:net';
import { DogfsError, toDogfsError } from './errors.js';
import type { UnaryCall, UnaryHandler } from './grpc-server.js';
import {
  decodeRequest,
  encodeEmptyFrame,
  encodeError,
  FrameReader,
  FrameType,
  LEAN_MAGIC,
  MAX_CALLS_PER_CONNECTION,
  maxFrameBytes,
  responseFrame,
  TickBatchedWriter,
} from './lean.js';

/** Unsent answer bytes above which a connection's requests wait until the client reads. */
const HIGH_WATER_BYTES = 8 << 20;
/**
 * Answers already owed still queue while requests wait; past this many unsent bytes (or when nothing
 * is taken for `unsentStallMs` while some wait: 30 s unless the limits say) the client is not reading and
 * its connection is dropped.
 */
const MIN_UNSENT_LIMIT_BYTES = 64 << 20;
const DEFAULT_UNSENT_STALL_MS = 30_000;
/** A connection without a call for this long is closed (GOAWAY, then end); clients simply dial again. */
const IDLE_CONNECTION_MS = 10 * 60_000;
/** How often a connection looks for calls past their deadline (handlers that never answer). */
const DEADLINE_SWEEP_MS = 250;
/** A connection that has not sent its whole magic within this long is dropped. */
const MAGIC_TIMEOUT_MS = 10_000;

export interface LeanServerLimits {
  readonly maxMessageBytes: number;
  readonly maxBufferedBytes: number;
  readonly maxCallMs: number;
  /** How long answers may wait unsent with none taken before the connection is dropped (default 30 s). */
  readonly unsentStallMs?: number;
}

interface ServerCall {
  readonly deadline: number;
  readonly bytes: number;
  cancelListeners: (() => void)[] | undefined;
}

/** Bytes the kernel has taken from a socket (Node's bytesWritten also counts what is still queued). */
function taken(socket: Socket): number {
  return socket.bytesWritten - socket.writableLength;
}

/** One client connection: its calls in flight, its reader, its write batching. */
class LeanServerConnection {
  private readonly calls = new Map<number, ServerCall>();
  private readonly reader: FrameReader;
  private magicSeen = 0;
  /** The highest request id taken (ids only grow on a connection): what a GOAWAY names. */
  private lastCallId = 0;
  private stallTimer: NodeJS.Timeout | undefined;
  private readonly writer: TickBatchedWriter;
  private goingAway = false;
  private sweep: NodeJS.Timeout | undefined;
  private readonly magicTimer: NodeJS.Timeout;

  constructor(
    private readonly server: LeanServer,
    readonly socket: Socket,
  ) {
    const maxFrame = maxFrameBytes(server.limits.maxMessageBytes);
    this.reader = new FrameReader(maxFrame, {
      frame: (type, callId, body) => this.onFrame(type, callId, body),
      oversized: (type, callId, length) => {
        if (type !== FrameType.REQUEST) throw new DogfsError('INVALID_ARGUMENT', 'a client sent a response');
        this.lastCallId = Math.max(this.lastCallId, callId);
        const reason =
          length > maxFrame
            ? `request exceeds the ${server.limits.maxMessageBytes}-byte limit`
            : `server busy: ${server.limits.maxBufferedBytes} bytes of requests already in progress`;
        this.send(encodeError(callId, new DogfsError('RESOURCE_EXHAUSTED', reason)));
      },
      // A request arriving in pieces holds its whole size from its head on: counted like one in flight.
      admit: (_type, _callId, length) => {
        if (server.bufferedBytes + length > server.limits.maxBufferedBytes) return false;
        server.bufferedBytes += length;
        return true;
      },
      released: (length) => {
        server.bufferedBytes -= length;
      },
    });
    this.writer = new TickBatchedWriter(socket);
    this.magicTimer = setTimeout(() => socket.destroy(), MAGIC_TIMEOUT_MS);
    socket.setNoDelay(true);
    socket.on('data', (chunk: Buffer) => this.onData(chunk));
    socket.on('error', () => {
      // 'close' follows; a reset client is an ordinary fault.
    });
    socket.on('close', () => this.onClose());
    // Reading resumes once the answers are taken, going away or not (PINGs, CANCELs and the client's
    // end must still be read).
    socket.on('drain', () => socket.resume());
    socket.setTimeout(IDLE_CONNECTION_MS, () => {
      if (this.calls.size === 0) this.goAway();
    });
  }

  private onData(chunk: Buffer): void {
    let data = chunk;
    if (this.magicSeen < LEAN_MAGIC.byteLength) {
      const take = Math.min(LEAN_MAGIC.byteLength - this.magicSeen, data.byteLength);
      if (!data.subarray(0, take).equals(LEAN_MAGIC.subarray(this.magicSeen, this.magicSeen + take))) {
        this.socket.destroy();
        return;
      }
      this.magicSeen += take;
      data = data.subarray(take);
      if (this.magicSeen === LEAN_MAGIC.byteLength) clearTimeout(this.magicTimer);
      if (data.byteLength === 0) return;
    }
    try {
      this.reader.push(data);
    } catch {
      // A client that breaks the framing is cut off: nothing it sends after can be trusted to line up.
      this.socket.destroy();
    }
  }

  private onFrame(type: number, callId: number, body: Buffer): void {
    switch (type) {
      case FrameType.REQUEST:
        this.onRequest(callId, body);
        return;
      case FrameType.CANCEL: {
        const call = this.calls.get(callId);
        if (call === undefined) return; // answered already: the cancel crossed the answer
        this.finish(callId, call);
        for (const listener of call.cancelListeners ?? []) listener();
        return;
      }
      case FrameType.PING:
        this.send(encodeEmptyFrame(FrameType.PONG, callId));
        return;
      default:
        throw new DogfsError('INVALID_ARGUMENT', `frame type ${type} from a client`);
    }
  }

  private onRequest(callId: number, body: Buffer): void {
    if (callId <= this.lastCallId)
      throw new DogfsError('INVALID_ARGUMENT', `call id ${callId} after ${this.lastCallId}: ids only grow`);
    if (this.goingAway) {
      // Not run: the GOAWAY named the last id taken, and the client sends this one again elsewhere.
      this.send(
        encodeError(callId, new DogfsError('UNAVAILABLE', 'server is shutting down this connection')),
      );
      return;
    }
    this.lastCallId = callId;
    const server = this.server;
    const refuse = (error: DogfsError): void => this.send(encodeError(callId, error));
    let request: ReturnType<typeof decodeRequest>;
    try {
      request = decodeRequest(body);
    } catch (error) {
      refuse(toDogfsError(error, 'INVALID_ARGUMENT'));
      return;
    }
    const { path, message } = request;
    const handler = server.handlers.get(path);
    if (handler === undefined) {
      refuse(new DogfsError('UNIMPLEMENTED', `${path}: no such method`));
      return;
    }
    if (message.byteLength > server.limits.maxMessageBytes) {
      refuse(
        new DogfsError(
          'RESOURCE_EXHAUSTED',
          `${path}: request exceeds the ${server.limits.maxMessageBytes}-byte limit`,
        ),
      );
      return;
    }
    if (this.calls.size >= MAX_CALLS_PER_CONNECTION) {
      refuse(
        new DogfsError(
          'RESOURCE_EXHAUSTED',
          `${path}: more than ${MAX_CALLS_PER_CONNECTION} calls in flight on one connection`,
        ),
      );
      return;
    }
    if (server.bufferedBytes + message.byteLength > server.limits.maxBufferedBytes) {
      refuse(
        new DogfsError(
          'RESOURCE_EXHAUSTED',
          `${path}: server busy: ${server.limits.maxBufferedBytes} bytes of requests already in progress`,
        ),
      );
      return;
    }
    const callMs = Math.min(request.timeoutMs, server.limits.maxCallMs);
    const entry: ServerCall = {
      deadline: Date.now() + callMs,
      bytes: message.byteLength,
      cancelListeners: undefined,
    };
    this.calls.set(callId, entry);
    server.bufferedBytes += entry.bytes;
    this.sweep ??= setInterval(() => this.expire(), DEADLINE_SWEEP_MS);
    const socket = this.socket;
    const call: UnaryCall = {
      request: message,
      timeoutMs: callMs,
      get peer() {
        return `${socket.remoteAddress}:${socket.remotePort}`;
      },
      onCancel: (listener) => {
        // Gone already (cancelled, expired, connection lost): a listener added now hears it at once.
        if (this.calls.get(callId) !== entry) {
          queueMicrotask(listener);
          return;
        }
        entry.cancelListeners ??= [];
        entry.cancelListeners.push(listener);
      },
    };
    handler(call).then(
      (response) => {
        if (this.finish(callId, entry)) this.send(responseFrame(callId, response));
      },
      (error: unknown) => {
        if (this.finish(callId, entry)) this.send(encodeError(callId, toDogfsError(error)));
      },
    );
  }

  /** Ends a call's accounting; false if it had ended already (cancelled, expired, connection gone). */
  private finish(callId: number, entry: ServerCall): boolean {
    if (this.calls.get(callId) !== entry) return false;
    this.calls.delete(callId);
    this.server.bufferedBytes -= entry.bytes;
    if (this.calls.size === 0) {
      if (this.sweep !== undefined) clearInterval(this.sweep);
      this.sweep = undefined;
      if (this.goingAway) this.endAfterWrites();
    }
    return true;
  }

  /** Calls whose handlers are still running at their deadline get DEADLINE_EXCEEDED (and a cancel). */
  private expire(): void {
    const now = Date.now();
    for (const [callId, call] of this.calls) {
      if (call.deadline > now) continue;
      this.finish(callId, call);
      this.send(encodeError(callId, new DogfsError('DEADLINE_EXCEEDED', 'deadline exceeded')));
      for (const listener of call.cancelListeners ?? []) listener();
    }
  }

  /**
   * Writes a frame. Frames written in one turn of the event loop leave together (cork until the next
   * tick: many answers of one Raft round go in one writev); past HIGH_WATER_BYTES unsent, the
   * connection stops reading requests until the client has read its answers.
   */
  send(frame: Buffer | readonly Buffer[]): void {
    const socket = this.socket;
    if (socket.destroyed) return;
    this.writer.write(frame);
    if (socket.writableLength <= HIGH_WATER_BYTES) return;
    socket.pause();
    if (socket.writableLength > Math.max(MIN_UNSENT_LIMIT_BYTES, 4 * this.server.limits.maxMessageBytes)) {
      socket.destroy();
      return;
    }
    this.watchForStall(taken(socket));
  }

  /** Drops the connection if answers wait unsent and none is taken for the stall time. */
  private watchForStall(written: number): void {
    if (this.stallTimer !== undefined) return;
    this.stallTimer = setTimeout(() => {
      this.stallTimer = undefined;
      const socket = this.socket;
      if (socket.destroyed || socket.writableLength === 0) return;
      if (taken(socket) === written) socket.destroy();
      else this.watchForStall(taken(socket));
    }, this.server.limits.unsentStallMs ?? DEFAULT_UNSENT_STALL_MS);
    this.stallTimer.unref();
  }

  /** No new calls; the ones in flight are answered, then the connection ends. */
  goAway(): void {
    if (this.goingAway) return;
    this.goingAway = true;
    this.send(encodeEmptyFrame(FrameType.GOAWAY, this.lastCallId));
    if (this.calls.size === 0) this.endAfterWrites();
  }

  private endAfterWrites(): void {
    process.nextTick(() => this.socket.end());
  }

  private onClose(): void {
    clearTimeout(this.magicTimer);
    clearTimeout(this.stallTimer);
    // A request cut off mid-frame gives back what its assembly held.
    this.server.bufferedBytes -= this.reader.assemblingBytes;
    if (this.sweep !== undefined) clearInterval(this.sweep);
    this.sweep = undefined;
    // The client is gone: its calls are cancelled (handlers that asked for a signal see it).
    for (const [callId, call] of this.calls) {
      this.finish(callId, call);
      for (const listener of call.cancelListeners ?? []) listener();
    }
    this.server.connections.delete(this);
  }
}

/** The lean half of an RpcServer: handed connections whose first byte says lean. */
export class LeanServer {
  readonly connections = new Set<LeanServerConnection>();
  /** Request bytes held now by calls in flight on every connection (bounded by limits.maxBufferedBytes). */
  bufferedBytes = 0;

  constructor(
    readonly limits: LeanServerLimits,
    readonly handlers: ReadonlyMap<string, UnaryHandler>,
  ) {}

  /** Takes over a connection; `head` holds the bytes already read from it (the start of the magic). */
  accept(socket: Socket, head: Buffer): void {
    const connection = new LeanServerConnection(this, socket);
    this.connections.add(connection);
    socket.unshift(head);
    socket.resume();
  }

  /** Every connection stops taking calls; each ends once its calls are answered. */
  goAway(): void {
    for (const connection of this.connections) connection.goAway();
  }
}
