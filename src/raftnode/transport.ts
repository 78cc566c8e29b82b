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
 *
 * The receiving side bounds what a stranger who reaches the port can hold (FrameServerLimits): inbound
 * connections, the time to a first whole frame, the time a begun frame may take to arrive whole, and the
 * bytes of partial frames over all connections. A connection is bound to the sender its first accepted
 * frame names (from_node, which every message in a frame must repeat); a frame naming another is refused
 * and the connection closed, and a newer connection from the same sender replaces the older one. This
 * checks claims, not identity: anyone who can reach the port may still claim a known node id (no
 * authentication).
 */
import { createServer, type Server, type Socket, connect as tcpConnect } from 'node:net';
import { fromSourceAddress } from '../common/address.js';
import { AssertionError, assert } from '../common/assert.js';
import { type Logger, ThrottledWarning } from '../common/log.js';
import { DogfsError, toDogfsError } from '../wire/errors.js';
import { type RaftBatch, RaftTransportService } from '../wire/gen/types.js';
import { FRAME_ASSEMBLY_TIMEOUT_MS } from '../wire/lean-server.js';
import { decodeMessage, encodeMessage, type Init } from '../wire/proto.js';
import { DEFAULT_MAX_MESSAGE_BYTES, type RpcChannel } from '../wire/rpc.js';
import { MAX_MEMBERS } from './messages.js';

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

export interface FrameServerLimits {
  /** Inbound connections open at once; more are closed as they arrive. */
  readonly maxConnections: number;
  /** A connection must have delivered a whole, accepted frame within this of being accepted. */
  readonly firstFrameMs: number;
  /** A frame whose first bytes have arrived must be whole within this. */
  readonly frameAssemblyMs: number;
  /** Bytes of partial frames (their announced lengths) held over all connections together. */
  readonly maxAssemblingBytes: number;
}

export const DEFAULT_FRAME_SERVER_LIMITS: FrameServerLimits = {
  // Each peer keeps one connection to this node (a newer one from the same sender replaces the older),
  // and a group has at most MAX_MEMBERS members: twice that leaves room for every peer plus as many
  // connections not yet past their first frame (a peer reconnecting), while each open connection costs
  // little beyond its partial frame, which maxAssemblingBytes bounds.
  maxConnections: 2 * MAX_MEMBERS,
  // A peer only connects to send, and writes its queued batches as soon as it is connected: a connection
  // that has not delivered one whole frame in 10 s (a 16 MiB frame at 1.7 MB/s) is not a peer.
  firstFrameMs: 10_000,
  // As for a lean request arriving in pieces (wire/lean-server.ts): a sender that announces a frame and
  // stops would otherwise hold its share of maxAssemblingBytes for good.
  frameAssemblyMs: FRAME_ASSEMBLY_TIMEOUT_MS,
  // Sixteen largest frames at once, as the RPC server allows requests (wire/rpc.ts): far more than the
  // 3 or 5 metadata servers of a cluster send together, and 256 MiB rather than maxConnections × 16 MiB.
  maxAssemblingBytes: 16 * MAX_FRAME_BYTES,
};

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
 * (a broken or hostile peer), after which the connection is closed. A frame within one chunk is handed
 * on as a slice of it; one spanning chunks is assembled in a buffer of its announced length, each byte
 * copied once (joining the held part with every new chunk copied a 16 MiB frame arriving in 64 KiB reads
 * ~128 times over).
 */
export class FrameSplitter {
  /**
   * `admit` is asked before memory is taken for a frame that spans reads (with its announced length,
   * prefix included) and throws to refuse it: four bytes from a stranger must not cost 16 MiB first.
   */
  constructor(private readonly admit: (frameBytes: number) => void = () => {}) {}

  /** The length prefix of the next frame while it arrives in pieces. */
  private readonly prefix = Buffer.alloc(LENGTH_BYTES);
  private prefixFill = 0;
  /** The frame being assembled, once its prefix is in and it did not fit the chunk. */
  private frame: Buffer | undefined;
  private frameFill = 0;

  push(chunk: Buffer, onFrame: (body: Buffer) => void): void {
    let at = 0;
    // Each round consumes bytes or hands on a frame (a frame is at least its prefix): bounded by the chunk.
    while (at < chunk.byteLength) {
      if (this.frame !== undefined) {
        const n = Math.min(chunk.byteLength - at, this.frame.byteLength - this.frameFill);
        chunk.copy(this.frame, this.frameFill, at, at + n);
        this.frameFill += n;
        at += n;
        if (this.frameFill === this.frame.byteLength) {
          const whole = this.frame;
          this.frame = undefined;
          this.frameFill = 0;
          onFrame(whole);
        }
        continue;
      }
      let length: number;
      if (this.prefixFill === 0 && chunk.byteLength - at >= LENGTH_BYTES) {
        length = chunk.readUInt32BE(at);
        at += LENGTH_BYTES;
      } else {
        const n = Math.min(chunk.byteLength - at, LENGTH_BYTES - this.prefixFill);
        chunk.copy(this.prefix, this.prefixFill, at, at + n);
        this.prefixFill += n;
        at += n;
        if (this.prefixFill < LENGTH_BYTES) break;
        this.prefixFill = 0;
        length = this.prefix.readUInt32BE(0);
      }
      if (length > MAX_FRAME_BYTES) {
        throw new DogfsError('INVALID_ARGUMENT', `raft frame of ${length} bytes exceeds ${MAX_FRAME_BYTES}`);
      }
      if (chunk.byteLength - at >= length) {
        onFrame(chunk.subarray(at, at + length));
        at += length;
      } else {
        this.admit(LENGTH_BYTES + length);
        this.frame = Buffer.allocUnsafe(length);
        this.frameFill = 0;
      }
    }
  }

