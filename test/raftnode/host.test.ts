import assert from 'node:assert/strict';
import { after, test } from 'node:test';
import { createLogger } from '../../src/common/log.js';
import { asNodeId, type LogIndex, type NodeId } from '../../src/consensus/index.js';
import { RaftHost, type SnapshotStream, type StateMachine } from '../../src/raftnode/host.js';
import { MemoryStorage } from '../../src/raftnode/storage.js';
import { DogfsError } from '../../src/wire/errors.js';
import { RpcServer } from '../../src/wire/rpc.js';
import { waitFor } from '../helpers/index.js';

/** A register per key: "k=v" sets and answers the previous value. */
class KvMachine implements StateMachine {
  readonly data = new Map<string, string>();
  apply(_index: LogIndex, command: Uint8Array): Uint8Array {
    const [key, value] = Buffer.from(command).toString().split('=') as [string, string];
    const previous = this.data.get(key) ?? '';
    this.data.set(key, value);
    return Buffer.from(previous);
  }
  snapshot(): Uint8Array {
    return Buffer.from(JSON.stringify([...this.data]));
  }
  restore(data: Uint8Array): void {
    this.data.clear();
    for (const [k, v] of JSON.parse(Buffer.from(data).toString()) as [string, string][]) this.data.set(k, v);
  }
}

interface Node {
  id: NodeId;
  addr: string;
  host: RaftHost;
  server: RpcServer;
  machines: Map<number, KvMachine>;
}

const nodes: Node[] = [];
after(async () => {
  for (const n of nodes) {
    await n.host.close();
    await n.server.close(0);
  }
});

async function startCluster(
  size: number,
  groups: number[],
  snapshotEvery?: number,
  preferredLeader?: NodeId,
  newMachine: () => KvMachine = () => new KvMachine(),
): Promise<Node[]> {
  const servers: RpcServer[] = [];
  const addrs: string[] = [];
  for (let i = 0; i < size; i++) {
    const server = new RpcServer();
    servers.push(server);
    addrs.push(`127.0.0.1:${await server.listen('127.0.0.1', 0)}`);
  }
  const peers = addrs.map((addr, i) => ({ nodeId: asNodeId(i + 1), addr }));
  const started: Node[] = [];
  for (let i = 0; i < size; i++) {
    const id = asNodeId(i + 1);
    const host = new RaftHost({
      nodeId: id,
      peers,
      storage: new MemoryStorage(),
      log: createLogger('warn', { node: id }),
      tickMs: 20,
      ...(snapshotEvery === undefined ? {} : { snapshotEvery }),
      ...(preferredLeader === undefined ? {} : { preferredLeader }),
    });
    const machines = new Map<number, KvMachine>();
    for (const g of groups) {
      const m = newMachine();
      machines.set(g, m);
      host.addGroup(g, m);
    }
    host.start(servers[i]!);
    started.push({ id, addr: addrs[i]!, host, server: servers[i]!, machines });
  }
  nodes.push(...started);
  return started;
}

function leaderOf(cluster: Node[], group: number): Node | undefined {
  return cluster.find((n) => n.host.isLeader(group));
}

test('three hosts elect a leader per group, replicate commands and answer linearizable reads on followers', async () => {
  const cluster = await startCluster(3, [0, 1]);
  for (const group of [0, 1]) {
    const leader = await waitFor(`leader of group ${group}`, () => leaderOf(cluster, group), 10_000);
    const first = await leader.host.propose(group, Buffer.from('x=1'), Date.now() + 5000);
    assert.equal(Buffer.from(first as Uint8Array).toString(), '');
    const second = await leader.host.propose(group, Buffer.from('x=2'), Date.now() + 5000);
    assert.equal(
      Buffer.from(second as Uint8Array).toString(),
      '1',
      'the result of the applied command comes back',
    );

    const follower = cluster.find((n) => n !== leader)!;
    await follower.host.readBarrier(group, Date.now() + 5000);
    assert.equal(follower.machines.get(group)!.data.get('x'), '2', 'a read after the barrier sees the write');

    // A follower refuses to propose and names the leader's address.
    await assert.rejects(
      follower.host.propose(group, Buffer.from('y=1'), Date.now() + 1000),
      (e: unknown) => {
        return (
          e instanceof DogfsError &&
          e.code === 'NOT_LEADER' &&
          e.leaderHint === leader.host.status(group).leaderAddr
        );
      },
    );
    assert.notEqual(leader.host.status(group).leaderAddr, '');
    const status = follower.host.status(group);
    assert.equal(status.leader, leader.id);
    assert.equal(status.members.length, 3);
  }
});

