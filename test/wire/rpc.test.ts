import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import * as grpc from '@grpc/grpc-js';
import { DogfsError } from '../../src/wire/errors.js';
import { FileType, HealthService, MetadataService } from '../../src/wire/gen/types.js';
import { decodeMessage, encodeMessage } from '../../src/wire/proto.js';
import { callWithRetry, RpcChannel, RpcServer, withRetry } from '../../src/wire/rpc.js';

const server = new RpcServer({ maxMessageBytes: 64 * 1024 });
let address = '';
let statCalls = 0;
let mkdirCalls = 0;

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
      if (request.path === '/flaky' && statCalls % 3 !== 0) throw new DogfsError('UNAVAILABLE', 'try again');
      if (request.path === '/slow') {
        await new Promise((resolve) => context.signal.addEventListener('abort', resolve, { once: true }));
        throw context.signal.reason;
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

test('a typed call returns the decoded response', async () => {
  const channel = new RpcChannel(address);
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

test('errors cross the wire as codes, NOT_LEADER with the leader hint; bugs arrive as INTERNAL', async () => {
  const channel = new RpcChannel(address);
  try {
    await assert.rejects(
      channel.call(MetadataService, 'Stat', { path: '/leader-elsewhere' }),
      (e: unknown) => {
        return e instanceof DogfsError && e.code === 'NOT_LEADER' && e.leaderHint === '127.0.0.1:9';
      },
    );
    await assert.rejects(channel.call(MetadataService, 'Stat', { path: '/bug' }), (e: unknown) => {
      return e instanceof DogfsError && e.code === 'INTERNAL';
    });
  } finally {
    channel.close();
  }
});

test('a deadline cuts a slow call on both sides', async () => {
  const channel = new RpcChannel(address);
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

  const channel = new RpcChannel(address);
  try {
    await assert.rejects(
      channel.call(MetadataService, 'Stat', { path: 'x'.repeat(100 * 1024) }),
      (e: unknown) => {
        return e instanceof DogfsError && e.code === 'RESOURCE_EXHAUSTED';
      },
    );
  } finally {
    channel.close();
  }
});

test('idempotent calls are retried with backoff; a server that is down is UNAVAILABLE', async () => {
  const channel = new RpcChannel(address);
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
  const down = new RpcChannel('127.0.0.1:1');
  try {
    await assert.rejects(down.call(HealthService, 'Check', {}, { timeoutMs: 3000 }), (e: unknown) => {
      return e instanceof DogfsError && e.code === 'UNAVAILABLE' && e.message.includes('127.0.0.1:1');
    });
  } finally {
    down.close();
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

test('Mkdir is retried (IDEMPOTENT in proto) until attempts run out', async () => {
  const channel = new RpcChannel(address);
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
