import assert from 'node:assert/strict';
import { connect, type Socket } from 'node:net';
import { after, test } from 'node:test';
import { createLogger } from '../../src/common/log.js';
import {
  encodeFrame,
  type FrameCounters,
  FramePeer,
  FrameServer,
  type FrameServerLimits,
  FrameSplitter,
  MAX_FRAME_BYTES,
} from '../../src/raftnode/transport.js';
import { DogfsError } from '../../src/wire/errors.js';
import { type RaftBatch, RaftMessageType, RaftTransportService } from '../../src/wire/gen/types.js';
import { RpcChannel, RpcServer } from '../../src/wire/rpc.js';
import { waitFor } from '../helpers/index.js';

const log = createLogger('error');
const cleanups: (() => Promise<void> | void)[] = [];
after(async () => {
  for (const c of cleanups.reverse()) await c();
});

function heartbeat(readSeq: number, from = 2) {
  return { group: 1, type: RaftMessageType.HEARTBEAT, from, to: 1, term: 3, readSeq };
}

test('frames split across any chunk boundaries come out whole and in order', () => {
  const frames = [1, 2, 3].map((n) => encodeFrame({ fromNode: 2, messages: [heartbeat(n)] }));
  const stream = Buffer.concat(frames);
  for (const step of [1, 3, 7, stream.byteLength]) {
    const splitter = new FrameSplitter();
    const bodies: Buffer[] = [];
    for (let at = 0; at < stream.byteLength; at += step) {
      splitter.push(stream.subarray(at, at + step), (b) => bodies.push(Buffer.from(b)));
    }
    assert.deepEqual(
      bodies,
      frames.map((f) => f.subarray(4)),
      `chunks of ${step} bytes`,
    );
  }
});

test('a large frame among small ones, in reads of any size, comes out whole; held bytes are its announced size', () => {
  const big = { ...heartbeat(7), entries: [{ term: 3, index: 9, data: Buffer.alloc(200_000, 0xab) }] };
  const frames = [
    encodeFrame({ fromNode: 2, messages: [heartbeat(1)] }),
    encodeFrame({ fromNode: 2, messages: [big] }),
    encodeFrame({ fromNode: 2, messages: [heartbeat(2)] }),
  ];
  const stream = Buffer.concat(frames);
  for (const step of [1, 3, 4, 5, 4093, 65_536, stream.byteLength]) {
    const splitter = new FrameSplitter();
    const bodies: Buffer[] = [];
    for (let at = 0; at < stream.byteLength; at += step) {
      splitter.push(stream.subarray(at, at + step), (b) => bodies.push(Buffer.from(b)));
      const partial = splitter.partialFrameBytes;
      // Inside the big frame (past its prefix and not yet whole) the splitter holds its announced size.
      const end = at + step;
      if (end >= frames[0]!.byteLength + 4 && end < frames[0]!.byteLength + frames[1]!.byteLength)
        assert.equal(partial, frames[1]!.byteLength, `held inside the big frame, chunks of ${step}`);
    }
    assert.equal(splitter.partialFrameBytes, 0);
    assert.deepEqual(
      bodies,
      frames.map((f) => f.subarray(4)),
      `chunks of ${step} bytes`,
    );
  }
});

test('a frame claiming more than the limit is refused before its bytes arrive', () => {
  const header = Buffer.alloc(4);
  header.writeUInt32BE(MAX_FRAME_BYTES + 1);
  assert.throws(
    () => new FrameSplitter().push(header, () => assert.fail('no frame expected')),
    (e: unknown) => e instanceof DogfsError && e.code === 'INVALID_ARGUMENT',
  );
});

interface Receiver {
  addr: string;
  received: RaftBatch[];
  /** The frame listener (another one after a restart). */
  frames: () => FrameServer;
  /** Closes the frame listener and its connections and listens anew (on another port). */
  restart: () => void;
}

async function startReceiver(limits: Partial<FrameServerLimits> = {}, logger = log): Promise<Receiver> {
  const received: RaftBatch[] = [];
  let frames = new FrameServer('127.0.0.1', (batch) => received.push(batch), logger, limits);
  const server = new RpcServer();
  server.addService(RaftTransportService, {
    Send: () => ({}),
    Endpoint: async () => ({ port: await frames.port }),
  });
  const port = await server.listen('127.0.0.1', 0);
  cleanups.push(() => server.close(0));
  cleanups.push(() => frames.close());
  const restart = () => {
    frames.close();
    frames = new FrameServer('127.0.0.1', (batch) => received.push(batch), logger, limits);
  };
  return { addr: `127.0.0.1:${port}`, received, frames: () => frames, restart };
}

interface RawConnection {
  socket: Socket;
  /** Whether the server has closed the connection (or it failed). */
  closed: () => boolean;
}

