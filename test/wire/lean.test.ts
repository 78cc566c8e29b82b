/**
 * The lean RPC framing (src/wire/lean*.ts): what its frame reader does with any split of the bytes, and
 * what a DogFS server does with a lean client that breaks the rules — it answers with a clear code
 * where the call can be named, drops the connection where the framing itself is broken, and goes on
 * serving everyone else. rpc.test.ts runs the ordinary call tests over both transports.
 */
import assert from 'node:assert/strict';
import { connect, createServer, type Socket } from 'node:net';
import { after, before, test } from 'node:test';
import { DogfsError } from '../../src/wire/errors.js';
import { FileType, MetadataService } from '../../src/wire/gen/types.js';
import {
  decodeError,
  decodeRequest,
  encodeEmptyFrame,
  encodeError,
  encodeRequest,
  encodeResponse,
  FrameReader,
  FrameType,
  LEAN_MAGIC,
  MAX_CALLS_PER_CONNECTION,
} from '../../src/wire/lean.js';
import { decodeMessage, encodeMessage } from '../../src/wire/proto.js';
import { RpcChannel, RpcServer } from '../../src/wire/rpc.js';
import { gate, waitFor } from '../helpers/index.js';
import {
  errorOf,
  type Frame,
  rawLeanConnection,
  STAT,
  statAnswer,
  statOnly,
  statRequest,
} from '../helpers/lean.js';

const MAX_MESSAGE = 64 * 1024;
const server = new RpcServer({ maxMessageBytes: MAX_MESSAGE });
let address = '';
let port = 0;
/** Calls to the slow method wait until this is resolved (set per test). */
let release: Promise<void> = Promise.resolve();
let slowRunning = 0;
let slowMostAtOnce = 0;
/** Called as each slow call's handler starts. */
let onSlowStart: (() => void) | undefined;

/** Calls to the slow method wait from now until the returned function is called; counts start afresh. */
function holdSlowCalls(): () => void {
  const { passed, open } = gate();
  release = passed;
  slowMostAtOnce = 0;
  return open;
}

before(async () => {
  server.addService(
    MetadataService,
    statOnly(async (path) => {
      if (path.startsWith('slow')) {
        slowRunning++;
        slowMostAtOnce = Math.max(slowMostAtOnce, slowRunning);
        onSlowStart?.();
        try {
          await release;
        } finally {
          slowRunning--;
        }
      }
      if (path === 'never') await new Promise(() => {});
      if (path === 'long-error') throw new DogfsError('NOT_FOUND', `no such file ${'x'.repeat(4000)}`);
    }),
  );
  port = await server.listen('127.0.0.1', 0);
  address = `127.0.0.1:${port}`;
});
after(() => server.close(0));

/** A hand-driven lean connection to this file's server. */
function rawConnection(): ReturnType<typeof rawLeanConnection> {
  return rawLeanConnection(port);
}

/**
 * A fake lean server for the client's side of the protocol: skips the magic and hands every REQUEST
 * to `onRequest` with its socket and the index of its connection (0 for the first).
 */
async function fakeLeanServer(
  onRequest: (callId: number, body: Buffer, socket: Socket, connection: number) => void,
): Promise<{ address: string; sockets: Socket[]; close: () => void }> {
  const sockets: Socket[] = [];
  const fake = createServer((socket) => {
    const connection = sockets.length;
    sockets.push(socket);
    socket.on('error', () => {});
    let magicLeft = LEAN_MAGIC.byteLength;
    const reader = new FrameReader(1 << 20, {
      frame: (type, callId, body) => {
        if (type === FrameType.REQUEST) onRequest(callId, body, socket, connection);
      },
      oversized: () => {},
    });
    socket.on('data', (chunk: Buffer) => {
      const skip = Math.min(magicLeft, chunk.byteLength);
      magicLeft -= skip;
      if (chunk.byteLength > skip) reader.push(chunk.subarray(skip));
    });
  });
  await new Promise<void>((resolve) => fake.listen(0, '127.0.0.1', resolve));
  return {
    address: `127.0.0.1:${(fake.address() as { port: number }).port}`,
    sockets,
    close: () => {
      for (const socket of sockets) socket.destroy();
      fake.close();
    },
  };
}

