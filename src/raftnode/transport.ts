/**
 * raftnode/transport — the lean Raft transport of DESIGN section 5: RaftBatch frames (u32 big-endian
 * length, then the protobuf) over one persistent TCP connection from each node to each peer, in order.
 * A unary gRPC call costs ~130 µs of CPU over both ends (bench:rpc; ~0.4 ms with grpc-js, when this was
 * written); a frame costs one encode and one socket write, which is what
 * Raft's many small messages (heartbeats, append responses) need.
 *
 * The frame port is ephemeral and found through the gRPC service (RaftTransport.Endpoint) on the peer's
 * configured address, so membership and `dogfs up` keep one address per server. Delivery is best effort,
 * as Raft expects: a batch sent while the connection is down or too far behind is dropped and counted,
 * and the protocol's own retries repair it. Every buffer is bounded: the socket's send queue
 * (MAX_BUFFERED_BYTES, beyond which batches are dropped — back-pressure without unbounded memory), a frame
 * (MAX_FRAME_BYTES), and the batches waiting for a connection to open (MAX_PENDING_FRAMES).
 */
import { createServer, type Server, type Socket, connect as tcpConnect } from 'node:net';
import { AssertionError, assert } from '../common/assert.js';
import type { Logger } from '../common/log.js';
import { DogfsError, toDogfsError } from '../wire/errors.js';
import { type RaftBatch, RaftTransportService } from '../wire/gen/types.js';
import { decodeMessage, encodeMessage, type Init } from '../wire/proto.js';
import { DEFAULT_MAX_MESSAGE_BYTES, type RpcChannel } from '../wire/rpc.js';

export const MAX_FRAME_BYTES = DEFAULT_MAX_MESSAGE_BYTES;
/** A peer whose socket holds this much unsent data gets its further batches dropped until it drains. */
const MAX_BUFFERED_BYTES = 8 << 20;
/** Batches kept while the connection is being opened (the first heartbeats and votes of a start). */
const MAX_PENDING_FRAMES = 64;
/** After a failed connection, how long batches are dropped before the next attempt. */
const RECONNECT_DELAY_MS = 100;
const ENDPOINT_TIMEOUT_MS = 1000;
/**
 * A connection holding unsent data on which nothing has moved for this long is stuck (a peer gone without
 * a reset, its receive window full): it is dropped and made again.
 */
const STALL_TIMEOUT_MS = 5000;
const LENGTH_BYTES = 4;

/** Encodes one batch as a frame. */
export function encodeFrame(batch: Init<RaftBatch>): Buffer {
  const body = encodeMessage('dogfs.v1.RaftBatch', batch);
  const frame = Buffer.allocUnsafe(LENGTH_BYTES + body.byteLength);
  frame.writeUInt32BE(body.byteLength, 0);
  frame.set(body, LENGTH_BYTES);
  return frame;
}

/**
 * Splits a byte stream into frames. Throws INVALID_ARGUMENT on a frame longer than MAX_FRAME_BYTES
 * (a broken or hostile peer), after which the connection is closed.
 */
export class FrameSplitter {
  private buffered: Buffer = Buffer.alloc(0);

  push(chunk: Buffer, onFrame: (body: Buffer) => void): void {
    let data = this.buffered.byteLength === 0 ? chunk : Buffer.concat([this.buffered, chunk]);
    let at = 0;
    while (data.byteLength - at >= LENGTH_BYTES) {
      const length = data.readUInt32BE(at);
      if (length > MAX_FRAME_BYTES) {
        throw new DogfsError('INVALID_ARGUMENT', `raft frame of ${length} bytes exceeds ${MAX_FRAME_BYTES}`);
      }
      if (data.byteLength - at - LENGTH_BYTES < length) break;
      onFrame(data.subarray(at + LENGTH_BYTES, at + LENGTH_BYTES + length));
      at += LENGTH_BYTES + length;
    }
    // Keep only the partial frame (a copy, so the consumed chunk can be collected).
    data = data.subarray(at);
    this.buffered = data.byteLength === 0 ? Buffer.alloc(0) : Buffer.from(data);
  }
}

/** Accepts frames from peers and hands each decoded batch to `onBatch` (which validates and steps it). */
export class FrameServer {
  private readonly server: Server;
  private readonly sockets = new Set<Socket>();
  /** Resolves with the listening port. */
  readonly port: Promise<number>;

  constructor(
    host: string,
    private readonly onBatch: (batch: RaftBatch) => void,
    private readonly log: Logger,
  ) {
    this.server = createServer((socket) => this.accept(socket));
    this.port = new Promise((resolve, reject) => {
      this.server.once('error', reject);
      this.server.listen(0, host, () => {
        const address = this.server.address();
        assert(address !== null && typeof address === 'object', 'a TCP server has an address');
        resolve(address.port);
      });
    });
    // A failed listen is reported to whoever asks for the port; nobody asking must not crash the process.
    this.port.catch(() => {});
  }

