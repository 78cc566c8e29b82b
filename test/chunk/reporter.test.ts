/**
 * The registration/heartbeat/block-report client against a small fake Metadata service: a follower
 * that answers NOT_LEADER with a hint, an unreachable address, and a leader that asks for
 * re-registration.
 */
import assert from 'node:assert/strict';
import { rmSync, statfsSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, test } from 'node:test';
import { MetadataReporter } from '../../src/chunk/reporter.js';
import { ShardStore } from '../../src/chunk/store.js';
import type { Logger } from '../../src/common/log.js';
import { DogfsError } from '../../src/wire/errors.js';
import {
  type BlockReportRequest,
  type HeartbeatRequest,
  type MetadataMethods,
  MetadataService,
  type RegisterChunkServerRequest,
} from '../../src/wire/gen/types.js';
import { RpcServer, type ServiceHandlers } from '../../src/wire/rpc.js';
import { tempDir, waitFor } from '../helpers/index.js';

const dir = tempDir('dogfs-chunk-reporter-');
after(() => dir.remove());
const MiB = 1024 * 1024;

function fakeMetadata(handlers: Partial<ServiceHandlers<MetadataMethods>>): ServiceHandlers<MetadataMethods> {
  const unimplemented = () => {
    throw new DogfsError('UNIMPLEMENTED', 'not in this fake');
  };
  const all = {} as Record<string, unknown>;
  for (const name of Object.keys(MetadataService.methods)) all[name] = unimplemented;
  return { ...(all as unknown as ServiceHandlers<MetadataMethods>), ...handlers };
}

/** A metadata service that records registrations and heartbeats and asks for one every `intervalMs`. */
function recordingMetadata(intervalMs: number) {
  const registrations: RegisterChunkServerRequest[] = [];
  const heartbeats: HeartbeatRequest[] = [];
  const meta = new RpcServer();
  meta.addService(
    MetadataService,
    fakeMetadata({
      RegisterChunkServer: (request) => {
        registrations.push(request);
        return { heartbeatIntervalMs: intervalMs };
      },
      BlockReport: () => ({}),
      Heartbeat: (request) => {
        heartbeats.push(request);
        return {};
      },
    }),
  );
  return { meta, registrations, heartbeats };
}

test('registers with the leader (following NOT_LEADER hints), reports its inventory, heartbeats corrupt shards', async () => {
  const store = await ShardStore.open({ dir: join(dir.path, 'c') });
  for (let i = 0; i < 25; i++) {
    const session = await store.beginWrite({ blockGroupId: 500 + i, index: 1, generation: 0 }, 0);
    await session.commit(0);
  }

  const leader = new RpcServer();
  const follower = new RpcServer();
  const registrations: RegisterChunkServerRequest[] = [];
  const reports: BlockReportRequest[] = [];
  const heartbeats: HeartbeatRequest[] = [];
  let followerCalls = 0;
  let askReregister = false;
  const leaderPort = await (async () => {
    leader.addService(
      MetadataService,
      fakeMetadata({
        RegisterChunkServer: (request) => {
          registrations.push(request);
          return { heartbeatIntervalMs: 50 };
        },
        BlockReport: (request) => {
          reports.push(request);
          return {};
        },
        Heartbeat: (request) => {
          heartbeats.push(request);
          const reregister = askReregister;
          askReregister = false;
          return { reregister };
        },
      }),
    );
    return leader.listen('127.0.0.1', 0);
  })();
  const leaderAddr = `127.0.0.1:${leaderPort}`;
  follower.addService(
    MetadataService,
    fakeMetadata({
      RegisterChunkServer: () => {
        followerCalls++;
        throw new DogfsError('NOT_LEADER', 'not the leader', { leaderHint: leaderAddr });
      },
    }),
  );
  const followerAddr = `127.0.0.1:${await follower.listen('127.0.0.1', 0)}`;

  // First an address where nobody listens, then the follower: the reporter must find the leader.
  const reporter = new MetadataReporter({
    meta: ['127.0.0.1:1', followerAddr],
    id: 'chunk-7',
    dataAddr: '127.0.0.1:7000',
    controlAddr: '127.0.0.1:7001',
    failureDomain: 'rack-a',
    store,
    activeTransfers: () => 3,
    blockReportPageSize: 10,
    baseDelayMs: 10,
    maxDelayMs: 50,
    callTimeoutMs: 1000,
  });
  reporter.start();
  try {
    await waitFor('registered with the leader', () => registrations.length === 1 && heartbeats.length >= 1);
    assert.ok(followerCalls >= 1, 'the follower was asked first');
    assert.equal(reporter.state.target, leaderAddr);
    assert.deepEqual(
      { ...registrations[0]!, capacityBytes: 0 },
      {
        id: 'chunk-7',
        addr: '127.0.0.1:7000',
        controlAddr: '127.0.0.1:7001',
        failureDomain: 'rack-a',
        capacityBytes: 0,
        usedBytes: store.usedBytes,
        clusterId: '',
      },
    );
    // 25 shards in pages of 10: first..last, every shard once, in order.
    assert.deepEqual(
      reports.map((r) => [r.shards.length, r.first, r.last]),
      [
        [10, true, false],
        [10, false, false],
        [5, false, true],
      ],
    );
    assert.deepEqual(
      reports.flatMap((r) => r.shards.map((s) => s.shard?.blockGroupId)),
      Array.from({ length: 25 }, (_, i) => 500 + i),
    );
    assert.equal(heartbeats[0]!.shardCount, 25);
    assert.equal(heartbeats[0]!.activeTransfers, 3);
    assert.deepEqual(heartbeats[0]!.corruptShards, []);

    // A corrupt shard shows up in the next heartbeats.
    store.markCorrupt(store.get({ blockGroupId: 503, index: 1, generation: 0 })!, 'test');
    await waitFor('heartbeat names the corrupt shard', () =>
      heartbeats.some((h) => h.corruptShards.some((s) => s.blockGroupId === 503)),
    );

    // The leader asks for re-registration (it lost its soft state): register and report again.
    askReregister = true;
    await waitFor('registered again', () => registrations.length === 2 && reports.length === 6);
  } finally {
    await reporter.stop();
    await leader.close(0);
    await follower.close(0);
  }
});

