import assert from 'node:assert/strict';
import { connect } from 'node:net';
import { after, test } from 'node:test';
import { createLogger } from '../../src/common/log.js';
import {
  encodeFrame,
  type FrameCounters,
  FramePeer,
  FrameServer,
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

function heartbeat(readSeq: number) {
  return { group: 1, type: RaftMessageType.HEARTBEAT, from: 2, to: 1, term: 3, readSeq };
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
  /** Closes the frame listener and its connections and listens anew (on another port). */
  restart: () => void;
}

async function startReceiver(): Promise<Receiver> {
  const received: RaftBatch[] = [];
  let frames = new FrameServer('127.0.0.1', (batch) => received.push(batch), log);
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
    frames = new FrameServer('127.0.0.1', (batch) => received.push(batch), log);
  };
  return { addr: `127.0.0.1:${port}`, received, restart };
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