test('the frame reader gives the same frames whatever the split of the bytes, large ones assembled', () => {
  const frames = [
    encodeRequest(1, '/a/B', 100, Buffer.from('hello')),
    encodeResponse(2, Buffer.alloc(3000, 7)),
    encodeEmptyFrame(FrameType.PING, 3),
    encodeError(4, new DogfsError('NOT_LEADER', 'elsewhere', { leaderHint: '127.0.0.1:9' })),
    encodeResponse(5, Buffer.alloc(0)),
  ];
  const stream = Buffer.concat(frames);
  const expected = frames.map((f) => ({ type: f[4], callId: f.readUInt32BE(5), body: f.subarray(9) }));
  // Every cut point, and every chunk size from 1 byte up.
  const splits: Buffer[][] = [];
  for (let cut = 0; cut <= stream.byteLength; cut++)
    splits.push([stream.subarray(0, cut), stream.subarray(cut)]);
  for (const size of [1, 2, 3, 7, 64, 1000]) {
    const chunks: Buffer[] = [];
    for (let at = 0; at < stream.byteLength; at += size) chunks.push(stream.subarray(at, at + size));
    splits.push(chunks);
  }
  for (const chunks of splits) {
    const got: Frame[] = [];
    const reader = new FrameReader(1 << 20, {
      frame: (type, callId, body) => got.push({ type, callId, body: Buffer.from(body) }),
      oversized: () => assert.fail('nothing here is oversized'),
    });
    for (const chunk of chunks) reader.push(chunk);
    assert.deepEqual(got, expected, `split into ${chunks.map((c) => c.byteLength).join('+')}`);
  }
  const error = decodeError(expected[3]!.body);
  assert.deepEqual(error, { code: 'NOT_LEADER', leaderHint: '127.0.0.1:9', message: 'elsewhere' });
});

test('the frame reader reads past an oversized request or response, and refuses anything else oversized', () => {
  const big = encodeResponse(9, Buffer.alloc(5000, 1));
  const small = encodeResponse(10, Buffer.from('ok'));
  const stream = Buffer.concat([big, small]);
  for (const size of [1, 100, 4096, stream.byteLength]) {
    const got: number[] = [];
    const oversized: number[] = [];
    const reader = new FrameReader(1024, {
      frame: (_type, callId) => got.push(callId),
      oversized: (_type, callId) => oversized.push(callId),
    });
    for (let at = 0; at < stream.byteLength; at += size) reader.push(stream.subarray(at, at + size));
    assert.deepEqual(oversized, [9], `chunks of ${size}`);
    assert.deepEqual(got, [10], `chunks of ${size}`);
  }
  const reader = new FrameReader(1024, { frame: () => {}, oversized: () => {} });
  const hugePing = Buffer.alloc(9);
  hugePing.writeUInt32BE(5000, 0);
  hugePing[4] = FrameType.PING;
  assert.throws(() => reader.push(hugePing), /exceeds the 1024-byte limit/);
  const tooShort = Buffer.from([0, 0, 0, 2, 1, 0, 0, 0, 0]);
  assert.throws(
    () => new FrameReader(1024, { frame: () => {}, oversized: () => {} }).push(tooShort),
    /shorter/,
  );
});

test('a lean client that breaks the rules gets a clear code per call, or loses only its own connection', async () => {
  const { socket, frames, closed } = await rawConnection();
  socket.write(LEAN_MAGIC);
  // An unknown method, a truncated request, an oversized one (read past), then a good call.
  socket.write(encodeRequest(1, '/dogfs.v1.Nothing/Here', 5000, Buffer.alloc(0)));
  const truncated = encodeRequest(2, STAT, 5000, Buffer.alloc(0));
  truncated.writeUInt16BE(999, 4 + 5 + 4); // claims a longer path than the frame holds
  socket.write(truncated);
  socket.write(encodeRequest(3, STAT, 5000, Buffer.alloc(MAX_MESSAGE + 4096)));
  socket.write(encodeRequest(4, STAT, 5000, Buffer.from([0x0a, 0xff, 0xff])));
  socket.write(statRequest(5, 'fine'));
  await waitFor('five answers', () => frames.length >= 5);
  assert.equal(errorOf(frames, 1)?.code, 'UNIMPLEMENTED');
  assert.equal(errorOf(frames, 2)?.code, 'INVALID_ARGUMENT');
  assert.match(errorOf(frames, 3)?.message ?? '', /exceeds the 65536-byte limit/);
  assert.equal(errorOf(frames, 3)?.code, 'TOO_LARGE');
  assert.equal(errorOf(frames, 4)?.code, 'INVALID_ARGUMENT', 'a malformed protobuf request');
  assert.equal(statAnswer(frames.find((f) => f.callId === 5)), 'fine');
  // A ping is answered; then a frame type only servers send breaks the framing: connection dropped.
  socket.write(encodeEmptyFrame(FrameType.PING, 77));
  await waitFor('the pong', () => frames.some((f) => f.type === FrameType.PONG && f.callId === 77));
  socket.write(encodeResponse(6, Buffer.from('a client does not answer')));
  await waitFor('the connection to be dropped', closed);

  // Each of these ends its own connection, and only that one.
  const broken: Buffer[] = [
    Buffer.from('DOGFSXXX1\n'), // a wrong magic
    Buffer.concat([LEAN_MAGIC, Buffer.from([0, 0, 0, 1, 1])]), // a frame shorter than its head
    Buffer.concat([LEAN_MAGIC, statRequest(8, 'slow'), statRequest(8, 'slow')]), // a call id reused in flight
    Buffer.concat([LEAN_MAGIC, Buffer.from([0, 0, 0, 5, 99, 0, 0, 0, 1])]), // an unknown frame type
  ];
  const unblock = holdSlowCalls();
  for (const bytes of broken) {
    const connection = await rawConnection();
    connection.socket.write(bytes);
    await waitFor(
      `the connection sent ${bytes.subarray(0, 12).toString('hex')} to be dropped`,
      connection.closed,
    );
  }
  unblock();
  await waitFor('the handler of the reused-id call to finish', () => slowRunning === 0);
  release = Promise.resolve();
  const channel = new RpcChannel(address, { transport: 'lean' });
  try {
    assert.equal((await channel.call(MetadataService, 'Stat', { path: 'after' })).inode?.ec, 'after');
  } finally {
    channel.close();
  }
});

