/**
 * Crash-point property tests for the durable log (src/raftnode/durable.ts): whatever byte a crash cuts the
 * last write at, reopening yields exactly the state after some whole number of the records in that write
 * (never a partial record, never less than what the previous sync made durable); and a damaged record
 * with intact records after it is refused instead of being silently dropped.
 */

import assert from 'node:assert/strict';
import { mkdirSync, readFileSync, statSync, truncateSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, test } from 'node:test';
import fc from 'fast-check';
import { asIndex, asNodeId, asTerm, type Entry, type HardState } from '../../src/consensus/index.js';
import { DurableStorage, WalCorruptError } from '../../src/raftnode/durable.js';
import { tempDir } from '../helpers/index.js';

const root = tempDir('dogfs-wal-crash-');
after(() => root.remove());
let dirs = 0;
const freshDir = () => {
  const dir = join(root.path, String(++dirs));
  mkdirSync(dir, { recursive: true });
  return dir;
};

const bootstrap = {
  meta: { index: asIndex(0), term: asTerm(0), config: { voters: [asNodeId(1)], learners: [] } },
  data: new Uint8Array(0),
};

type Op =
  | {
      readonly kind: 'append';
      readonly group: number;
      readonly back: number;
      readonly count: number;
      readonly size: number;
    }
  | { readonly kind: 'hardState'; readonly group: number }
  | { readonly kind: 'sync' };

const GROUPS = [0, 1, 2];

interface GroupModel {
  entries: Entry[];
  hardState: HardState;
  term: number;
}

type Model = Map<number, GroupModel>;

const snapshotOf = (m: Model): string =>
  JSON.stringify(
    [...m].map(([g, s]) => [
      g,
      s.hardState,
      s.entries.map((e) => [e.index, e.term, e.kind === 'normal' ? e.data.byteLength : 0]),
    ]),
  );

function applyOp(model: Model, op: Exclude<Op, { kind: 'sync' }>): Entry[] | HardState {
  const g = model.get(op.group)!;
  if (op.kind === 'hardState') {
    g.term++;
    g.hardState = { term: asTerm(g.term), vote: asNodeId(1), commit: asIndex(0) };
    return g.hardState;
  }
  // Append after a possibly truncated suffix (a conflict), as a follower would.
  const last = g.entries.length;
  const first = Math.max(1, last + 1 - op.back);
  g.term++;
  const fresh: Entry[] = Array.from({ length: op.count }, (_, i) => ({
    kind: 'normal',
    index: asIndex(first + i),
    term: asTerm(g.term),
    data: new Uint8Array(op.size).fill(i & 0xff),
  }));
  g.entries = g.entries.filter((e) => e.index < first).concat(fresh);
  return fresh;
}

const opArb: fc.Arbitrary<Op> = fc.oneof(
  fc.record({
    kind: fc.constant('append' as const),
    group: fc.constantFrom(...GROUPS),
    back: fc.nat(3),
    count: fc.integer({ min: 1, max: 4 }),
    size: fc.integer({ min: 0, max: 300 }),
  }),
  fc.record({ kind: fc.constant('hardState' as const), group: fc.constantFrom(...GROUPS) }),
  fc.constant({ kind: 'sync' as const }),
);

function loaded(s: DurableStorage): Model {
  const m: Model = new Map();
  for (const g of GROUPS) {
    const st = s.group(g).load();
    assert.ok(st, `group ${g} lost its bootstrap state`);
    m.set(g, { entries: [...st.entries], hardState: st.hardState, term: 0 });
  }
  return m;
}

