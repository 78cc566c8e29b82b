/**
 * The Metadata service's handlers on a host that applies at once and leads both groups (instant-host.ts):
 * what a chunk server or a reader says of shards, a retried allocation, heartbeats of unknown ids.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import type { ClusterState } from '../../src/metadata/state/cluster.js';
import type {
  AllocateBlockGroupResponse,
  CreateResponse,
  OpenSessionResponse,
} from '../../src/wire/gen/types.js';
import { instantNode } from './instant-host.js';

type Node = ReturnType<typeof instantNode>;

const heartbeat = (id: string, corrupt: { blockGroupId: number; index: number }[] = []) => ({
  id,
  capacityBytes: 1 << 30,
  usedBytes: 0,
  shardCount: 0,
  activeTransfers: 0,
  corruptShards: corrupt.map((c) => ({ ...c, generation: 0 })),
  repairs: false,
  repairing: [],
  repairFailures: [],
});

/** Six registered chunk servers and a session; `session()` gives the next sequence number's session. */
async function sixServers({ h, ctx }: Node) {
  for (let i = 1; i <= 6; i++)
    await h.RegisterChunkServer(
      {
        id: `c${i}`,
        addr: `127.0.0.1:${100 + i}`,
        controlAddr: `127.0.0.1:${200 + i}`,
        failureDomain: '',
        capacityBytes: 1 << 30,
        usedBytes: 0,
        clusterId: '',
      },
      ctx,
    );
  const { clientId } = (await h.OpenSession({}, ctx)) as OpenSessionResponse;
  let seq = 0;
  return () => ({ clientId, seq: ++seq, ackedBelow: 0 });
}

/** An rs-3-2 file of one block group at `path`, every shard durable. */
async function oneFile(node: Node, session: () => { clientId: string; seq: number; ackedBelow: number }) {
  const { h, ctx } = node;
  const created = (await h.Create(
    {
      path: '/f',
      ec: 'rs-3-2',
      overwrite: false,
      mode: 0,
      session: session(),
      complete: false,
      allocate: true,
    },
    ctx,
  )) as CreateResponse;
  const bg = created.blockGroup!;
  await h.CompleteFile(
    {
      inodeId: created.inode!.id,
      leaseId: created.leaseId,
      size: 100,
      session: session(),
      blockGroup: {
        ...bg,
        length: 100,
        shards: bg.shards.map((s) => ({
          index: s.index,
          chunkServerId: s.chunkServerId,
          addr: '',
          length: 4096,
          crc32c: 7,
          durable: true,
          generation: 0,
        })),
      },
    },
    ctx,
  );
  return bg;
}

test("a report naming another server's copy does not hide the holder's report of a bad shard", async () => {
  const node = instantNode(() => true, { autoRepairDelayMs: null });
  try {
    const { h, ctx } = node;
    const bg = await oneFile(node, await sixServers(node));
    const holder = bg.shards[0]!.chunkServerId;
    const other = ['c1', 'c2', 'c3', 'c4', 'c5', 'c6'].find(
      (c) => !bg.shards.some((s) => s.chunkServerId === c),
    )!;
    const damaged = async () =>
      (await h.ClusterReport({ damagedAfter: '' }, ctx)).filesWithMissingShardsCount;
    assert.equal(await damaged(), 0);
    await h.Heartbeat(heartbeat(holder, [{ blockGroupId: bg.id, index: 0 }]), ctx);
    assert.equal(await damaged(), 1, "the holder's word counts");
    await h.Heartbeat(heartbeat(other, [{ blockGroupId: bg.id, index: 0 }]), ctx);
    assert.equal(await damaged(), 1, 'a server that does not hold the shard changes nothing');
    await h.ReportBadShard({ blockGroupId: bg.id, index: 0, chunkServerId: other, reason: 'x' }, ctx);
    assert.equal(await damaged(), 1, 'nor does a reader naming it');
    await h.Heartbeat(heartbeat('ghost', [{ blockGroupId: bg.id, index: 1 }]), ctx);
    assert.equal(await damaged(), 1);
  } finally {
    node.node.stop();
  }
});

test('a policy name not in its canonical spelling is refused before anything is proposed', async () => {
  const node = instantNode(() => true, { autoRepairDelayMs: null });
  try {
    const { h, ctx } = node;
    const session = await sixServers(node);
    const proposals = () => [...node.host.proposals.values()].reduce((a, b) => a + b, 0);
    const before = proposals();
    const create = (ec: string) =>
      h.Create(
        { path: '/p', ec, overwrite: false, mode: 0, session: session(), complete: true, allocate: false },
        ctx,
      );
    for (const ec of ['rs-03-02', 'rs-3-02', 'replicate-03'])
      await assert.rejects(async () => create(ec), /INVALID_ARGUMENT|is written/, ec);
    await assert.rejects(
      async () => h.SetSettings({ settings: { defaultEc: 'rs-06-3' } } as never, ctx),
      /is written rs-6-3/,
    );
    assert.equal(proposals(), before);
    await create('rs-3-2');
  } finally {
    node.node.stop();
  }
});

test("a file whose policy needs a wider stripe than the cluster's is refused at its create, not its first write", async () => {
  const node = instantNode(() => true, { autoRepairDelayMs: null });
  try {
    const { h, ctx } = node;
    const session = await sixServers(node);
    await h.SetSettings({ settings: { defaultEc: 'rs-3-2', stripeSize: 16384 } } as never, ctx);
    const create = (path: string, ec: string) =>
      h.Create(
        { path, ec, overwrite: false, mode: 0, session: session(), complete: false, allocate: true },
        ctx,
      );
    await assert.rejects(
      async () => create('/wide', 'rs-6-3'),
      /rs-6-3 needs a stripe of at least 24576 bytes .* stripe size is 16384/,
    );
    assert.ok(((await create('/narrow', '')) as CreateResponse).blockGroup, 'the default policy fits');
  } finally {
    node.node.stop();
  }
});

