/**
 * A short chaos run in the suite (test/chaos/chaos.ts through run.ts, in a private network namespace):
 * 20 s of chunk-server and leader kills, leader pauses, flipped bytes and network cuts under a stream of
 * puts and gets, then heal, repair and check that nothing acknowledged was lost, no get returned wrong
 * bytes and no put was refused placement. `npm run chaos` runs longer ones.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { runNodeScript } from '../helpers/index.js';
import type { ChaosOutcome } from './chaos.js';

const RUN = fileURLToPath(new URL('./run.js', import.meta.url));

test('faults under load: nothing acknowledged is lost, no wrong bytes, repair leaves nothing damaged', async () => {
  const { status, output } = await runNodeScript(RUN, [
    '--seconds',
    '20',
    '--seed',
    '20261126',
    '--partitions',
  ]);
  assert.equal(status, 0, output);
  // run.ts prints the outcome as JSON (with the number of problems) after the run's lines.
  const json = output.slice(output.indexOf('\n{') + 1, output.lastIndexOf('}') + 1);
  const outcome = JSON.parse(json) as Omit<ChaosOutcome, 'problems'> & { problems: number };
  assert.equal(outcome.problems, 0, output);
  assert.ok(outcome.putsAcknowledged > 0, 'puts went through');
  // One chunk server down (or cut off) at a time leaves 6 of 7 for 3+2 shards, and a metadata server
  // down, paused or cut off leaves a majority, so placement must never be refused (it was, when a paused
  // leader declared healthy servers dead). A put may still fail by design if two of its five shard writes
  // fail (a killed server and one too slow on a loaded machine): that stays rare.
  assert.equal(outcome.putsFailedByCode['FAILED_PRECONDITION'] ?? 0, 0, output);
  assert.ok(outcome.putsFailed <= Math.max(2, outcome.putsAcknowledged / 50), output);
  assert.ok(Object.values(outcome.faults).reduce((a, b) => a + b, 0) >= 4, `faults injected: ${output}`);
});
