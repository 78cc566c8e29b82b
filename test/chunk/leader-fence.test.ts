/**
 * chunk/leader-fence on its own: terms per group, refusal of older ones, durability before admission,
 * recovery from a failed write (the same term is written again by the next call, not refused for the rest
 * of the term), and a malformed file refused at start-up with the way out.
 */
import assert from 'node:assert/strict';
import { mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, test } from 'node:test';
import { LeaderFence } from '../../src/chunk/leader-fence.js';
import { tempDir } from '../helpers/index.js';

const dir = tempDir('dogfs-fence-');
after(() => dir.remove());

test('leader fence: older terms refused per group, terms durable before admission, a failed write retried', async () => {
  const root = join(dir.path, 'a');
  mkdirSync(root);
  const fence = await LeaderFence.open(root);
  await fence.admit(1, 0); // unfenced
  await fence.admit(1, 4);
  await fence.admit(2, 9);
  assert.deepEqual(JSON.parse(readFileSync(join(root, 'leader-terms.json'), 'utf8')), { 1: 4, 2: 9 });
  await assert.rejects(fence.admit(1, 3), { code: 'FAILED_PRECONDITION' });
  await fence.admit(1, 4);
  await assert.rejects(fence.admit(1, -1), { code: 'INVALID_ARGUMENT' });
  // The disk refuses the next write (its temp file's name is taken by a directory): the call fails...
  mkdirSync(join(root, 'leader-terms.json.tmp'));
  await assert.rejects(fence.admit(1, 5));
  // ...and is not admitted by a second call of the same term while the term is not on disk.
  await assert.rejects(fence.admit(1, 5));
  assert.equal(JSON.parse(readFileSync(join(root, 'leader-terms.json'), 'utf8'))['1'], 4);
  // The disk is back: the same term is written and admitted; other groups were never blocked.
  rmSync(join(root, 'leader-terms.json.tmp'), { recursive: true });
  await fence.admit(1, 5);
  await fence.admit(2, 9);
  assert.deepEqual(JSON.parse(readFileSync(join(root, 'leader-terms.json'), 'utf8')), { 1: 5, 2: 9 });
  // Reopened: the terms are back.
  const again = await LeaderFence.open(root);
  assert.equal(again.term(1), 5);
  await assert.rejects(again.admit(1, 4), /stale leader/);
});

test('leader fence: a malformed file stops start-up with the way out', async () => {
  const root = join(dir.path, 'b');
  mkdirSync(root);
  for (const text of ['{', '[]', 'null', '{"x": 1}', '{"1": -2}', '{"1": 1.5}']) {
    writeFileSync(join(root, 'leader-terms.json'), text);
    await assert.rejects(LeaderFence.open(root), /does not hold leader terms.*removing it/);
  }
});
