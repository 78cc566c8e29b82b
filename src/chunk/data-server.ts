/**
 * chunk/data-server — the chunk server's side of the data-transfer protocol (proto/dogfs/v1/chunk.proto,
 * framing in wire/data-transfer.ts) over plain TCP.
 *
 * Limits, all explicit: connections; concurrent writes and reads; bytes in flight (each operation
 * reserves two packets — the one on its way to disk or to the socket and the one being received or
 * read). Beyond them an operation is refused with RESOURCE_EXHAUSTED instead of queuing in memory.
 * Back-pressure: a write reads its socket only as fast as the disk takes the bytes; a read reads the
 * disk only as fast as the socket drains.
 * Receiving: each accepted socket reads into its own receive arena (wire/data-transfer.ts,
 * `adoptAcceptedSocket`), large reads into reused memory; a write gives a packet's memory back once the
 * packet is on disk.
 */
import { createServer, type Server, type Socket } from 'node:net';
// Only the checksum modules: the chunk server needs no erasure-coding backend in memory.
import { chunkAlignedRange } from '../codec/checksum.js';
import { type Logger, ThrottledWarning } from '../common/log.js';
import { listenOn } from '../daemon/listen.js';
import {
  adoptAcceptedSocket,
  checkShardId,
  checkWireInteger,
  chunksIn,
  DATA_CHUNK_SIZE,
  DEFAULT_DATA_TIMEOUT_MS,
  DEFAULT_PACKET_BYTES,
  DEFAULT_READ_AHEAD_BYTES,
  dataOperationMs,
  encodeFrame,
  FrameReader,
  formatShardId,
  MAX_PACKET_BYTES,
  MAX_SHARD_BYTES,
} from '../wire/data-transfer.js';
import { DogfsError, toDogfsError } from '../wire/errors.js';
import { DataOp, type DataRequestHeader } from '../wire/gen/types.js';
import type { ChunkMetrics } from './metrics.js';
import { diskFailure, type ShardReader, type ShardStore, type ShardWriteSession } from './store.js';

export interface DataServerLimits {
  maxConnections: number;
  maxConcurrentWrites: number;
  maxConcurrentReads: number;
  /** Bytes of shard data the server may hold in memory across all operations. */
  maxBytesInFlight: number;
  /** A connection with no operation for this long is closed. */
  idleTimeoutMs: number;
}

export const DEFAULT_DATA_SERVER_LIMITS: DataServerLimits = {
  maxConnections: 1024,
  maxConcurrentWrites: 128,
  maxConcurrentReads: 256,
  maxBytesInFlight: 384 * 1024 * 1024,
  idleTimeoutMs: 120_000,
};

/**
 * Bytes a connection's socket may read ahead of the operation consuming them: without read-ahead the
 * socket stops and restarts (syscalls and an event-loop turn) for every 64 KiB. Counted in each write's
 * budget.
 */
const SOCKET_READ_AHEAD_BYTES = DEFAULT_READ_AHEAD_BYTES;

/** Largest packet the server sends on reads, whatever the client asks for. */
const MAX_READ_PACKET_BYTES = DEFAULT_PACKET_BYTES;

function packetSizeOf(requested: number): number {
  if (requested === 0) return DEFAULT_PACKET_BYTES;
  checkWireInteger(requested, MAX_PACKET_BYTES, 'packet size');
  if (requested % DATA_CHUNK_SIZE !== 0) {
    throw new DogfsError(
      'INVALID_ARGUMENT',
      `packet size ${requested} is not a multiple of ${DATA_CHUNK_SIZE}`,
    );
  }
  return requested;
}

/**
 * The deadline an operation runs under: the one its request asks for (`askedMs`, 0 for none: a minute),
 * at most 30 minutes away, or as long as its `bytes` take at 64 KiB/s (wire/data-transfer.ts).
 */
export function operationDeadline(askedMs: number, bytes: number, nowMs: number): number {
  const asked = askedMs === 0 ? nowMs + DEFAULT_DATA_TIMEOUT_MS : askedMs;
  return Math.min(asked, nowMs + dataOperationMs(bytes));
}

export class DataServer {
  private readonly server: Server;
  private readonly sockets = new Set<Socket>();
  private writes = 0;
  private reads = 0;
  private bytesInFlight = 0;
  private readonly limits: DataServerLimits;

  /** Failed disk calls of data transfers (the client is told; this tells the operator). */
  private readonly diskWarning: ThrottledWarning | undefined;