  /**
   * Bytes the frame begun and not yet whole will hold: its announced length (with its prefix) once the
   * prefix is in, else the bytes of the prefix so far (0 between frames).
   */
  get partialFrameBytes(): number {
    return this.frame === undefined ? this.prefixFill : LENGTH_BYTES + this.frame.byteLength;
  }
}

/** What FrameServer turned away or cut off, by reason; monotonically increasing. */
export interface FrameServerStats {
  /** Connections closed on arrival: maxConnections were open. */
  connectionsRefused: number;
  /** Connections closed for a frame that was malformed, refused by the host, or named another sender. */
  framesRefused: number;
  /** Connections closed for a first frame or a begun frame not whole in time. */
  deadlinesMissed: number;
  /** Connections closed because their partial frame would pass maxAssemblingBytes. */
  overBudget: number;
  /** Connections closed because a newer one from the same sender was accepted. */
  replaced: number;
}

/**
 * Accepts frames from peers and hands each decoded batch to `onBatch`, which validates and steps it
 * (throwing refuses it and closes the connection), within FrameServerLimits.
 */
export class FrameServer {
  private readonly server: Server;
  private readonly sockets = new Set<Socket>();
  /** The connection each sender's frames arrive on (the newest one its first frame named it on). */
  private readonly bySender = new Map<number, Socket>();
  private readonly limits: FrameServerLimits;
  /** Sum of every connection's FrameSplitter.partialFrameBytes, bounded by limits.maxAssemblingBytes. */
  private assemblingBytes = 0;
  private readonly refusedWarning: ThrottledWarning;
  private readonly cutWarning: ThrottledWarning;
  readonly stats: FrameServerStats = {
    connectionsRefused: 0,
    framesRefused: 0,
    deadlinesMissed: 0,
    overBudget: 0,
    replaced: 0,
  };
  /** Resolves with the listening port. */
  readonly port: Promise<number>;