  private accept(socket: Socket): void {
    this.sockets.add(socket);
    socket.setNoDelay(true);
    const splitter = new FrameSplitter();
    socket.on('data', (chunk: Buffer) => {
      try {
        splitter.push(chunk, (body) => {
          let batch: RaftBatch;
          try {
            batch = decodeMessage('dogfs.v1.RaftBatch', body);
          } catch (error) {
            throw new DogfsError('INVALID_ARGUMENT', 'malformed raft frame', { cause: error });
          }
          this.onBatch(batch);
        });
      } catch (error) {
        // A broken invariant of this node (the core's or the host's) is no peer's fault: the state may
        // be half changed, so the process must not go on as if a frame had merely been refused.
        if (error instanceof AssertionError) throw error;
        // A peer that sends what we cannot take is cut off; Raft treats it as a network fault.
        const e = toDogfsError(error);
        this.log.warn('raft frame refused; closing the connection', {
          peer: socket.remoteAddress,
          code: e.code,
          error: e.message,
        });
        socket.destroy();
      }
    });
    socket.on('error', () => {
      // 'close' follows; a reset peer is an ordinary network fault.
    });
    socket.on('close', () => this.sockets.delete(socket));
  }

  close(): void {
    this.server.close();
    for (const socket of this.sockets) socket.destroy();
    this.sockets.clear();
  }
}

/** Counters shared by every peer of a host. */
export interface FrameCounters {
  batchesSent: number;
  batchesDropped: number;
  messagesSent: number;
  connects: number;
}

/** The connection to one peer: discovers its frame port, connects, writes frames, reconnects after a fault. */
export class FramePeer {
  private socket: Socket | undefined;
  private open = false;
  private connecting = false;
  private retryAt = 0;
  private pending: { frame: Buffer; messages: number }[] = [];
  private closed = false;

  constructor(
    readonly addr: string,
    private readonly channel: RpcChannel,
    private readonly counters: FrameCounters,
    private readonly log: Logger,
  ) {}

  /** Queues one batch for the peer; drops it (and counts) when the connection is down or backed up. */
  send(batch: Init<RaftBatch>, messages: number): void {
    this.sendFrame(encodeFrame(batch), messages);
  }

  /** As send, for a batch already framed (raftnode/messages.ts encodeBatchFrame). */
  sendFrame(frame: Buffer, messages: number): void {
    if (this.closed) return;
    if (!this.open) {
      this.connect();
      if (!this.connecting || this.pending.length >= MAX_PENDING_FRAMES) {
        this.counters.batchesDropped++;
        return;
      }
      this.pending.push({ frame, messages });
      return;
    }
    const socket = this.socket!;
    if (socket.writableLength > MAX_BUFFERED_BYTES) {
      this.counters.batchesDropped++;
      return;
    }
    if (frame.byteLength - LENGTH_BYTES > MAX_FRAME_BYTES) {
      this.log.warn('raft batch too large for a frame; dropped', { to: this.addr, bytes: frame.byteLength });
      this.counters.batchesDropped++;
      return;
    }
    this.write(socket, frame, messages);
  }

  private write(socket: Socket, frame: Buffer, messages: number): void {
    socket.write(frame);
    this.counters.batchesSent++;
    this.counters.messagesSent += messages;
  }

  private connect(): void {
    if (this.connecting || this.open || Date.now() < this.retryAt) return;
    this.connecting = true;
    const host = this.addr.slice(0, this.addr.lastIndexOf(':'));
    this.channel
      .call(RaftTransportService, 'Endpoint', {}, { timeoutMs: ENDPOINT_TIMEOUT_MS })
      .then(({ port }) => {
        if (this.closed) return this.failed(undefined);
        const socket = tcpConnect({ host, port, noDelay: true });
        this.socket = socket;
        socket.once('connect', () => {
          if (this.socket !== socket) return;
          this.open = true;
          this.connecting = false;
          this.counters.connects++;
          for (const { frame, messages } of this.pending) this.write(socket, frame, messages);
          this.pending = [];
        });
        socket.on('error', (error) => this.log.debug('raft connection failed', { to: this.addr, error }));
        socket.once('close', () => {
          if (this.socket === socket) this.failed(undefined);
        });
        socket.setTimeout(STALL_TIMEOUT_MS, () => {
          // Idle is fine (a follower sends nothing to the other followers); unsent data is a stall.
          if (socket.writableLength === 0) return;
          this.log.warn('raft connection stalled; reconnecting', { to: this.addr });
          socket.destroy();
        });
        // The peer never writes on this connection; reading keeps a half-closed socket from lingering.
        socket.resume();
      })
      .catch((error: unknown) => this.failed(error));
  }

  private failed(error: unknown): void {
    if (error !== undefined) {
      this.log.debug('raft endpoint unreachable', { to: this.addr, code: toDogfsError(error).code });
    }
    this.socket?.destroy();
    this.socket = undefined;
    this.open = false;
    this.connecting = false;
    this.counters.batchesDropped += this.pending.length;
    this.pending = [];
    this.retryAt = Date.now() + RECONNECT_DELAY_MS;
  }

  close(): void {
    this.closed = true;
    this.socket?.destroy();
    this.socket = undefined;
    this.pending = [];
  }
}
