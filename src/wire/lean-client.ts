/**
 * wire/lean-client — unary calls over the lean framing of wire/lean.ts: the transport a DogFS process
 * uses to call another DogFS process (wire/rpc.ts picks it unless told `grpc`).
 *
 * One TCP connection per address, opened on first use and replaced when it closes, fails or is told to
 * go away. Every call has a deadline, cut locally (a CANCEL tells the server); an AbortSignal cancels;
 * a call that hits its deadline pings the connection (one probe at a time), and a peer that neither
 * answers the ping nor sends anything else within PING_TIMEOUT_MS gets the connection dropped, so a
 * vanished host is not waited on call after call. Frames written in one turn of the event loop leave in
 * one write. At most MAX_CALLS_PER_CONNECTION calls are in flight on a connection; more wait in order,
 * their deadlines running (and at most MAX_WAITING_CALLS wait, beyond which a call is refused at once).
 *
 * Call ids are per connection and only grow (assigned when a request is written), as HTTP/2's stream
 * ids do: a server's GOAWAY names the last id it took, so the calls after it are known not to have run
 * and go out again on a new connection, as do calls still waiting for a slot. A connection whose ids
 * run out is retired the same way.
 */
import { connect, type Socket } from 'node:net';
import { fromSourceAddress } from '../common/address.js';
import { DogfsError, isErrorCode } from './errors.js';
import { checkCall, KEEPALIVE_MS, PING_TIMEOUT_MS, type UnaryOptions } from './grpc-client.js';
import {
  decodeError,
  encodeEmptyFrame,
  FrameReader,
  FrameType,
  LEAN_MAGIC,
  MAX_CALL_ID,
  MAX_CALLS_PER_CONNECTION,
  MAX_PATH_BYTES,
  maxFrameBytes,
  requestFrame,
  TickBatchedWriter,
} from './lean.js';

/** Calls that may wait for a free slot on one connection before further calls are refused. */
const MAX_WAITING_CALLS = 16_384;

interface ClientCall {
  /** The id of its request on `socket`; 0 while it waits for a slot. */
  id: number;
  /** The connection it is on (in flight or waiting); changes when a GOAWAY sends it elsewhere. */
  socket: LeanSocket;
  readonly path: string;
  readonly message: Uint8Array;
  /** Absolute deadline (ms since the epoch); the request carries what remains of it when written. */
  readonly deadline: number;
  readonly where: string;
  readonly maxMessageBytes: number;
  readonly resolve: (response: Buffer) => void;
  readonly reject: (error: DogfsError) => void;
  timer: NodeJS.Timeout | undefined;
  signal: AbortSignal | undefined;
  onAbort: (() => void) | undefined;
}

/** Ends a call with its outcome: clears its timer and abort listener, settles its promise. */
function conclude(call: ClientCall, outcome: Buffer | DogfsError): void {
  clearTimeout(call.timer);
  if (call.onAbort !== undefined) call.signal?.removeEventListener('abort', call.onAbort);
  if (outcome instanceof DogfsError) call.reject(outcome);
  else call.resolve(outcome);
}

/** One TCP connection and the calls on it. */
class LeanSocket {
  readonly socket: Socket;
  /** Calls whose request was written, by id. */
  readonly calls = new Map<number, ClientCall>();
  readonly waiting: ClientCall[] = [];
  private readonly reader: FrameReader;
  private readonly writer: TickBatchedWriter;
  private nextId = 1;
  /** No new calls go on this connection (GOAWAY heard, ids used up, closed, or failed). */
  retired = false;
  private probe: { id: number; timer: NodeJS.Timeout } | undefined;

  constructor(
    private readonly owner: LeanConnection,
    host: string,
    port: number,
    maxMessageBytes: number,
  ) {
    this.reader = new FrameReader(maxFrameBytes(maxMessageBytes), {
      frame: (type, callId, body) => this.onFrame(type, callId, body),
      oversized: (type, callId) => {
        if (type !== FrameType.RESPONSE) throw new DogfsError('INVALID_ARGUMENT', 'a server sent a request');
        const call = this.calls.get(callId);
        if (call !== undefined)
          this.settle(
            call,
            new DogfsError(
              'TOO_LARGE',
              `${call.where}: response exceeds the ${call.maxMessageBytes}-byte limit`,
            ),
          );
      },
    });
    const socket = connect(fromSourceAddress({ host, port, noDelay: true }));
    this.socket = socket;
    this.writer = new TickBatchedWriter(socket);
    socket.setKeepAlive(true, KEEPALIVE_MS);
    // An open connection does not keep a process alive; a call in flight does, through its timer.
    socket.unref();
    socket.write(LEAN_MAGIC);
    socket.on('data', (chunk: Buffer) => {
      try {
        this.reader.push(chunk);
      } catch (error) {
        this.fail(`broken answer from the server (${(error as Error).message})`);
      }
    });
    socket.on('error', (error) => this.fail(error.message));
    socket.on('close', () => this.fail('connection lost before the answer'));
  }