test('after the leader stops, the others elect a new one and keep every committed command', async () => {
  const cluster = await startCluster(3, [7]);
  const leader = await waitFor('leader', () => leaderOf(cluster, 7), 10_000);
  for (let i = 0; i < 20; i++) await leader.host.propose(7, Buffer.from(`k${i}=${i}`), Date.now() + 5000);
  await leader.host.close();
  await leader.server.close(0);
  const rest = cluster.filter((n) => n !== leader);
  const next = await waitFor('new leader', () => leaderOf(rest, 7), 10_000);
  await next.host.propose(7, Buffer.from('after=1'), Date.now() + 5000);
  for (const n of rest) {
    await n.host.readBarrier(7, Date.now() + 5000);
    const data = n.machines.get(7)!.data;
    for (let i = 0; i < 20; i++) assert.equal(data.get(`k${i}`), String(i));
    assert.equal(data.get('after'), '1');
  }
});

test('with a majority gone, proposals and reads fail with NO_QUORUM within their deadline', async () => {
  const cluster = await startCluster(3, [3]);
  await waitFor('leader', () => leaderOf(cluster, 3), 10_000);
  const [survivor, ...gone] = cluster;
  for (const n of gone) {
    await n.host.close();
    await n.server.close(0);
  }
  const error = await waitFor(
    'NO_QUORUM',
    async () => {
      try {
        await survivor!.host.readBarrier(3, Date.now() + 300);
        return undefined;
      } catch (e) {
        return e instanceof DogfsError && e.code === 'NO_QUORUM' ? e : undefined;
      }
    },
    15_000,
  );
  assert.match(error.message, /majority of metadata servers is unreachable/);
});

test('a joining host is added as learner, caught up by snapshot, promoted, and removed again', async () => {
  // Snapshots every 10 entries: the leader's log no longer reaches back, so the learner needs a snapshot.
  const cluster = await startCluster(3, [5], 10);
  const leader = await waitFor('leader', () => leaderOf(cluster, 5), 10_000);
  for (let i = 0; i < 30; i++) await leader.host.propose(5, Buffer.from(`k${i}=${i}`), Date.now() + 5000);

  // The new host knows everyone; it starts with no members and waits to be added.
  const server = new RpcServer();
  const addr = `127.0.0.1:${await server.listen('127.0.0.1', 0)}`;
  const id = asNodeId(4);
  const host = new RaftHost({
    nodeId: id,
    peers: [...cluster.map((n) => ({ nodeId: n.id, addr: n.addr })), { nodeId: id, addr }],
    storage: new MemoryStorage(),
    log: createLogger('warn', { node: id }),
    tickMs: 20,
    snapshotEvery: 10,
    joining: true,
  });
  let restores = 0;
  const machine = new (class extends KvMachine {
    override restore(data: Uint8Array): void {
      restores++;
      super.restore(data);
    }
  })();
  host.addGroup(5, machine);
  host.start(server);
  nodes.push({ id, addr, host, server, machines: new Map([[5, machine]]) });
  assert.equal(host.status(5).members.length, 0, 'a joining replica starts with no members');

  // Unknown to the cluster: refused with a clear error, nothing changes.
  await assert.rejects(
    leader.host.changeMembership(5, { type: 'addLearner', node: id }, Date.now() + 5000),
    (e: unknown) => e instanceof DogfsError && e.code === 'FAILED_PRECONDITION',
  );
  for (const n of cluster) n.host.addPeer({ nodeId: id, addr });
  await leader.host.changeMembership(5, { type: 'addLearner', node: id }, Date.now() + 5000);
  await waitFor('the learner catches up', () => machine.data.get('k29') === '29', 10_000);
  assert.ok(restores >= 1, 'the learner was caught up by a snapshot');
  await leader.host.changeMembership(5, { type: 'promote', node: id }, Date.now() + 5000);
  assert.deepEqual([...leader.host.status(5).members].sort(), [1, 2, 3, 4]);
  await leader.host.propose(5, Buffer.from('after=1'), Date.now() + 5000);
  await waitFor('the new voter applies new commands', () => machine.data.get('after') === '1', 10_000);

  // A second change while none is pending works; removing the new member leaves three voters.
  await leader.host.changeMembership(5, { type: 'remove', node: id }, Date.now() + 5000);
  assert.deepEqual([...leader.host.status(5).members].sort(), [1, 2, 3]);
  await leader.host.propose(5, Buffer.from('last=1'), Date.now() + 5000);
});

