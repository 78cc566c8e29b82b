/**
 * Repairs meeting passing trouble (`dogfs up`, 1 metadata server, 9 chunk servers, rs-3-2):
 * - a source busy for a moment is read again in a next round instead of being named a suspect (a
 *   suspect counts as missing: the blip moved a healthy shard, or, with only K survivors or no free
 *   server for it, left the file unrepaired);
 * - a CommitRepair of several rebuilt shards refused for one of them commits the others one by one;
 * - a source whose bytes were damaged in transit (its stored copy intact) is read again, not moved
 *   (last: it kills one more server).
 */
import assert from 'node:assert/strict';
import { after, test } from 'node:test';
import {
  ClientSession,
  DataTransferShardTransport,
  DogfsClient,
  MetadataConnection,
  repairFile,
  type ShardTransport,
} from '../../src/client/index.js';
import { DogfsError } from '../../src/wire/errors.js';
import { killChunkServers, processAlive, putRandomFile, runDogfs, startCluster } from '../helpers/index.js';

const up = startCluster(['--meta', '1', '--chunk', '9', '--ec', 'rs-3-2']);
after(() => up.stop());

test('a source that stalls once (no byte within the step timeout) is read again, not taken for missing', async () => {
  const cluster = await up.ready();
  const env = { ...process.env, DOGFS_CLUSTER: up.clusterPath };
  const chunks = cluster.processes.filter((p) => p.role === 'chunk');
  assert.equal((await runDogfs(['admin', 'settings', '--dead-after', '3000'], { env })).status, 0);
  const { data } = await putRandomFile(up, '/b.bin', 900_000);

  const meta = new MetadataConnection({ seeds: cluster.meta });
  const session = new ClientSession();
  const real = new DataTransferShardTransport();
  const client = new DogfsClient({ meta: cluster.meta });
  try {
    const groupOf = async () => (await meta.call('Stat', { path: '/b.bin' })).inode!.blockGroups[0]!;
    const bg = await groupOf();
    const victim = chunks.find((c) => bg.shards.some((s) => s.chunkServerId === c.id))!;
    const lost = bg.shards.find((s) => s.chunkServerId === victim.id)!.index;
    await killChunkServers([victim], () => client.report());
    // The first read of the lowest surviving shard delivers nothing, as from a server gone silent: its
    // deadline is an hour away, and the step timeout (shortened here) is what gives up on it.
    const busy = Math.min(...bg.shards.filter((s) => s.index !== lost).map((s) => s.index));
    let refusals = 0;
    let closed = false;
    const transport: ShardTransport = {
      openWrite: (target, options) => real.openWrite(target, options),
      openRead: (target, offset, length, options) => {
        if (target.shard.index !== busy || refusals > 0)
          return real.openRead(target, offset, length, options);
        refusals++;
        return {
          next: () => new Promise<never>(() => {}),
          close: () => {
            closed = true;
          },
        };
      },
      close: () => real.close(),
    };
    const holderBefore = bg.shards.find((s) => s.index === busy)!.chunkServerId;
    const outcome = await repairFile({ meta, session, transport }, '/b.bin', { stepTimeoutMs: 300 });
    assert.equal(refusals, 1);
    assert.ok(closed, 'the stalled read was closed');
    assert.deepEqual(outcome.unrepaired, []);
    assert.equal(outcome.shardsRebuilt, 1);
    const after = await groupOf();
    assert.equal(after.shards.find((s) => s.index === busy)!.chunkServerId, holderBefore, 'not moved');
    assert.notEqual(after.shards.find((s) => s.index === lost)!.chunkServerId, victim.id, 'rebuilt');
    assert.ok((await client.readFile('/b.bin')).equals(data));
  } finally {
    real.close();
    client.close();
    meta.close();
  }
});

