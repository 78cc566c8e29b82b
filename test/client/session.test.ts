/**
 * ClientSession on its own (no server): how a call opens again after a shared open failed fast — a
 * short jittered pause first, never past the call's deadline, cut short by its signal.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { ClientSession } from '../../src/client/index.js';
import { DogfsError } from '../../src/wire/errors.js';

/** An opener that fails fast (UNAVAILABLE) `failures` times, then opens 'opened'; records when each open began. */
function flakyOpener(failures: number) {
  const began: number[] = [];
  const open = async () => {
    began.push(performance.now());
    if (began.length <= failures) throw new DogfsError('UNAVAILABLE', `refused open ${began.length}`);
    return 'opened';
  };
  return { began, open };
}

test('an open that failed fast: the call pauses (jittered, growing) before each open again', async () => {
  let draws = 0;
  // The largest jitter, so each pause is its bound: 50 ms, then 100 ms.
  const session = new ClientSession({
    random: () => {
      draws++;
      return 1;
    },
  });
  const opener = flakyOpener(2);
  await session.run(opener.open, { deadline: Date.now() + 10_000 }, async () => undefined);
  assert.equal(session.clientId, 'opened');
  assert.equal(opener.began.length, 3);
  assert.equal(draws, 2, 'one pause before each open again');
  const gaps = [opener.began[1]! - opener.began[0]!, opener.began[2]! - opener.began[1]!];
  // Timers may fire a millisecond early against the clock: a margin below the bounds.
  assert.ok(gaps[0]! >= 45 && gaps[1]! >= 95, `pauses of ${gaps.map((g) => g.toFixed(1)).join(', ')} ms`);
});

test('a pause that would reach the deadline is not taken: the open fails with its own reason at once', async () => {
  const session = new ClientSession({ random: () => 1 });
  const opener = flakyOpener(10);
  const started = Date.now();
  // 30 ms left, a pause of 50 ms to take.
  await assert.rejects(
    session.run(opener.open, { deadline: started + 30 }, async () => undefined),
    (error: unknown) =>
      error instanceof DogfsError && error.code === 'UNAVAILABLE' && /open 1$/.test(error.message),
  );
  assert.equal(opener.began.length, 1, 'no second open');
});

test("the call's signal ends its pause at once: CANCELLED, no further open", async () => {
  const aborted = new AbortController();
  let abortedAt = 0;
  let draws = 0;
  // Aborted while the second pause (100 ms) runs: the draw comes just before it starts.
  const session = new ClientSession({
    random: () => {
      if (++draws === 2)
        queueMicrotask(() => {
          abortedAt = performance.now();
          aborted.abort();
        });
      return 1;
    },
  });
  const opener = flakyOpener(10);
  await assert.rejects(
    session.run(
      opener.open,
      { deadline: Date.now() + 10_000, signal: aborted.signal },
      async () => undefined,
    ),
    (error: unknown) => error instanceof DogfsError && error.code === 'CANCELLED',
  );
  const after = performance.now() - abortedAt;
  assert.equal(opener.began.length, 2, 'no open after the abort');
  assert.ok(after < 50, `ended ${after.toFixed(1)} ms after the abort, not at the end of the pause`);
});
