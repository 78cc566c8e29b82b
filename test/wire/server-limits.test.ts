/**
 * What an RpcServer holds for clients that start calls and do not finish them, and what it keeps for
 * everyone else meanwhile: request bytes given back when a body does not arrive in time, a share of
 * the byte budget for the cluster's own control calls. Each test starts a server of its own with small
 * limits.
 */
import assert from 'node:assert/strict';
import http2 from 'node:http2';
import { connect, type Socket } from 'node:net';
import { test } from 'node:test';
import type { DogfsError } from '../../src/wire/errors.js';
import { HealthService, MetadataService } from '../../src/wire/gen/types.js';
import { encodeRequest, FrameType, LEAN_MAGIC } from '../../src/wire/lean.js';
import { encodeMessage } from '../../src/wire/proto.js';
import { RpcChannel, RpcServer, type RpcServerOptions } from '../../src/wire/rpc.js';
import { gate, waitFor } from '../helpers/index.js';
import { errorOf, rawLeanConnection, STAT, statOnly, statRequest } from '../helpers/lean.js';

const MAX_MESSAGE = 64 * 1024;
/** The server's request-byte budget at MAX_MESSAGE: sixteen largest requests. */
const BUDGET_STREAMS = 16;

/**
 * The server's internals a test looks at: the bytes requests hold, the lean connections' sockets, every
 * connection open.
 */
function internals(server: RpcServer): {
  requestBytes: { held: number };
  leanSockets: () => Socket[];
  connections: () => number;
} {
  const inner = server as unknown as {
    grpc: { requestBytes: { held: number } };
    lean: { connections: Set<{ socket: Socket }> };
    sockets: Set<Socket>;
  };
  return {
    requestBytes: inner.grpc.requestBytes,
    leanSockets: () => [...inner.lean.connections].map((connection) => connection.socket),
    connections: () => inner.sockets.size,
  };
}

function portOf(address: string): number {
  return Number(address.split(':')[1]);
}

/** A TCP connection that writes `first` (if anything) and then nothing; counts itself in `closed`. */
function silentConnection(port: number, first: Buffer | undefined, closed: { count: number }): Socket {
  const socket = connect({ host: '127.0.0.1', port });
  socket.on('error', () => {});
  socket.on('close', () => closed.count++);
  socket.resume(); // reads, so that it sees the server close it
  if (first !== undefined) socket.write(first);
  return socket;
}

/**
 * A server with Stat (runs `stat`, then answers `answer(path)`, the path unless told) and Heartbeat
 * (answers empty), and its address.
 */
async function startServer(
  options: RpcServerOptions,
  stat: (path: string) => Promise<void> = async () => {},
  answer?: (path: string) => string,
): Promise<{ server: RpcServer; address: string }> {
  const server = new RpcServer({ maxMessageBytes: MAX_MESSAGE, ...options });
  server.addService(MetadataService, {
    ...statOnly(stat, answer),
    Heartbeat: async () => ({}),
  });
  server.addService(HealthService, {
    Check: () => ({ role: 'meta', id: 'test', pid: process.pid, version: 'x', uptimeMs: 1, addr: '' }),
  });
  const port = await server.listen('127.0.0.1', 0);
  return { server, address: `127.0.0.1:${port}` };
}

interface Unfinished {
  session: http2.ClientHttp2Session;
  /** The gRPC status headers each stream was answered with, as they come. */
  answers: http2.IncomingHttpHeaders[];
}

/**
 * Fills the server's byte budget over gRPC: BUDGET_STREAMS Stat streams, each sending a whole
 * MAX_MESSAGE of body (prefix included) and never ending it, no grpc-timeout (the server's 5 minutes).
 * Resolves once the server has read every byte (it answered a ping sent after them).
 */
async function fillBudget(address: string): Promise<Unfinished> {
  const session = http2.connect(`http://${address}`);
  session.on('error', () => {});
  const answers: http2.IncomingHttpHeaders[] = [];
  const prefix = Buffer.alloc(5);
  prefix.writeUInt32BE(MAX_MESSAGE - 5, 1);
  const written: Promise<void>[] = [];
  for (let i = 0; i < BUDGET_STREAMS; i++) {
    const stream = session.request({
      ':method': 'POST',
      ':path': `/${MetadataService.name}/Stat`,
      'content-type': 'application/grpc',
    });
    stream.on('error', () => {});
    stream.on('response', (headers) => answers.push(headers));
    stream.write(prefix);
    written.push(new Promise((resolve) => stream.write(Buffer.alloc(MAX_MESSAGE - 5), () => resolve())));
  }
  await Promise.all(written);
  await new Promise<void>((resolve, reject) =>
    session.ping((error) => (error === null ? resolve() : reject(error))),
  );
  return { session, answers };
}