test('a server refuses calls beyond its per-connection limit; a DogFS channel queues them instead', async () => {
  const open = holdSlowCalls();
  const { socket, frames } = await rawConnection();
  socket.write(LEAN_MAGIC);
  for (let id = 1; id <= MAX_CALLS_PER_CONNECTION + 1; id++) socket.write(statRequest(id, 'slow'));
  await waitFor('the refusal of the call over the limit', () =>
    errorOf(frames, MAX_CALLS_PER_CONNECTION + 1),
  );
  assert.equal(errorOf(frames, MAX_CALLS_PER_CONNECTION + 1)?.code, 'RESOURCE_EXHAUSTED');
  open();
  await waitFor('the other answers', () => frames.length === MAX_CALLS_PER_CONNECTION + 1);
  socket.destroy();

  const reopen = holdSlowCalls();
  const channel = new RpcChannel(address, { transport: 'lean' });
  try {
    const calls = Array.from({ length: 3 * MAX_CALLS_PER_CONNECTION }, () =>
      channel.call(MetadataService, 'Stat', { path: 'slow' }, { timeoutMs: 10_000 }),
    );
    await waitFor('a full connection of calls running', () => slowRunning === MAX_CALLS_PER_CONNECTION);
    reopen();
    for (const answer of await Promise.all(calls)) assert.equal(answer.inode?.ec, 'slow');
    assert.equal(slowMostAtOnce, MAX_CALLS_PER_CONNECTION, 'never more than the limit at once');
  } finally {
    channel.close();
  }
});

test('a handler that never answers is answered DEADLINE_EXCEEDED by the server at the deadline', async () => {
  const { socket, frames } = await rawConnection();
  socket.write(LEAN_MAGIC);
  const started = Date.now();
  socket.write(statRequest(1, 'never', 300));
  await waitFor('the server-side deadline', () => errorOf(frames, 1), 5000);
  assert.equal(errorOf(frames, 1)?.code, 'DEADLINE_EXCEEDED');
  assert.ok(Date.now() - started >= 290, 'not before the deadline');
  socket.destroy();
});

test('closing a server answers the calls in flight, refuses new ones, and tells clients to go away', async () => {
  const closing = new RpcServer();
  const { passed, open } = gate();
  let started = 0;
  closing.addService(
    MetadataService,
    statOnly(async (path) => {
      started++;
      if (path === 'wait') await passed;
    }),
  );
  const closingPort = await closing.listen('127.0.0.1', 0);
  const channel = new RpcChannel(`127.0.0.1:${closingPort}`, { transport: 'lean' });
  try {
    const inFlight = channel.call(MetadataService, 'Stat', { path: 'wait' }, { timeoutMs: 10_000 });
    await waitFor('the call to start', () => started === 1);
    const closed = closing.close(10_000);
    // Refused on the old connection (going away) or, once the GOAWAY is heard, by nobody listening.
    await assert.rejects(
      channel.call(MetadataService, 'Stat', { path: 'new' }, { timeoutMs: 1000 }),
      (e: unknown) => e instanceof DogfsError && e.code === 'UNAVAILABLE',
    );
    open();
    assert.equal((await inFlight).inode?.ec, 'wait', 'the call in flight got its answer');
    await closed;
    assert.equal(started, 1, 'nothing new ran after close');
  } finally {
    channel.close();
    open();
  }
});

