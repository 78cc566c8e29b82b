/**
 * test/consensus/linearizability — a linearizability checker for the KV model (get/put/compare-and-set),
 * after Wing & Gong with Lowe's memoisation, partitioned per key as Porcupine does (operations on different
 * keys commute, so each key's sub-history is checked on its own).
 *
 * Operations whose outcome is unknown (the client timed out) may take effect at any point after their call
 * or never, and their output is unconstrained. If the history knows a `deadline` for one (e.g. a later
 * command of the same client session completed, after which the session refuses the old one), it took
 * effect by then or never: the search must linearize or drop it before passing that time. The search
 * succeeds once every operation with a known outcome is linearized.
 */

import { type KvInput, type KvOutput, stepKv } from './sim/kv.js';

export interface HistoryOp {
  readonly clientId: string;
  readonly input: KvInput;
  readonly call: number;
  /** undefined: outcome unknown (timed out / crashed before answering). */
  readonly ret: number | undefined;
  readonly output: KvOutput | undefined;
  /** Only for unknown outcomes: the operation took effect before this time or not at all. */
  readonly deadline?: number;
}

export type CheckResult =
  | { readonly ok: true }
  | { readonly ok: false; readonly key: string; readonly ops: readonly HistoryOp[] }
  | { readonly ok: 'unknown'; readonly key: string; readonly reason: string };

interface Node {
  readonly op: number;
  readonly isCall: boolean;
  readonly time: number;
  prev: Node | null;
  next: Node | null;
  match: Node | null;
}

export function checkKvHistory(history: readonly HistoryOp[], maxSteps = 5_000_000): CheckResult {
  const byKey = new Map<string, HistoryOp[]>();
  for (const op of history) {
    const list = byKey.get(op.input.key) ?? [];
    list.push(op);
    byKey.set(op.input.key, list);
  }
  for (const key of [...byKey.keys()].sort()) {
    const ops = dropIrrelevantUnknownWrites(byKey.get(key)!);
    const r = checkPartition(ops, maxSteps);
    if (r === 'unknown') {
      const unknown = ops.filter((o) => o.ret === undefined).length;
      return {
        ok: 'unknown',
        key,
        reason: `search exceeded ${maxSteps} steps (${ops.length} ops, ${unknown} of unknown outcome)`,
      };
    }
    if (!r) return { ok: false, key, ops };
  }
  return { ok: true };
}

/**
 * Unknown-outcome writes make the search exponential, and most are irrelevant. An unknown put or cas whose
 * value nobody ever observed (no get returned it, no cas expected it) can be dropped, i.e. taken not to
 * have happened, unless a known failed cas could have been linearized after it (its failure might need
 * that value in place). Proof sketch: in any linearization containing it, no known get or successful cas
 * falls between it and the next write (each would have to observe its value), so removing it changes no
 * known output. (This needs no uniqueness of values: "nobody observed this value" is about the value.)
 */
export function dropIrrelevantUnknownWrites(ops: readonly HistoryOp[]): HistoryOp[] {
  const observed = new Set<string>();
  for (const o of ops) {
    if (o.input.op === 'get' && typeof o.output === 'string') observed.add(o.output);
    if (o.input.op === 'cas' && o.input.expected !== null) observed.add(o.input.expected);
  }
  const failedCasReturns = ops
    .filter((o) => o.input.op === 'cas' && o.output === false)
    .map((o) => o.ret ?? 0);
  const latestFailedCas = Math.max(-1, ...failedCasReturns);
  return ops.filter((o) => {
    if (o.ret !== undefined || o.input.op === 'get') return true;
    return observed.has(o.input.value) || latestFailedCas > o.call;
  });
}

function outputMatches(expected: KvOutput, actual: KvOutput | undefined): boolean {
  return actual === undefined || expected === actual;
}

