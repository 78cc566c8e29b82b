import assert from 'node:assert/strict';
import { test } from 'node:test';
import { RebalancePlan, type ServerUsage } from '../../src/metadata/rebalance.js';

const MiB = 1024 * 1024;
const server = (id: string, usedMiB: number, extra: Partial<ServerUsage> = {}): ServerUsage => ({
  id,
  alive: true,
  draining: false,
  capacityBytes: 100 * MiB,
  usedBytes: usedMiB * MiB,
  ...extra,
});

test('a server sheds above the mean plus 10 points, and stops only at the mean plus 5', () => {
  const plan = new RebalancePlan();
  // Mean 20%: 31% sheds, 29% does not.
  assert.deepEqual(plan.update(0, [server('a', 31), server('b', 29), server('c', 0), server('d', 20)]), {
    started: ['a'],
    stopped: [],
  });
  assert.deepEqual(plan.sheddingServers(), [{ id: 'a', usage: 0.31, mean: 0.2 }]);
  // a at 26% (mean 19.75%): above mean + 5, still shedding; b at 29% does not start (under mean + 10).
  assert.deepEqual(plan.update(0, [server('a', 26), server('b', 29), server('c', 4), server('d', 20)]), {
    started: [],
    stopped: [],
  });
  assert.ok(plan.isShedding('a'));
  // a at 24% (mean 20.25%): stops.
  assert.deepEqual(plan.update(0, [server('a', 24), server('b', 29), server('c', 8), server('d', 20)]), {
    started: [],
    stopped: ['a'],
  });
  assert.deepEqual(plan.sheddingServers(), []);
});

test('dead, draining and capacity-less servers count neither for the mean nor as shedders', () => {
  const plan = new RebalancePlan();
  const { started } = plan.update(0, [
    server('full-dead', 90, { alive: false }),
    server('full-draining', 90, { draining: true }),
    server('no-capacity', 5, { capacityBytes: 0 }),
    server('a', 10),
    server('b', 10),
  ]);
  assert.deepEqual(started, []);
  // A shedder that dies stops shedding (its shards are repaired instead).
  plan.update(0, [server('a', 40), server('b', 0)]);
  assert.ok(plan.isShedding('a'));
  assert.deepEqual(plan.update(0, [server('a', 40, { alive: false }), server('b', 0)]).stopped, ['a']);
  plan.update(0, [server('a', 40), server('b', 0)]);
  plan.clear();
  assert.equal(plan.isShedding('a'), false, 'a new leadership starts from nothing');
});

test('paused, no server sheds until the pause ends', () => {
  const plan = new RebalancePlan();
  const full = [server('a', 40), server('b', 0)];
  assert.deepEqual(plan.update(0, full).started, ['a']);
  plan.pause(1000);
  assert.deepEqual(plan.update(10, full), { started: [], stopped: ['a'] });
  assert.equal(plan.isShedding('a'), false);
  assert.deepEqual(plan.update(999, full).started, []);
  assert.deepEqual(plan.update(1000, full).started, ['a']);
});