/** A plain TCP connection to a frame port, connected, writing whatever a test hands it. */
async function rawConnection(port: number): Promise<RawConnection> {
  const socket = connect({ host: '127.0.0.1', port });
  let closed = false;
  socket.on('error', () => {});
  socket.on('close', () => {
    closed = true;
  });
  socket.resume();
  cleanups.push(() => {
    socket.destroy();
  });
  await new Promise<void>((resolve, reject) => {
    socket.once('connect', () => resolve());
    socket.once('error', reject);
  });
  return { socket, closed: () => closed };
}

function newPeer(addr: string): { peer: FramePeer; counters: FrameCounters } {
  const counters: FrameCounters = { batchesSent: 0, batchesDropped: 0, messagesSent: 0, connects: 0 };
  const channel = new RpcChannel(addr);
  const peer = new FramePeer(addr, channel, counters, log);
  cleanups.push(() => {
    peer.close();
    channel.close();
  });
  return { peer, counters };
}

test('batches reach the peer over one connection, in order; a garbage frame cuts off only its sender', async () => {
  const { addr, received } = await startReceiver();
  const { peer, counters } = newPeer(addr);
  for (let i = 1; i <= 50; i++) peer.send({ fromNode: 2, messages: [heartbeat(i)] }, 1);
  await waitFor('50 batches', () => received.length === 50);
  assert.deepEqual(
    received.map((b) => b.messages[0]!.readSeq),
    Array.from({ length: 50 }, (_, i) => i + 1),
  );
  assert.equal(counters.connects, 1);
  assert.equal(counters.batchesDropped, 0);

  // A raw connection sending a frame that is not a RaftBatch: refused, connection closed, nothing delivered.
  const channel = new RpcChannel(addr);
  const { port } = await channel.call(RaftTransportService, 'Endpoint', {});
  channel.close();
  const raw = connect({ host: '127.0.0.1', port });
  const garbage = Buffer.from([0, 0, 0, 3, 0xff, 0xff, 0xff]);
  raw.write(garbage);
  await new Promise<void>((resolve) => raw.once('close', () => resolve()));
  assert.equal(received.length, 50);

  peer.send({ fromNode: 2, messages: [heartbeat(51)] }, 1);
  await waitFor('the good peer still delivers', () => received.length === 51);
});

test('a peer that is down gets batches dropped and counted; a lost connection is made again', async () => {
  const down = newPeer('127.0.0.1:1');
  down.peer.send({ fromNode: 2, messages: [heartbeat(1)] }, 1);
  await waitFor('the failed connection attempt is counted', () => down.counters.batchesDropped >= 1);
  assert.equal(down.counters.connects, 0);

  const receiver = await startReceiver();
  const { peer, counters } = newPeer(receiver.addr);
  peer.send({ fromNode: 2, messages: [heartbeat(1)] }, 1);
  await waitFor('first delivery', () => receiver.received.length === 1);
  receiver.restart();
  // Raft keeps sending (heartbeats every tick); the peer reconnects to the new port it is told.
  await waitFor(
    'delivery after the reconnect',
    () => {
      peer.send({ fromNode: 2, messages: [heartbeat(2)] }, 1);
      return receiver.received.length > 1;
    },
    10_000,
    50,
  );
  assert.equal(receiver.received.at(-1)!.messages[0]!.readSeq, 2);
  assert.equal(counters.connects, 2);
});

test('connections past the cap are closed on arrival and counted, logged once; the peer already connected keeps delivering', async () => {
  const lines: string[] = [];
  const warnings = createLogger('warn', {}, (line) => lines.push(line));
  const receiver = await startReceiver({ maxConnections: 2 }, warnings);
  const frames = receiver.frames();
  const { peer, counters } = newPeer(receiver.addr);
  peer.send({ fromNode: 2, messages: [heartbeat(1)] }, 1);
  await waitFor('first delivery', () => receiver.received.length === 1);

  // One more connection fills the cap; it is accepted (and stays, until its first-frame deadline).
  const port = await frames.port;
  const filler = await rawConnection(port);
  await waitFor('the second connection accepted', () => frames.connections === 2);
  const extra: RawConnection[] = [];
  for (let i = 0; i < 3; i++) extra.push(await rawConnection(port));
  await waitFor('the connections past the cap closed', () => extra.every((c) => c.closed()));
  assert.equal(frames.stats.connectionsRefused, 3);
  assert.equal(filler.closed(), false);
  const refusals = lines.filter((l) => l.includes('raft connections refused'));
  assert.equal(refusals.length, 1, 'one line for a burst of refusals');

  for (let i = 2; i <= 10; i++) peer.send({ fromNode: 2, messages: [heartbeat(i)] }, 1);
  await waitFor('the connected peer still delivers', () => receiver.received.length === 10);
  assert.equal(counters.connects, 1);
  assert.equal(counters.batchesDropped, 0);
});

test('a connection that sends no whole frame in time is closed', async () => {
  const receiver = await startReceiver({ firstFrameMs: 200 });
  const frames = receiver.frames();
  const silent = await rawConnection(await frames.port);
  // Two bytes of a length prefix: begun, never finished.
  silent.socket.write(Buffer.from([0, 0]));
  await waitFor('the silent connection closed', silent.closed, 5_000);
  assert.equal(frames.stats.deadlinesMissed, 1);
});