function checkPartition(ops: readonly HistoryOp[], maxSteps: number): boolean | 'unknown' {
  // Events sorted by time; at equal times calls come first (overlap is the permissive reading).
  const events: Node[] = [];
  const calls: Node[] = [];
  ops.forEach((op, i) => {
    const call: Node = { op: i, isCall: true, time: op.call, prev: null, next: null, match: null };
    calls.push(call);
    events.push(call);
    const end = op.ret ?? op.deadline;
    if (end !== undefined) {
      if (end < op.call) throw new RangeError(`operation returns before its call: ${JSON.stringify(op)}`);
      const ret: Node = { op: i, isCall: false, time: end, prev: null, next: null, match: call };
      call.match = ret;
      events.push(ret);
    }
  });
  events.sort((a, b) => a.time - b.time || (a.isCall === b.isCall ? a.op - b.op : a.isCall ? -1 : 1));
  const head: Node = { op: -1, isCall: false, time: -1, prev: null, next: null, match: null };
  let prev = head;
  for (const e of events) {
    prev.next = e;
    e.prev = prev;
    prev = e;
  }
  const lift = (call: Node) => {
    call.prev!.next = call.next;
    if (call.next) call.next.prev = call.prev;
    const ret = call.match;
    if (ret) {
      ret.prev!.next = ret.next;
      if (ret.next) ret.next.prev = ret.prev;
    }
  };
  const unlift = (call: Node) => {
    const ret = call.match;
    if (ret) {
      ret.prev!.next = ret;
      if (ret.next) ret.next.prev = ret;
    }
    call.prev!.next = call;
    if (call.next) call.next.prev = call;
  };

  // Depth-first search over linearization prefixes. At each level the candidates are the calls that
  // precede the first pending return (WGL's minimal operations); known-outcome calls are tried before
  // unknown-outcome ones, which keeps a linearizable history with many timed-out writes on the greedy path.
  // Lowe's memo (set of linearized ops + model state) prunes revisits.
  let knownRemaining = ops.filter((o) => o.ret !== undefined).length;
  const linearized = new Uint8Array(ops.length);
  const cache = new Set<string>();
  const keyOf = (s: string | null) => `${linearized.join('')}|${s === null ? '\u0000' : s}`;
  const isKnown = (n: Node) => ops[n.op]!.ret !== undefined;
  /** Actions: linearize a call, or (for an unknown op whose deadline is the next event) drop it. */
  interface Action {
    readonly call: Node;
    readonly drop: boolean;
  }
  const candidates = (): Action[] => {
    const known: Action[] = [];
    const unknown: Action[] = [];
    let e = head.next;
    for (; e?.isCall; e = e.next) (isKnown(e) ? known : unknown).push({ call: e, drop: false });
    if (e !== null && !isKnown(e) && e.match !== null) unknown.push({ call: e.match, drop: true });
    return known.concat(unknown);
  };
  interface Frame {
    readonly cands: Action[];
    i: number;
    /** The call linearized to reach this frame, and the state before it (undefined at the root). */
    readonly via: Node | undefined;
    readonly stateBefore: string | null;
  }
  let state: string | null = null;
  const frames: Frame[] = [{ cands: candidates(), i: 0, via: undefined, stateBefore: null }];
  let steps = 0;
  while (frames.length > 0) {
    if (knownRemaining === 0) return true;
    if (++steps > maxSteps) return 'unknown';
    const frame = frames[frames.length - 1]!;
    const action = frame.cands[frame.i++];
    if (action === undefined) {
      frames.pop();
      const via = frame.via;
      if (via !== undefined) {
        linearized[via.op] = 0;
        if (isKnown(via)) knownRemaining++;
        state = frame.stateBefore;
        unlift(via);
      }
      continue;
    }
    const cand = action.call;
    const op = ops[cand.op]!;
    const { next, output } = action.drop ? { next: state, output: undefined } : stepKv(state, op.input);
    if (!action.drop && !outputMatches(output as KvOutput, op.output)) continue;
    linearized[cand.op] = 1;
    const key = keyOf(next);
    if (cache.has(key)) {
      linearized[cand.op] = 0;
      continue;
    }
    cache.add(key);
    if (isKnown(cand)) knownRemaining--;
    const before = state;
    state = next;
    lift(cand);
    frames.push({ cands: candidates(), i: 0, via: cand, stateBefore: before });
  }
  return false;
}

/** Compact rendering of a partition for failure messages. */
export function describeOps(ops: readonly HistoryOp[]): string {
  return ops
    .map(
      (o) =>
        `${o.clientId} ${JSON.stringify(o.input)} -> ${JSON.stringify(o.output)} [${o.call}, ${o.ret ?? '?'}]`,
    )
    .join('\n');
}