test('a gRPC request body that never ends is refused after the assembly limit and gives its bytes back', async () => {
  const { server, address } = await startServer({ frameAssemblyMs: 1000 });
  const lean = new RpcChannel(address, { transport: 'lean' });
  const large = 'x'.repeat(60 * 1024);
  let unfinished: Unfinished | undefined;
  try {
    unfinished = await fillBudget(address);
    const { answers } = unfinished;
    // The budget is full: a request with a body is refused, on the other transport too.
    await assert.rejects(
      lean.call(MetadataService, 'Stat', { path: large }, { timeoutMs: 5000 }),
      (error: DogfsError) => error.code === 'RESOURCE_EXHAUSTED' && /server busy/.test(error.message),
    );
    // Without the limit they would hold it for the call's 5 minutes.
    await waitFor('every unfinished stream refused', () => answers.length === BUDGET_STREAMS, 10_000);
    for (const headers of answers) {
      assert.equal(headers['dogfs-code'], 'DEADLINE_EXCEEDED');
      assert.match(String(headers['grpc-message']), /not whole within 1000 ms of its headers/);
    }
    const answer = await lean.call(MetadataService, 'Stat', { path: large }, { timeoutMs: 5000 });
    assert.equal(answer.inode?.ec, large);
  } finally {
    unfinished?.session.destroy();
    lean.close();
    await server.close(0);
  }
});

test('heartbeats get through over both transports while data requests fill the byte budget', async () => {
  // The unfinished streams would be cut only after the default 60 s: the reserve is what lets these in.
  const { server, address } = await startServer({});
  const lean = new RpcChannel(address, { transport: 'lean' });
  const grpc = new RpcChannel(address, { transport: 'grpc' });
  const heartbeat = { id: 'chunk-1', capacityBytes: 1 << 40, usedBytes: 1 << 30, repairing: ['/a', '/b'] };
  let unfinished: Unfinished | undefined;
  try {
    unfinished = await fillBudget(address);
    for (const channel of [lean, grpc]) {
      await assert.rejects(
        channel.call(MetadataService, 'Stat', { path: '/a' }, { timeoutMs: 5000 }),
        (error: DogfsError) => error.code === 'RESOURCE_EXHAUSTED' && /server busy/.test(error.message),
        channel.transport,
      );
      await channel.call(MetadataService, 'Heartbeat', heartbeat, { timeoutMs: 5000 });
    }
    // A heartbeat whose frame arrives in two pieces is admitted into the reserve from its first piece.
    const { socket, frames } = await rawLeanConnection(portOf(address));
    try {
      const frame = encodeRequest(
        1,
        `/${MetadataService.name}/Heartbeat`,
        5000,
        encodeMessage('dogfs.v1.HeartbeatRequest', heartbeat),
      );
      const held = internals(server).requestBytes;
      const budget = BUDGET_STREAMS * MAX_MESSAGE;
      socket.write(Buffer.concat([LEAN_MAGIC, frame.subarray(0, frame.byteLength - 10)]));
      await waitFor('the first piece admitted or refused', () => held.held > budget || frames.length > 0);
      assert.equal(errorOf(frames, 1)?.message, undefined);
      socket.write(frame.subarray(frame.byteLength - 10));
      await waitFor('the answer', () => frames.length > 0);
      assert.equal(frames[0]?.type, FrameType.RESPONSE);
    } finally {
      socket.destroy();
    }
    assert.equal(unfinished.answers.length, 0, 'the streams filling the budget are still open');
  } finally {
    unfinished?.session.destroy();
    lean.close();
    grpc.close();
    await server.close(0);
  }
});