test('a lean client facing a server that lies: wrong ids ignored, oversized answers refused, broken framing is UNAVAILABLE', async () => {
  let reply: (callId: number, socket: Socket) => void = () => {};
  const fake = await fakeLeanServer((callId, _body, socket) => reply(callId, socket));
  const { sockets } = fake;
  const fakeAddress = fake.address;
  const channel = new RpcChannel(fakeAddress, { transport: 'lean', maxMessageBytes: 1024 });
  const stat = (timeoutMs = 5000) => channel.call(MetadataService, 'Stat', { path: 'x' }, { timeoutMs });
  const answer = (ec: string) =>
    encodeMessage('dogfs.v1.StatResponse', { inode: { id: 1, type: FileType.FILE, size: 0, ec } });
  try {
    // An answer to a call nobody made is ignored; the real answer still arrives.
    reply = (callId, socket) => {
      socket.write(encodeResponse(callId + 1000, answer('stranger')));
      socket.write(encodeResponse(callId, answer('mine')));
    };
    assert.equal((await stat()).inode?.ec, 'mine');
    // An answer over the channel's limit is read past and refused; the connection goes on.
    reply = (callId, socket) => socket.write(encodeResponse(callId, Buffer.alloc(64 * 1024)));
    await assert.rejects(stat(), (e: unknown) => e instanceof DogfsError && e.code === 'TOO_LARGE');
    reply = (callId, socket) => socket.write(encodeResponse(callId, answer('after')));
    assert.equal((await stat()).inode?.ec, 'after');
    assert.equal(sockets.length, 1, 'one connection throughout');
    // An error frame that does not hold what it claims is INTERNAL, not a crash.
    reply = (callId, socket) => {
      const frame = encodeError(callId, new DogfsError('NOT_FOUND', 'gone'));
      frame[9] = 200; // a code length past the end of the frame
      socket.write(frame);
    };
    await assert.rejects(stat(), (e: unknown) => e instanceof DogfsError && e.code === 'INTERNAL');
    // A code this client does not know arrives as INTERNAL with the code named.
    reply = (callId, socket) => {
      const frame = encodeError(callId, new DogfsError('NOT_FOUND', 'gone'));
      frame.write('NOT_FOUNX', 10, 'latin1');
      socket.write(frame);
    };
    await assert.rejects(
      stat(),
      (e: unknown) => e instanceof DogfsError && e.code === 'INTERNAL' && e.message.includes('NOT_FOUNX'),
    );
    // A server that sends a request breaks the framing: the call fails UNAVAILABLE, the next dials again.
    reply = (callId, socket) => socket.write(encodeRequest(callId, STAT, 100, Buffer.alloc(0)));
    await assert.rejects(stat(), (e: unknown) => e instanceof DogfsError && e.code === 'UNAVAILABLE');
    reply = (callId, socket) => socket.write(encodeResponse(callId, answer('again')));
    assert.equal((await stat()).inode?.ec, 'again');
    assert.equal(sockets.length, 2, 'a new connection after the broken one');
  } finally {
    channel.close();
    fake.close();
  }
});

test('an error answer longer than a small channel limit still arrives as its code', async () => {
  const channel = new RpcChannel(address, { transport: 'lean', maxMessageBytes: 1024 });
  try {
    await assert.rejects(
      channel.call(MetadataService, 'Stat', { path: 'long-error' }),
      (e: unknown) =>
        e instanceof DogfsError && e.code === 'NOT_FOUND' && e.message.startsWith('no such file'),
    );
    assert.equal((await channel.call(MetadataService, 'Stat', { path: 'ok' })).inode?.ec, 'ok');
  } finally {
    channel.close();
  }
});

test('after a GOAWAY naming the last call taken, the calls after it and the waiting ones run on a new connection', async () => {
  // A fake server: its first connection takes calls 1 and 2, answers GOAWAY(2) on the third request, then
  // answers 1 and 2 and ends; later connections answer everything.
  const ran: string[] = [];
  const held: number[] = [];
  const fake = await fakeLeanServer((callId, body, socket, connection) => {
    const path = decodeMessage('dogfs.v1.StatRequest', decodeRequest(body).message).path;
    const answer = (id: number) =>
      encodeResponse(
        id,
        encodeMessage('dogfs.v1.StatResponse', { inode: { id: 1, type: FileType.FILE, size: 0, ec: path } }),
      );
    if (connection > 0) {
      ran.push(path);
      socket.write(answer(callId));
      return;
    }
    if (callId <= 2) {
      ran.push(path);
      held.push(callId);
      return;
    }
    if (callId === 3) {
      socket.write(encodeEmptyFrame(FrameType.GOAWAY, 2));
      for (const id of held) socket.write(encodeResponse(id, encodeMessage('dogfs.v1.StatResponse', {})));
      socket.end();
    }
    // Requests after the GOAWAY are not run here.
  });
  const { sockets } = fake;
  const channel = new RpcChannel(fake.address, { transport: 'lean' });
  try {
    const first = channel.call(MetadataService, 'Stat', { path: 'a' });
    const second = channel.call(MetadataService, 'Stat', { path: 'b' });
    const later = ['c', 'd', 'e'].map((path) => channel.call(MetadataService, 'Stat', { path }));
    await first;
    await second;
    assert.deepEqual(
      (await Promise.all(later)).map((r) => r.inode?.ec),
      ['c', 'd', 'e'],
    );
    assert.equal(sockets.length, 2, 'the calls after the GOAWAY went out on a second connection');
    assert.deepEqual([...ran].sort(), ['a', 'b', 'c', 'd', 'e'], 'each call ran exactly once');
  } finally {
    channel.close();
    fake.close();
  }
});

test('an idle lean connection is told to go away and ended, not cut', async () => {
  const { socket, frames, closed } = await rawConnection();
  socket.write(LEAN_MAGIC);
  socket.write(statRequest(1, 'ok'));
  await waitFor('the answer', () => frames.length === 1);
  // What the idle timeout does, ten minutes early: the server's side of this connection times out.
  const serverSockets = (server as unknown as { sockets: Set<Socket> }).sockets;
  const mine = [...serverSockets].find((s) => s.remotePort === socket.localPort);
  assert.ok(mine, 'the server-side socket of this connection');
  mine.emit('timeout');
  await waitFor('the end of the connection', closed);
  assert.deepEqual(
    frames.map((f) => [f.type, f.callId]),
    [
      [FrameType.RESPONSE, 1],
      [FrameType.GOAWAY, 1],
    ],
    'a GOAWAY naming call 1, then the end',
  );
});

