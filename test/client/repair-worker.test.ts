/**
 * The automatic repair worker (client/repair-worker.ts) with a client whose repairs the test finishes:
 * one file at a time in the order handed over, no file twice, a bounded queue, failures counted and the
 * next file taken, and close abandoning the rest.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import type { RepairOptions, RepairOutcome } from '../../src/client/repair.js';
import { RepairWorker } from '../../src/client/repair-worker.js';
import { DogfsError } from '../../src/wire/errors.js';
import { waitFor } from '../helpers/index.js';

/** A client whose repairs wait until the test settles them. */
function fakeClient() {
  const calls: {
    path: string;
    options: RepairOptions;
    settle: (error?: Error, unrepaired?: string[]) => void;
  }[] = [];
  let closed = false;
  return {
    calls,
    get closed() {
      return closed;
    },
    client: {
      repair: (path: string, options: RepairOptions = {}) =>
        new Promise<RepairOutcome>((resolve, reject) => {
          calls.push({
            path,
            options,
            settle: (error, unrepaired = []) =>
              error === undefined
                ? resolve({
                    path,
                    damagedBlockGroups: 1,
                    repairedBlockGroups: unrepaired.length === 0 ? 1 : 0,
                    shardsRebuilt: unrepaired.length === 0 ? 1 : 0,
                    shardsCopied: 0,
                    bytesWritten: 10,
                    unrepaired,
                  })
                : reject(error),
          });
        }),
      close: () => {
        closed = true;
        for (const c of calls) c.settle(new DogfsError('CANCELLED', 'client closed'));
      },
    },
  };
}

test('one file at a time, in order, none twice; a failure is counted and the next file taken', async () => {
  const fake = fakeClient();
  const worker = new RepairWorker({ meta: ['127.0.0.1:1'], client: fake.client, maxQueued: 8 });
  worker.take(['/a', '/b']);
  worker.take(['/a', '/b', '/c']);
  await waitFor('the first repair', () => fake.calls.length === 1);
  assert.deepEqual(worker.current(), ['/a', '/b', '/c'], 'running first, then queued, no duplicates');
  fake.calls[0]!.settle();
  await waitFor('the second repair', () => fake.calls.length === 2);
  assert.equal(fake.calls[1]!.path, '/b');
  fake.calls[1]!.settle(new DogfsError('UNAVAILABLE', 'no source'));
  await waitFor('the third repair', () => fake.calls.length === 3);
  fake.calls[2]!.settle();
  await waitFor('idle', () => worker.current().length === 0);
  assert.deepEqual(worker.counts, { repaired: 2, failed: 1, dropped: 0 });
  assert.deepEqual(worker.failures(), [{ path: '/b', reason: 'UNAVAILABLE: no source' }]);
  // A repair that ends with shards it could not rebuild is unfinished too; one that finishes clears it.
  worker.take(['/b', '/e']);
  await waitFor('the repair of /b again', () => fake.calls.length === 4);
  fake.calls[3]!.settle();
  await waitFor('/e', () => fake.calls.length === 5);
  fake.calls[4]!.settle(undefined, ['shard 1: no server', 'shard 2: no server']);
  await waitFor('idle', () => worker.current().length === 0);
  assert.deepEqual(worker.failures(), [{ path: '/e', reason: 'shard 1: no server (and 1 more)' }]);
  // Taken again after going idle: a new drain starts.
  worker.take(['/d']);
  await waitFor('the sixth repair', () => fake.calls.length === 6);
  fake.calls[5]!.settle();
  await waitFor('idle again', () => worker.current().length === 0);
  await worker.close();
  assert.ok(fake.closed);
});

test('the queue is bounded; close abandons the running repair and the rest', async () => {
  const fake = fakeClient();
  const worker = new RepairWorker({ meta: ['127.0.0.1:1'], client: fake.client, maxQueued: 2 });
  worker.take(['/1']);
  await waitFor('running', () => fake.calls.length === 1);
  worker.take(['/2', '/3', '/4']);
  assert.deepEqual(worker.current(), ['/1', '/2', '/3']);
  assert.equal(worker.counts.dropped, 1, 'the file past the queue is left to the leader');
  await worker.close();
  assert.deepEqual(worker.current(), []);
  assert.equal(fake.calls.length, 1, 'nothing started after close');
  worker.take(['/5']);
  assert.deepEqual(worker.current(), [], 'a closed worker takes nothing');
});

test('repairs are paced to the rate, unless it is 0', async () => {
  for (const [bytesPerSecond, paced] of [
    [undefined, true],
    [1 << 20, true],
    [0, false],
  ] as const) {
    const fake = fakeClient();
    const worker = new RepairWorker({
      meta: ['127.0.0.1:1'],
      client: fake.client,
      ...(bytesPerSecond === undefined ? {} : { bytesPerSecond }),
    });
    worker.take(['/x']);
    await waitFor('the repair', () => fake.calls.length === 1);
    assert.equal(typeof fake.calls[0]!.options.pace === 'function', paced, `rate ${bytesPerSecond}`);
    fake.calls[0]!.settle();
    await worker.close();
  }
});
