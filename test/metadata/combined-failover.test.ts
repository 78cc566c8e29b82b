/**
 * The combined write commands on real processes (`dogfs up`, 3 metadata servers, fsync on): Create with
 * the first block group and CompleteFile with the last commit, each retried under its session number
 * through a leader change (the leader SIGKILLed after applying), answered with the original result and
 * applied once.
 */
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import type { ClusterJson } from '../../src/cluster/up.js';
import { startCluster, waitFor } from '../helpers/index.js';
import { TestMetaClient } from '../helpers/meta.js';

const running = startCluster(['--meta', '3', '--chunk', '3', '--ec', 'rs-2-1']);
let cluster: ClusterJson;

before(async () => {
  cluster = await running.ready();
});
after(() => running.stop());

test('combined Create and CompleteFile retried through a leader change: the original answers, applied once', async () => {
  const client = new TestMetaClient(cluster.meta);
  try {
    await client.call('Mkdir', { path: '/x', session: client.nextSession() }, 30_000);
    // Chunk servers register after the metadata servers come up: wait until a create is placed on all
    // three (with M = 1, placement takes K servers and leaves a slot empty while only two have
    // registered).
    let created: Awaited<ReturnType<typeof client.call<'Create'>>> | undefined;
    const createStamp = client.nextSession();
    const create = {
      path: '/x/f',
      ec: '',
      overwrite: false,
      mode: 0o644,
      allocate: true,
      session: createStamp,
    };
    await waitFor(
      'a create placed with its first block group',
      async () => {
        // A create that came back without a full block group holds the name: start again with a new name.
        const attempt = await client.call('Create', create, 30_000);
        const placedOnAll = attempt.blockGroup?.shards.every((s) => s.chunkServerId !== '') === true;
        if (placedOnAll) created = attempt;
        else {
          create.path = `${create.path}x`;
          create.session = client.nextSession();
        }
        return placedOnAll;
      },
      30_000,
      200,
    );
    assert.ok(created?.inode && created.blockGroup);
    const bg = created.blockGroup;
    assert.equal(bg.shards.length, 3);
    assert.ok(bg.shards.every((s) => s.addr !== '' && s.chunkServerId !== ''));
    assert.deepEqual(
      created.inode.blockGroups.map((b) => b.id),
      [bg.id],
    );

    // The leader that applied it dies; the same call again (same session number) reaches the new one.
    const leaderAddr = (await client.call('FindLeader', { group: 1 })).leaderAddr;
    const leader = cluster.processes.find((p) => p.addr === leaderAddr)!;
    process.kill(leader.pid, 'SIGKILL');
    const again = await client.call('Create', create, 30_000);
    assert.notEqual((await client.call('FindLeader', { group: 1 }, 30_000)).leaderAddr, leaderAddr);
    assert.equal(again.inode?.id, created.inode.id, 'the same inode, not a second file');
    assert.equal(again.leaseId, created.leaseId);
    assert.deepEqual(again.blockGroup, created.blockGroup, 'the same block group and placement');

    // The last (only) block group's commit with the completion, delivered twice.
    const complete = {
      inodeId: created.inode.id,
      leaseId: created.leaseId,
      size: 5,
      blockGroup: {
        ...bg,
        length: 5,
        shards: bg.shards.map((s) => ({ ...s, length: 3, crc32c: 100 + s.index, durable: true })),
      },
      session: client.nextSession(),
    };
    const done = await client.call('CompleteFile', complete, 30_000);
    const twice = await client.call('CompleteFile', complete, 30_000);
    assert.deepEqual(twice, done);
    const stat = await client.call('Stat', { path: create.path });
    assert.equal(stat.inode?.id, created.inode.id);
    assert.equal(stat.inode?.size, 5);
    assert.deepEqual(
      stat.inode?.blockGroups.map((b) => [b.id, b.shards.map((s) => [s.durable, s.crc32c])]),
      [
        [
          bg.id,
          [
            [true, 100],
            [true, 101],
            [true, 102],
          ],
        ],
      ],
    );
    // Still exactly one file of that name, and the old-style calls still work beside the new ones.
    const list = await client.call('List', { path: '/x' });
    assert.deepEqual(
      list.entries.map((e) => e.name),
      [create.path.slice('/x/'.length)],
    );
    const old = await client.call('Create', { path: '/x/old', session: client.nextSession() }, 30_000);
    assert.ok(!old.blockGroup, 'no block group unless asked');
    const allocated = await client.call(
      'AllocateBlockGroup',
      { inodeId: old.inode!.id, leaseId: old.leaseId, offset: 0, session: client.nextSession() },
      30_000,
    );
    const obg = allocated.blockGroup!;
    await client.call('CommitBlockGroup', {
      inodeId: old.inode!.id,
      leaseId: old.leaseId,
      blockGroup: {
        ...obg,
        length: 1,
        shards: obg.shards.map((s) => ({ ...s, length: 1, crc32c: 1, durable: true })),
      },
      session: client.nextSession(),
    });
    await client.call('CompleteFile', {
      inodeId: old.inode!.id,
      leaseId: old.leaseId,
      size: 1,
      session: client.nextSession(),
    });
    assert.equal((await client.call('Stat', { path: '/x/old' })).inode?.size, 1);
  } finally {
    client.close();
  }
});
