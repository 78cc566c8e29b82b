/**
 * The data path's receive side over real loopback TCP: a socket the server accepted, moved into a
 * receive arena (`adoptAcceptedSocket`), delivers every frame and payload intact; memory given back is
 * reused for later reads and memory not given back is never overwritten; the adopted sockets still
 * count for the server's `maxConnections` and `close()`.
 */
import assert from 'node:assert/strict';
import { once } from 'node:events';
import { type AddressInfo, connect, createServer, type Server, type Socket } from 'node:net';
import { after, test } from 'node:test';
import {
  adoptAcceptedSocket,
  encodeFrame,
  FrameReader,
  MAX_PACKET_BYTES,
  RECEIVE_SLAB_BYTES,
} from '../../src/wire/data-transfer.js';
import { seededBytes } from '../chunk/helpers.js';
import { waitFor } from '../helpers/index.js';

async function listen(server: Server): Promise<number> {
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  return (server.address() as AddressInfo).port;
}

async function dial(port: number): Promise<Socket> {
  const socket = connect({ host: '127.0.0.1', port });
  await once(socket, 'connect');
  return socket;
}

test('payloads read into a receive arena arrive intact; released memory is reused, kept memory never is', async () => {
  // Sizes around and across slab boundaries, up to the largest packet.
  const sizes = [1, 4, 65_535, 65_536, 65_537, RECEIVE_SLAB_BYTES - 3, RECEIVE_SLAB_BYTES, MAX_PACKET_BYTES];
  for (let i = 0; i < 40; i++) sizes.push(1 + (((i * 2_654_435_761) >>> 0) % (3 * RECEIVE_SLAB_BYTES)));
  const payloads = sizes.map((size, i) => seededBytes(size, i + 1));

  const kept: { index: number; slices: Buffer[] }[] = [];
  const memoryOfReleased = new Set<ArrayBufferLike>();
  let reusedReads = 0;
  let adopted: Socket | undefined;
  let client: Socket | undefined;
  const server = createServer({ pauseOnConnect: true });
  // A failing assertion must not leave sockets holding the test process open.
  after(() => {
    client?.destroy();
    adopted?.destroy();
    server.close();
  });
  const served = new Promise<void>((resolve, reject) => {
    server.on('connection', (accepted: Socket) => {
      const reader = new FrameReader(undefined, 256 * 1024);
      const socket = adoptAcceptedSocket(accepted, reader);
      adopted = socket;
      (async () => {
        for (let index = 0; ; index++) {
          const header = await reader.readFrame('dogfs.v1.DataPacketHeader');
          if (header === undefined) break;
          const slices = await reader.readPayload(header.length);
          assert.deepEqual(Buffer.concat(slices), payloads[index], `payload ${index}`);
          // Every byte lands in a slab of the arena, never in memory Node allocated per read.
          assert.ok(slices.every((slice) => slice.buffer.byteLength === RECEIVE_SLAB_BYTES));
          if (slices.some((slice) => memoryOfReleased.has(slice.buffer))) reusedReads++;
          // Keep every third payload (as if still being written to disk), give the others back.
          if (index % 3 === 0) kept.push({ index, slices });
          else {
            for (const slice of slices) memoryOfReleased.add(slice.buffer);
            reader.release(slices);
          }
        }
        socket.end();
        server.close();
      })().then(resolve, reject);
    });
    listen(server).then(async (port) => {
      client = await dial(port);
      for (const payload of payloads) {
        if (client.destroyed) return;
        client.write(encodeFrame('dogfs.v1.DataPacketHeader', { length: payload.length }));
        if (!client.write(payload)) await once(client, 'drain');
      }
      client.end();
    }, reject);
  });
  await served;
  assert.ok(adopted !== undefined);
  for (const { index, slices } of kept) {
    assert.deepEqual(Buffer.concat(slices), payloads[index], `kept payload ${index} was overwritten`);
  }
  // The socket really reads into the arena (not the 'data' fallback), and released slabs are reused.
  assert.ok(reusedReads > 0, 'later payloads arrived in memory given back earlier');
});

test('adopted sockets count for maxConnections, and server.close() waits for them', async () => {
  const server = createServer({ pauseOnConnect: true }, (accepted) => {
    const reader = new FrameReader(undefined);
    const socket = adoptAcceptedSocket(accepted, reader);
    // Answers each frame with the same frame: proves the connection is served.
    (async () => {
      for (;;) {
        const frame = await reader.readFrame('dogfs.v1.WriteShardTrailer');
        if (frame === undefined) break;
        socket.write(encodeFrame('dogfs.v1.WriteShardTrailer', frame));
      }
      socket.end();
    })().catch(() => socket.destroy());
  });
  server.maxConnections = 2;
  const port = await listen(server);
  const count = () => new Promise<number>((resolve) => server.getConnections((_, n) => resolve(n)));

  async function echo(socket: Socket, length: number): Promise<void> {
    const reader = new FrameReader(socket);
    socket.write(encodeFrame('dogfs.v1.WriteShardTrailer', { length, crc32c: 7 }));
    const answer = await reader.readFrame('dogfs.v1.WriteShardTrailer');
    assert.equal(answer?.length, length);
  }

  const clients: Socket[] = [];
  const open = async () => {
    const socket = await dial(port);
    clients.push(socket);
    return socket;
  };
  // A failing assertion must not leave the server holding the test process open.
  after(() => {
    for (const socket of clients) socket.destroy();
    server.close();
  });
  const first = [await open(), await open()];
  await Promise.all(first.map((socket, i) => echo(socket, i + 1)));
  assert.equal(await count(), 2);
  // A third connection is over the limit: the server drops it.
  const third = await open();
  await once(third, 'close');
  for (const socket of first) socket.end();
  await waitFor('adopted sockets closed and uncounted', async () => (await count()) === 0);
  // Their slots are free again.
  const second = [await open(), await open()];
  await Promise.all(second.map((socket, i) => echo(socket, i + 10)));
  const closed = once(server, 'close');
  server.close();
  for (const socket of second) socket.end();
  await closed;
});