test('a retry of an allocation already applied gets its answer, though placement would now refuse', async () => {
  const node = instantNode(() => true, { autoRepairDelayMs: null });
  try {
    const { h, ctx } = node;
    const session = await sixServers(node);
    const created = (await h.Create(
      {
        path: '/w',
        ec: 'rs-3-2',
        overwrite: false,
        mode: 0,
        session: session(),
        complete: false,
        allocate: false,
      },
      ctx,
    )) as CreateResponse;
    const request = { inodeId: created.inode!.id, leaseId: created.leaseId, offset: 0, session: session() };
    const first = (await h.AllocateBlockGroup(request, ctx)) as AllocateBlockGroupResponse;
    // Three of six servers die: rs-3-2 can no longer be placed (K + 1 = 4 live servers needed).
    const cluster = (node.node as unknown as { cluster: { state: ClusterState } }).cluster.state;
    let index = 10_000;
    for (const id of ['c1', 'c2', 'c3'])
      cluster.apply(
        { op: 'declareDead', timeMs: cluster.timeMs + 1, id, silentSinceMs: cluster.timeMs + 1 },
        index++,
      );
    const again = (await h.AllocateBlockGroup(request, ctx)) as AllocateBlockGroupResponse; // the same seq: a retry
    assert.equal(again.blockGroup?.id, first.blockGroup?.id);
    await assert.rejects(
      async () => h.AllocateBlockGroup({ ...request, session: session() }, ctx),
      /placement/,
      'a new allocation is refused',
    );
  } finally {
    node.node.stop();
  }
});

test('a heartbeat of an id nobody registered is answered "register" without a Raft entry', async () => {
  const node = instantNode(() => true, { autoRepairDelayMs: null });
  try {
    const before = node.host.proposals.get(0) ?? 0;
    for (let i = 0; i < 20; i++) {
      const answer = await node.h.Heartbeat(heartbeat(`ghost-${i}`), node.ctx);
      assert.equal(answer.reregister, true);
    }
    assert.equal(node.host.proposals.get(0) ?? 0, before);
  } finally {
    node.node.stop();
  }
});

test('a rebalancing move never raises the most shards of a group one failure domain holds', async () => {
  const MiB = 1024 * 1024;
  for (const [emptyDomain, allowed] of [
    ['rack-b', false], // 2/2/2 in racks a, b, c: a third in rack-b would be more than M = 2 there
    ['rack-d', true], // a new rack: 1/2/2/1
  ] as const) {
    const node = instantNode(() => true, { autoRepairDelayMs: null });
    try {
      const { h, ctx } = node;
      const servers = [
        ['a1', 'rack-a', 60],
        ['a2', 'rack-a', 60],
        ['b1', 'rack-b', 20],
        ['b2', 'rack-b', 20],
        ['c1', 'rack-c', 20],
        ['c2', 'rack-c', 20],
        ['new', emptyDomain, 0],
      ] as const;
      for (const [id, domain, usedMiB] of servers)
        await h.RegisterChunkServer(
          {
            id,
            addr: `127.0.0.1:1${servers.findIndex((s) => s[0] === id)}`,
            controlAddr: '127.0.0.1:2',
            failureDomain: domain,
            capacityBytes: 100 * MiB,
            usedBytes: usedMiB * MiB,
            clusterId: '',
          },
          ctx,
        );
      const internals = node.node as unknown as {
        rebalance: { update(now: number, servers: unknown[]): void };
        rebalanceMove(bg: unknown, plan?: boolean): { targets: { chunkServerId: string }[] } | undefined;
        movesPlanned: Map<string, number>;
      };
      internals.rebalance.update(
        0,
        servers.map(([id, , usedMiB]) => ({
          id,
          alive: true,
          draining: false,
          capacityBytes: 100 * MiB,
          usedBytes: usedMiB * MiB,
        })),
      );
      const group = {
        id: 7,
        offset: 0,
        length: 4 * MiB,
        dataShards: 4,
        parityShards: 2,
        stripeSize: 4 * MiB,
        maxBytes: 64 * MiB,
        committed: true,
        servers: ['a1', 'b1', 'c1', 'a2', 'b2', 'c2'],
        shardLengths: [MiB, MiB, MiB, MiB, MiB, MiB],
        crcs: [1, 2, 3, 4, 5, 6],
        durableMask: 0b111111,
      };
      const move = internals.rebalanceMove(group);
      if (!allowed) {
        assert.equal(move, undefined, 'no move into rack-b');
        continue;
      }
      assert.deepEqual(
        move?.targets.map((t) => t.chunkServerId),
        ['new'],
      );
      // Planned, then planned again (a repairer's second round): its bytes count once at each end.
      internals.rebalanceMove(group, true);
      internals.rebalanceMove(group, true);
      assert.equal(internals.movesPlanned.get('new'), MiB);
      assert.equal(
        [...internals.movesPlanned.values()].reduce((a, b) => a + b, 0),
        0,
        'what one server gives, another takes',
      );
      // The move committed, then the repairer's next round (another group's copy failed) plans the
      // file again: this group moved its shard this batch, and its bytes stay counted.
      const moved = { ...group, servers: group.servers.map((id) => (id === 'a1' ? 'new' : id)) };
      assert.equal(internals.rebalanceMove(moved, true), undefined);
      assert.equal(internals.movesPlanned.get('new'), MiB);
      assert.equal(internals.movesPlanned.get('a1'), -MiB);
    } finally {
      node.node.stop();
    }
  }
});
