import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import http2 from 'node:http2';
import { createServer, type Socket } from 'node:net';
import { after, before, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import * as grpc from '@grpc/grpc-js';
import { DogfsError } from '../../src/wire/errors.js';
import { FileType, HealthService, MetadataService } from '../../src/wire/gen/types.js';
import { decodeMessage, encodeMessage } from '../../src/wire/proto.js';
import { type CallContext, callWithRetry, RpcChannel, RpcServer, withRetry } from '../../src/wire/rpc.js';
import { waitFor } from '../helpers/index.js';
import { statOnly } from '../helpers/lean.js';

const server = new RpcServer({ maxMessageBytes: 64 * 1024 });
let address = '';
let statCalls = 0;
let mkdirCalls = 0;
/** Set while a '/slow' Stat waits; then the code of the reason its signal fired with. */
let slowStarted = false;
let slowAbortCode: string | undefined;

function unimplemented(): never {
  throw new DogfsError('UNIMPLEMENTED', 'not in this test');
}

before(async () => {
  server.addService(HealthService, {
    Check: () => ({
      role: 'meta',
      id: 'test',
      pid: process.pid,
      version: 'x',
      uptimeMs: 2 ** 40 + 1,
      addr: '',
    }),
  });
  server.addService(MetadataService, {
    Stat: async (request, context) => {
      statCalls++;
      if (request.path === '/leader-elsewhere') {
        throw new DogfsError('NOT_LEADER', 'not the leader', { leaderHint: '127.0.0.1:9' });
      }
      if (request.path === '/leader-zoned') {
        // An IPv6 zone has a '%', which gRPC percent-encodes in a trailer; so is anything not ASCII.
        throw new DogfsError('NOT_LEADER', 'not the leader', { leaderHint: '[fe80::1%eth0]:7000 é' });
      }
      if (request.path === '/flaky' && statCalls % 3 !== 0) throw new DogfsError('UNAVAILABLE', 'try again');
      if (request.path === '/slow') {
        slowStarted = true;
        await new Promise((resolve) => context.signal.addEventListener('abort', resolve, { once: true }));
        slowAbortCode = (context.signal.reason as DogfsError).code;
        throw context.signal.reason;
      }
      if (request.path === '/later') {
        // Answers late but within its caller's deadline.
        await new Promise((resolve) => setTimeout(resolve, 300));
        return { inode: { id: 9, type: FileType.FILE, size: 0, ec: '' } };
      }
      if (request.path === '/odd-error') {
        // Half an emoji (a lone surrogate) and far more than fits in one HTTP/2 frame.
        throw new DogfsError(
          'INVALID_ARGUMENT',
          `bad name ${'\u{1F600}'.slice(0, 1)} ${'x'.repeat(100_000)}`,
        );
      }
      if (request.path === '/big') {
        return { inode: { id: 8, type: FileType.FILE, size: 0, ec: 'x'.repeat(4096) } };
      }
      if (request.path === '/bug') throw new TypeError('undefined is not a function');
      return { inode: { id: 7, type: FileType.FILE, size: request.path.length, ec: 'rs-6-3' } };
    },
    Mkdir: () => {
      mkdirCalls++;
      throw new DogfsError('UNAVAILABLE', 'no leader yet');
    },
    Create: unimplemented,
    AllocateBlockGroup: unimplemented,
    CommitBlockGroup: unimplemented,
    CompleteFile: unimplemented,
    List: unimplemented,
    Rename: unimplemented,
    Delete: unimplemented,
    ComposeFile: unimplemented,
    ReportBadShard: unimplemented,
    RegisterChunkServer: unimplemented,
    Heartbeat: unimplemented,
    BlockReport: unimplemented,
    ClusterReport: unimplemented,
    FindLeader: unimplemented,
    PlanRepair: unimplemented,
    CommitRepair: unimplemented,
    AbandonFile: unimplemented,
    RenewLease: unimplemented,
    SetSettings: unimplemented,
    OpenSession: unimplemented,
    SetDraining: unimplemented,
    MemberStatus: unimplemented,
  });
  const port = await server.listen('127.0.0.1', 0);
  address = `127.0.0.1:${port}`;
});
after(() => server.close(0));

test('messages round-trip through protobuf, 64-bit fields as numbers', () => {
  const bytes = encodeMessage('dogfs.v1.Inode', {
    id: 2 ** 52 + 3,
    size: 10,
    ec: 'rs-4-2',
    blockGroups: [{ id: 5 }],
  });
  const inode = decodeMessage('dogfs.v1.Inode', bytes);
  assert.equal(inode.id, 2 ** 52 + 3);
  assert.equal(inode.ec, 'rs-4-2');
  assert.equal(inode.mode, 0, 'absent scalars decode to their defaults');
  assert.equal(inode.blockGroups[0]?.id, 5);
  assert.throws(
    () => decodeMessage('dogfs.v1.Inode', Buffer.from([0x0a, 0xff, 0xff])),
    /index out of range|invalid/i,
  );
});

test('a malformed request is INVALID_ARGUMENT; an oversized one is refused', async () => {
  const raw = new grpc.Client(address, grpc.credentials.createInsecure());
  const garbage = Buffer.from([0x0a, 0xff, 0xff, 0xff]);
  const status = await new Promise<grpc.ServiceError>((resolve) => {
    raw.makeUnaryRequest(
      `/${MetadataService.name}/Stat`,
      (b: Buffer) => b,
      (b: Buffer) => b,
      garbage,
      (error) => resolve(error as grpc.ServiceError),
    );
  });
  raw.close();
  assert.equal(status.code, grpc.status.INVALID_ARGUMENT);
  assert.equal(status.metadata.get('dogfs-code')[0], 'INVALID_ARGUMENT');

  for (const transport of ['lean', 'grpc'] as const) {
    const channel = new RpcChannel(address, { transport });
    try {
      await assert.rejects(
        channel.call(MetadataService, 'Stat', { path: 'x'.repeat(100 * 1024) }),
        (e: unknown) => {
          return e instanceof DogfsError && e.code === 'TOO_LARGE';
        },
        transport,
      );
      // The channel stays usable after the refusal.
      assert.equal((await channel.call(MetadataService, 'Stat', { path: '/ok' })).inode?.id, 7, transport);
    } finally {
      channel.close();
    }
  }
});

test('withRetry gives a non-idempotent call exactly one attempt and stops at the deadline', async () => {
  let attempts = 0;
  await assert.rejects(
    withRetry({ deadline: Date.now() + 5000, idempotent: false }, async () => {
      attempts++;
      throw new DogfsError('UNAVAILABLE', 'down');
    }),
    (e: unknown) => e instanceof DogfsError && e.code === 'UNAVAILABLE',
  );
  assert.equal(attempts, 1);

  attempts = 0;
  await assert.rejects(
    withRetry({ deadline: Date.now() + 5000, idempotent: true }, async () => {
      attempts++;
      throw new DogfsError('NOT_FOUND', 'gone');
    }),
  );
  assert.equal(attempts, 1, 'a non-retryable code is not retried');

  attempts = 0;
  await assert.rejects(
    withRetry(
      { deadline: Date.now() + 5000, idempotent: true, maxAttempts: 4, random: () => 0 },
      async () => {
        attempts++;
        throw new DogfsError('UNAVAILABLE', 'down');
      },
    ),
  );
  assert.equal(attempts, 4, 'bounded by maxAttempts');

  attempts = 0;
  await assert.rejects(
    withRetry(
      { deadline: Date.now() + 30, idempotent: true, baseDelayMs: 1000, random: () => 1 },
      async () => {
        attempts++;
        throw new DogfsError('UNAVAILABLE', 'down');
      },
    ),
  );
  assert.equal(attempts, 1, 'no retry whose backoff would pass the deadline');
});

test('the server refuses an oversized request from a stock gRPC client with RESOURCE_EXHAUSTED', async () => {
  const raw = new grpc.Client(address, grpc.credentials.createInsecure());
  try {
    const big = encodeMessage('dogfs.v1.StatRequest', { path: 'x'.repeat(100 * 1024) });
    const status = await new Promise<grpc.ServiceError>((resolve) => {
      raw.makeUnaryRequest(
        `/${MetadataService.name}/Stat`,
        (b: Buffer) => b,
        (b: Buffer) => b,
        Buffer.from(big),
        (error) => resolve(error as grpc.ServiceError),
      );
    });
    assert.equal(status.code, grpc.status.RESOURCE_EXHAUSTED);
    assert.equal(status.metadata.get('dogfs-code')[0], 'TOO_LARGE');
  } finally {
    raw.close();
  }
});

test('a DogFS channel calls a stock gRPC server: answers, and its statuses as codes', async () => {
  const stock = new grpc.Server();
  stock.addService(
    {
      Echo: {
        path: '/test.Stock/Echo',
        requestStream: false,
        responseStream: false,
        requestSerialize: (b: Buffer) => b,
        requestDeserialize: (b: Buffer) => b,
        responseSerialize: (b: Buffer) => b,
        responseDeserialize: (b: Buffer) => b,
      },
    },
    {
      Echo: (call: grpc.ServerUnaryCall<Buffer, Buffer>, callback: grpc.sendUnaryData<Buffer>) => {
        if (call.request.byteLength === 0)
          callback({ code: grpc.status.NOT_FOUND, details: 'nothing 100% here' });
        else callback(null, call.request);
      },
    },
  );
  const port = await new Promise<number>((resolve, reject) =>
    stock.bindAsync('127.0.0.1:0', grpc.ServerCredentials.createInsecure(), (e, p) =>
      e ? reject(e) : resolve(p),
    ),
  );
  const channel = new RpcChannel(`127.0.0.1:${port}`, { transport: 'grpc' });
  try {
    const answer = await channel.callRaw('/test.Stock/Echo', Buffer.from('hello'));
    assert.equal(answer.toString(), 'hello');
    await assert.rejects(
      channel.callRaw('/test.Stock/Echo', Buffer.alloc(0), {}, 'Echo'),
      (e: unknown) =>
        e instanceof DogfsError && e.code === 'NOT_FOUND' && e.message.includes('nothing 100% here'),
    );
  } finally {
    channel.close();
    stock.forceShutdown();
  }
});

/** A gRPC Stat call written by hand on `session`: its request bytes are the caller's to write. */
function rawStat(session: http2.ClientHttp2Session, grpcTimeout: string): http2.ClientHttp2Stream {
  const stream = session.request({
    ':method': 'POST',
    ':path': `/${MetadataService.name}/Stat`,
    'content-type': 'application/grpc',
    'grpc-timeout': grpcTimeout,
  });
  stream.on('error', () => {});
  return stream;
}

test('the server answers at the deadline even while the request is still arriving; non-gRPC is refused', async () => {
  const session = http2.connect(`http://${address}`);
  session.on('error', () => {});
  try {
    const started = Date.now();
    const stream = rawStat(session, '300m');
    // A prefix announcing 100 bytes, then only 3 of them, never the end.
    stream.write(Buffer.from([0, 0, 0, 0, 100, 1, 2, 3]));
    const headers = await new Promise<http2.IncomingHttpHeaders>((resolve) =>
      stream.once('response', resolve),
    );
    assert.equal(headers['dogfs-code'], 'DEADLINE_EXCEEDED');
    assert.ok(Date.now() - started < 5000);

    const web = session.request({
      ':method': 'POST',
      ':path': `/${MetadataService.name}/Stat`,
      'content-type': 'application/grpc-web',
    });
    web.on('error', () => {});
    web.end();
    const webHeaders = await new Promise<http2.IncomingHttpHeaders>((resolve) =>
      web.once('response', resolve),
    );
    assert.equal(webHeaders[':status'], 415);
  } finally {
    session.destroy();
  }
});

test('after a drain no handler starts: a gRPC request whose body arrives later is refused, shutting down', async () => {
  const draining = new RpcServer();
  let ran = 0;
  draining.addService(
    MetadataService,
    statOnly(async () => {
      ran++;
    }),
  );
  const session = http2.connect(`http://127.0.0.1:${await draining.listen('127.0.0.1', 0)}`);
  session.on('error', () => {});
  try {
    await new Promise((resolve) => session.once('connect', resolve));
    const stream = rawStat(session, '10S');
    const message = encodeMessage('dogfs.v1.StatRequest', { path: 'late' });
    const prefix = Buffer.from([0, 0, 0, 0, 0]);
    prefix.writeUInt32BE(message.byteLength, 1);
    stream.write(prefix);
    // The server has read the headers once it answers a ping sent after them: the stream is one it took.
    await new Promise<void>((resolve, reject) =>
      session.ping((error) => (error === null ? resolve() : reject(error))),
    );
    assert.equal(await draining.drain(5000), 0, 'no handler was running');
    stream.end(message);
    const headers = await new Promise<http2.IncomingHttpHeaders>((resolve) =>
      stream.once('response', resolve),
    );
    assert.equal(headers['dogfs-code'], 'UNAVAILABLE');
    assert.match(String(headers['grpc-message']), /shutting down/);
    assert.equal(ran, 0, 'the handler never started');
  } finally {
    session.destroy();
    await draining.close(0);
  }
});

test('a handler that first looks at its signal after returning leaves no timer behind', async () => {
  const later = new RpcServer();
  const contexts: CallContext[] = [];
  later.addService(HealthService, {
    Check: (_request, context) => {
      contexts.push(context); // for work the handler leaves running after it answers
      return { role: 'meta', id: 'later', pid: process.pid, version: 'x', uptimeMs: 1, addr: '' };
    },
  });
  const laterAddress = `127.0.0.1:${await later.listen('127.0.0.1', 0)}`;
  const channels = [
    new RpcChannel(laterAddress, { transport: 'lean' }),
    new RpcChannel(laterAddress, { transport: 'grpc' }),
  ];
  const timers = () => process.getActiveResourcesInfo().filter((kind) => kind === 'Timeout').length;
  try {
    for (const channel of channels)
      for (let i = 0; i < 10; i++) await channel.call(HealthService, 'Check', {}, { timeoutMs: 60_000 });
    const before = timers();
    const signals = contexts.map((context) => context.signal);
    assert.equal(timers(), before, 'a deadline timer per signal, for up to a minute');
    assert.equal(signals.length, 20);
    assert.ok(signals.every((signal) => !signal.aborted));
  } finally {
    for (const channel of channels) channel.close();
    await later.close(0);
  }
});

for (const transport of ['lean', 'grpc'] as const) {
  test(`${transport}: a typed call returns the decoded response`, async () => {
    const channel = new RpcChannel(address, { transport });
    try {
      const health = await channel.call(HealthService, 'Check', {}, { timeoutMs: 5000 });
      assert.equal(health.id, 'test');
      assert.equal(health.uptimeMs, 2 ** 40 + 1);
      const stat = await channel.call(MetadataService, 'Stat', { path: '/abc' }, { timeoutMs: 5000 });
      assert.equal(stat.inode?.size, 4);
    } finally {
      channel.close();
    }
  });

  test(`${transport}: errors cross the wire as codes, NOT_LEADER with the leader hint; bugs arrive as INTERNAL`, async () => {
    const channel = new RpcChannel(address, { transport });
    try {
      await assert.rejects(
        channel.call(MetadataService, 'Stat', { path: '/leader-elsewhere' }),
        (e: unknown) => {
          return e instanceof DogfsError && e.code === 'NOT_LEADER' && e.leaderHint === '127.0.0.1:9';
        },
      );
      await assert.rejects(channel.call(MetadataService, 'Stat', { path: '/leader-zoned' }), (e: unknown) => {
        assert.equal((e as DogfsError).leaderHint, '[fe80::1%eth0]:7000 é');
        return true;
      });
      await assert.rejects(channel.call(MetadataService, 'Stat', { path: '/bug' }), (e: unknown) => {
        return e instanceof DogfsError && e.code === 'INTERNAL';
      });
    } finally {
      channel.close();
    }
  });

  test(`${transport}: a deadline cuts a slow call on both sides`, async () => {
    const channel = new RpcChannel(address, { transport });
    try {
      const started = Date.now();
      await assert.rejects(
        channel.call(MetadataService, 'Stat', { path: '/slow' }, { timeoutMs: 200 }),
        (e: unknown) => {
          return e instanceof DogfsError && e.code === 'DEADLINE_EXCEEDED';
        },
      );
      assert.ok(Date.now() - started < 5000);
    } finally {
      channel.close();
    }
  });

  test(`${transport}: idempotent calls are retried with backoff; a server that is down is UNAVAILABLE`, async () => {
    const channel = new RpcChannel(address, { transport });
    try {
      statCalls = 0;
      const stat = await callWithRetry(
        channel,
        MetadataService,
        'Stat',
        { path: '/flaky' },
        { timeoutMs: 5000 },
      );
      assert.equal(stat.inode?.id, 7);
      assert.equal(statCalls, 3, 'two UNAVAILABLE answers, then success');
    } finally {
      channel.close();
    }
    const down = new RpcChannel('127.0.0.1:1', { transport });
    try {
      await assert.rejects(down.call(HealthService, 'Check', {}, { timeoutMs: 3000 }), (e: unknown) => {
        return e instanceof DogfsError && e.code === 'UNAVAILABLE' && e.message.includes('127.0.0.1:1');
      });
    } finally {
      down.close();
    }
  });

  test(`${transport}: Mkdir is retried (IDEMPOTENT in proto) until attempts run out`, async () => {
    const channel = new RpcChannel(address, { transport });
    try {
      mkdirCalls = 0;
      await assert.rejects(
        callWithRetry(channel, MetadataService, 'Mkdir', { path: '/a' }, { timeoutMs: 10_000 }),
      );
      assert.equal(mkdirCalls, 8);
      assert.equal(MetadataService.methods.Mkdir.idempotent, true);
    } finally {
      channel.close();
    }
  });

  test(`${transport}: an AbortSignal cancels a call in flight, and the server sees the cancellation`, async () => {
    const channel = new RpcChannel(address, { transport });
    try {
      slowStarted = false;
      slowAbortCode = undefined;
      const abort = new AbortController();
      const call = channel.call(
        MetadataService,
        'Stat',
        { path: '/slow' },
        { timeoutMs: 30_000, signal: abort.signal },
      );
      await waitFor('the slow handler to start', () => slowStarted);
      abort.abort();
      await assert.rejects(call, (e: unknown) => e instanceof DogfsError && e.code === 'CANCELLED');
      assert.equal(await waitFor('the handler to see the cancellation', () => slowAbortCode), 'CANCELLED');
    } finally {
      channel.close();
    }
  });

  test(`${transport}: a response over the channel limit is refused with TOO_LARGE`, async () => {
    const channel = new RpcChannel(address, { maxMessageBytes: 1024, transport });
    try {
      await assert.rejects(
        channel.call(MetadataService, 'Stat', { path: '/big' }),
        (e: unknown) => e instanceof DogfsError && e.code === 'TOO_LARGE' && e.message.includes('1024'),
      );
      // The channel stays usable for answers within the limit.
      assert.equal((await channel.call(MetadataService, 'Stat', { path: '/ok' })).inode?.id, 7);
    } finally {
      channel.close();
    }
  });

  test(`${transport}: a message over a size limit is not retried, and the handler runs once`, async () => {
    const small = new RpcChannel(address, { maxMessageBytes: 1024, transport });
    const large = new RpcChannel(address, { transport });
    const tooLarge = (e: unknown) => e instanceof DogfsError && e.code === 'TOO_LARGE';
    try {
      const before = statCalls;
      // An answer over the channel's limit: a retry would only run the handler again.
      await assert.rejects(
        callWithRetry(small, MetadataService, 'Stat', { path: '/big' }, { timeoutMs: 5000 }),
        tooLarge,
      );
      assert.equal(statCalls - before, 1);
      // A request over the server's limit (64 KiB), and one over the channel's own.
      await assert.rejects(
        callWithRetry(large, MetadataService, 'Stat', { path: 'x'.repeat(100 * 1024) }, { timeoutMs: 5000 }),
        tooLarge,
      );
      await assert.rejects(
        callWithRetry(small, MetadataService, 'Stat', { path: 'x'.repeat(2000) }, { timeoutMs: 5000 }),
        tooLarge,
      );
      assert.equal(statCalls - before, 1);
    } finally {
      small.close();
      large.close();
    }
  });

  test(`${transport}: a peer that accepts but never answers: the call ends at its deadline and the connection is replaced`, async () => {
    const sockets: Socket[] = [];
    let closed = 0;
    const silent = createServer((socket) => {
      sockets.push(socket);
      socket.on('error', () => {});
      socket.on('close', () => closed++);
      // Read (and ignore) what the client sends, so its hang-up is seen.
      socket.resume();
    });
    await new Promise<void>((resolve) => silent.listen(0, '127.0.0.1', resolve));
    const port = (silent.address() as { port: number }).port;
    const channel = new RpcChannel(`127.0.0.1:${port}`, { transport });
    try {
      const started = Date.now();
      await assert.rejects(
        channel.call(HealthService, 'Check', {}, { timeoutMs: 300 }),
        (e: unknown) => e instanceof DogfsError && e.code === 'DEADLINE_EXCEEDED',
      );
      assert.ok(Date.now() - started < 5000, 'within its deadline, not a transport timeout');
      // The unanswered ping drops the connection, so the next call dials again instead of queueing on it.
      await waitFor(
        'the silent connection to be dropped',
        () => sockets[0]?.destroyed || sockets[0]?.readableEnded,
      );
      await assert.rejects(channel.call(HealthService, 'Check', {}, { timeoutMs: 300 }));
      assert.equal(sockets.length, 2, 'a second connection');
    } finally {
      channel.close();
      for (const socket of sockets) socket.destroy();
      silent.close();
    }
  });

  test(`${transport}: an open channel does not keep a finished process alive`, async () => {
    const rpc = fileURLToPath(new URL('../../src/wire/rpc.js', import.meta.url));
    const types = fileURLToPath(new URL('../../src/wire/gen/types.js', import.meta.url));
    const script = `
      const { RpcChannel } = await import(${JSON.stringify(rpc)});
      const { HealthService } = await import(${JSON.stringify(types)});
      const channel = new RpcChannel(${JSON.stringify(address)}, { transport: ${JSON.stringify(transport)} });
      const health = await channel.call(HealthService, 'Check', {});
      process.stdout.write(health.id);`;
    const child = spawn(process.execPath, ['--input-type=module', '-e', script], {
      stdio: ['ignore', 'pipe', 'inherit'],
    });
    let out = '';
    child.stdout.setEncoding('utf8').on('data', (d: string) => {
      out += d;
    });
    const exited = new Promise<number | null>((resolve) => child.once('exit', resolve));
    try {
      const code = await Promise.race([
        exited,
        new Promise<'hung'>((r) => setTimeout(() => r('hung'), 15_000).unref()),
      ]);
      assert.equal(code, 0);
      assert.equal(out, 'test');
    } finally {
      child.kill('SIGKILL');
    }
  });

  test(`${transport}: an error message that is not well-formed or is huge arrives cut and readable; the server lives on`, async () => {
    const channel = new RpcChannel(address, { transport });
    try {
      await assert.rejects(
        channel.call(MetadataService, 'Stat', { path: '/odd-error' }),
        (e: unknown) =>
          e instanceof DogfsError &&
          e.code === 'INVALID_ARGUMENT' &&
          e.message.startsWith('bad name \uFFFD x') &&
          e.message.length <= 4096,
      );
      assert.equal((await channel.call(MetadataService, 'Stat', { path: '/ok' })).inode?.id, 7);
    } finally {
      channel.close();
    }
  });

  test(`${transport}: many calls timing out together do not take down the connection other calls use`, async () => {
    const channel = new RpcChannel(address, { transport });
    try {
      const late = channel.call(MetadataService, 'Stat', { path: '/later' }, { timeoutMs: 5000 });
      const timeouts = Array.from({ length: 20 }, () =>
        channel.call(MetadataService, 'Stat', { path: '/slow' }, { timeoutMs: 100 }),
      );
      for (const t of await Promise.allSettled(timeouts)) {
        assert.equal(t.status, 'rejected');
        assert.equal((t as PromiseRejectedResult).reason.code, 'DEADLINE_EXCEEDED');
      }
      assert.equal((await late).inode?.id, 9);
    } finally {
      channel.close();
    }
  });

  test(`${transport}: a deadline beyond what a timer holds is a long deadline, not an immediate one`, async () => {
    const channel = new RpcChannel(address, { transport });
    try {
      const month = 30 * 24 * 3600 * 1000;
      assert.equal(
        (await channel.call(MetadataService, 'Stat', { path: '/ok' }, { timeoutMs: month })).inode?.id,
        7,
      );
      const forever = { deadline: Number.POSITIVE_INFINITY };
      assert.equal((await channel.call(MetadataService, 'Stat', { path: '/ok' }, forever)).inode?.id, 7);
    } finally {
      channel.close();
    }
  });
}
