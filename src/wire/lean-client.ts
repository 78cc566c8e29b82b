/**
 * wire/lean-client — unary calls over the lean framing of wire/lean.ts: the transport a DogFS process
 * uses to call another DogFS process (wire/rpc.ts picks it unless told `grpc`).
 *
 * One TCP connection per address, opened on first use and replaced when it closes, fails or is told to
 * go away. Every call has a deadline, cut locally (a CANCEL tells the server); an AbortSignal cancels;
 * a call that hits its deadline pings the connection (one probe at a time), and a peer that does not
 * answer the ping within PING_TIMEOUT_MS gets the connection dropped, so a vanished host is not waited
 * on call after call. Frames written in one turn of the event loop leave in one write. At most
 * MAX_CALLS_PER_CONNECTION calls are in flight on a connection; more wait in order, their deadlines
 * running (and at most MAX_WAITING_CALLS wait, beyond which a call is refused at once).
 */
import { connect, type Socket } from 'node:net';
import { DogfsError, isErrorCode } from './errors.js';
import { checkCall, KEEPALIVE_MS, PING_TIMEOUT_MS, type UnaryOptions } from './grpc-client.js';
import {
  decodeError,
  encodeEmptyFrame,
  encodeRequest,
  FRAME_OVERHEAD_BYTES,
  FrameReader,
  FrameType,
  LEAN_MAGIC,
  MAX_CALLS_PER_CONNECTION,
  TickBatchedWriter,
} from './lean.js';

/** Calls that may wait for a free slot on one connection before further calls are refused. */
const MAX_WAITING_CALLS = 16_384;
/** Call ids wrap around below this (ids of calls in flight are never reused). */
const MAX_CALL_ID = 0xffff_ffff;

interface ClientCall {
  readonly id: number;
  readonly where: string;
  readonly maxMessageBytes: number;
  readonly resolve: (response: Buffer) => void;
  readonly reject: (error: DogfsError) => void;
  /** The encoded REQUEST frame while the call waits for a slot; undefined once sent. */
  frame: Buffer | undefined;
  timer: NodeJS.Timeout;
  signal: AbortSignal | undefined;
  onAbort: (() => void) | undefined;
}

/** One TCP connection and the calls on it. */
class LeanSocket {
  readonly socket: Socket;
  readonly calls = new Map<number, ClientCall>();
  readonly waiting: ClientCall[] = [];
  private readonly reader: FrameReader;
  private readonly writer: TickBatchedWriter;
  /** No new calls go on this connection (GOAWAY heard, closed, or probing failed). */
  retired = false;
  private probe: { id: number; timer: NodeJS.Timeout } | undefined;