test('a frame announced but not delivered within the assembly deadline gets its connection closed', async () => {
  // Long enough for the slow frame's second piece to arrive in time on a loaded machine.
  const receiver = await startReceiver({ frameAssemblyMs: 2000 });
  const frames = receiver.frames();
  const port = await frames.port;

  // A frame that arrives in pieces, each in time, is taken.
  const slow = await rawConnection(port);
  const whole = encodeFrame({ fromNode: 2, messages: [heartbeat(1)] });
  slow.socket.write(whole.subarray(0, 6));
  await waitFor('the first piece held', () => frames.partialFrameBytes === whole.byteLength);
  slow.socket.write(whole.subarray(6));
  await waitFor('the frame delivered', () => receiver.received.length === 1);

  // Then a frame announced at 100 bytes of which 10 arrive: the connection is closed at the deadline,
  // and the partial-frame bytes it held are given back.
  const header = Buffer.alloc(4);
  header.writeUInt32BE(100);
  slow.socket.write(Buffer.concat([header, Buffer.alloc(10)]));
  await waitFor('the connection holding a partial frame closed', slow.closed, 5_000);
  assert.equal(frames.stats.deadlinesMissed, 1);
  assert.equal(receiver.received.length, 1);
  await waitFor('no connection left', () => frames.connections === 0);
});

test('partial frames over all connections are bounded: the one that would pass the budget is closed', async () => {
  const receiver = await startReceiver({ maxAssemblingBytes: 1000 });
  const frames = receiver.frames();
  const port = await frames.port;
  const big = (from: number) => {
    const frame = encodeFrame({
      fromNode: from,
      messages: [{ ...heartbeat(1, from), ctx: 'x'.repeat(600) }],
    });
    assert.ok(frame.byteLength > 600 && frame.byteLength < 1000);
    return frame;
  };
  const first = await rawConnection(port);
  const second = await rawConnection(port);
  const a = big(2);
  const b = big(3);
  first.socket.write(a.subarray(0, 100));
  await waitFor('the first partial frame held', () => frames.partialFrameBytes === a.byteLength);
  second.socket.write(b.subarray(0, 100));
  await waitFor('the connection passing the budget closed', second.closed, 5_000);
  assert.equal(frames.stats.overBudget, 1);
  // The first is still served: its frame, finished, is delivered.
  first.socket.write(a.subarray(100));
  await waitFor('the first frame delivered', () => receiver.received.length === 1);
  assert.equal(receiver.received[0]!.fromNode, 2);
  assert.equal(first.closed(), false);
});

test('a connection is bound to the sender of its first frame: another sender, or a message from another node, closes it', async () => {
  const receiver = await startReceiver();
  const frames = receiver.frames();
  const port = await frames.port;

  const switching = await rawConnection(port);
  switching.socket.write(encodeFrame({ fromNode: 2, messages: [heartbeat(1, 2)] }));
  await waitFor('the first frame delivered', () => receiver.received.length === 1);
  switching.socket.write(encodeFrame({ fromNode: 3, messages: [heartbeat(2, 3)] }));
  await waitFor('the connection switching sender closed', switching.closed, 5_000);
  assert.equal(receiver.received.length, 1);
  assert.equal(frames.stats.framesRefused, 1);

  // A batch whose messages claim another sender than the batch itself, even as a first frame.
  const mixed = await rawConnection(port);
  mixed.socket.write(encodeFrame({ fromNode: 2, messages: [heartbeat(3, 2), heartbeat(4, 3)] }));
  await waitFor('the connection mixing senders closed', mixed.closed, 5_000);
  // And an empty batch, which names a sender without a message the host could check.
  const empty = await rawConnection(port);
  empty.socket.write(encodeFrame({ fromNode: 2, messages: [] }));
  await waitFor('the connection sending an empty batch closed', empty.closed, 5_000);
  assert.equal(receiver.received.length, 1);
  assert.equal(frames.stats.framesRefused, 3);
});

test('a newer connection from a sender replaces its older one', async () => {
  const receiver = await startReceiver();
  const frames = receiver.frames();
  const port = await frames.port;
  const older = await rawConnection(port);
  older.socket.write(encodeFrame({ fromNode: 2, messages: [heartbeat(1, 2)] }));
  await waitFor('the older connection delivers', () => receiver.received.length === 1);
  const other = await rawConnection(port);
  other.socket.write(encodeFrame({ fromNode: 3, messages: [heartbeat(2, 3)] }));
  const newer = await rawConnection(port);
  newer.socket.write(encodeFrame({ fromNode: 2, messages: [heartbeat(3, 2)] }));
  await waitFor('the older connection closed', older.closed, 5_000);
  await waitFor('every frame delivered', () => receiver.received.length === 3);
  assert.equal(frames.stats.replaced, 1);
  assert.equal(other.closed(), false);
  assert.equal(newer.closed(), false);
  assert.equal(frames.connections, 2);
});
