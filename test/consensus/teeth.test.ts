/**
 * The simulator has teeth: each planted bug (TestingBugs) must be caught within the CI seed budget. Seeds
 * run in order and stop at the first failure; the test records which seed caught it.
 */

import assert from 'node:assert/strict';
import { test } from 'node:test';
import type { TestingBugs } from '../../src/consensus/index.js';
import { runSimulation } from './sim/sim.js';

const BUDGET_SEEDS = 500;
const STEPS = 10_000;

function firstCatch(bugs: TestingBugs): { seed: number; failure: string } | undefined {
  for (let seed = 1; seed <= BUDGET_SEEDS; seed++) {
    const r = runSimulation({ seed, steps: STEPS, bugs });
    if (!r.ok) return { seed, failure: r.failure };
  }
  return undefined;
}

test('planted bug: granting votes without the log up-to-date check is caught', () => {
  const caught = firstCatch({ voteWithoutLogCheck: true });
  assert.ok(caught, `not caught within ${BUDGET_SEEDS} seeds`);
  assert.match(
    caught.failure,
    /Safety|Leader Completeness|Log Matching|Linearizability|truncating committed/,
  );
  console.log(`vote bug caught by seed ${caught.seed}: ${caught.failure.split('\n')[0]}`);
});

test('planted bug: committing a previous-term entry by counting replicas is caught', () => {
  const caught = firstCatch({ commitPreviousTermByCounting: true });
  assert.ok(caught, `not caught within ${BUDGET_SEEDS} seeds`);
  assert.match(
    caught.failure,
    /Safety|Leader Completeness|Log Matching|Linearizability|truncating committed/,
  );
  console.log(`commit bug caught by seed ${caught.seed}: ${caught.failure.split('\n')[0]}`);
});

test('without planted bugs the same seeds pass (the catches are the bugs, not the simulator)', () => {
  for (let seed = 1; seed <= 25; seed++) {
    const r = runSimulation({ seed, steps: STEPS });
    assert.ok(r.ok, r.ok ? '' : `seed ${seed}: ${r.failure}`);
  }
});