/** Waits until the server on `port` takes a 60 KiB request again (its byte budget has room), and checks the answer. */
async function servesLargeRequestAgain(port: number): Promise<void> {
  const channel = new RpcChannel(`127.0.0.1:${port}`, { transport: 'lean' });
  try {
    const path = 'z'.repeat(60 * 1024);
    const answer = await waitFor('the budget to be free again', async () => {
      try {
        return (await channel.call(MetadataService, 'Stat', { path })).inode?.ec;
      } catch {
        return undefined;
      }
    });
    assert.equal(answer, path);
  } finally {
    channel.close();
  }
}

test('requests arriving in pieces count against the byte budget of the server from their first bytes', async () => {
  const small = new RpcServer({ maxMessageBytes: 64 * 1024 }); // 1 MiB of requests in flight at most
  small.addService(
    MetadataService,
    statOnly(async () => {}),
  );
  const smallPort = await small.listen('127.0.0.1', 0);
  const sockets: Socket[] = [];
  const refusals: string[] = [];
  try {
    // Each connection announces a 60 KiB request and sends a third of it: 20 of them claim 1.2 MiB.
    for (let i = 0; i < 20; i++) {
      const socket = connect({ host: '127.0.0.1', port: smallPort });
      sockets.push(socket);
      socket.on('error', () => {});
      const reader = new FrameReader(1 << 20, {
        frame: (type, _callId, body) => {
          if (type === FrameType.ERROR) refusals.push(decodeError(body)?.message ?? '');
        },
        oversized: () => {},
      });
      socket.on('data', (chunk: Buffer) => reader.push(chunk));
      const whole = statRequest(1, 'x'.repeat(60 * 1024));
      socket.write(Buffer.concat([LEAN_MAGIC, whole.subarray(0, 20 * 1024)]));
    }
    await waitFor('requests past the budget to be refused', () => refusals.length >= 3);
    for (const message of refusals) assert.match(message, /server busy/);
    // Connections dropped mid-request give their share back: a 60 KiB request is taken again.
    for (const socket of sockets) socket.destroy();
    await servesLargeRequestAgain(smallPort);
  } finally {
    for (const socket of sockets) socket.destroy();
    await small.close(0);
  }
});

test('a request announced whole and then left unfinished does not hold the byte budget: its connection is cut', async () => {
  // 1 MiB of requests in flight at most; a piece of a request must be whole within 300 ms.
  const small = new RpcServer({ maxMessageBytes: 64 * 1024, frameAssemblyMs: 300 });
  small.addService(
    MetadataService,
    statOnly(async () => {}),
  );
  const smallPort = await small.listen('127.0.0.1', 0);
  const sockets: Socket[] = [];
  let closed = 0;
  try {
    // Twenty connections each announce a 60 KiB request, send a third of it, and then nothing (without
    // closing): 1.2 MiB claimed, more than the budget.
    for (let i = 0; i < 20; i++) {
      const socket = connect({ host: '127.0.0.1', port: smallPort });
      sockets.push(socket);
      socket.on('error', () => {});
      socket.on('close', () => closed++);
      const whole = statRequest(1, 'x'.repeat(60 * 1024));
      socket.write(Buffer.concat([LEAN_MAGIC, whole.subarray(0, 20 * 1024)]));
    }
    await waitFor('the unfinished requests cut off', () => closed >= 16, 10_000);
    await servesLargeRequestAgain(smallPort);
  } finally {
    for (const socket of sockets) socket.destroy();
    await small.close(0);
  }
});

test('requests and answers larger than the copy threshold arrive whole, many at once', async () => {
  const channel = new RpcChannel(address, { transport: 'lean' });
  try {
    // 40 KiB paths (the server's limit is 64 KiB), echoed back: both directions go as head + message.
    const paths = Array.from({ length: 20 }, (_, i) => String.fromCharCode(97 + i).repeat(40 * 1024));
    const answers = await Promise.all(paths.map((path) => channel.call(MetadataService, 'Stat', { path })));
    assert.deepEqual(
      answers.map((a) => a.inode?.ec),
      paths,
    );
  } finally {
    channel.close();
  }
});