test('a heartbeat lost to a blip or a leader change is sent again; registration and inventory go only when asked', async () => {
  const store = await ShardStore.open({ dir: join(dir.path, 'retry') });
  for (let i = 0; i < 3; i++) {
    const session = await store.beginWrite({ blockGroupId: 700 + i, index: 0, generation: 0 }, 0);
    await session.commit(0);
  }
  /** A fake leader that, like the real one, asks for the inventory until it has had a whole report. */
  const leader = (name: string) => {
    const seen = { name, registrations: 0, reportPages: 0, heartbeats: 0, inventoried: false };
    let failNext: DogfsError | undefined;
    let refuseReport = false;
    const server = new RpcServer();
    server.addService(
      MetadataService,
      fakeMetadata({
        RegisterChunkServer: () => {
          seen.registrations++;
          return { heartbeatIntervalMs: 50 };
        },
        BlockReport: (request) => {
          if (refuseReport) {
            refuseReport = false;
            throw new DogfsError('FAILED_PRECONDITION', "chunk server 'chunk-r' is not registered");
          }
          seen.reportPages++;
          if (request.last) seen.inventoried = true;
          return {};
        },
        Heartbeat: () => {
          const failure = failNext;
          failNext = undefined;
          if (failure !== undefined) throw failure;
          seen.heartbeats++;
          return { reregister: !seen.inventoried };
        },
      }),
    );
    return {
      seen,
      server,
      failNextHeartbeat: (error: DogfsError) => {
        failNext = error;
      },
      refuseNextReport: () => {
        refuseReport = true;
      },
    };
  };
  const a = leader('a');
  const b = leader('b');
  const aAddr = `127.0.0.1:${await a.server.listen('127.0.0.1', 0)}`;
  const bAddr = `127.0.0.1:${await b.server.listen('127.0.0.1', 0)}`;
  const reporter = new MetadataReporter({
    meta: [aAddr],
    id: 'chunk-r',
    dataAddr: '127.0.0.1:7000',
    controlAddr: '127.0.0.1:7001',
    failureDomain: 'rack-a',
    store,
    activeTransfers: () => 0,
    baseDelayMs: 10,
    maxDelayMs: 50,
    callTimeoutMs: 1000,
  });
  reporter.start();
  try {
    await waitFor('registered, reported and heartbeating', () => a.seen.heartbeats >= 2);
    assert.deepEqual(a.seen, {
      name: 'a',
      registrations: 1,
      reportPages: 1,
      heartbeats: a.seen.heartbeats,
      inventoried: true,
    });
    // One heartbeat fails (a blip, a timeout): the next ones follow, with no registration or report.
    for (const error of [
      new DogfsError('UNAVAILABLE', 'blip'),
      new DogfsError('DEADLINE_EXCEEDED', 'slow'),
    ]) {
      const before = a.seen.heartbeats;
      a.failNextHeartbeat(error);
      await waitFor(`heartbeats again after ${error.code}`, () => a.seen.heartbeats >= before + 2);
      assert.equal(a.seen.registrations, 1, `registered again after one ${error.code}`);
      assert.equal(a.seen.reportPages, 1, `inventory sent again after one ${error.code}`);
    }
    // The leader changes: the heartbeat goes to the new one, which asks for the inventory it lacks;
    // its first report is refused as from an unknown server, so the reporter registers once more.
    b.refuseNextReport();
    a.failNextHeartbeat(new DogfsError('NOT_LEADER', 'not the leader', { leaderHint: bAddr }));
    await waitFor('heartbeating the new leader', () => b.seen.heartbeats >= 3);
    assert.equal(reporter.state.target, bAddr);
    assert.deepEqual(
      {
        registrations: b.seen.registrations,
        reportPages: b.seen.reportPages,
        inventoried: b.seen.inventoried,
      },
      { registrations: 2, reportPages: 1, inventoried: true },
    );
    assert.equal(a.seen.registrations, 1);
  } finally {
    await reporter.stop();
    await a.server.close(0);
    await b.server.close(0);
  }
});

