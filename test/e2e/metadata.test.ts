/**
 * The metadata service as real processes (`dogfs up`, 3 metadata servers, fsync on): namespace operations
 * and their refusals, exactly-once retries, concurrency, leader SIGKILL during a stream of writes, and
 * "no quorum" with two of three servers down — failing within the deadline, then recovering with nothing lost.
 */
import assert from 'node:assert/strict';
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import type { ClusterJson } from '../../src/cluster/up.js';
import { DogfsError } from '../../src/wire/errors.js';
import { processAlive, startDogfs, tempDir, waitFor } from '../helpers/index.js';
import { TestMetaClient } from '../helpers/meta.js';

const dir = tempDir('dogfs-meta-e2e-');
const clusterDir = join(dir.path, 'c');
let up: ReturnType<typeof startDogfs>;
let cluster: ClusterJson;
let client: TestMetaClient;
/**
 * Snapshots every 100 entries (and an eighth of the state in command bytes): every scenario below runs
 * across many snapshots and compactions, and the server restarted by hand comes back from one.
 */
const env = { ...process.env, DOGFS_RAFT_SNAPSHOT_EVERY: '100' };

before(async () => {
  up = startDogfs(['up', '--dir', clusterDir, '--meta', '3', '--chunk', '4', '--ec', 'rs-2-1'], env);
  cluster = await waitFor(
    'cluster.json',
    () =>
      existsSync(join(clusterDir, 'cluster.json')) &&
      (JSON.parse(readFileSync(join(clusterDir, 'cluster.json'), 'utf8')) as ClusterJson),
    60_000,
  );
  client = new TestMetaClient(cluster.meta);
});
after(async () => {
  client?.close();
  up?.child.kill('SIGINT');
  await up?.exited;
  dir.remove();
});

async function code(promise: Promise<unknown>): Promise<string> {
  try {
    await promise;
    return 'OK';
  } catch (error) {
    return error instanceof DogfsError ? error.code : `non-DogfsError: ${String(error)}`;
  }
}

test('namespace operations, refusals that change nothing, and exactly-once retries', async () => {
  await client.call('Mkdir', { path: '/docs/a/b', parents: true, session: client.nextSession() }, 30_000);
  const stat = await client.call('Stat', { path: '/docs/a' });
  assert.equal(stat.inode?.type, 2);

  const bad: [() => Promise<unknown>, string][] = [
    [() => client.call('Mkdir', { path: '/docs/../x', session: client.nextSession() }), 'INVALID_ARGUMENT'],
    [() => client.call('Mkdir', { path: '/docs//x', session: client.nextSession() }), 'INVALID_ARGUMENT'],
    [
      () => client.call('Mkdir', { path: `/docs/${'n'.repeat(256)}`, session: client.nextSession() }),
      'INVALID_ARGUMENT',
    ],
    [() => client.call('Mkdir', { path: '/docs/nul\0x', session: client.nextSession() }), 'INVALID_ARGUMENT'],
    [() => client.call('Mkdir', { path: 'relative', session: client.nextSession() }), 'INVALID_ARGUMENT'],
    [() => client.call('Mkdir', { path: '/missing/parent', session: client.nextSession() }), 'NOT_FOUND'],
    [() => client.call('Mkdir', { path: '/docs/a', session: client.nextSession() }), 'ALREADY_EXISTS'],
    [() => client.call('Delete', { path: '/docs', session: client.nextSession() }), 'NOT_EMPTY'],
    [
      () => client.call('Rename', { src: '/docs', dst: '/docs/a/b/inside', session: client.nextSession() }),
      'INVALID_ARGUMENT',
    ],
    [() => client.call('Stat', { path: '/nope' }), 'NOT_FOUND'],
    [() => client.call('Mkdir', { path: '/nosession' }), 'INVALID_ARGUMENT'],
    [
      () => client.call('Create', { path: '/docs/f', ec: 'rs-99-1', session: client.nextSession() }),
      'INVALID_ARGUMENT',
    ],
  ];
  for (const [call, expected] of bad) assert.equal(await code(call()), expected, call.toString());
  const listing = await client.call('List', { path: '/docs' });
  assert.deepEqual(
    listing.entries.map((e) => e.name),
    ['a'],
    'refused commands changed nothing',
  );

  // A retry of an applied command (same session seq) gets the original answer, not ALREADY_EXISTS.
  const session = client.nextSession();
  const first = await client.call('Mkdir', { path: '/docs/once', session });
  const retry = await client.call('Mkdir', { path: '/docs/once', session });
  assert.equal(retry.inode?.id, first.inode?.id);

  await client.call('Rename', { src: '/docs/once', dst: '/docs/twice', session: client.nextSession() });
  assert.equal(await code(client.call('Stat', { path: '/docs/once' })), 'NOT_FOUND');
  await client.call('Delete', { path: '/docs', recursive: true, session: client.nextSession() });
  assert.equal(await code(client.call('Stat', { path: '/docs/twice' })), 'NOT_FOUND');
});

