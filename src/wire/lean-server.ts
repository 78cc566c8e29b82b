/**
 * wire/lean-server — serves unary calls over the lean framing of wire/lean.ts, beside the gRPC server
 * on the same port (wire/rpc.ts hands it the connections that start with LEAN_MAGIC). Handlers are the
 * ones gRPC calls (`UnaryHandler`), so the two transports cannot answer differently.
 *
 * Limits, all explicit: calls in flight per connection (MAX_CALLS_PER_CONNECTION; more are refused with
 * RESOURCE_EXHAUSTED, which a DogFS client never meets: it queues beyond the same number); handlers
 * running per connection, counting those whose calls were cancelled or expired but which have not
 * returned (requests are not read while MAX_RUNNING_HANDLERS run; past HARD_RUNNING_HANDLERS they are
 * refused), so cancelling does not let a client run more; handlers running on the whole server, both
 * transports together (wire/handler-slots.ts: past it a request is refused, server busy); the size of a request (read past and refused)
 * and of all requests held by running handlers together (the cluster's control calls have a sixteenth
 * more: grpc-server.ts, requestByteCap); how long a call may run, whatever timeout it
 * carried (a handler still running at its deadline is answered DEADLINE_EXCEEDED); unsent answers per
 * connection (above HIGH_WATER_BYTES the connection's requests are not read until the client has taken
 * its answers: back-pressure, not buffering; a client whose kernel takes nothing for a while is
 * dropped); idle connections (closed after 10 minutes without a call).
 */
import type { Socket } from 'node:net';
import { assert } from '../common/assert.js';
import { DogfsError, toDogfsError } from './errors.js';
import { type RequestBytes, requestByteCap, type UnaryCall, type UnaryHandler } from './grpc-server.js';
import { type HandlerSlot, HandlerSlots } from './handler-slots.js';
import {
  decodeRequest,
  encodeEmptyFrame,
  encodeError,
  FrameReader,
  FrameType,
  LEAN_MAGIC,
  MAX_CALLS_PER_CONNECTION,
  maxFrameBytes,
  requestPathOf,
  responseFrame,
  TickBatchedWriter,
} from './lean.js';

/** Unsent answer bytes above which a connection's requests wait until the client reads. */
const HIGH_WATER_BYTES = 8 << 20;
/**
 * Answers already owed still queue while requests wait. A client whose kernel takes none of them for
 * `unsentStallMs` (30 s unless the limits say) is not reading and its connection is dropped; past this
 * many unsent bytes, after OVER_LIMIT_STALL_MS already. Not at once: answers written in one turn leave
 * on the next, and 256 calls may owe their largest answers together, to a client reading all the while.
 */
const MIN_UNSENT_LIMIT_BYTES = 64 << 20;
const DEFAULT_UNSENT_STALL_MS = 30_000;
const OVER_LIMIT_STALL_MS = 2_000;
/** Handlers running on one connection (live calls and ended ones not yet returned) before reading waits. */
const MAX_RUNNING_HANDLERS = 2 * MAX_CALLS_PER_CONNECTION;
/**
 * Past this many a request is refused: reading stops at MAX_RUNNING_HANDLERS, but a read already taken
 * may hold more requests, at most MAX_CALLS_PER_CONNECTION live ones from a client that keeps the rules.
 */
const HARD_RUNNING_HANDLERS = MAX_RUNNING_HANDLERS + MAX_CALLS_PER_CONNECTION;
/** A connection without a call for this long is closed (GOAWAY, then end); clients simply dial again. */
const IDLE_CONNECTION_MS = 10 * 60_000;
/** How often a connection looks for calls past their deadline (handlers that never answer). */
const DEADLINE_SWEEP_MS = 250;
/** A connection that has not sent its whole magic within this long is dropped. */
const MAGIC_TIMEOUT_MS = 10_000;
/**
 * A request arriving in pieces holds its whole size of the server's request budget from its head on: it
 * must be whole within this, or its connection is cut (a client that announces 16 MiB and then sends
 * nothing would otherwise hold that share for good, and sixteen such would refuse every request).
 */
export const FRAME_ASSEMBLY_TIMEOUT_MS = 60_000;
/** After GOAWAY and `end()`, how long a client may take to close its side before the socket is destroyed. */
const END_GRACE_MS = 10_000;