test('a client that never reads its answers has its connection dropped once they stop moving', async () => {
  // 60 KiB answers; the stall time is cut from 30 s to 300 ms for the test.
  const stalled = new RpcServer({ maxMessageBytes: 64 * 1024, unsentStallMs: 300 });
  stalled.addService(
    MetadataService,
    statOnly(
      async () => {},
      () => 'y'.repeat(60 * 1024),
    ),
  );
  const stalledPort = await stalled.listen('127.0.0.1', 0);
  const socket = connect({ host: '127.0.0.1', port: stalledPort });
  socket.on('error', () => {});
  try {
    await new Promise<void>((resolve) => socket.once('connect', resolve));
    socket.pause(); // never reads
    const requests = Array.from({ length: 250 }, (_, i) => statRequest(i + 1, 'big', 60_000));
    socket.write(Buffer.concat([LEAN_MAGIC, ...requests]));
    const serverSockets = (stalled as unknown as { sockets: Set<Socket> }).sockets;
    await waitFor('the server to find the connection', () => serverSockets.size === 1);
    const mine = [...serverSockets][0]!;
    // 250 x 60 KiB owed: more than the socket and the 8 MiB high-water mark take, so answers wait.
    await waitFor('the stalled connection to be dropped', () => mine.destroyed, 10_000);
  } finally {
    socket.destroy();
    await stalled.close(0);
  }
});

test('a call given up on frees its slot for the next queued call, which the server then takes', async () => {
  const open = holdSlowCalls();
  const channel = new RpcChannel(address, { transport: 'lean' });
  try {
    const abort = new AbortController();
    const calls = Array.from({ length: MAX_CALLS_PER_CONNECTION + 1 }, (_, i) =>
      channel
        .call(
          MetadataService,
          'Stat',
          { path: 'slow' },
          { timeoutMs: 20_000, signal: i === 0 ? abort.signal : undefined },
        )
        .then(
          (answer) => answer.inode?.ec,
          (error: DogfsError) => error.code,
        ),
    );
    await waitFor('a full connection of calls running', () => slowRunning === MAX_CALLS_PER_CONNECTION);
    abort.abort();
    // The cancelled call's handler still runs (it does not watch its signal): one more than the limit.
    await waitFor('the queued call to run', () => slowRunning === MAX_CALLS_PER_CONNECTION + 1);
    open();
    const outcomes = await Promise.all(calls);
    assert.equal(outcomes[0], 'CANCELLED');
    // Before the fix the CANCEL left after the queued request, which the server refused for the limit.
    assert.deepEqual(outcomes.slice(1), Array(MAX_CALLS_PER_CONNECTION).fill('slow'));
  } finally {
    channel.close();
  }
});

test('answers owed past the unsent limit still reach a client that reads them', async () => {
  // 70 answers of ~1 MB finish together: more than the 64 MiB limit wait unsent for a moment.
  const big = new RpcServer({ maxMessageBytes: 1100 * 1024 });
  const { passed, open } = gate();
  let running = 0;
  big.addService(
    MetadataService,
    statOnly(
      async () => {
        running++;
        await passed;
      },
      () => 'z'.repeat(1000 * 1000),
    ),
  );
  const bigPort = await big.listen('127.0.0.1', 0);
  const channel = new RpcChannel(`127.0.0.1:${bigPort}`, { transport: 'lean', maxMessageBytes: 1100 * 1024 });
  try {
    const calls = Array.from({ length: 70 }, () =>
      channel.call(MetadataService, 'Stat', { path: 'big' }, { timeoutMs: 30_000 }).then(
        (answer) => answer.inode?.ec.length,
        (error: DogfsError) => error.code,
      ),
    );
    await waitFor('every handler running', () => running === 70);
    open();
    assert.deepEqual(await Promise.all(calls), Array(70).fill(1000 * 1000));
  } finally {
    channel.close();
    await big.close(0);
  }
});

test('a method path longer than the framing allows is INVALID_ARGUMENT, and the channel goes on', async () => {
  const channel = new RpcChannel(address, { transport: 'lean' });
  try {
    await assert.rejects(
      channel.callRaw(`/${'x'.repeat(2000)}`, encodeMessage('dogfs.v1.StatRequest', { path: 'a' })),
      (error: DogfsError) => error.code === 'INVALID_ARGUMENT' && /method path longer/.test(error.message),
    );
    const answer = await channel.call(MetadataService, 'Stat', { path: 'after' }, { timeoutMs: 5000 });
    assert.equal(answer.inode?.ec, 'after');
  } finally {
    channel.close();
  }
});

test('cancelling calls does not let a client run more handlers, or hold more request bytes, than the limits', async () => {
  const open = holdSlowCalls();
  // Tiny requests, each cancelled at once: handlers that ignore cancellation keep running.
  const { socket, frames } = await rawConnection();
  socket.write(LEAN_MAGIC);
  const pairs = 1200;
  for (let id = 1; id <= pairs; id++) {
    socket.write(Buffer.concat([statRequest(id, 'slow', 20_000), encodeEmptyFrame(FrameType.CANCEL, id)]));
  }
  await waitFor('handlers to start', () => slowRunning > 0);
  // Reading stops at 2 x the call limit; requests already read beyond 3 x it are refused.
  await waitFor('the server to stop taking requests', () => {
    const refused = frames.filter((f) => f.type === FrameType.ERROR).length;
    return slowRunning + refused >= 2 * MAX_CALLS_PER_CONNECTION;
  });
  assert.ok(slowMostAtOnce <= 3 * MAX_CALLS_PER_CONNECTION, `${slowMostAtOnce} handlers at once`);
  open();
  await waitFor('the handlers to return', () => slowRunning === 0);
  socket.destroy();

  // Large requests: the byte budget (16 x 64 KiB: 17 of these) holds cancelled ones until their handlers return.
  const reopen = holdSlowCalls();
  const second = await rawConnection();
  second.socket.write(LEAN_MAGIC);
  const large = 'slow'.padEnd(60 * 1024, '.');
  for (let id = 1; id <= 40; id++) {
    second.socket.write(
      Buffer.concat([statRequest(id, large, 20_000), encodeEmptyFrame(FrameType.CANCEL, id)]),
    );
  }
  await waitFor('the requests over the budget to be refused', () =>
    second.frames.some(
      (f) => f.type === FrameType.ERROR && decodeError(f.body)?.code === 'RESOURCE_EXHAUSTED',
    ),
  );
  assert.ok(slowMostAtOnce <= 17, `${slowMostAtOnce} large requests held at once`);
  reopen();
  await waitFor('the handlers to return', () => slowRunning === 0);
  second.socket.destroy();
});

