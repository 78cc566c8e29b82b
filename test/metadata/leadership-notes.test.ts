/**
 * Group 0's soft state (liveness, block reports, bad shards, repairs) belongs to one leadership: on a
 * host whose term the test sets, a leadership won again in a new term keeps what it gathered before its
 * first duty round, and drops what the earlier term gathered. The Raft host is replaced by one that
 * applies every proposal at once (the seam MetadataNode is built on); the handlers and the duty round
 * are the service's own.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import type { Logger } from '../../src/common/log.js';
import type { LogIndex } from '../../src/consensus/index.js';
import { MetadataNode } from '../../src/metadata/service.js';
import type { RaftHost, StateMachine } from '../../src/raftnode/host.js';
import { DogfsError } from '../../src/wire/errors.js';
import type { MetadataMethods } from '../../src/wire/gen/types.js';
import type { CallContext, RpcServer, ServiceHandlers } from '../../src/wire/rpc.js';

/** A host that leads group 0 (not the namespace group) in `term` and applies each proposal as it comes. */
class InstantHost {
  term = 1;
  private readonly machines = new Map<number, { machine: StateMachine; applied: number }>();
  addGroup(group: number, machine: StateMachine): void {
    this.machines.set(group, { machine, applied: 0 });
  }
  groupIds(): number[] {
    return [...this.machines.keys()];
  }
  isLeader(group: number): boolean {
    return group === 0;
  }
  requireLeader(group: number): void {
    if (group !== 0) throw new DogfsError('NOT_LEADER', `not the leader of group ${group}`);
  }
  async readBarrier(): Promise<void> {}
  async propose(group: number, command: Uint8Array): Promise<unknown> {
    const g = this.machines.get(group)!;
    return g.machine.apply(++g.applied as LogIndex, command);
  }
  status(group: number) {
    const applied = this.machines.get(group)?.applied ?? 0;
    return {
      group,
      role: group === 0 ? 'leader' : 'follower',
      leader: 1,
      leaderAddr: '127.0.0.1:1',
      term: this.term,
      commit: applied,
      applied,
      members: [1],
    };
  }
}

const quiet: Logger = { debug() {}, info() {}, warn() {}, error() {} } as unknown as Logger;

test('a leadership won again in a new term keeps the reports it took before its first duty round', async () => {
  const host = new InstantHost();
  const node = new MetadataNode(host as unknown as RaftHost, quiet, 'test', { autoRepairDelayMs: null });
  let handlers: ServiceHandlers<MetadataMethods> | undefined;
  node.start({
    addService: (_descriptor: unknown, h: ServiceHandlers<MetadataMethods>) => {
      handlers = h;
    },
  } as unknown as RpcServer);
  try {
    const ctx: CallContext = {
      deadline: Date.now() + 10_000,
      signal: new AbortController().signal,
      peer: 'test',
    };
    const h = handlers!;
    const duty = () => (node as unknown as { runLeaderDuties(): Promise<void> }).runLeaderDuties();
    await h.RegisterChunkServer(
      {
        id: 'c1',
        addr: '127.0.0.1:2',
        controlAddr: '127.0.0.1:3',
        failureDomain: 'a',
        capacityBytes: 1 << 30,
        usedBytes: 0,
        clusterId: '',
      },
      ctx,
    );
    const heartbeat = async () =>
      (
        await h.Heartbeat(
          {
            id: 'c1',
            capacityBytes: 1 << 30,
            usedBytes: 0,
            shardCount: 0,
            activeTransfers: 0,
            corruptShards: [],
            repairs: false,
            repairing: [],
            repairFailures: [],
          },
          ctx,
        )
      ).reregister;
    const wholeReport = () => h.BlockReport({ id: 'c1', shards: [], first: true, last: true }, ctx);

    await duty();
    assert.equal(await heartbeat(), true, 'no whole report in this term yet: asked for one');
    await wholeReport();
    assert.equal(await heartbeat(), false, 'reported');

    host.term = 2; // leadership lost and won again between two duty rounds
    assert.equal(await heartbeat(), true, "the first term's report is not this leadership's");
    await wholeReport();
    assert.equal(await heartbeat(), false);
    await duty(); // the first round of the new term
    assert.equal(await heartbeat(), false, 'the report taken in this term before the round stays');
  } finally {
    node.stop();
  }
});