  constructor(
    private readonly owner: LeanConnection,
    host: string,
    port: number,
    maxMessageBytes: number,
  ) {
    this.reader = new FrameReader(maxMessageBytes + FRAME_OVERHEAD_BYTES, {
      frame: (type, callId, body) => this.onFrame(type, callId, body),
      oversized: (type, callId) => {
        if (type !== FrameType.RESPONSE) throw new DogfsError('INVALID_ARGUMENT', 'a server sent a request');
        const call = this.calls.get(callId);
        if (call !== undefined)
          this.settle(
            call,
            new DogfsError(
              'RESOURCE_EXHAUSTED',
              `${call.where}: response exceeds the ${call.maxMessageBytes}-byte limit`,
            ),
          );
      },
    });
    const socket = connect({ host, port, noDelay: true });
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
      this.retire();
      return;
    }
    const call = this.calls.get(callId);
    if (type === FrameType.RESPONSE) {
      if (call === undefined) return; // timed out or cancelled meanwhile
      if (body.byteLength > call.maxMessageBytes) {
        this.settle(
          call,
          new DogfsError(
            'RESOURCE_EXHAUSTED',
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

  /** Sends a call now or queues it for a slot. */
  start(call: ClientCall): void {
    if (this.calls.size < MAX_CALLS_PER_CONNECTION) {
      this.calls.set(call.id, call);
      const frame = call.frame!;
      call.frame = undefined;
      this.send(frame);
    } else {
      this.waiting.push(call);
    }
  }

  private send(frame: Buffer): void {
    this.writer.write(frame);
  }

  /** Ends a call with its outcome (once), frees its slot and lets a waiting call go. */
  settle(call: ClientCall, outcome: Buffer | DogfsError): void {
    if (call.frame === undefined) {
      if (this.calls.get(call.id) !== call) return;
      this.calls.delete(call.id);
    } else {
      const at = this.waiting.indexOf(call);
      if (at < 0) return;
      this.waiting.splice(at, 1);
    }
    clearTimeout(call.timer);
    call.signal?.removeEventListener('abort', call.onAbort!);
    if (outcome instanceof DogfsError) call.reject(outcome);
    else call.resolve(outcome);
    // Bounded: one waiting call per freed slot.
    while (this.waiting.length > 0 && this.calls.size < MAX_CALLS_PER_CONNECTION && !this.socket.destroyed) {
      this.start(this.waiting.shift()!);
    }
    if (this.retired && this.calls.size === 0 && this.waiting.length === 0) this.socket.end();
  }

  /** The caller gave up on a call (deadline or signal): it ends now and the server is told. */
  cut(call: ClientCall, error: DogfsError): void {
    const sent = call.frame === undefined && this.calls.get(call.id) === call;
    this.settle(call, error);
    if (sent && !this.socket.destroyed) this.send(encodeEmptyFrame(FrameType.CANCEL, call.id));
  }

  /** After a call timed out: drop the connection unless the server answers a ping promptly. */
  ping(id: number): void {
    if (this.probe !== undefined || this.socket.destroyed) return;
    const timer = setTimeout(() => this.fail('the server did not answer a ping'), PING_TIMEOUT_MS);
    timer.unref();
    this.probe = { id, timer };
    this.send(encodeEmptyFrame(FrameType.PING, id));
  }

  /** No new calls on this connection; it ends once the calls on it have their answers. */
  retire(): void {
    this.retired = true;
    this.owner.forget(this);
    if (this.calls.size === 0 && this.waiting.length === 0) this.socket.end();
  }

  /** The connection is unusable: every call on it (and waiting for it) fails UNAVAILABLE. */
  private fail(reason: string): void {
    this.retire();
    if (this.probe !== undefined) clearTimeout(this.probe.timer);
    this.probe = undefined;
    this.socket.destroy();
    // Bounded by the calls this connection holds; settle() starts no new ones on a destroyed socket.
    for (const call of [...this.calls.values(), ...this.waiting]) {
      this.settle(call, new DogfsError('UNAVAILABLE', `${call.where}: ${reason}`));
    }
  }
}

/** A lazily opened lean connection to one DogFS server; reopened after it closes. */
export class LeanConnection {
  private current: LeanSocket | undefined;
  private closed = false;
  private nextId = 1;
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

  /** One unary call: `message` is the encoded request; resolves with the encoded response. */
  unary(path: string, message: Uint8Array, options: UnaryOptions): Promise<Buffer> {
    const checked = checkCall(this.address, message, options);
    if (checked instanceof DogfsError) return Promise.reject(checked);
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
    const id = this.nextId;
    // Ids wrap; one still in flight after 2^32 calls (it cannot be: deadlines end them) is skipped.
    this.nextId = id >= MAX_CALL_ID ? 1 : id + 1;
    return new Promise<Buffer>((resolve, reject) => {
      const call: ClientCall = {
        id,
        where,
        maxMessageBytes: options.maxMessageBytes,
        resolve,
        reject,
        frame: encodeRequest(id, path, remaining, message),
        timer: setTimeout(() => {
          socket.cut(call, new DogfsError('DEADLINE_EXCEEDED', `${where}: deadline exceeded`));
          socket.ping(id);
        }, remaining),
        signal: options.signal,
        onAbort: undefined,
      };
      if (options.signal !== undefined) {
        call.onAbort = () => socket.cut(call, new DogfsError('CANCELLED', `${where}: cancelled`));
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
