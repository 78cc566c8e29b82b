import assert from 'node:assert/strict';
import { test } from 'node:test';
import { StateClock } from '../../src/metadata/state-clock.js';

/** A clock driven by hand: wall and monotonic time move only when the test says so. */
function manual(wallMs: number) {
  const time = { wall: wallMs, monotonic: 0 };
  const clock = new StateClock(
    () => time.wall,
    () => time.monotonic,
  );
  const pass = (ms: number) => {
    time.wall += ms;
    time.monotonic += ms;
  };
  return { time, clock, pass };
}

test('StateClock: the wall clock while it is not behind the state', () => {
  const { clock, pass } = manual(1_000_000);
  assert.equal(clock.now(0), 1_000_000);
  pass(500);
  // The state's time came from this clock a moment ago: the wall clock is the answer.
  assert.equal(clock.now(1_000_000), 1_000_500);
  pass(250);
  assert.equal(clock.now(1_000_500), 1_000_750);
});

test('StateClock: a state time far ahead of the wall runs on at the real rate, not frozen', () => {
  const day = 86_400_000;
  const { time, clock, pass } = manual(1_000_000);
  // An earlier leader's clock was a day ahead: the state holds its time.
  const ahead = 1_000_000 + day;
  assert.equal(clock.now(ahead), ahead);
  pass(1500);
  // A plain wall clock would stamp 1_001_500, clamped by the state machine to `ahead` for a whole day.
  assert.equal(clock.now(ahead), ahead + 1500);
  pass(2500);
  assert.equal(clock.now(ahead + 1500), ahead + 4000);
  // A later state time (another stamp ahead of the carried one) is taken as the new anchor.
  assert.equal(clock.now(ahead + 10_000), ahead + 10_000);
  pass(1);
  assert.equal(clock.now(ahead + 10_000), ahead + 10_001);
  // Once the wall clock passes the carried time, it is the answer again.
  time.wall = ahead + 20_000;
  assert.equal(clock.now(ahead + 10_000), ahead + 20_000);
});

test('StateClock: the wall clock stepping back never makes a stamp run back', () => {
  const { time, clock, pass } = manual(5_000_000);
  let last = clock.now(0);
  for (let i = 0; i < 100; i++) {
    pass(10);
    if (i % 10 === 0) time.wall -= 60_000;
    const stamped = clock.now(last);
    assert.ok(stamped >= last, `stamp ${stamped} ran back from ${last}`);
    last = stamped;
  }
  // Carried from the first stamp seen as state time (10 ms after it was made): it ran on at the real
  // rate through every step back.
  assert.equal(last, 5_000_000 + 99 * 10);
});