test('a lean request admitted in pieces must be whole in time even while its connection is not read', async () => {
  // Answers of 120 KiB to 256 calls: far past the 8 MiB of unsent answers at which reading pauses.
  const bigAnswer = 'a'.repeat(120 * 1024);
  const { passed, open } = gate();
  let started = 0;
  const { server, address } = await startServer(
    { maxMessageBytes: 16 << 20, frameAssemblyMs: 2000, unsentStallMs: 60_000 },
    async (path) => {
      if (path !== 'big') return;
      started++;
      await passed;
    },
    (path) => (path === 'big' ? bigAnswer : path),
  );
  const { requestBytes, leanSockets } = internals(server);
  const { socket } = await rawLeanConnection(portOf(address));
  try {
    socket.pause(); // never reads its answers (nor so sees its end)
    const requests: Buffer[] = [LEAN_MAGIC];
    for (let id = 1; id <= 256; id++) requests.push(statRequest(id, 'big', 60_000));
    // Then the first KiB of a 1 MiB request, admitted whole into the budget from its head.
    const large = encodeRequest(257, STAT, 60_000, Buffer.alloc(1 << 20));
    socket.write(Buffer.concat([...requests, large.subarray(0, 1024)]));
    await waitFor('the handlers running and the large request admitted', () => {
      return started === 256 && requestBytes.held >= 1 << 20;
    });
    // Their answers pile up unsent, so the server stops reading: the large request cannot be finished.
    open();
    await waitFor('reading paused', () => leanSockets()[0]?.isPaused() === true);
    // The bytes it holds are not kept past the assembly limit for that (the unsent-answer stall rule
    // would take a minute here, and a client reading a trickle escapes it).
    await waitFor('the connection cut', () => leanSockets().length === 0, 10_000);
    await waitFor('its bytes given back', () => requestBytes.held === 0);
  } finally {
    open();
    socket.destroy();
    await server.close(0);
  }
});

test('past maxConnections a new connection takes the place of the oldest that began no request', async () => {
  const { server, address } = await startServer({ maxConnections: 8 });
  const client = await rawLeanConnection(portOf(address));
  const idle: Socket[] = [];
  const idleClosed = { count: 0 };
  const lean = new RpcChannel(address, { transport: 'lean' });
  const grpc = new RpcChannel(address, { transport: 'grpc' });
  try {
    // A client that has made a call holds its place whatever arrives after.
    client.socket.write(Buffer.concat([LEAN_MAGIC, statRequest(1, 'first')]));
    await waitFor('its answer', () => client.frames.length === 1);
    // Twenty connections that send the lean magic and nothing more: all but seven are closed.
    for (let i = 0; i < 20; i++) idle.push(silentConnection(portOf(address), LEAN_MAGIC, idleClosed));
    await waitFor('13 idle connections closed', () => idleClosed.count === 13);
    assert.equal(internals(server).connections(), 8);
    // New clients, over both transports, are served: each takes an idle connection's place.
    assert.equal((await lean.call(HealthService, 'Check', {}, { timeoutMs: 5000 })).id, 'test');
    assert.equal((await grpc.call(HealthService, 'Check', {}, { timeoutMs: 5000 })).id, 'test');
    await waitFor('15 idle connections closed', () => idleClosed.count === 15);
    client.socket.write(statRequest(2, 'second'));
    await waitFor('the first client answered again', () => client.frames.length === 2);
    assert.equal(client.closed(), false);
    assert.deepEqual(server.stats, { connectionsRefused: 0, connectionsReplaced: 15, connectionsSilent: 0 });
  } finally {
    for (const socket of idle) socket.destroy();
    client.socket.destroy();
    lean.close();
    grpc.close();
    await server.close(0);
  }
});

test('past maxConnections, when every connection has begun a request, a new one is closed', async () => {
  const { server, address } = await startServer({ maxConnections: 2 });
  const first = new RpcChannel(address, { transport: 'lean' });
  const second = new RpcChannel(address, { transport: 'grpc' });
  const closed = { count: 0 };
  let third: Socket | undefined;
  try {
    for (const channel of [first, second])
      assert.equal((await channel.call(HealthService, 'Check', {}, { timeoutMs: 5000 })).id, 'test');
    third = silentConnection(portOf(address), LEAN_MAGIC, closed);
    await waitFor('the third connection closed', () => closed.count === 1);
    assert.deepEqual(server.stats, { connectionsRefused: 1, connectionsReplaced: 0, connectionsSilent: 0 });
    // The two clients were not touched: their connections serve on.
    for (const channel of [first, second])
      assert.equal((await channel.call(HealthService, 'Check', {}, { timeoutMs: 5000 })).id, 'test');
    assert.equal(internals(server).connections(), 2);
  } finally {
    third?.destroy();
    first.close();
    second.close();
    await server.close(0);
  }
});

