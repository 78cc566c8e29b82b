/**
 * Group 0's soft state (liveness, block reports, bad shards, repairs) belongs to one leadership: on a
 * host whose term the test sets, a leadership won again in a new term keeps what it gathered before its
 * first duty round, and drops what the earlier term gathered. The Raft host is replaced by one that
 * applies every proposal at once (the seam MetadataNode is built on); the handlers and the duty round
 * are the service's own.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { instantNode } from './instant-host.js';

test('a leadership won again in a new term keeps the reports it took before its first duty round', async () => {
  const { host, node, h, ctx } = instantNode((group) => group === 0, { autoRepairDelayMs: null });
  try {
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