  private onFrame(type: number, callId: number, body: Buffer): void {
    if (type === FrameType.PONG) {
      if (this.probe?.id === callId) {
        clearTimeout(this.probe.timer);
        this.probe = undefined;
      }
      return;
    }
    if (type === FrameType.GOAWAY) {
      this.goAway(callId);
      return;
    }
    const call = this.calls.get(callId);
    if (type === FrameType.RESPONSE) {
      if (call === undefined) return; // timed out or cancelled meanwhile
      if (body.byteLength > call.maxMessageBytes) {
        this.settle(
          call,
          new DogfsError(
            'TOO_LARGE',
            `${call.where}: response exceeds the ${call.maxMessageBytes}-byte limit`,
          ),
        );
        return;
      }
      this.settle(call, body);
      return;
    }
    if (type === FrameType.ERROR) {
      if (call === undefined) return;
      const sent = decodeError(body);
      if (sent === undefined) {
        this.settle(call, new DogfsError('INTERNAL', `${call.where}: malformed error answer`));
        return;
      }
      // An unknown code (a newer server) is kept as INTERNAL with the code in the message.
      const known = isErrorCode(sent.code);
      this.settle(
        call,
        new DogfsError(
          known ? sent.code : 'INTERNAL',
          known ? sent.message : `${sent.code}: ${sent.message}`,
          {
            leaderHint: sent.leaderHint === '' ? undefined : sent.leaderHint,
          },
        ),
      );
      return;
    }
    throw new DogfsError('INVALID_ARGUMENT', `frame type ${type} from a server`);
  }

  /** Writes a call's request now, or queues it for a slot. */
  start(call: ClientCall): void {
    call.socket = this;
    if (this.calls.size >= MAX_CALLS_PER_CONNECTION) {
      call.id = 0;
      this.waiting.push(call);
      return;
    }
    const id = this.nextId;
    // The frame first: should building it throw, no call is left registered without a request sent.
    const frame = requestFrame(id, call.path, Math.max(1, call.deadline - Date.now()), call.message);
    this.nextId++;
    call.id = id;
    this.calls.set(id, call);
    this.writer.write(frame);
    // Ids only grow: once they run out, later calls go on a new connection.
    if (this.nextId > MAX_CALL_ID) this.retire();
  }

  /** Ends a call with its outcome (once), frees its slot and lets a waiting call go. */
  settle(call: ClientCall, outcome: Buffer | DogfsError): void {
    if (call.socket !== this) return;
    if (call.id !== 0) {
      if (this.calls.get(call.id) !== call) return;
      this.calls.delete(call.id);
    } else {
      const at = this.waiting.indexOf(call);
      if (at < 0) return;
      this.waiting.splice(at, 1);
    }
    conclude(call, outcome);
    // Bounded: one waiting call per freed slot.
    while (this.waiting.length > 0 && this.calls.size < MAX_CALLS_PER_CONNECTION && !this.retired) {
      this.start(this.waiting.shift()!);
    }
    this.endIfDone();
  }

  /** The caller gave up on a call (deadline or signal): it ends now and the server is told. */
  cut(call: ClientCall, error: DogfsError): void {
    const sent = call.socket === this && call.id !== 0 && this.calls.get(call.id) === call;
    // The CANCEL goes before the request of the call that takes the freed slot (settle starts it): the
    // server counts the cancelled call until the CANCEL arrives, and would refuse a request past its
    // limit. Also before settle may end the socket (the last call of a retired connection).
    if (sent && this.writable()) this.writer.write(encodeEmptyFrame(FrameType.CANCEL, call.id));
    this.settle(call, error);
  }

  /** Frames can still be written (not destroyed, not ended by us). */
  private writable(): boolean {
    return !this.socket.destroyed && !this.socket.writableEnded;
  }

  /**
   * After a call timed out: drop the connection unless the server answers a ping promptly, or bytes keep
   * arriving meanwhile (the PONG is queued behind answers being sent: a busy connection, not a dead one).
   */
  ping(id: number): void {
    if (this.probe !== undefined || !this.writable()) return;
    this.probe = { id, timer: this.probeTimer(this.socket.bytesRead) };
    this.writer.write(encodeEmptyFrame(FrameType.PING, id));
  }

  private probeTimer(bytesRead: number): NodeJS.Timeout {
    const timer = setTimeout(() => {
      if (this.probe === undefined) return;
      if (this.socket.bytesRead === bytesRead) this.fail('the server did not answer a ping');
      else this.probe.timer = this.probeTimer(this.socket.bytesRead);
    }, PING_TIMEOUT_MS);
    timer.unref();
    return timer;
  }

  /**
   * The server took requests up to `lastId` and will run nothing after: those after it, and the calls
   * waiting for a slot, go out again on a new connection; this one ends once the rest are answered.
   */
  private goAway(lastId: number): void {
    const alreadyRetired = this.retired;
    this.stopTaking();
    // In the order they were sent, then the ones that waited (bounded by the calls this connection held).
    const unrun = [...this.calls.values()].filter((call) => call.id > lastId);
    for (const call of unrun) this.calls.delete(call.id);
    for (const call of unrun) this.owner.restart(call);
    if (!alreadyRetired) for (const call of this.waiting.splice(0)) this.owner.restart(call);
    this.endIfDone();
  }