test('a connection that begins no request within firstRequestMs is closed; one that has is kept', async () => {
  const { server, address } = await startServer({ firstRequestMs: 300 });
  const lean = new RpcChannel(address, { transport: 'lean' });
  const grpc = new RpcChannel(address, { transport: 'grpc' });
  const closed = { count: 0 };
  const silent: Socket[] = [];
  let preface: http2.ClientHttp2Session | undefined;
  try {
    // Clients that made a call first, so any timer of theirs would fire before the silent ones'.
    for (const channel of [lean, grpc])
      assert.equal((await channel.call(HealthService, 'Check', {}, { timeoutMs: 5000 })).id, 'test');
    silent.push(silentConnection(portOf(address), LEAN_MAGIC, closed));
    silent.push(silentConnection(portOf(address), undefined, closed));
    // An HTTP/2 connection: preface and settings, no stream.
    preface = http2.connect(`http://${address}`);
    preface.on('error', () => {});
    preface.on('close', () => closed.count++);
    await waitFor('the three silent connections closed', () => closed.count === 3, 5000);
    assert.equal(server.stats.connectionsSilent, 3);
    // The clients' connections are the ones still open, and they serve on.
    assert.equal(internals(server).connections(), 2);
    for (const channel of [lean, grpc])
      assert.equal((await channel.call(HealthService, 'Check', {}, { timeoutMs: 5000 })).id, 'test');
    assert.equal(internals(server).connections(), 2);
  } finally {
    for (const socket of silent) socket.destroy();
    preface?.destroy();
    lean.close();
    grpc.close();
    await server.close(0);
  }
});

test('gRPC requests arriving at once are bounded server-wide; control calls have a reserve past it', async () => {
  const { server, address } = await startServer({ maxArrivingStreams: 4 });
  const session = http2.connect(`http://${address}`);
  session.on('error', () => {});
  const grpc = new RpcChannel(address, { transport: 'grpc' });
  const lean = new RpcChannel(address, { transport: 'lean' });
  try {
    await new Promise((resolve) => session.once('connect', resolve));
    // Four calls whose headers arrive and whose bodies do not (yet).
    const streams: http2.ClientHttp2Stream[] = [];
    for (let i = 0; i < 4; i++) {
      const stream = session.request({
        ':method': 'POST',
        ':path': `/${MetadataService.name}/Stat`,
        'content-type': 'application/grpc',
      });
      stream.on('error', () => {});
      streams.push(stream);
    }
    await new Promise<void>((resolve, reject) =>
      session.ping((error) => (error === null ? resolve() : reject(error))),
    );
    await assert.rejects(
      grpc.call(MetadataService, 'Stat', { path: '/a' }, { timeoutMs: 5000 }),
      (error: DogfsError) =>
        error.code === 'RESOURCE_EXHAUSTED' && /4 requests already arriving/.test(error.message),
    );
    assert.equal((await grpc.call(HealthService, 'Check', {}, { timeoutMs: 5000 })).id, 'test');
    await grpc.call(MetadataService, 'Heartbeat', { id: 'chunk-1' }, { timeoutMs: 5000 });
    // The lean transport assembles one request per connection: maxConnections bounds those.
    assert.equal(
      (await lean.call(MetadataService, 'Stat', { path: '/a' }, { timeoutMs: 5000 })).inode?.ec,
      '/a',
    );
    // One body ends: that call is answered, and there is room for another.
    const message = encodeMessage('dogfs.v1.StatRequest', { path: '/b' });
    const prefix = Buffer.alloc(5);
    prefix.writeUInt32BE(message.byteLength, 1);
    const answered = new Promise<http2.IncomingHttpHeaders>((resolve) =>
      streams[0]!.once('response', resolve),
    );
    streams[0]!.end(Buffer.concat([prefix, message]));
    assert.equal((await answered)[':status'], 200);
    assert.equal(
      (await grpc.call(MetadataService, 'Stat', { path: '/c' }, { timeoutMs: 5000 })).inode?.ec,
      '/c',
    );
  } finally {
    session.destroy();
    grpc.close();
    lean.close();
    await server.close(0);
  }
});
