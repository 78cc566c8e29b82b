/**
 * The simulation suite: SIM_SEEDS seeds (default 500) of mixed faults, SIM_STEPS events each (default
 * 5000, plus the liveness and drain phases), each checked for safety after every step, for liveness once
 * faults stop, and for linearizability of its client history. SEED=<n> replays one seed.
 */

import assert from 'node:assert/strict';
import { test } from 'node:test';
import { replayCommand, runSimulation } from './sim/sim.js';

const single = process.env.SEED;
const seedCount = Number(process.env.SIM_SEEDS ?? 500);
const steps = Number(process.env.SIM_STEPS ?? 5000);
const seeds = single !== undefined ? [Number(single)] : Array.from({ length: seedCount }, (_, i) => i + 1);

test(`simulation: ${seeds.length} seed(s) x ${steps} steps of mixed faults stay safe, live and linearizable`, () => {
  let events = 0;
  let committed = 0;
  let crashes = 0;
  let snapshots = 0;
  let configChanges = 0;
  let historyOps = 0;
  for (const seed of seeds) {
    const r = runSimulation({ seed, steps });
    if (!r.ok) assert.fail(`seed ${seed} failed: ${r.failure}\nreplay: ${replayCommand(seed, steps)}`);
    assert.ok(r.stats.events >= steps, `seed ${seed} ran only ${r.stats.events} events`);
    events += r.stats.events;
    committed += r.stats.committed;
    crashes += r.stats.crashes;
    snapshots += r.stats.snapshotsSent;
    configChanges += r.stats.configChanges;
    historyOps += r.stats.historyOps;
  }
  // The run must actually have exercised the machinery it claims to test.
  if (single === undefined && seedCount >= 100) {
    assert.ok(crashes > seedCount, `only ${crashes} crashes`);
    assert.ok(snapshots > 0, 'no snapshot was ever sent');
    assert.ok(configChanges > 0, 'no membership change ever happened');
    assert.ok(committed > seedCount * 5, `only ${committed} entries committed`);
    assert.ok(historyOps > seedCount * 5, `only ${historyOps} client operations recorded`);
  }
  console.log(
    JSON.stringify({
      seeds: seeds.length,
      steps,
      events,
      committed,
      crashes,
      snapshots,
      configChanges,
      historyOps,
    }),
  );
});

test('simulation is deterministic: one seed replays to identical statistics', () => {
  const a = runSimulation({ seed: 4242, steps: 3000 });
  const b = runSimulation({ seed: 4242, steps: 3000 });
  assert.deepEqual(a, b);
});