  constructor(
    host: string,
    private readonly onBatch: (batch: RaftBatch) => void,
    private readonly log: Logger,
    limits: Partial<FrameServerLimits> = {},
  ) {
    this.limits = { ...DEFAULT_FRAME_SERVER_LIMITS, ...limits };
    assert(this.limits.maxConnections > 0, 'a frame server takes at least one connection');
    assert(this.limits.maxAssemblingBytes >= 0, 'a partial-frame budget is not negative');
    this.refusedWarning = new ThrottledWarning(log, 'raft connections refused: too many open');
    this.cutWarning = new ThrottledWarning(log, 'raft frame refused; closing the connection');
    this.server = createServer((socket) => this.accept(socket));
    // net closes a connection past the limit before any of our code sees it, and says so with 'drop'.
    this.server.maxConnections = this.limits.maxConnections;
    this.server.on('drop', (dropped) => {
      this.stats.connectionsRefused++;
      this.refusedWarning.warn({
        peer: dropped?.remoteAddress,
        maxConnections: this.limits.maxConnections,
        refused: this.stats.connectionsRefused,
      });
    });
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

  /** Inbound connections open now. */
  get connections(): number {
    return this.sockets.size;
  }

  /** Bytes of partial frames held over all connections (their announced lengths). */
  get partialFrameBytes(): number {
    return this.assemblingBytes;
  }

  private accept(socket: Socket): void {
    this.sockets.add(socket);
    socket.setNoDelay(true);
    /** The node this connection carries frames from, once its first frame has been accepted. */
    let sender: number | undefined;
    /** This connection's share of assemblingBytes. */
    let held = 0;
    let overBudget = false;
    const splitter = new FrameSplitter((frameBytes) => {
      // Only a connection whose share grows is refused: the budget is taken, not shared out afresh.
      if (frameBytes > held && this.assemblingBytes + frameBytes - held > this.limits.maxAssemblingBytes) {
        overBudget = true;
        throw new DogfsError(
          'RESOURCE_EXHAUSTED',
          `a ${frameBytes}-byte frame would pass the ${this.limits.maxAssemblingBytes} bytes of partial frames held`,
        );
      }
    });
    let assemblyTimer: NodeJS.Timeout | undefined;
    const cut = (stat: keyof FrameServerStats, code: string, error: string): void => {
      // A timer may fire between destroy() and 'close', which clears it.
      if (socket.destroyed) return;
      this.stats[stat]++;
      this.cutWarning.warn({ peer: socket.remoteAddress, sender, code, error });
      socket.destroy();
    };
    const firstFrameTimer = setTimeout(
      () =>
        cut('deadlinesMissed', 'DEADLINE_EXCEEDED', `no whole frame within ${this.limits.firstFrameMs} ms`),
      this.limits.firstFrameMs,
    ).unref();
    socket.on('data', (chunk: Buffer) => {
      let frames = 0;
      try {
        splitter.push(chunk, (body) => {
          frames++;
          let batch: RaftBatch;
          try {
            batch = decodeMessage('dogfs.v1.RaftBatch', body);
          } catch (error) {
            throw new DogfsError('INVALID_ARGUMENT', 'malformed raft frame', { cause: error });
          }
          checkSender(batch, sender);
          this.onBatch(batch);
          if (sender === undefined) {
            sender = batch.fromNode;
            clearTimeout(firstFrameTimer);
            this.bind(sender, socket);
          }
        });
      } catch (error) {
        // A broken invariant of this node (the core's or the host's) is no peer's fault: the state may
        // be half changed, so the process must not go on as if a frame had merely been refused.
        if (error instanceof AssertionError) throw error;
        // A peer that sends what we cannot take is cut off; Raft treats it as a network fault.
        const e = toDogfsError(error);
        cut(overBudget ? 'overBudget' : 'framesRefused', e.code, e.message);
        return;
      }
      const partial = splitter.partialFrameBytes;
      // Only a connection whose share grows is refused: the budget is taken, not shared out afresh.
      if (partial > held && this.assemblingBytes + partial - held > this.limits.maxAssemblingBytes) {
        cut(
          'overBudget',
          'RESOURCE_EXHAUSTED',
          `a ${partial}-byte frame would pass the ${this.limits.maxAssemblingBytes} bytes of partial frames held`,
        );
        return;
      }
      this.assemblingBytes += partial - held;
      held = partial;
      if (partial === 0) {
        clearTimeout(assemblyTimer);
        assemblyTimer = undefined;
        return;
      }
      // The deadline runs from a frame's first bytes: armed when a frame begins, not moved while it arrives.
      if (frames > 0 || assemblyTimer === undefined) {
        clearTimeout(assemblyTimer);
        assemblyTimer = setTimeout(
          () =>
            cut(
              'deadlinesMissed',
              'DEADLINE_EXCEEDED',
              `a ${partial}-byte frame not whole within ${this.limits.frameAssemblyMs} ms`,
            ),
          this.limits.frameAssemblyMs,
        ).unref();
      }
    });
    socket.on('error', () => {
      // 'close' follows; a reset peer is an ordinary network fault.
    });
    socket.on('close', () => {
      clearTimeout(firstFrameTimer);
      clearTimeout(assemblyTimer);
      this.assemblingBytes -= held;
      held = 0;
      assert(this.assemblingBytes >= 0, 'partial-frame bytes given back no more than taken');
      this.sockets.delete(socket);
      if (sender !== undefined && this.bySender.get(sender) === socket) this.bySender.delete(sender);
    });
  }

  /**
   * Makes `socket` the connection of `sender`. A peer opens a new connection only after giving up the
   * old one, which may linger here unseen (a peer restarted, or gone without a reset): replacing it keeps
   * the connections of known senders to one each, so stale ones cannot fill maxConnections.
   */
  private bind(sender: number, socket: Socket): void {
    const previous = this.bySender.get(sender);
    this.bySender.set(sender, socket);
    if (previous === undefined || previous === socket) return;
    this.stats.replaced++;
    this.log.debug('raft connection replaced by a newer one from the same sender', { sender });
    previous.destroy();
  }

  close(): void {
    this.server.close();
    for (const socket of this.sockets) socket.destroy();
    this.sockets.clear();
  }
}

/**
 * What a frame claims about its sender: at least one message, every one from the batch's `from_node`,
 * and that the connection's sender once it has one. (Whether the sender is a member the host knows is
 * the host's check, on every message.)
 */
function checkSender(batch: RaftBatch, sender: number | undefined): void {
  if (batch.messages.length === 0) throw new DogfsError('INVALID_ARGUMENT', 'raft batch without messages');
  if (sender !== undefined && batch.fromNode !== sender) {
    throw new DogfsError(
      'PERMISSION_DENIED',
      `raft frame from node ${batch.fromNode} on the connection of node ${sender}`,
    );
  }
  // Bounded by the frame: at most MAX_FRAME_BYTES of messages.
  for (const message of batch.messages) {
    if (message.from !== batch.fromNode) {
      throw new DogfsError(
        'PERMISSION_DENIED',
        `raft message from node ${message.from} in a batch from node ${batch.fromNode}`,
      );
    }
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
        const socket = tcpConnect(fromSourceAddress({ host, port, noDelay: true }));
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