test('leader balancing spreads four groups that one host leads over all three hosts', async () => {
  const cluster = await startCluster(3, [1, 2, 3, 4]);
  const groups = [1, 2, 3, 4];
  const ledBy = (n: Node) => groups.filter((g) => n.host.isLeader(g)).length;
  // First every group onto host 1: hosts 2 and 3 hand theirs to host 1 (the first other voter) until it
  // leads all four.
  await waitFor(
    'host 1 to lead every group',
    () => {
      cluster[1]!.host.transferLeadership();
      cluster[2]!.host.transferLeadership();
      return ledBy(cluster[0]!) === 4;
    },
    20_000,
    200,
  );
  for (const n of cluster) n.host.setLeaderBalancing(true);
  // 4 groups over 3 voters: balanced means no host leads two more than another, so each leads 1 or 2.
  await waitFor('leaders spread over every host', () => cluster.every((n) => ledBy(n) >= 1), 20_000);
  for (const g of groups) {
    const leader = await waitFor(`a leader of group ${g}`, () => leaderOf(cluster, g));
    await leader.host.propose(g, Buffer.from(`k${g}=v`), Date.now() + 5000);
  }
});

test('a preferred leader gathers the leadership of every group, and the groups keep serving', async () => {
  const groups = [1, 2, 3, 4];
  // Host 3: not the first voter, whom elections and transferLeadership() favour anyway.
  const cluster = await startCluster(3, groups, undefined, asNodeId(3));
  const preferred = cluster[2]!;
  await waitFor('host 3 to lead every group', () => groups.every((g) => preferred.host.isLeader(g)), 20_000);
  for (const g of groups) await preferred.host.propose(g, Buffer.from(`k${g}=v`), Date.now() + 5000);
  for (const g of groups) {
    await waitFor(`group ${g} applied on every host`, () =>
      cluster.every((n) => n.machines.get(g)!.data.get(`k${g}`) === 'v'),
    );
  }
});

test('a slow log write is logged (the write holds the event loop), at most one line per interval', async () => {
  // A disk that takes 250 ms per sync: the simulated fault, not a wait for anything.
  class SlowDisk extends MemoryStorage {
    override async sync(): Promise<void> {
      await new Promise((resolve) => setTimeout(resolve, 250));
    }
  }
  const lines: string[] = [];
  const server = new RpcServer();
  const addr = `127.0.0.1:${await server.listen('127.0.0.1', 0)}`;
  const id = asNodeId(1);
  const host = new RaftHost({
    nodeId: id,
    peers: [{ nodeId: id, addr }],
    storage: new SlowDisk(),
    log: createLogger('warn', { node: id }, (line) => lines.push(line)),
    tickMs: 20,
  });
  const machine = new KvMachine();
  host.addGroup(7, machine);
  host.start(server);
  nodes.push({ id, addr, host, server, machines: new Map([[7, machine]]) });
  await waitFor('the single host leads', () => host.isLeader(7) || undefined, 10_000);
  for (let i = 0; i < 3; i++) await host.propose(7, Buffer.from(`k${i}=${i}`), Date.now() + 10_000);
  const slow = lines.filter((l) => l.includes('"msg":"raft log write slow"'));
  assert.equal(slow.length, 1, `one warning for several slow writes within the interval: ${lines.join('')}`);
  assert.match(slow[0]!, /"ms":\d{3,}/);
});