  constructor(
    private readonly store: ShardStore,
    private readonly metrics: ChunkMetrics,
    private readonly log: Logger | undefined,
    limits: Partial<DataServerLimits> = {},
  ) {
    this.limits = { ...DEFAULT_DATA_SERVER_LIMITS, ...limits };
    this.diskWarning = log === undefined ? undefined : new ThrottledWarning(log, 'disk call failed');
    // Paused on connect: nothing is read before the socket is adopted into a receive arena.
    this.server = createServer({ noDelay: true, pauseOnConnect: true }, (socket) => this.accept(socket));
    this.server.maxConnections = this.limits.maxConnections;
  }

  get activeWrites(): number {
    return this.writes;
  }
  get activeReads(): number {
    return this.reads;
  }
  get openConnections(): number {
    return this.sockets.size;
  }

  listen(host: string, port: number): Promise<number> {
    return listenOn(this.server, host, port, 'data');
  }

  /** Stops accepting, cuts every connection (writes in progress are discarded, as after a crash). */
  close(): Promise<void> {
    for (const socket of this.sockets) socket.destroy();
    return new Promise((resolve) => this.server.close(() => resolve()));
  }

  private accept(accepted: Socket): void {
    const reader = new FrameReader(undefined, SOCKET_READ_AHEAD_BYTES);
    const socket = adoptAcceptedSocket(accepted, reader);
    this.sockets.add(socket);
    this.metrics.add('data_connections_accepted');
    socket.on('error', () => {});
    socket.setTimeout(this.limits.idleTimeoutMs, () => socket.destroy());
    socket.once('close', () => this.sockets.delete(socket));
    this.serve(socket, reader).catch((error: unknown) => {
      this.log?.error('data connection failed', { error });
      socket.destroy();
    });
  }

  /** One operation after another on a connection, until it closes or an operation fails. */
  private async serve(socket: Socket, reader: FrameReader): Promise<void> {
    for (;;) {
      let request: DataRequestHeader | undefined;
      try {
        request = await reader.readFrame('dogfs.v1.DataRequestHeader');
      } catch (error) {
        this.refuse(socket, toDogfsError(error, 'UNAVAILABLE'), 'request');
        return;
      }
      if (request === undefined) {
        socket.end();
        return;
      }
      const keepGoing =
        request.op === DataOp.WRITE_SHARD
          ? await this.serveWrite(socket, reader, request)
          : request.op === DataOp.READ_SHARD
            ? await this.serveRead(socket, request)
            : this.refuse(
                socket,
                new DogfsError('INVALID_ARGUMENT', `unknown data op ${request.op}`),
                'request',
              );
      if (!keepGoing) return;
      reader.trim();
    }
  }

  /** Answers an error and closes the connection once the answer is out. Returns false (stop serving). */
  private refuse(socket: Socket, error: DogfsError, op: string): false {
    this.metrics.error(error.code);
    if (error.code !== 'UNAVAILABLE' && error.code !== 'CANCELLED') {
      this.log?.debug('data op refused', { op, code: error.code, message: error.message });
    }
    if (!socket.destroyed) {
      socket.end(encodeFrame('dogfs.v1.DataResponseHeader', { code: error.code, message: error.message }));
      // Stop reading what the client keeps sending; the end() above flushes our answer first.
      socket.pause();
      setTimeout(() => socket.destroy(), 5_000).unref();
    }
    return false;
  }

  private deadlineOf(request: DataRequestHeader): number {
    return operationDeadline(request.deadlineMs, request.length, Date.now());
  }

  /** Runs `work` under a deadline: when it passes, the socket is destroyed, failing whatever awaits it. */
  private withDeadline<T>(
    socket: Socket,
    deadline: number,
    work: (expired: () => boolean) => Promise<T>,
  ): Promise<T> {
    let expired = false;
    const timer = setTimeout(
      () => {
        expired = true;
        socket.destroy();
      },
      Math.max(0, deadline - Date.now()),
    );
    return work(() => expired).finally(() => clearTimeout(timer));
  }