test('property: a crash tearing the last write at any byte leaves a whole-record prefix of it, never less than the last sync', async () => {
  await fc.assert(
    fc.asyncProperty(
      fc.array(opArb, { minLength: 1, maxLength: 25 }),
      fc.double({ min: 0, max: 1, noNaN: true }),
      async (ops, cut) => {
        const dir = freshDir();
        const s = await DurableStorage.open(dir);
        const model: Model = new Map();
        for (const g of GROUPS) {
          s.group(g).saveSnapshot(bootstrap);
          const hs: HardState = { term: asTerm(0), vote: asNodeId(0), commit: asIndex(0) };
          s.group(g).setHardState(hs);
          model.set(g, { entries: [], hardState: hs, term: 0 });
        }
        await s.sync();
        // Everything up to the last 'sync' op is durable; the ops after it form the final, torn write.
        const lastSync = ops.map((o) => o.kind).lastIndexOf('sync');
        for (const op of ops.slice(0, lastSync + 1)) {
          if (op.kind === 'sync') await s.sync();
          else applyGroup(s, op, applyOp(model, op));
        }
        const durableSize = statSync(join(dir, 'raft.log')).size;
        const candidates = [snapshotOf(model)];
        for (const op of ops.slice(lastSync + 1)) {
          if (op.kind === 'sync') continue;
          applyGroup(s, op, applyOp(model, op));
          candidates.push(snapshotOf(model));
        }
        await s.sync(); // the final write reaches the file ...
        const fullSize = statSync(join(dir, 'raft.log')).size;
        truncateSync(join(dir, 'raft.log'), durableSize + Math.floor(cut * (fullSize - durableSize))); // ... torn
        const reopened = await DurableStorage.open(dir);
        const got = snapshotOf(loaded(reopened));
        await reopened.close();
        // The "crashed" storage's file handle, released (its own last sync lands in a log nobody reads).
        await s.close();
        assert.ok(candidates.includes(got), `reopened state is not a whole-record prefix of the last write`);
        if (cut === 1) assert.equal(got, candidates[candidates.length - 1]);
      },
    ),
    { numRuns: 40, seed: 11 },
  );
});

function applyGroup(s: DurableStorage, op: Exclude<Op, { kind: 'sync' }>, result: Entry[] | HardState): void {
  if (op.kind === 'hardState') s.group(op.group).setHardState(result as HardState);
  else s.group(op.group).append(result as Entry[]);
}

// Any damaged byte of a record that good records follow — its length (which has its own checksum since
// this property found that a grown length passed for a torn tail), either checksum, or the payload — is
// refused, never silently truncated.
test('property: one damaged byte (length, checksum or payload) before the last record is refused, not silently truncated', async () => {
  const dir = freshDir();
  const s = await DurableStorage.open(dir);
  s.group(0).saveSnapshot(bootstrap);
  s.group(0).setHardState({ term: asTerm(1), vote: asNodeId(1), commit: asIndex(0) });
  for (let i = 1; i <= 6; i++) {
    s.group(0).append([
      { kind: 'normal', index: asIndex(i), term: asTerm(1), data: new Uint8Array(40).fill(i) },
    ]);
    await s.sync();
  }
  await s.close();
  const log = join(dir, 'raft.log');
  const pristine = readFileSync(log);
  // Find record boundaries to know where the last record begins.
  const starts: number[] = [];
  for (let off = 0; off < pristine.byteLength; off += 12 + pristine.readUInt32LE(off)) starts.push(off);
  const lastStart = starts[starts.length - 1]!;
  const damageable: number[] = [];
  for (const start of starts.slice(0, -1)) {
    const end = start + 12 + pristine.readUInt32LE(start);
    for (let b = start; b < end; b++) damageable.push(b); // length, both CRCs and the payload
  }
  assert.ok(damageable.length > 0 && damageable.every((b) => b < lastStart));
  await fc.assert(
    fc.asyncProperty(fc.constantFrom(...damageable), fc.integer({ min: 1, max: 255 }), async (at, xor) => {
      const damaged = Buffer.from(pristine);
      damaged[at] = damaged[at]! ^ xor;
      writeFileSync(log, damaged);
      await assert.rejects(DurableStorage.open(dir), (e: unknown) => e instanceof WalCorruptError);
    }),
    { numRuns: 60, seed: 5 },
  );
  writeFileSync(log, pristine);
  const ok = await DurableStorage.open(dir);
  assert.equal(ok.group(0).load()?.entries.length, 6);
  await ok.close();
});
