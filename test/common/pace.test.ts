/**
 * The pacer background work runs under (common/pace.ts): pieces held to the rate (a lower bound on the
 * time taken, which a slow machine only lengthens), no burst after idle time, and an abort that ends
 * the wait.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { Pacer } from '../../src/common/pace.js';

test('pieces are held to the rate: the first goes at once, each next one after the share of the last', async () => {
  const pacer = new Pacer(1_000_000); // 1 MB/s: 100 kB is 100 ms
  const began = performance.now();
  await pacer.pace(100_000);
  assert.ok(performance.now() - began < 1_000, 'the first piece does not wait for a share');
  await pacer.pace(100_000);
  await pacer.pace(100_000);
  assert.ok(
    performance.now() - began >= 195,
    `three pieces of 100 kB at 1 MB/s took ${performance.now() - began} ms`,
  );
});

test('an aborted wait ends at once; a bad rate or count is refused', async () => {
  const pacer = new Pacer(1_000);
  await pacer.pace(10_000); // the next piece would wait 10 s
  const aborted = AbortSignal.abort();
  const began = performance.now();
  await pacer.pace(1, aborted);
  assert.ok(performance.now() - began < 5_000, 'not the 10 s the rate asks for');
  assert.throws(() => new Pacer(0));
  assert.throws(() => new Pacer(Number.NaN));
  await assert.rejects(pacer.pace(-1, aborted));
});