test('a streamed snapshot is taken a slice at a time while commands go on being applied and answered', async () => {
  // Each chunk costs 2 ms of CPU, and the stream lasts until the test releases it: in one call, each
  // replica's snapshot would hold the (shared) event loop for as long. Streamed, no turn of the loop
  // should take much more than a slice, and commands proposed meanwhile are applied and answered.
  const MIN_CHUNKS = 50;
  const MAX_CHUNKS = 100_000;
  class StreamingKv extends KvMachine {
    streaming = false;
    released = false;
    appliedWhileStreaming = 0;
    snapshotsStreamed = 0;
    override apply(index: LogIndex, command: Uint8Array): Uint8Array {
      if (this.streaming) this.appliedWhileStreaming++;
      return super.apply(index, command);
    }
    streamSnapshot(): SnapshotStream {
      const atCall = this.snapshot();
      this.streaming = true;
      const self = this;
      const chunks = (function* (): Generator<Uint8Array, undefined> {
        for (let i = 0; i < MAX_CHUNKS && (i < MIN_CHUNKS || !self.released); i++) {
          const until = performance.now() + 2;
          while (performance.now() < until) {
            // the work of serialising one chunk of a large state
          }
          yield new Uint8Array(0);
        }
        self.streaming = false;
        self.snapshotsStreamed++;
        yield atCall;
        return undefined;
      })();
      return {
        next: () => chunks.next(),
        close: () => {
          this.streaming = false;
          chunks.return(undefined);
        },
      };
    }
  }
  const cluster = await startCluster(3, [9], 20, undefined, () => new StreamingKv());
  const leader = await waitFor('leader', () => leaderOf(cluster, 9), 10_000);
  const machine = leader.machines.get(9) as StreamingKv;
  const term = leader.host.status(9).term;
  let longestTurnMs = 0;
  let last = performance.now();
  const probe = setInterval(() => {
    const now = performance.now();
    longestTurnMs = Math.max(longestTurnMs, now - last);
    last = now;
  }, 5);
  try {
    const proposals = Array.from({ length: 20 }, (_, i) =>
      leader.host.propose(9, Buffer.from(`n=${i}`), Date.now() + 10_000),
    );
    await waitFor('the leader to stream a snapshot', () => machine.streaming, 10_000, 1);
    // Proposed while the snapshot streams (the test holds it open): applied and answered, in order.
    for (let i = 20; i < 30; i++) {
      proposals.push(leader.host.propose(9, Buffer.from(`n=${i}`), Date.now() + 10_000));
    }
    const answers = await Promise.all(proposals);
    assert.deepEqual(
      answers.map((a) => Buffer.from(a as Uint8Array).toString()),
      Array.from({ length: 30 }, (_, i) => (i === 0 ? '' : String(i - 1))),
    );
    assert.equal(machine.streaming, true, 'the stream is still open');
    assert.ok(
      machine.appliedWhileStreaming >= 10,
      `applied while streaming: ${machine.appliedWhileStreaming}`,
    );
    for (const n of cluster) (n.machines.get(9) as StreamingKv).released = true;
    await waitFor('every replica to finish its snapshot', () =>
      cluster.every((n) => (n.machines.get(9) as StreamingKv).snapshotsStreamed >= 1),
    );
  } finally {
    clearInterval(probe);
  }
  assert.equal(machine.data.get('n'), '29');
  assert.equal(leader.host.status(9).term, term, 'no election while the replicas snapshotted');
  assert.ok(longestTurnMs < 250, `the event loop stalled for ${Math.round(longestTurnMs)} ms`);
});
