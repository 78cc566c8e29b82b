/**
 * The automatic repair schedule (metadata/auto-repair.ts), with time handed in: the delay, the limits on
 * repairs at once, telling servers in their heartbeats, ending and backing off, adopting an earlier
 * leader's repairs, and forgetting what a complete scan no longer names.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import fc from 'fast-check';
import { AutoRepairSchedule, DEFAULT_AUTO_REPAIR_LIMITS } from '../../src/metadata/auto-repair.js';

const first = () => 0;
const schedule = (delayMs = 1_000, limits = {}) =>
  new AutoRepairSchedule({ ...DEFAULT_AUTO_REPAIR_LIMITS, delayMs, ...limits });

test('a damaged file is handed out only after the delay, to a server that takes repairs, in its heartbeat', () => {
  const s = schedule(1_000);
  s.observeScan(['/a'], 0);
  assert.deepEqual(s.plan(['c1'], 999, first), [], 'not before the delay');
  assert.deepEqual(
    s.plan(['c1'], 1_000, first).map((a) => [a.path, a.server]),
    [['/a', 'c1']],
  );
  assert.deepEqual(s.plan(['c1'], 1_001, first), [], 'not handed out twice');
  assert.deepEqual(s.heartbeat('c2', true, [], 1_002), [], 'another server is not told');
  assert.deepEqual(s.heartbeat('c1', true, [], 1_003), ['/a'], 'its server is told once');
  assert.deepEqual(s.heartbeat('c1', true, ['/a'], 1_004), [], 'named while it runs: still assigned');
  assert.equal(s.inProgress().length, 1);
});

test('a file whose only damage is a shard on a server being drained waits no delay', () => {
  const s = schedule(20_000);
  s.observeScan(['/damaged', '/draining'], 1_000, new Set(['/draining']));
  assert.deepEqual(
    s.plan(['c1', 'c2'], 1_000, first).map((a) => a.path),
    ['/draining'],
  );
  assert.deepEqual(s.plan(['c1', 'c2'], 20_999, first), [], 'the other waits the delay');
  assert.deepEqual(
    s.plan(['c1', 'c2'], 21_000, first).map((a) => a.path),
    ['/damaged'],
  );
});

test('why a repair did not finish is kept for files still damaged, and forgotten with them', () => {
  const s = schedule(0);
  s.observeScan(['/a'], 0);
  s.noteUnfinished(
    'c1',
    [
      { path: '/a', reason: 'no server' },
      { path: '/healthy', reason: 'stale' },
    ],
    5,
  );
  assert.deepEqual(s.unfinishedRepairs(), [{ path: '/a', reason: 'no server', server: 'c1', atMs: 5 }]);
  s.observeScan([], 10);
  assert.deepEqual(s.unfinishedRepairs(), [], 'repaired: forgotten');
  // Handed out again: the last reason goes; an older attempt's server is not heard over the new one.
  const t = schedule(0);
  t.observeScan(['/b'], 0);
  t.noteUnfinished('c1', [{ path: '/b', reason: 'first try' }], 1);
  assert.deepEqual(
    t.plan(['c2'], 2, first).map((a) => a.server),
    ['c2'],
  );
  assert.deepEqual(t.unfinishedRepairs(), []);
  t.noteUnfinished('c1', [{ path: '/b', reason: 'first try' }], 3);
  assert.deepEqual(t.unfinishedRepairs(), [], "c1's word on a file c2 holds now");
  t.noteUnfinished('c2', [{ path: '/b', reason: 'second try' }], 4);
  assert.equal(t.unfinishedRepairs()[0]?.reason, 'second try');
  t.serverGone('c2');
  assert.deepEqual(t.unfinishedRepairs(), [], 'a dead server says nothing any more');
});

test('limits: repairs at once over the cluster and per server; the least busy server first', () => {
  const s = schedule(0, { maxInFlight: 3, perServer: 2 });
  s.observeScan(['/a', '/b', '/c', '/d', '/e'], 0);
  const made = s.plan(['c1', 'c2'], 0, first);
  assert.equal(made.length, 3, 'at most maxInFlight');
  assert.deepEqual(
    made.map((a) => a.server),
    ['c1', 'c2', 'c1'],
    'spread: the least busy server each time',
  );
  const one = schedule(0, { perServer: 1 });
  one.observeScan(['/a', '/b'], 0);
  assert.equal(one.plan(['c1'], 0, first).length, 1, 'at most perServer on one server');
  assert.equal(one.plan([], 0, first).length, 0, 'no worker, nothing handed out');
});

test('a repair that ends with the file still damaged is handed out again only after a doubling backoff', () => {
  const s = schedule(0, { retryBaseMs: 10_000, retryMaxMs: 25_000 });
  s.observeScan(['/a'], 0);
  s.plan(['c1'], 0, first);
  assert.deepEqual(s.heartbeat('c1', true, [], 0), ['/a']);
  assert.deepEqual(s.heartbeat('c1', true, [], 5), [], 'no longer named: ended');
  assert.equal(s.inProgress().length, 0);
  s.observeScan(['/a'], 6);
  assert.deepEqual(s.plan(['c1'], 10_004, first), [], 'backing off');
  assert.equal(s.plan(['c1'], 10_005, first).length, 1);
  s.heartbeat('c1', true, [], 10_006);
  s.heartbeat('c1', true, [], 10_007); // ended again: the wait doubles
  assert.deepEqual(s.plan(['c1'], 30_006, first), []);
  assert.equal(s.plan(['c1'], 30_007, first).length, 1);
  s.heartbeat('c1', true, [], 30_008);
  s.heartbeat('c1', true, [], 30_009); // the wait is capped
  assert.equal(s.plan(['c1'], 55_009, first).length, 1);
});

test('a walk forgets tracked files it does not name, with their backoff; tracking is bounded', () => {
  const s = schedule(1_000);
  s.observeScan(['/a', '/b'], 0);
  assert.ok(s.isTracked('/a') && s.isTracked('/b'));
  s.observeScan(['/b'], 600);
  assert.equal(s.trackedCount, 1, '/a is repaired (or gone)');
  s.observeScan(['/a', '/b'], 700);
  assert.deepEqual(
    s.plan(['c1'], 1_600, first).map((a) => a.path),
    ['/b'],
    '/a is seen anew: its delay starts again',
  );
  assert.equal(s.plan(['c1'], 1_700, first).length, 1);
  const bounded = schedule(0, { maxTracked: 4, maxInFlight: 4 });
  bounded.observeScan(['/1', '/2', '/3', '/4', '/5', '/6'], 0);
  assert.equal(bounded.trackedCount, 4, 'tracking is bounded');
  bounded.observeScan(['/2', '/3', '/5', '/6'], 1);
  assert.deepEqual(
    ['/1', '/2', '/5', '/6'].map((p) => bounded.isTracked(p)),
    [false, true, true, true],
    'room freed by repaired files goes to the next damaged ones',
  );
});

test('a heartbeat answered late (it waited on a commit) does not end what a later heartbeat handed over', () => {
  const s = schedule(0);
  s.observeScan(['/a'], 0);
  s.plan(['c1'], 0, first);
  assert.deepEqual(s.heartbeat('c1', true, [], 20), ['/a'], 'told in the answer to the heartbeat of t=20');
  s.heartbeat('c1', true, [], 10); // arrived at t=10, its list made before /a was told
  assert.equal(s.inProgress().length, 1, 'still assigned');
  s.heartbeat('c1', true, ['/a'], 30);
  assert.equal(s.inProgress().length, 1);
  s.heartbeat('c1', true, [], 40);
  assert.equal(s.inProgress().length, 0, 'a later heartbeat that does not name it ends it');
});

test("an earlier leader's repairs named in heartbeats are adopted, at most a server's share", () => {
  const s = schedule(0, { perServer: 1 });
  assert.deepEqual(s.heartbeat('c1', true, ['/x', '/y', '/z'], 0), []);
  assert.deepEqual(
    s.inProgress().map((a) => [a.path, a.server]),
    [['/x', 'c1']],
  );
  s.observeScan(['/x'], 1);
  assert.deepEqual(s.plan(['c1', 'c2'], 2, first), [], 'not handed out to another server');
});

test('a dead server or one that stops taking repairs gives its files back; an untold one is withdrawn', () => {
  const s = schedule(0, { undeliveredMs: 30_000 });
  s.observeScan(['/a', '/b'], 0);
  s.plan(['c1', 'c2'], 0, first);
  s.serverGone('c1');
  assert.deepEqual(
    s.inProgress().map((a) => a.server),
    ['c2'],
  );
  assert.deepEqual(s.heartbeat('c2', false, [], 1), [], 'not taking repairs: not told');
  assert.equal(s.inProgress().length, 0);
  const silent = schedule(0, { undeliveredMs: 30_000 });
  silent.observeScan(['/a'], 0);
  silent.plan(['c1'], 0, first);
  assert.deepEqual(silent.plan(['c1', 'c2'], 30_000, first), [], 'still waiting for its heartbeat');
  assert.deepEqual(
    silent.plan(['c2'], 30_001, () => 0).map((a) => a.server),
    ['c2'],
    'withdrawn from the silent server and handed to another',
  );
});

test('property: never more repairs at once than the limits, never one file twice', () => {
  fc.assert(
    fc.property(
      fc.array(
        fc.oneof(
          fc.record({
            kind: fc.constant('scan' as const),
            files: fc.subarray(['/a', '/b', '/c', '/d', '/e']),
          }),
          fc.record({ kind: fc.constant('plan' as const), workers: fc.subarray(['c1', 'c2', 'c3']) }),
          fc.record({
            kind: fc.constant('beat' as const),
            server: fc.constantFrom('c1', 'c2', 'c3'),
            named: fc.subarray(['/a', '/b', '/c', '/d', '/e']),
          }),
          fc.record({ kind: fc.constant('gone' as const), server: fc.constantFrom('c1', 'c2', 'c3') }),
        ),
        { maxLength: 60 },
      ),
      (steps) => {
        const s = schedule(0, { maxInFlight: 2, perServer: 1, retryBaseMs: 1 });
        let now = 0;
        for (const step of steps) {
          now += 7;
          if (step.kind === 'scan') s.observeScan(step.files, now);
          else if (step.kind === 'plan') {
            const before = s.inProgress().length;
            const made = s.plan(step.workers, now, first).length;
            assert.ok(made <= Math.max(0, 2 - before), 'never past maxInFlight');
          } else if (step.kind === 'beat') s.heartbeat(step.server, true, step.named, now);
          else s.serverGone(step.server);
          const running = s.inProgress();
          assert.equal(new Set(running.map((a) => a.path)).size, running.length, 'one file, one server');
          const perServer = new Map<string, number>();
          for (const a of running) perServer.set(a.server, (perServer.get(a.server) ?? 0) + 1);
          for (const n of perServer.values()) assert.ok(n <= 1, 'per server');
        }
      },
    ),
  );
});