test('a handler that looks at its signal after answering is not told it was cancelled', async () => {
  const answered = new RpcServer({ maxMessageBytes: MAX_MESSAGE });
  let context: { signal: AbortSignal } | undefined;
  const handlers = statOnly(async () => {});
  (handlers as unknown as Record<string, unknown>)['Stat'] = async (
    _request: unknown,
    ctx: { signal: AbortSignal },
  ) => {
    context = ctx;
    return { inode: { id: 1, type: FileType.FILE, size: 0, ec: 'done' } };
  };
  answered.addService(MetadataService, handlers);
  const answeredPort = await answered.listen('127.0.0.1', 0);
  const channel = new RpcChannel(`127.0.0.1:${answeredPort}`, { transport: 'lean' });
  try {
    const answer = await channel.call(MetadataService, 'Stat', { path: 'a' }, { timeoutMs: 5000 });
    assert.equal(answer.inode?.ec, 'done');
    const signal = context!.signal;
    await new Promise((resolve) => setImmediate(resolve));
    assert.equal(signal.aborted, false);
  } finally {
    channel.close();
    await answered.close(0);
  }
});

test('both transports of a server draw on one byte budget for the requests they hold', async () => {
  const open = holdSlowCalls();
  // 17 requests of 60 KiB held by running handlers over lean fill the budget (16 x 64 KiB)...
  const { socket, frames } = await rawConnection();
  socket.write(LEAN_MAGIC);
  const large = 'slow'.padEnd(60 * 1024, '.');
  for (let id = 1; id <= 17; id++) socket.write(statRequest(id, large, 20_000));
  await waitFor('17 handlers running', () => slowRunning === 17);
  assert.equal(frames.length, 0);
  // ...so one more over gRPC is refused, not held beside them.
  const channel = new RpcChannel(address, { transport: 'grpc' });
  try {
    await assert.rejects(
      channel.call(MetadataService, 'Stat', { path: large }, { timeoutMs: 5000 }),
      (error: DogfsError) => error.code === 'RESOURCE_EXHAUSTED' && /server busy/.test(error.message),
    );
  } finally {
    channel.close();
    open();
    await waitFor('the handlers to return', () => slowRunning === 0);
    socket.destroy();
  }
});

test('a connection whose answers keep arriving outlives an unanswered ping; a silent one does not', async () => {
  // The fake server never answers pings. One call's answer trickles in over ~3 s, longer than the 2 s
  // a ping is given; another call times out meanwhile and sends the ping.
  const answer = encodeResponse(
    0,
    encodeMessage('dogfs.v1.StatResponse', { inode: { id: 1, type: FileType.FILE, size: 0, ec: 'slowly' } }),
  );
  const timers: NodeJS.Timeout[] = [];
  const fake = await fakeLeanServer((callId, body, socket) => {
    const { message } = decodeRequest(body);
    if (decodeMessage('dogfs.v1.StatRequest', message).path !== 'trickle') return; // 'silent': never
    const frame = Buffer.from(answer);
    frame.writeUInt32BE(callId, 5); // [u32 length][u8 type][u32 id]
    const pieces = 30;
    const step = Math.ceil(frame.byteLength / pieces);
    for (let i = 0; i < pieces; i++) {
      timers.push(setTimeout(() => socket.write(frame.subarray(i * step, (i + 1) * step)), 100 * (i + 1)));
    }
  });
  const channel = new RpcChannel(fake.address, { transport: 'lean' });
  try {
    const trickling = channel.call(MetadataService, 'Stat', { path: 'trickle' }, { timeoutMs: 20_000 });
    await assert.rejects(
      channel.call(MetadataService, 'Stat', { path: 'silent' }, { timeoutMs: 200 }),
      (error: DogfsError) => error.code === 'DEADLINE_EXCEEDED',
    );
    assert.equal((await trickling).inode?.ec, 'slowly');
    // Nothing arrives any more: the next timeout's ping goes unanswered and the connection is dropped.
    const waiting = channel.call(MetadataService, 'Stat', { path: 'silent' }, { timeoutMs: 20_000 });
    await assert.rejects(
      channel.call(MetadataService, 'Stat', { path: 'silent' }, { timeoutMs: 200 }),
      (error: DogfsError) => error.code === 'DEADLINE_EXCEEDED',
    );
    await assert.rejects(
      waiting,
      (error: DogfsError) => error.code === 'UNAVAILABLE' && /ping/.test(error.message),
    );
  } finally {
    for (const timer of timers) clearTimeout(timer);
    channel.close();
    fake.close();
  }
});