  private stopTaking(): void {
    this.retired = true;
    this.owner.forget(this);
  }

  /** No new calls on this connection; calls waiting for a slot move to a new one. */
  retire(): void {
    if (this.retired) return;
    this.stopTaking();
    for (const call of this.waiting.splice(0)) this.owner.restart(call);
    this.endIfDone();
  }

  private endIfDone(): void {
    if (this.retired && this.calls.size === 0 && this.waiting.length === 0) this.socket.end();
  }

  /**
   * The connection is unusable: calls in flight on it fail UNAVAILABLE (whether they ran is unknown);
   * those waiting for a slot were never sent and fail the same way (a connection that cannot be made
   * would otherwise be dialled again and again until their deadlines).
   */
  private fail(reason: string): void {
    this.stopTaking();
    if (this.probe !== undefined) clearTimeout(this.probe.timer);
    this.probe = undefined;
    this.socket.destroy();
    const calls = [...this.calls.values(), ...this.waiting];
    this.calls.clear();
    this.waiting.length = 0;
    for (const call of calls) conclude(call, new DogfsError('UNAVAILABLE', `${call.where}: ${reason}`));
  }
}

/** A lazily opened lean connection to one DogFS server; reopened after it closes. */
export class LeanConnection {
  private current: LeanSocket | undefined;
  private closed = false;
  private readonly host: string;
  private readonly port: number;

  constructor(
    readonly address: string,
    private readonly maxMessageBytes: number,
  ) {
    const colon = address.lastIndexOf(':');
    this.host = address.slice(0, colon).replace(/^\[(.*)\]$/, '$1');
    this.port = Number(address.slice(colon + 1));
  }

  forget(socket: LeanSocket): void {
    if (this.current === socket) this.current = undefined;
  }

  private connection(): LeanSocket {
    if (this.closed) throw new DogfsError('CANCELLED', `${this.address}: channel closed`);
    if (this.current === undefined || this.current.retired) {
      if (!(Number.isInteger(this.port) && this.port > 0 && this.port < 65536))
        throw new DogfsError('INVALID_ARGUMENT', `${this.address}: not a host:port address`);
      this.current = new LeanSocket(this, this.host, this.port, this.maxMessageBytes);
    }
    return this.current;
  }

  /** A call that did not run where it was (GOAWAY, or waiting on a retired connection) goes out again. */
  restart(call: ClientCall): void {
    let socket: LeanSocket;
    try {
      socket = this.connection();
    } catch (error) {
      conclude(call, error as DogfsError);
      return;
    }
    socket.start(call);
  }

  /** One unary call: `message` is the encoded request; resolves with the encoded response. */
  unary(path: string, message: Uint8Array, options: UnaryOptions): Promise<Buffer> {
    const checked = checkCall(this.address, message, options);
    if (checked instanceof DogfsError) return Promise.reject(checked);
    if (Buffer.byteLength(path, 'latin1') > MAX_PATH_BYTES) {
      return Promise.reject(
        new DogfsError(
          'INVALID_ARGUMENT',
          `${this.address} ${path.slice(0, 64)}...: method path longer than ${MAX_PATH_BYTES} bytes`,
        ),
      );
    }
    const { where, remaining } = checked;
    let socket: LeanSocket;
    try {
      socket = this.connection();
    } catch (error) {
      return Promise.reject(error);
    }
    if (socket.waiting.length >= MAX_WAITING_CALLS) {
      return Promise.reject(
        new DogfsError('RESOURCE_EXHAUSTED', `${where}: ${MAX_WAITING_CALLS} calls already waiting`),
      );
    }
    return new Promise<Buffer>((resolve, reject) => {
      const call: ClientCall = {
        id: 0,
        socket,
        path,
        message,
        deadline: Date.now() + remaining,
        where,
        maxMessageBytes: options.maxMessageBytes,
        resolve,
        reject,
        timer: undefined,
        signal: options.signal,
        onAbort: undefined,
      };
      // The timer and the abort act on whichever connection the call is on by then.
      call.timer = setTimeout(() => {
        const on = call.socket;
        const id = call.id;
        on.cut(call, new DogfsError('DEADLINE_EXCEEDED', `${where}: deadline exceeded`));
        if (id !== 0) on.ping(id);
      }, remaining);
      if (options.signal !== undefined) {
        call.onAbort = () => call.socket.cut(call, new DogfsError('CANCELLED', `${where}: cancelled`));
        options.signal.addEventListener('abort', call.onAbort, { once: true });
      }
      socket.start(call);
    });
  }

  /** No new calls; the ones in flight still get their answers, then the connection ends. */
  close(): void {
    this.closed = true;
    this.current?.retire();
    this.current = undefined;
  }
}
