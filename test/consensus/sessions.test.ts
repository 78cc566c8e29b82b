import assert from 'node:assert/strict';
import { test } from 'node:test';
import { ClientSessions } from '../../src/consensus/index.js';

const limits = { ttl: 100, maxSessions: 2, maxResultsPerClient: 3 };

test('sessions: a command runs once; a retry gets the original result without running again', () => {
  const s = new ClientSessions<number>(limits);
  let runs = 0;
  const exec = () => ++runs;
  assert.deepEqual(s.apply({ clientId: 'a', seq: 1, ackedBelow: 1, time: 0, mayOpen: true }, exec), {
    kind: 'applied',
    result: 1,
  });
  assert.deepEqual(s.apply({ clientId: 'a', seq: 1, ackedBelow: 1, time: 1, mayOpen: true }, exec), {
    kind: 'duplicate',
    result: 1,
  });
  assert.deepEqual(s.apply({ clientId: 'a', seq: 2, ackedBelow: 1, time: 2, mayOpen: true }, exec), {
    kind: 'applied',
    result: 2,
  });
  assert.equal(runs, 2);
  // Once the client acknowledges below 3, the result of 1 and 2 is forgotten and a late retry is refused.
  assert.deepEqual(s.apply({ clientId: 'a', seq: 3, ackedBelow: 3, time: 3, mayOpen: true }, exec), {
    kind: 'applied',
    result: 3,
  });
  assert.deepEqual(s.apply({ clientId: 'a', seq: 2, ackedBelow: 3, time: 4, mayOpen: true }, exec), {
    kind: 'result_forgotten',
  });
  assert.equal(runs, 3);
});

test('sessions: expiry follows command time only, so every replica expires the same sessions', () => {
  const replay = () => {
    const s = new ClientSessions<string>(limits);
    s.apply({ clientId: 'a', seq: 1, ackedBelow: 1, time: 10, mayOpen: true }, () => 'x');
    s.apply({ clientId: 'b', seq: 1, ackedBelow: 1, time: 50, mayOpen: true }, () => 'y');
    // 'a' idle for 101 > ttl: expired; its next command (not its first) is refused.
    const late = s.apply({ clientId: 'a', seq: 2, ackedBelow: 2, time: 111, mayOpen: true }, () => 'z');
    return { late, snap: s.snapshot() };
  };
  const one = replay();
  assert.deepEqual(one.late, { kind: 'session_expired' });
  assert.deepEqual(one, replay());
});

test('sessions: beyond maxSessions the least recently active is evicted (ties by id), and state round-trips', () => {
  const s = new ClientSessions<number>(limits);
  s.apply({ clientId: 'b', seq: 1, ackedBelow: 1, time: 5, mayOpen: true }, () => 1);
  s.apply({ clientId: 'a', seq: 1, ackedBelow: 1, time: 5, mayOpen: true }, () => 2);
  s.apply({ clientId: 'c', seq: 1, ackedBelow: 1, time: 6, mayOpen: true }, () => 3);
  assert.equal(s.size(), 2);
  const restored = ClientSessions.restore(limits, s.snapshot());
  assert.deepEqual(restored.snapshot(), s.snapshot());
  assert.deepEqual(
    restored.snapshot().sessions.map((x) => x.clientId),
    ['b', 'c'],
    "'a' and 'b' tie on time; 'a' sorts first and is evicted",
  );
  assert.deepEqual(
    restored.apply({ clientId: 'c', seq: 1, ackedBelow: 1, time: 7, mayOpen: true }, () => 9),
    { kind: 'duplicate', result: 3 },
  );
});

test('sessions: at most maxResultsPerClient results are kept per client', () => {
  const s = new ClientSessions<number>(limits);
  for (let seq = 1; seq <= 5; seq++)
    s.apply({ clientId: 'a', seq, ackedBelow: 1, time: seq, mayOpen: true }, () => seq * 10);
  const results = s.snapshot().sessions[0]!.results;
  assert.deepEqual(
    results.map(([seq]) => seq),
    [3, 4, 5],
  );
  assert.deepEqual(
    s.apply({ clientId: 'a', seq: 1, ackedBelow: 1, time: 9, mayOpen: true }, () => -1),
    { kind: 'result_forgotten' },
  );
});