test('a commit of several rebuilt shards, one on a server gone silent, commits the others one by one', async () => {
  const cluster = await up.ready();
  const env = { ...process.env, DOGFS_CLUSTER: up.clusterPath };
  const { data } = await putRandomFile(up, '/c.bin', 700_000);
  const meta = new MetadataConnection({ seeds: cluster.meta });
  const session = new ClientSession();
  const transport = new DataTransferShardTransport();
  const client = new DogfsClient({ meta: cluster.meta });
  try {
    const bg = (await meta.call('Stat', { path: '/c.bin' })).inode!.blockGroups[0]!;
    // Two holders die (the earlier test's victim is dead too): 5 alive, 3 holders and 2 free servers.
    const victims = cluster.processes
      .filter((p) => p.role === 'chunk' && processAlive(p.pid))
      .filter((p) => bg.shards.some((s) => s.chunkServerId === p.id))
      .slice(0, 2);
    await killChunkServers(victims, () => client.report());
    // From here a silent server stays "alive" for the rest of the test: the service can only find it
    // unreachable when it checks a rebuilt copy there.
    assert.equal((await runDogfs(['admin', 'settings', '--dead-after', '60000'], { env })).status, 0);
    // Just before the commit, one of the two targets stops answering (SIGSTOP): the service cannot check
    // its copy, and refuses the commit naming that shard; the repairer commits the other alone.
    const commits: number[] = [];
    let stopped: number | undefined;
    const stoppingOne = {
      call: meta.call.bind(meta),
      mutate: (...args: Parameters<MetadataConnection['mutate']>) => {
        if (args[1] !== 'CommitRepair') return meta.mutate(...args);
        const shards = (args[2] as { shards: { chunkServerId: string }[] }).shards;
        commits.push(shards.length);
        if (stopped === undefined) {
          const target = cluster.processes.find((p) => p.id === shards[shards.length - 1]!.chunkServerId)!;
          stopped = target.pid;
          process.kill(stopped, 'SIGSTOP');
        }
        return meta.mutate(...args);
      },
    } as unknown as MetadataConnection;
    let outcome: Awaited<ReturnType<typeof repairFile>>;
    try {
      outcome = await repairFile({ meta: stoppingOne, session, transport }, '/c.bin');
    } finally {
      if (stopped !== undefined) process.kill(stopped, 'SIGCONT');
    }
    assert.deepEqual(commits, [2, 1, 1]);
    assert.equal(outcome.shardsRebuilt, 1);
    assert.equal(outcome.unrepaired.length, 1, outcome.unrepaired.join('; '));
    assert.match(outcome.unrepaired[0]!, /commit refused: .*could not be checked/);
    const after = (await meta.call('Stat', { path: '/c.bin' })).inode!.blockGroups[0]!;
    assert.equal(
      victims.filter((v) => after.shards.some((s) => s.chunkServerId === v.id)).length,
      1,
      'one of the two lost shards has a new home',
    );
    assert.ok((await client.readFile('/c.bin')).equals(data));
  } finally {
    transport.close();
    client.close();
    meta.close();
  }
});

test('a source whose bytes were damaged on the way (its copy intact) is read again, not rebuilt elsewhere', async () => {
  const cluster = await up.ready();
  const env = { ...process.env, DOGFS_CLUSTER: up.clusterPath };
  const chunks = cluster.processes.filter((p) => p.role === 'chunk');
  assert.equal((await runDogfs(['admin', 'settings', '--dead-after', '3000'], { env })).status, 0);
  const { data } = await putRandomFile(up, '/t.bin', 900_000);
  const meta = new MetadataConnection({ seeds: cluster.meta });
  const session = new ClientSession();
  const real = new DataTransferShardTransport();
  const client = new DogfsClient({ meta: cluster.meta });
  try {
    const groupOf = async () => (await meta.call('Stat', { path: '/t.bin' })).inode!.blockGroups[0]!;
    const bg = await groupOf();
    const alive = bg.shards.filter((s) =>
      chunks.some((c) => c.id === s.chunkServerId && processAlive(c.pid)),
    );
    const victim = chunks.find((c) => c.id === alive[0]!.chunkServerId)!;
    const lost = alive[0]!.index;
    await killChunkServers([victim], () => client.report());
    // The first source the repair opens (not the lost shard) delivers bytes damaged in transit, once.
    let flaky: number | undefined;
    const transport: ShardTransport = {
      openWrite: (target, options) => real.openWrite(target, options),
      openRead: (target, offset, length, options) => {
        if (flaky !== undefined || target.shard.index === lost)
          return real.openRead(target, offset, length, options);
        flaky = target.shard.index;
        return {
          next: () =>
            Promise.reject(
              new DogfsError('CORRUPT', 'chunk at offset 0 damaged in transit (checksum mismatch)', {
                inTransit: true,
              }),
            ),
          close: () => {},
        };
      },
      close: () => real.close(),
    };
    const outcome = await repairFile({ meta, session, transport }, '/t.bin');
    assert.ok(
      flaky !== undefined,
      `a source was damaged in transit: ${JSON.stringify(outcome)} ${JSON.stringify(bg.shards)} victim ${victim.id}`,
    );
    assert.deepEqual(outcome.unrepaired, []);
    const after = await groupOf();
    const holder = (g: typeof bg, index: number) => g.shards.find((s) => s.index === index)!.chunkServerId;
    assert.equal(holder(after, flaky), holder(bg, flaky), 'the source damaged in transit was not moved');
    assert.notEqual(holder(after, lost), victim.id, 'the lost shard was rebuilt');
    assert.ok((await client.readFile('/t.bin')).equals(data));
  } finally {
    real.close();
    client.close();
    meta.close();
  }
});