test('a leader gone silent (cut off): the next heartbeat goes elsewhere after two intervals, not the call timeout', async () => {
  const store = await ShardStore.open({ dir: join(dir.path, 'silent') });
  let release: () => void = () => {};
  const silence = new Promise<void>((resolve) => {
    release = resolve;
  });
  let silent = false;
  const heartbeatsAt = { old: 0, new: 0 };
  const server = (which: 'old' | 'new') => {
    const s = new RpcServer();
    s.addService(
      MetadataService,
      fakeMetadata({
        RegisterChunkServer: () => ({ heartbeatIntervalMs: 100 }),
        BlockReport: () => ({}),
        Heartbeat: async () => {
          if (which === 'old' && silent) await silence;
          heartbeatsAt[which]++;
          return { reregister: false };
        },
      }),
    );
    return s;
  };
  const old = server('old');
  const fresh = server('new');
  const oldAddr = `127.0.0.1:${await old.listen('127.0.0.1', 0)}`;
  const newAddr = `127.0.0.1:${await fresh.listen('127.0.0.1', 0)}`;
  const reporter = new MetadataReporter({
    meta: [oldAddr, newAddr],
    id: 'chunk-s',
    dataAddr: '127.0.0.1:7000',
    controlAddr: '127.0.0.1:7001',
    failureDomain: 'rack-a',
    store,
    activeTransfers: () => 0,
    callTimeoutMs: 30_000,
  });
  reporter.start();
  try {
    await waitFor('heartbeating the first leader', () => heartbeatsAt.old >= 2);
    silent = true;
    const since = Date.now();
    await waitFor('a heartbeat at the other address', () => heartbeatsAt.new >= 1, 5_000);
    assert.ok(Date.now() - since < 5_000);
  } finally {
    release();
    await reporter.stop();
    await old.close(0);
    await fresh.close(0);
  }
});