  private async serveWrite(
    socket: Socket,
    reader: FrameReader,
    request: DataRequestHeader,
  ): Promise<boolean> {
    let shardId: ReturnType<typeof checkShardId>;
    let packetSize: number;
    try {
      shardId = checkShardId(request.shard);
      checkWireInteger(request.length, MAX_SHARD_BYTES, 'shard length');
      packetSize = packetSizeOf(request.packetSize);
    } catch (error) {
      return this.refuse(socket, toDogfsError(error), 'write');
    }
    const reservation = 2 * packetSize;
    if (
      this.writes >= this.limits.maxConcurrentWrites ||
      this.bytesInFlight + reservation > this.limits.maxBytesInFlight
    ) {
      return this.refuse(
        socket,
        new DogfsError(
          'RESOURCE_EXHAUSTED',
          `chunk server busy: ${this.writes} writes, ${this.bytesInFlight} bytes in flight; retry later`,
        ),
        'write',
      );
    }
    this.writes++;
    this.bytesInFlight += reservation;
    let session: ShardWriteSession | undefined;
    const deadline = this.deadlineOf(request);
    try {
      return await this.withDeadline(socket, deadline, async (expired) => {
        try {
          session = await this.store.beginWrite(shardId, request.length);
          // The packet on its way to disk: its receive memory is given back once it is written.
          let writing: Buffer[] = [];
          while (session.received < request.length) {
            const packet = await reader.readFrame('dogfs.v1.DataPacketHeader');
            if (packet === undefined) throw new DogfsError('UNAVAILABLE', 'connection closed mid-write');
            if (packet.length === 0 || packet.length > packetSize) {
              throw new DogfsError(
                'INVALID_ARGUMENT',
                `packet of ${packet.length} bytes (limit ${packetSize})`,
              );
            }
            if (packet.chunkCrc32c.length !== chunksIn(packet.length)) {
              throw new DogfsError(
                'INVALID_ARGUMENT',
                `packet of ${packet.length} bytes with ${packet.chunkCrc32c.length} checksums`,
              );
            }
            const slices = await reader.readPayload(packet.length);
            // Resolves once the previous packet is written (and this one is on its way).
            await session.append(slices, packet.length, packet.chunkCrc32c);
            reader.release(writing);
            writing = slices;
            if (session.copiesPackets) {
              // Direct writes copied the packet into staging memory: its receive memory is free now.
              reader.release(writing);
              writing = [];
            }
          }
          const trailer = await reader.readFrame('dogfs.v1.WriteShardTrailer');
          if (trailer === undefined)
            throw new DogfsError('UNAVAILABLE', 'connection closed before the trailer');
          if (trailer.length !== request.length) {
            throw new DogfsError(
              'INVALID_ARGUMENT',
              `trailer length ${trailer.length} differs from ${request.length}`,
            );
          }
          // Past the deadline the writer has been told the write failed (its socket is cut): the rest
          // of the shard may still have been in the receive buffer, but it must not appear now. Nor when
          // the writer is gone (its own timeout, a destroyed stream): it will not record the shard.
          if (expired()) throw new DogfsError('DEADLINE_EXCEEDED', 'write deadline exceeded');
          if (socket.destroyed) throw new DogfsError('CANCELLED', 'the writer went away before the commit');
          const record = await session.commit(trailer.crc32c);
          if (expired() || socket.destroyed) {
            // The deadline passed, or the writer left, during the commit (fdatasync, rename): the writer
            // will not record the shard, so it goes rather than stay an orphan.
            await this.store.delete(shardId, record.mtimeMs);
            throw expired()
              ? new DogfsError('DEADLINE_EXCEEDED', 'write deadline exceeded')
              : new DogfsError('CANCELLED', 'the writer went away during the commit');
          }
          reader.release(writing);
          this.metrics.add('shards_written');
          this.metrics.add('bytes_written', record.length);
          socket.write(
            encodeFrame('dogfs.v1.DataResponseHeader', {
              code: 'OK',
              length: record.length,
              crc32c: record.crc32c,
            }),
          );
          return true;
        } catch (error) {
          await session?.abort();
          const failure = expired()
            ? new DogfsError('DEADLINE_EXCEEDED', `write ${formatShardId(shardId)}: deadline exceeded`)
            : toDogfsError(diskFailure(error, `write ${formatShardId(shardId)}`, this.diskWarning));
          if (failure.code === 'INTERNAL')
            this.log?.error('write failed', { shard: formatShardId(shardId), error });
          return this.refuse(socket, failure, 'write');
        }
      });
    } finally {
      this.writes--;
      this.bytesInFlight -= reservation;
    }
  }