test('concurrent clients: every empty file created is present; one of two racing renames wins', async () => {
  await client.call('Mkdir', { path: '/many/shared', parents: true, session: client.nextSession() });
  const clients = Array.from({ length: 16 }, () => new TestMetaClient(cluster.meta));
  // 500 creates per client: half in one shared directory, half in the client's own.
  const perClient = 250;
  await Promise.all(
    clients.map(async (c, i) => {
      await c.call('Mkdir', { path: `/many/own-${i}`, session: c.nextSession() });
      for (let j = 0; j < perClient; j++) {
        for (const path of [`/many/shared/c${i}-${j}`, `/many/own-${i}/f${j}`]) {
          const created = await c.call('Create', { path, session: c.nextSession() });
          await c.call('CompleteFile', {
            inodeId: created.inode!.id,
            leaseId: created.leaseId,
            size: 0,
            session: c.nextSession(),
          });
        }
      }
    }),
  );
  const names = async (path: string) => {
    const all: string[] = [];
    for (let startAfter = ''; ; ) {
      const page = await client.call('List', { path, startAfter, limit: 1000 });
      all.push(...page.entries.map((e) => e.name));
      if (!page.more) return all;
      startAfter = all[all.length - 1]!;
    }
  };
  const shared = await names('/many/shared');
  assert.equal(new Set(shared).size, 16 * perClient);
  assert.equal(shared.length, 16 * perClient);
  for (let i = 0; i < 16; i++) assert.equal((await names(`/many/own-${i}`)).length, perClient);

  const outcomes = await Promise.all(
    [clients[0]!, clients[1]!].map((c, i) =>
      code(
        c.call('Rename', { src: '/many/shared/c0-0', dst: `/many/winner-${i}`, session: c.nextSession() }),
      ),
    ),
  );
  assert.deepEqual([...outcomes].sort(), ['NOT_FOUND', 'OK']);
  for (const c of clients) c.close();
  // All of it went through snapshots of the namespace group (DOGFS_RAFT_SNAPSHOT_EVERY above), streamed
  // by the host a slice at a time, on every replica.
  for (const meta of cluster.processes.filter((p) => p.role === 'meta')) {
    const files = readdirSync(join(meta.dir, 'raft'));
    assert.ok(
      files.some((f) => /^snap-1-\d+-\d+\.bin$/.test(f)),
      `${meta.id} has a namespace snapshot: ${files.join(' ')}`,
    );
  }
});

test('a paused leader (SIGSTOP) is replaced; resumed, it answers no stale read and loses nothing acknowledged', async () => {
  await client.call('Mkdir', { path: '/pause/v1', parents: true, session: client.nextSession() });
  const oldAddr = (await client.call('FindLeader', { group: 1 })).leaderAddr;
  const old = cluster.processes.find((p) => p.addr === oldAddr)!;
  const others = cluster.processes.filter((p) => p.role === 'meta' && p.addr !== oldAddr).map((p) => p.addr);
  const majority = new TestMetaClient(others);
  const pinned = new TestMetaClient([oldAddr]);
  process.kill(old.pid, 'SIGSTOP');
  let resumed = false;
  try {
    // The other two elect a leader and go on: v1 becomes v2.
    await majority.call(
      'Rename',
      { src: '/pause/v1', dst: '/pause/v2', session: majority.nextSession() },
      30_000,
    );
    const newAddr = (await majority.call('FindLeader', { group: 1 })).leaderAddr;
    assert.notEqual(newAddr, oldAddr);

    // Calls to the paused server wait in its socket buffers; it meets them the moment it resumes, before
    // it has heard of the new term. A read it answers must still see v2 and not v1; a write it accepts
    // must be there afterwards.
    const statV1 = pinned.call('Stat', { path: '/pause/v1' }, 30_000).then(
      () => 'FOUND',
      (e: DogfsError) => e.code,
    );
    const statV2 = pinned.call('Stat', { path: '/pause/v2' }, 30_000).then(
      (r) => (r.inode ? 'FOUND' : 'EMPTY'),
      (e: DogfsError) => e.code,
    );
    const queuedWrite = pinned
      .call('Mkdir', { path: '/pause/queued', session: pinned.nextSession() }, 30_000)
      .then(
        () => 'OK',
        (e: DogfsError) => e.code,
      );
    process.kill(old.pid, 'SIGCONT');
    resumed = true;
    assert.equal(await statV1, 'NOT_FOUND', 'the resumed server does not answer from its stale state');
    assert.equal(await statV2, 'FOUND');
    const wrote = await queuedWrite;
    if (wrote === 'OK') {
      assert.equal((await majority.call('Stat', { path: '/pause/queued' })).inode?.type, 2);
    }
    // It rejoins as a follower and catches up: linearizable reads through it see the new state.
    const rejoined = await waitFor(
      'the resumed server to follow the new leader',
      async () => (await pinned.call('FindLeader', { group: 1 })).leaderAddr !== oldAddr,
      30_000,
    );
    assert.ok(rejoined);
    assert.equal((await pinned.call('Stat', { path: '/pause/v2' })).inode?.type, 2);
  } finally {
    if (!resumed) process.kill(old.pid, 'SIGCONT');
    majority.close();
    pinned.close();
  }
});