test('with no metadata leader to be found, the reporter retries at least once a second however long it fails', async () => {
  const store = await ShardStore.open({ dir: join(dir.path, 'unreachable') });
  const delays: number[] = [];
  const quiet = () => {};
  const log: Logger = {
    debug: (msg, fields) => {
      if (msg === 'metadata unreachable, retrying') delays.push(Number(fields?.['delay']));
    },
    info: quiet,
    warn: quiet,
    error: quiet,
    child: () => log,
  };
  // Nobody listens there; the random draw at its top, so each wait is the backoff's whole bound.
  const reporter = new MetadataReporter({
    meta: ['127.0.0.1:1'],
    id: 'chunk-9',
    dataAddr: '127.0.0.1:7000',
    controlAddr: '127.0.0.1:7001',
    failureDomain: 'rack-a',
    store,
    activeTransfers: () => 0,
    random: () => 0.999,
    log,
  });
  reporter.start();
  try {
    // 100, 200, 400, 800 ms, then capped: a new group 0 leader's safe mode (one dead-timeout, 3 s in
    // npm run chaos) must not end before a chunk server that failed through the election tries again.
    await waitFor('seven failed attempts', () => delays.length >= 7, 20_000);
    assert.ok(Math.max(...delays) <= 1000, `waits ${delays.map(Math.round).join(', ')} ms`);
    assert.ok(delays.at(-1)! >= 900, 'the backoff grows to its cap');
  } finally {
    await reporter.stop();
  }
});

test('the capacity reported never offers placement more than the filesystem has free, as the disk fills with other data', async () => {
  const storeDir = join(dir.path, 'space');
  const store = await ShardStore.open({ dir: storeDir });
  const { meta, registrations, heartbeats } = recordingMetadata(50);
  const reporter = new MetadataReporter({
    meta: [`127.0.0.1:${await meta.listen('127.0.0.1', 0)}`],
    id: 'chunk-space',
    dataAddr: '127.0.0.1:7000',
    controlAddr: '127.0.0.1:7001',
    failureDomain: '',
    store,
    activeTransfers: () => 0,
  });
  /**
   * What placement takes as free (capacity minus used) against the filesystem's free space read after the
   * report was made; the slack covers what other processes on this machine write meanwhile.
   */
  const slack = 8 * MiB;
  const offersNoMoreThanFree = (report: { capacityBytes: number; usedBytes: number }, what: string) => {
    const stats = statfsSync(storeDir);
    const available = stats.bavail * stats.bsize;
    const offered = report.capacityBytes - report.usedBytes;
    assert.ok(offered <= available + slack, `${what}: ${offered} bytes offered, ${available} free`);
  };
  reporter.start();
  try {
    await waitFor('registered and heartbeating', () => registrations.length >= 1 && heartbeats.length >= 1);
    offersNoMoreThanFree(registrations[0]!, 'registration');
    offersNoMoreThanFree(heartbeats[0]!, 'heartbeat');
    // Other data fills the disk while the server runs: the heartbeats after it say so. (The one in flight
    // when the file was written may not; the one after must.)
    const before = heartbeats.length;
    writeFileSync(join(storeDir, 'other-data'), Buffer.alloc(64 * MiB, 1));
    await waitFor('two heartbeats more', () => heartbeats.length >= before + 2);
    offersNoMoreThanFree(heartbeats.at(-1)!, 'heartbeat after 64 MiB of other data');
    // A configured capacity stays the upper bound.
    const bounded = await ShardStore.open({ dir: join(dir.path, 'space-bounded'), capacityBytes: MiB });
    assert.equal(bounded.capacityBytes, MiB);
  } finally {
    await reporter.stop();
    await meta.close(0);
    rmSync(join(storeDir, 'other-data'), { force: true });
  }
});

test('dogfs chunk --meta registers its data and control addresses and heartbeats; SIGTERM stops it cleanly', async () => {
  const { startChunk } = await import('./helpers.js');
  const { meta, registrations, heartbeats } = recordingMetadata(100);
  const metaAddr = `127.0.0.1:${await meta.listen('127.0.0.1', 0)}`;
  const chunk = await startChunk(join(dir.path, 'proc'), [
    '--meta',
    metaAddr,
    '--id',
    'chunk-p',
    '--failure-domain',
    'rack-9',
    '--capacity',
    String(1 << 30),
  ]);
  try {
    await waitFor('registered and heartbeating', () => registrations.length >= 1 && heartbeats.length >= 2);
    const registration = registrations[0]!;
    assert.equal(registration.id, 'chunk-p');
    assert.equal(registration.addr, chunk.dataAddr);
    assert.equal(registration.controlAddr, chunk.addr);
    assert.equal(registration.failureDomain, 'rack-9');
    assert.equal(registration.capacityBytes, 1 << 30);
    assert.equal(heartbeats[0]!.id, 'chunk-p');
  } finally {
    await chunk.stop();
    assert.deepEqual(await chunk.process.exited, { code: 0, signal: null });
    await meta.close(0);
  }
});
