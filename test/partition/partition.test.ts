/**
 * Network partitions in the suite (test/partition/scenario.ts, in a private network namespace): a cut-off
 * leader is replaced and refuses rather than hangs or serves stale reads, a cluster without a majority
 * refuses clearly and recovers when healed, a chunk server cut off is declared dead and comes back, and
 * nothing acknowledged is lost.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { runNodeScript } from '../helpers/index.js';
import type { PartitionOutcome } from './scenario.js';

const RUN = fileURLToPath(new URL('./run.js', import.meta.url));

test('network partitions: a new leader, clear refusals, no stale reads, nothing acknowledged lost', async () => {
  const { status, output } = await runNodeScript(RUN);
  assert.equal(status, 0, output);
  const lines = output.trim().split('\n');
  const outcome = JSON.parse(lines[lines.length - 1]!) as PartitionOutcome;
  assert.deepEqual(outcome.problems, [], output);
  assert.ok(outcome.putsAcknowledged >= 12, output);
  assert.match(
    outcome.isolatedLeaderRefusal,
    /^(NOT_LEADER|NO_QUORUM|UNAVAILABLE|DEADLINE_EXCEEDED) /,
    output,
  );
});