export interface LeanServerLimits {
  readonly maxMessageBytes: number;
  readonly maxBufferedBytes: number;
  readonly maxCallMs: number;
  /** How long answers may wait unsent with none taken before the connection is dropped (default 30 s). */
  readonly unsentStallMs?: number;
  /** How long a request admitted in pieces may take to arrive whole (FRAME_ASSEMBLY_TIMEOUT_MS). */
  readonly frameAssemblyMs?: number | undefined;
}

interface ServerCall {
  readonly deadline: number;
  readonly bytes: number;
  /** The handler's place among the server's running handlers, given back when it returns. */
  readonly slot: HandlerSlot;
  cancelListeners: (() => void)[] | undefined;
  /** live: may still be answered; answered; ended: cancelled, expired or its connection gone. */
  state: 'live' | 'answered' | 'ended';
}

/** Bytes the kernel has taken from a socket (Node's bytesWritten also counts what is still queued). */
function taken(socket: Socket): number {
  return socket.bytesWritten - socket.writableLength;
}

/** One client connection: its calls in flight, its reader, its write batching. */
class LeanServerConnection {
  /** Calls that may still be answered. */
  private readonly calls = new Map<number, ServerCall>();
  /** Handlers that have not returned, their calls live or ended: each holds its request's bytes. */
  private running = 0;
  private readonly reader: FrameReader;
  private magicSeen = 0;
  /** The highest request id taken (ids only grow on a connection): what a GOAWAY names. */
  private lastCallId = 0;
  private stallTimer: NodeJS.Timeout | undefined;
  /** Cuts a connection whose request, admitted in pieces, does not arrive whole in time. */
  private assemblyTimer: NodeJS.Timeout | undefined;
  /** The stall timer runs the shorter wait (answers past the unsent limit). */
  private stallShort = false;
  private readonly writer: TickBatchedWriter;
  private goingAway = false;
  private sweep: NodeJS.Timeout | undefined;
  private readonly magicTimer: NodeJS.Timeout;
  /** Told once, when the connection begins its first request (wire/rpc.ts: it then holds its place). */
  private onBegun: (() => void) | undefined;

