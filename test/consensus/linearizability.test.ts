import assert from 'node:assert/strict';
import { test } from 'node:test';
import fc from 'fast-check';
import { checkKvHistory, dropIrrelevantUnknownWrites, type HistoryOp } from './linearizability.js';
import { type KvInput, stepKv } from './sim/kv.js';

const op = (
  clientId: string,
  input: KvInput,
  call: number,
  ret: number | undefined,
  output?: HistoryOp['output'],
): HistoryOp => ({
  clientId,
  input,
  call,
  ret,
  output: ret === undefined ? undefined : output,
});
const put = (key: string, value: string) => ({ op: 'put', key, value }) as const;
const get = (key: string) => ({ op: 'get', key }) as const;
const cas = (key: string, expected: string | null, value: string) =>
  ({ op: 'cas', key, expected, value }) as const;

test('linearizable: sequential history, and overlapping operations that can be ordered', () => {
  assert.deepEqual(checkKvHistory([op('a', put('x', '1'), 0, 1, null), op('b', get('x'), 2, 3, '1')]), {
    ok: true,
  });
  // The read overlaps the write, so it may see either value.
  for (const seen of ['1', null]) {
    assert.deepEqual(checkKvHistory([op('a', put('x', '1'), 0, 10, null), op('b', get('x'), 5, 6, seen)]), {
      ok: true,
    });
  }
  assert.deepEqual(
    checkKvHistory([
      op('a', cas('x', null, '1'), 0, 4, true),
      op('b', cas('x', null, '2'), 1, 5, false),
      op('c', get('x'), 6, 7, '1'),
    ]),
    { ok: true },
  );
});

test('not linearizable: a stale read after a completed write, a lost write, two winning CAS', () => {
  const stale = checkKvHistory([op('a', put('x', '1'), 0, 1, null), op('b', get('x'), 2, 3, null)]);
  assert.equal(stale.ok, false);
  const lost = checkKvHistory([
    op('a', put('x', '1'), 0, 1, null),
    op('a', put('x', '2'), 2, 3, null),
    op('b', get('x'), 4, 5, '1'),
  ]);
  assert.equal(lost.ok, false);
  const twoWinners = checkKvHistory([
    op('a', cas('x', null, '1'), 0, 4, true),
    op('b', cas('x', null, '2'), 1, 5, true),
  ]);
  assert.equal(twoWinners.ok, false);
  if (twoWinners.ok === false) assert.equal(twoWinners.key, 'x');
});

test('unknown outcomes: a timed-out write may take effect late or never, but not before its call', () => {
  const late = [
    op('a', put('x', '1'), 0, undefined),
    op('b', get('x'), 5, 6, null),
    op('b', get('x'), 7, 8, '1'),
  ];
  assert.deepEqual(checkKvHistory(late), { ok: true }, 'took effect after the first read');
  const never = [op('a', put('x', '1'), 0, undefined), op('b', get('x'), 5, 6, null)];
  assert.deepEqual(checkKvHistory(never), { ok: true }, 'never took effect');
  const early = [op('b', get('x'), 0, 1, '1'), op('a', put('x', '1'), 2, undefined)];
  assert.equal(checkKvHistory(early).ok, false, 'a read cannot see a write that was not yet called');
  // An unobserved unknown write is needed to explain a failed CAS, so it must not be dropped.
  const needed = [
    op('a', put('x', 'p'), 0, 1, null),
    op('c', put('x', 'u'), 2, undefined),
    op('b', cas('x', 'p', 'q'), 3, 4, false),
  ];
  assert.equal(dropIrrelevantUnknownWrites(needed).length, 3);
  assert.deepEqual(checkKvHistory(needed), { ok: true });
  assert.equal(checkKvHistory(needed.filter((o) => o.clientId !== 'c')).ok, false);
});

test('keys are checked independently', () => {
  const h = [
    op('a', put('x', '1'), 0, 1, null),
    op('b', put('y', '2'), 0, 1, null),
    op('c', get('y'), 2, 3, null),
  ];
  const r = checkKvHistory(h);
  assert.equal(r.ok, false);
  if (r.ok === false) assert.equal(r.key, 'y');
});

test('property: any history produced by a sequential execution with widened intervals is linearizable', () => {
  const inputArb = fc.oneof(
    fc.record({ op: fc.constant('get' as const), key: fc.constantFrom('x', 'y') }),
    fc.record({
      op: fc.constant('put' as const),
      key: fc.constantFrom('x', 'y'),
      value: fc.constantFrom('1', '2', '3'),
    }),
    fc.record({
      op: fc.constant('cas' as const),
      key: fc.constantFrom('x', 'y'),
      expected: fc.constantFrom(null, '1', '2'),
      value: fc.constantFrom('1', '2', '3'),
    }),
  );
  fc.assert(
    fc.property(
      fc.array(fc.tuple(inputArb, fc.nat(5), fc.nat(5), fc.boolean()), { maxLength: 14 }),
      (steps) => {
        const state = new Map<string, string | null>();
        const history: HistoryOp[] = steps.map(([input, before, after, timedOut], i) => {
          const { next, output } = stepKv(state.get(input.key) ?? null, input);
          state.set(input.key, next);
          // Linearization point at 10*i; the call and return are widened around it.
          const call = 10 * i - before;
          const ret = timedOut && input.op !== 'get' ? undefined : 10 * i + after;
          return op(`c${i}`, input, call, ret, output);
        });
        return checkKvHistory(history).ok === true;
      },
    ),
    { numRuns: 300, seed: 7 },
  );
});

test('unknown outcome with a deadline: it took effect before the deadline or never', () => {
  const late: HistoryOp = { ...op('a', put('x', '1'), 0, undefined), deadline: 5 };
  assert.deepEqual(checkKvHistory([late, op('b', get('x'), 10, 11, '1')]), { ok: true });
  assert.deepEqual(checkKvHistory([late, op('b', get('x'), 10, 11, null)]), { ok: true }, 'never happened');
  assert.deepEqual(
    checkKvHistory([late, op('b', get('x'), 2, 3, null), op('b', get('x'), 10, 11, '1')]),
    { ok: true },
    'happened between 3 and 5',
  );
  assert.equal(
    checkKvHistory([late, op('b', get('x'), 6, 7, null), op('b', get('x'), 10, 11, '1')]).ok,
    false,
    'cannot take effect after its deadline',
  );
});
