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