  private async serveRead(socket: Socket, request: DataRequestHeader): Promise<boolean> {
    let shardId: ReturnType<typeof checkShardId>;
    let packetSize: number;
    try {
      shardId = checkShardId(request.shard);
      checkWireInteger(request.offset, MAX_SHARD_BYTES, 'read offset');
      checkWireInteger(request.length, MAX_SHARD_BYTES, 'read length');
      packetSize = Math.min(packetSizeOf(request.packetSize), MAX_READ_PACKET_BYTES);
    } catch (error) {
      return this.refuse(socket, toDogfsError(error), 'read');
    }
    const reservation = 2 * packetSize;
    if (
      this.reads >= this.limits.maxConcurrentReads ||
      this.bytesInFlight + reservation > this.limits.maxBytesInFlight
    ) {
      return this.refuse(
        socket,
        new DogfsError(
          'RESOURCE_EXHAUSTED',
          `chunk server busy: ${this.reads} reads in progress; retry later`,
        ),
        'read',
      );
    }
    this.reads++;
    this.bytesInFlight += reservation;
    let shard: ShardReader | undefined;
    let headerSent = false;
    // Packets the socket may still be sending from the shard's buffers, and reads still filling them:
    // the buffers go back at the shard's close, after both.
    const flushed: (Promise<void> | undefined)[] = [];
    const reading: { read: ReturnType<ShardReader['readChunks']>; turn: number; bytes: number }[] = [];
    const deadline = this.deadlineOf(request);
    try {
      return await this.withDeadline(socket, deadline, async (expired) => {
        try {
          shard = await this.store.openRead(shardId);
          if (request.offset > shard.length) {
            throw new DogfsError(
              'INVALID_ARGUMENT',
              `offset ${request.offset} is past the shard's end (${shard.length})`,
            );
          }
          const end = Math.min(shard.length, request.offset + request.length);
          // Whole chunks go out so the reader can verify them; it trims to what it asked for.
          const aligned = chunkAlignedRange(
            request.offset,
            end - request.offset,
            shard.length,
            DATA_CHUNK_SIZE,
          );
          const alignedStart = aligned.start;
          const alignedEnd = aligned.end;
          socket.write(
            encodeFrame('dogfs.v1.DataResponseHeader', {
              code: 'OK',
              offset: alignedStart,
              length: alignedEnd - alignedStart,
              shardLength: shard.length,
            }),
          );
          headerSent = true;
          // Buffers take turns: some are being filled from disk while the others drain to the socket.
          // Two through the page cache (its read-ahead keeps the disk busy); three for direct reads,
          // which have no read-ahead but ours: several reads in flight keep the disk streaming.
          // Direct buffers come from the store's read pool, bounded there.
          const buffers = shard.packetBuffers(packetSize);
          let next = alignedStart;
          let turn = 0;
          for (;;) {
            while (reading.length < buffers.length && next < alignedEnd) {
              // The buffer last sent `buffers.length` packets ago: free once the socket has taken it.
              await flushed[turn];
              const bytes = Math.min(packetSize, alignedEnd - next);
              const read = shard.readChunks(next, bytes, buffers[turn]!);
              read.catch(() => {}); // Awaited in order below; a failure is handled there.
              reading.push({ read, turn, bytes });
              next += bytes;
              turn = (turn + 1) % buffers.length;
            }
            const head = reading[0];
            if (head === undefined) break;
            if (socket.destroyed) throw new DogfsError('CANCELLED', 'reader went away');
            const { data, crcs } = await head.read;
            reading.shift();
            socket.cork();
            socket.write(encodeFrame('dogfs.v1.DataPacketHeader', { length: head.bytes, chunkCrc32c: crcs }));
            flushed[head.turn] = new Promise<void>((resolve) => socket.write(data, () => resolve()));
            socket.uncork();
            this.metrics.add('bytes_read', head.bytes);
          }
          await Promise.all(flushed);
          this.metrics.add('shards_read');
          return !socket.destroyed;
        } catch (error) {
          const failure = expired()
            ? new DogfsError('DEADLINE_EXCEEDED', `read ${formatShardId(shardId)}: deadline exceeded`)
            : toDogfsError(diskFailure(error, `read ${formatShardId(shardId)}`, this.diskWarning));
          if (!headerSent) return this.refuse(socket, failure, 'read');
          this.metrics.error(failure.code);
          if (!socket.destroyed) {
            socket.end(
              encodeFrame('dogfs.v1.DataPacketHeader', {
                errorCode: failure.code,
                errorMessage: failure.message,
              }),
            );
          }
          // Packets still queued wait here, under the deadline (which destroys the socket), rather than
          // in the `finally`, where a client that stopped reading held the read's slot, pool buffer and
          // files until the idle timeout, or for good while it kept the connection alive.
          await Promise.all(flushed);
          return false;
        }
      });
    } finally {
      // A socket calls back every write it was given, sent or not (destroyed): then the memory is free.
      await Promise.all(flushed);
      await Promise.allSettled(reading.map((r) => r.read));
      try {
        await shard?.close();
      } finally {
        // The limits' counts come back even if closing failed (which then surfaces to the caller).
        this.reads--;
        this.bytesInFlight -= reservation;
      }
    }
  }
}