test('leader SIGKILL during a stream of writes loses nothing acknowledged; two of three down is NO_QUORUM', async () => {
  await client.call('Mkdir', { path: '/stream', session: client.nextSession() });
  const acknowledged: string[] = [];
  let stop = false;
  const writer = (async () => {
    for (let i = 0; !stop && i < 10_000; i++) {
      const path = `/stream/d${i}`;
      try {
        await client.call('Mkdir', { path, session: client.nextSession() }, 15_000);
        acknowledged.push(path);
      } catch (error) {
        if (!(error instanceof DogfsError)) throw error;
      }
    }
  })();
  await waitFor('writes flowing', () => acknowledged.length >= 20, 30_000);
  const leaderAddr = (await client.call('FindLeader', { group: 1 })).leaderAddr;
  const leader = cluster.processes.find((p) => p.addr === leaderAddr)!;
  process.kill(leader.pid, 'SIGKILL');
  const atKill = acknowledged.length;
  await waitFor('writes resume after failover', () => acknowledged.length >= atKill + 20, 30_000);
  stop = true;
  await writer;
  for (const path of acknowledged) assert.equal((await client.call('Stat', { path })).inode?.type, 2, path);

  // Take a second metadata server down: a majority is gone.
  const survivors = cluster.processes.filter((p) => p.role === 'meta' && processAlive(p.pid));
  process.kill(survivors[0]!.pid, 'SIGKILL');
  const started = Date.now();
  const lone = new TestMetaClient([survivors[1]!.addr]);
  const error = await lone
    .call('Mkdir', { path: '/stream/after-majority-loss', session: lone.nextSession() }, 8000)
    .then(
      () => undefined,
      (e: unknown) => e as DogfsError,
    );
  assert.ok(error instanceof DogfsError, 'the write is refused');
  assert.ok(
    ['NO_QUORUM', 'DEADLINE_EXCEEDED'].includes(error.code),
    `refused with ${error.code}: ${error.message}`,
  );
  assert.ok(Date.now() - started < 20_000, 'refused within the deadline, not hung');
  const read = await lone.call('Stat', { path: '/stream' }, 5000).then(
    () => 'OK',
    (e: DogfsError) => e.code,
  );
  assert.equal(read, 'NO_QUORUM');

  // Restart one of the killed servers by hand (dogfs up was not asked to --restart): service returns.
  const members = JSON.parse(readFileSync(join(clusterDir, 'members.json'), 'utf8')) as {
    members: { role: string; id: string; port: number }[];
  };
  const metas = members.members.filter((m) => m.role === 'meta');
  const peers = metas.map((m) => `${m.id}=127.0.0.1:${m.port}`).join(',');
  const revived = metas.find((m) => m.id === leader.id)!;
  const restarted = startDogfs(
    [
      'meta',
      '--dir',
      join(clusterDir, revived.id),
      '--id',
      revived.id,
      '--listen',
      `127.0.0.1:${revived.port}`,
      '--peers',
      peers,
    ],
    env,
  );
  try {
    await lone.call('Mkdir', { path: '/stream/after-recovery', session: lone.nextSession() }, 30_000);
    const all = new TestMetaClient([survivors[1]!.addr, `127.0.0.1:${revived.port}`]);
    for (const path of [...acknowledged, '/stream/after-recovery']) {
      assert.equal((await all.call('Stat', { path })).inode?.type, 2, path);
    }
    all.close();
  } finally {
    restarted.child.kill('SIGKILL');
    await restarted.exited;
    lone.close();
  }
});