test('over gRPC too, cancelled calls hold their bytes and a handler slot until their handlers return', async () => {
  const channel = new RpcChannel(address, { transport: 'grpc' });
  /** Starts a slow call, waits for its handler (or its refusal), then cancels it; the refusal if any. */
  const startAndCancel = async (path: string): Promise<string | undefined> => {
    const abort = new AbortController();
    const started = new Promise<undefined>((resolve) => {
      onSlowStart = () => resolve(undefined);
    });
    const call = channel
      .call(MetadataService, 'Stat', { path }, { timeoutMs: 20_000, signal: abort.signal })
      .then(
        () => undefined,
        (error: DogfsError) => (error.code === 'CANCELLED' ? undefined : error.message),
      );
    const refusal = await Promise.race([call, started]);
    onSlowStart = undefined;
    abort.abort();
    return refusal ?? (await call);
  };
  try {
    let reopen = holdSlowCalls();
    const large = 'slow'.padEnd(60 * 1024, '.');
    const refusals: string[] = [];
    for (let i = 0; i < 40 && refusals.length === 0; i++) {
      const refusal = await startAndCancel(large);
      if (refusal !== undefined) refusals.push(refusal);
    }
    assert.match(refusals[0] ?? '', /server busy/);
    assert.ok(slowMostAtOnce <= 17, `${slowMostAtOnce} large requests held at once`);
    reopen();
    await waitFor('the handlers to return', () => slowRunning === 0);

    reopen = holdSlowCalls();
    refusals.length = 0;
    for (let i = 0; i < 3 * MAX_CALLS_PER_CONNECTION + 10 && refusals.length === 0; i++) {
      const refusal = await startAndCancel('slow');
      if (refusal !== undefined) refusals.push(refusal);
    }
    assert.match(refusals[0] ?? '', /handlers still running/);
    assert.equal(slowMostAtOnce, 3 * MAX_CALLS_PER_CONNECTION);
    reopen();
    await waitFor('the handlers to return', () => slowRunning === 0);
  } finally {
    channel.close();
  }
});

test('handlers running on the whole server are bounded across connections and both transports', async () => {
  // Each connection stays far below its own limits: only the server-wide count can refuse.
  const limited = new RpcServer({ maxMessageBytes: MAX_MESSAGE, maxRunningHandlers: 4 });
  const { passed, open } = gate();
  let waiting = 0;
  limited.addService(
    MetadataService,
    statOnly(async (path) => {
      if (path !== 'wait') return;
      waiting++;
      try {
        await passed; // cancellation ignored: the handler keeps running, as a slow disk call would
      } finally {
        waiting--;
      }
    }),
  );
  const limitedAddress = `127.0.0.1:${await limited.listen('127.0.0.1', 0)}`;
  const first = new RpcChannel(limitedAddress, { transport: 'lean' });
  const second = new RpcChannel(limitedAddress, { transport: 'lean' });
  const grpc = new RpcChannel(limitedAddress, { transport: 'grpc' });
  const stat = (channel: RpcChannel, path: string, signal?: AbortSignal) =>
    channel.call(MetadataService, 'Stat', { path }, { timeoutMs: 10_000, ...(signal ? { signal } : {}) });
  try {
    const held = [stat(first, 'wait'), stat(first, 'wait'), stat(grpc, 'wait')];
    const abort = new AbortController();
    const cancelled = stat(second, 'wait', abort.signal);
    await waitFor('four handlers running on three connections', () => waiting === 4);
    abort.abort();
    await assert.rejects(cancelled, (error: DogfsError) => error.code === 'CANCELLED');
    // The cancelled call's handler still runs, so it still holds its slot.
    for (const channel of [second, grpc, first]) {
      await assert.rejects(
        stat(channel, 'quick'),
        (error: DogfsError) =>
          error.code === 'RESOURCE_EXHAUSTED' &&
          /server busy: 4 handlers already running/.test(error.message),
        `a fifth handler over ${channel === grpc ? 'gRPC' : 'lean'}`,
      );
    }
    assert.equal(waiting, 4);
    open();
    for (const answer of await Promise.all(held)) assert.equal(answer.inode?.ec, 'wait');
    await waitFor('every handler to return', () => waiting === 0);
    // Every slot was given back: each connection runs calls again.
    for (const channel of [first, second, grpc])
      assert.equal((await stat(channel, 'quick')).inode?.ec, 'quick');
  } finally {
    open();
    for (const channel of [first, second, grpc]) channel.close();
    await limited.close(0);
  }
});