test('sessions: concurrent calls of one client may apply out of order, each exactly once', () => {
  const s = new ClientSessions<number>(limits);
  let runs = 0;
  const exec = () => ++runs;
  s.apply({ clientId: 'a', seq: 1, ackedBelow: 1, time: 0, mayOpen: true }, exec);
  // seq 3 overtakes seq 2 (e.g. 2 was retried on a new leader): both run, once.
  assert.equal(
    s.apply({ clientId: 'a', seq: 3, ackedBelow: 1, time: 1, mayOpen: true }, exec).kind,
    'applied',
  );
  assert.equal(
    s.apply({ clientId: 'a', seq: 2, ackedBelow: 1, time: 2, mayOpen: true }, exec).kind,
    'applied',
  );
  assert.deepEqual(s.apply({ clientId: 'a', seq: 3, ackedBelow: 1, time: 3, mayOpen: true }, exec), {
    kind: 'duplicate',
    result: 2,
  });
  assert.deepEqual(s.apply({ clientId: 'a', seq: 2, ackedBelow: 1, time: 3, mayOpen: true }, exec), {
    kind: 'duplicate',
    result: 3,
  });
  assert.equal(runs, 3);
});

test('sessions: expiry keeps the recently active, whatever order the sessions began in', () => {
  const s = new ClientSessions<number>({ ttl: 100, maxSessions: 100, maxResultsPerClient: 3 });
  for (let i = 0; i < 50; i++)
    s.apply({ clientId: `c${i}`, seq: 1, ackedBelow: 1, time: i, mayOpen: true }, () => i);
  // c0 is active again at 55; at 125 the sessions last active before 25 have been idle for over 100.
  s.apply({ clientId: 'c0', seq: 2, ackedBelow: 2, time: 55, mayOpen: true }, () => 0);
  s.apply({ clientId: 'late', seq: 1, ackedBelow: 1, time: 125, mayOpen: true }, () => 0);
  assert.deepEqual(
    s.snapshot().sessions.map((x) => x.clientId),
    [...Array.from({ length: 25 }, (_, i) => `c${25 + i}`), 'c0', 'late'],
  );
  const restored = ClientSessions.restore(limits, s.snapshot());
  assert.deepEqual(restored.snapshot(), s.snapshot());
});

test('sessions: a command never opens its own session; only open does, under an id never used before', () => {
  const s = new ClientSessions<number>(limits);
  let runs = 0;
  const exec = () => ++runs;
  assert.deepEqual(s.apply({ clientId: 'a', seq: 1, ackedBelow: 1, time: 0, mayOpen: false }, exec), {
    kind: 'session_expired',
  });
  assert.equal(runs, 0);
  s.open('a', 1);
  assert.equal(
    s.apply({ clientId: 'a', seq: 1, ackedBelow: 1, time: 2, mayOpen: false }, exec).kind,
    'applied',
  );
  assert.throws(() => s.open('a', 3), /never opened twice/);
});

test('sessions: a command applied, its answer lost, its session evicted: the retry is refused, not run again', () => {
  // Two calls of a new client in flight together both carry ackedBelow 1; the second is applied, its
  // answer lost, and two other clients' sessions push this one out (maxSessions 2) before the retry.
  const run = (mayOpen: boolean) => {
    const s = new ClientSessions<number>(limits);
    let runs = 0;
    const exec = () => ++runs;
    s.open('a', 0);
    s.apply({ clientId: 'a', seq: 1, ackedBelow: 1, time: 1, mayOpen }, exec);
    s.apply({ clientId: 'a', seq: 2, ackedBelow: 1, time: 2, mayOpen }, exec);
    s.open('b', 3);
    s.open('c', 4);
    assert.equal(s.has('a'), false, 'evicted');
    const retry = s.apply({ clientId: 'a', seq: 2, ackedBelow: 1, time: 5, mayOpen }, exec);
    return { retry: retry.kind, runs };
  };
  assert.deepEqual(run(false), { retry: 'session_expired', runs: 2 });
  // The older rule (kept for entries logged under it) opened a fresh session and ran seq 2 a second time.
  assert.deepEqual(run(true), { retry: 'applied', runs: 3 });
});