  constructor(
    private readonly server: LeanServer,
    readonly socket: Socket,
    onBegun: () => void,
  ) {
    this.onBegun = onBegun;
    const maxFrame = maxFrameBytes(server.limits.maxMessageBytes);
    this.reader = new FrameReader(maxFrame, {
      frame: (type, callId, body) => this.onFrame(type, callId, body),
      oversized: (type, callId, length) => {
        if (type !== FrameType.REQUEST) throw new DogfsError('INVALID_ARGUMENT', 'a client sent a response');
        this.lastCallId = Math.max(this.lastCallId, callId);
        const error =
          length > maxFrame
            ? new DogfsError('TOO_LARGE', `request exceeds the ${server.limits.maxMessageBytes}-byte limit`)
            : new DogfsError(
                'RESOURCE_EXHAUSTED',
                `server busy: ${server.limits.maxBufferedBytes} bytes of requests already in progress`,
              );
        this.send(encodeError(callId, error));
      },
      // A request arriving in pieces holds its whole size from its head on: counted like one in flight,
      // and it must be whole within FRAME_ASSEMBLY_TIMEOUT_MS.
      admit: (type, _callId, length, start) => {
        // Only requests carry bodies worth assembling (a CANCEL or PING is its head alone).
        if (type !== FrameType.REQUEST)
          throw new DogfsError('INVALID_ARGUMENT', `frame type ${type} of ${length} bytes from a client`);
        this.begin();
        // A head that arrived without its whole path counts as a data call's: a control call refused so
        // is retried (RESOURCE_EXHAUSTED), and one cut there is rare.
        const cap = requestByteCap(server.limits.maxBufferedBytes, requestPathOf(start) ?? '');
        if (server.requestBytes.held + length > cap) return false;
        server.requestBytes.held += length;
        this.armAssemblyTimer();
        return true;
      },
      released: (length) => {
        clearTimeout(this.assemblyTimer);
        server.requestBytes.held -= length;
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
    socket.on('drain', () => this.updateReading());
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
        this.endEarly(callId, call);
        return;
      }
      case FrameType.PING:
        this.send(encodeEmptyFrame(FrameType.PONG, callId));
        return;
      default:
        throw new DogfsError('INVALID_ARGUMENT', `frame type ${type} from a client`);
    }
  }

  private begin(): void {
    if (this.onBegun === undefined) return;
    const onBegun = this.onBegun;
    this.onBegun = undefined;
    onBegun();
  }

  private onRequest(callId: number, body: Buffer): void {
    this.begin();
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
          'TOO_LARGE',
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
    if (this.running >= HARD_RUNNING_HANDLERS) {
      refuse(
        new DogfsError(
          'RESOURCE_EXHAUSTED',
          `${path}: ${this.running} handlers still running on this connection (cancelled calls included)`,
        ),
      );
      return;
    }
    if (
      server.requestBytes.held + message.byteLength >
      requestByteCap(server.limits.maxBufferedBytes, path)
    ) {
      refuse(
        new DogfsError(
          'RESOURCE_EXHAUSTED',
          `${path}: server busy: ${server.limits.maxBufferedBytes} bytes of requests already in progress`,
        ),
      );
      return;
    }
    // Taken last: nothing after it refuses, so a slot taken is always given back by handlerReturned.
    const slot = server.slots.take(path);
    if (slot instanceof DogfsError) {
      refuse(slot);
      return;
    }
    const callMs = Math.min(request.timeoutMs, server.limits.maxCallMs);
    const entry: ServerCall = {
      deadline: Date.now() + callMs,
      bytes: message.byteLength,
      slot,
      cancelListeners: undefined,
      state: 'live',
    };
    this.calls.set(callId, entry);
    server.requestBytes.held += entry.bytes;
    this.running++;
    if (this.running >= MAX_RUNNING_HANDLERS) this.updateReading();
    this.sweep ??= setInterval(() => this.expire(), DEADLINE_SWEEP_MS);
    const socket = this.socket;
    const call: UnaryCall = {
      request: message,
      timeoutMs: callMs,
      get peer() {
        return `${socket.remoteAddress}:${socket.remotePort}`;
      },
      onCancel: (listener) => {
        // Ended already (cancelled, expired, connection lost): a listener added now hears it at once.
        // An answered call is never cancelled.
        if (entry.state === 'ended') {
          queueMicrotask(listener);
        } else if (entry.state === 'live') {
          entry.cancelListeners ??= [];
          entry.cancelListeners.push(listener);
        }
      },
    };
    handler(call).then(
      (response) => this.handlerReturned(callId, entry, () => responseFrame(callId, response)),
      (error: unknown) => this.handlerReturned(callId, entry, () => encodeError(callId, toDogfsError(error))),
    );
  }

  /** A handler returned: its request's bytes are free; its answer goes out if the call is still live. */
  private handlerReturned(callId: number, entry: ServerCall, answer: () => Buffer | readonly Buffer[]): void {
    this.running--;
    assert(this.running >= 0, 'more handlers returned than started on a connection');
    this.server.requestBytes.held -= entry.bytes;
    entry.slot.release();
    if (this.end(callId, entry, 'answered')) this.send(answer());
    if (this.running === MAX_RUNNING_HANDLERS - 1) this.updateReading();
  }

  /** Takes a live call out of `calls`; false if it was not live (answered or ended before). */
  private end(callId: number, entry: ServerCall, state: 'answered' | 'ended'): boolean {
    if (this.calls.get(callId) !== entry) return false;
    this.calls.delete(callId);
    entry.state = state;
    if (this.calls.size === 0) {
      if (this.sweep !== undefined) clearInterval(this.sweep);
      this.sweep = undefined;
      if (this.goingAway) this.endAfterWrites();
    }
    return true;
  }

  /**
   * A live call ends unanswered (cancelled, expired, connection gone): its handler hears it, and keeps
   * its slot among the running handlers and its bytes until it returns.
   */
  private endEarly(callId: number, entry: ServerCall): void {
    if (!this.end(callId, entry, 'ended')) return;
    for (const listener of entry.cancelListeners ?? []) listener();
  }

  /** Calls whose handlers are still running at their deadline get DEADLINE_EXCEEDED (and a cancel). */
  private expire(): void {
    const now = Date.now();
    for (const [callId, call] of this.calls) {
      if (call.deadline > now) continue;
      this.send(encodeError(callId, new DogfsError('DEADLINE_EXCEEDED', 'deadline exceeded')));
      this.endEarly(callId, call);
    }
  }

  /**
   * Requests are read unless answers wait unsent above HIGH_WATER_BYTES or MAX_RUNNING_HANDLERS
   * handlers run (PINGs, CANCELs and the client's end are read again once either clears).
   */
  private updateReading(): void {
    const socket = this.socket;
    if (socket.destroyed) return;
    const hold = socket.writableLength > HIGH_WATER_BYTES || this.running >= MAX_RUNNING_HANDLERS;
    // A request being assembled keeps its time running while reading waits: its bytes stay held all
    // the while, and a client that makes the server wait (answers left unread, then taken a trickle at a
    // time to escape the stall rule) would otherwise hold them, and that share of the budget, for good.
    // A client that reads its answers lets reading resume long before the limit.
    if (hold && !socket.isPaused()) socket.pause();
    else if (!hold && socket.isPaused()) socket.resume();
  }

  /** A request being assembled must be whole within the limit, counted from its head. */
  private armAssemblyTimer(): void {
    clearTimeout(this.assemblyTimer);
    this.assemblyTimer = setTimeout(
      () => this.socket.destroy(),
      this.server.limits.frameAssemblyMs ?? FRAME_ASSEMBLY_TIMEOUT_MS,
    );
    this.assemblyTimer.unref();
  }

  /**
   * Writes a frame. Frames written in one turn of the event loop leave together (cork until the next
   * tick: many answers of one Raft round go in one writev); past HIGH_WATER_BYTES unsent, the
   * connection stops reading requests until the client has read its answers.
   */
  send(frame: Buffer | readonly Buffer[]): void {
    const socket = this.socket;
    if (socket.destroyed || socket.writableEnded) return;
    this.writer.write(frame);
    if (socket.writableLength <= HIGH_WATER_BYTES) return;
    this.updateReading();
    this.watchForStall();
  }

  private overUnsentLimit(): boolean {
    const limit = Math.max(MIN_UNSENT_LIMIT_BYTES, 4 * this.server.limits.maxMessageBytes);
    return this.socket.writableLength > limit;
  }

  /**
   * Drops the connection if answers wait unsent and the kernel takes none of them for the stall time
   * (OVER_LIMIT_STALL_MS once they pass the limit).
   */
  private watchForStall(): void {
    const over = this.overUnsentLimit();
    if (this.stallTimer !== undefined) {
      if (!over || this.stallShort) return;
      clearTimeout(this.stallTimer); // the shorter wait applies from now
    }
    const written = taken(this.socket);
    this.stallShort = over;
    this.stallTimer = setTimeout(
      () => {
        this.stallTimer = undefined;
        const socket = this.socket;
        if (socket.destroyed || socket.writableLength === 0) return;
        if (taken(socket) === written) socket.destroy();
        else this.watchForStall();
      },
      over ? OVER_LIMIT_STALL_MS : (this.server.limits.unsentStallMs ?? DEFAULT_UNSENT_STALL_MS),
    );
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
    process.nextTick(() => {
      this.socket.end();
      // A client that never closes its side would keep the connection (and whatever it holds) for good.
      setTimeout(() => this.socket.destroy(), END_GRACE_MS).unref();
    });
  }

  private onClose(): void {
    clearTimeout(this.magicTimer);
    clearTimeout(this.stallTimer);
    clearTimeout(this.assemblyTimer);
    // A request cut off mid-frame gives back what its assembly held.
    this.server.requestBytes.held -= this.reader.assemblingBytes;
    if (this.sweep !== undefined) clearInterval(this.sweep);
    this.sweep = undefined;
    // The client is gone: its calls are cancelled (handlers that asked for a signal see it); their
    // bytes stay held until the handlers return.
    for (const [callId, call] of this.calls) this.endEarly(callId, call);
    this.server.connections.delete(this);
  }
}

/** The lean half of an RpcServer: handed connections whose first byte says lean. */
export class LeanServer {
  readonly connections = new Set<LeanServerConnection>();

  constructor(
    readonly limits: LeanServerLimits,
    readonly handlers: ReadonlyMap<string, UnaryHandler>,
    /** Request bytes held by running handlers and requests arriving (bounded by limits.maxBufferedBytes). */
    readonly requestBytes: RequestBytes = { held: 0 },
    /** Handlers running on the whole server, this transport and gRPC together. */
    readonly slots: HandlerSlots = new HandlerSlots(),
  ) {}

  /**
   * Takes over a connection; `head` holds the bytes already read from it (the start of the magic).
   * `begun` is called when its first request begins to arrive.
   */
  accept(socket: Socket, head: Buffer, begun: () => void = () => {}): void {
    const connection = new LeanServerConnection(this, socket, begun);
    this.connections.add(connection);
    socket.unshift(head);
    socket.resume();
  }

  /** Every connection stops taking calls; each ends once its calls are answered. */
  goAway(): void {
    for (const connection of this.connections) connection.goAway();
  }
}
