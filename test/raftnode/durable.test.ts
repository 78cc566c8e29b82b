import assert from 'node:assert/strict';
import {
  appendFileSync,
  mkdirSync,
  readdirSync,
  readFileSync,
  rmSync,
  statSync,
  truncateSync,
  writeFileSync,
} from 'node:fs';
import { join } from 'node:path';
import { after, test } from 'node:test';
import { asIndex, asNodeId, asTerm, type Entry } from '../../src/consensus/index.js';
import { DurableStorage, WalCorruptError } from '../../src/raftnode/durable.js';
import { tempDir } from '../helpers/index.js';

const root = tempDir('dogfs-wal-');
after(() => root.remove());
let n = 0;
const freshDir = () => {
  const dir = join(root.path, String(++n));
  mkdirSync(dir, { recursive: true });
  return dir;
};

const entry = (term: number, index: number, text = `e${index}`): Entry => ({
  kind: 'normal',
  term: asTerm(term),
  index: asIndex(index),
  data: Buffer.from(text),
});
const hard = (term: number, vote: number, commit: number) => ({
  term: asTerm(term),
  vote: asNodeId(vote),
  commit: asIndex(commit),
});
const bootstrap = {
  meta: { index: asIndex(0), term: asTerm(0), config: { voters: [asNodeId(1)], learners: [] } },
  data: new Uint8Array(0),
};
/** A snapshot at `index` (term 1) whose state is `text`. */
const snapshotAt = (index: number, text: string) => ({
  meta: { index: asIndex(index), term: asTerm(1), config: bootstrap.meta.config },
  data: Buffer.from(text),
});

test('what was synced survives a reopen, for every group, and what was not synced is gone', async () => {
  const dir = freshDir();
  const s = await DurableStorage.open(dir);
  for (const g of [0, 1, 2]) {
    const group = s.group(g);
    group.saveSnapshot(bootstrap);
    group.append([entry(1, 1), entry(1, 2)]);
    group.setHardState(hard(1, 1, 2));
  }
  await s.sync();
  s.group(1).append([entry(1, 3)]); // staged, never synced: a crash loses it
  // Simulate a crash: drop the handle without sync (close would sync).
  const reopened = await DurableStorage.open(dir);
  for (const g of [0, 1, 2]) {
    const state = reopened.group(g).load();
    assert.ok(state);
    assert.deepEqual(state.hardState, hard(1, 1, 2));
    assert.deepEqual(
      state.entries.map((e) => e.index),
      [1, 2],
    );
  }
  await reopened.close();
  await s.close(); // the "crashed" storage's handle, released after the checks
});

test('sync writes every staged record before it returns, on the event loop', async () => {
  const dir = freshDir();
  const s = await DurableStorage.open(dir);
  const group = s.group(0);
  group.saveSnapshot(bootstrap);
  group.append([entry(1, 1), entry(1, 2)]);
  group.setHardState(hard(1, 1, 2));
  const before = statSync(join(dir, 'raft.log')).size;
  const synced = s.sync();
  // Nothing has run since the call (no await): the bytes are in the file already.
  const written = statSync(join(dir, 'raft.log')).size;
  await synced;
  assert.ok(written > before, `the log grew from ${before} to ${written} bytes before sync returned`);
  const reopened = await DurableStorage.open(dir);
  try {
    assert.deepEqual(
      reopened
        .group(0)
        .load()
        ?.entries.map((e) => e.index),
      [1, 2],
    );
  } finally {
    await reopened.close();
    await s.close();
  }
});

test('a conflicting append replaces the suffix; a snapshot drops what it covers', async () => {
  const dir = freshDir();
  const s = await DurableStorage.open(dir);
  const g = s.group(5);
  g.saveSnapshot(bootstrap);
  g.append([entry(1, 1), entry(1, 2), entry(1, 3)]);
  g.append([entry(2, 2, 'new')]);
  g.setHardState(hard(2, 0, 1));
  await s.sync();
  const peek = async (): Promise<ReturnType<ReturnType<DurableStorage['group']>['load']>> => {
    const other = await DurableStorage.open(dir);
    try {
      return other.group(5).load();
    } finally {
      await other.close();
    }
  };
  let state = (await peek())!;
  assert.deepEqual(
    state.entries.map((e) => [e.index, e.term]),
    [
      [1, 1],
      [2, 2],
    ],
  );
  g.saveSnapshot(snapshotAt(1, 'state@1'));
  await s.close();
  state = (await peek())!;
  assert.equal(state.snapshot.meta.index, 1);
  assert.equal(Buffer.from(state.snapshot.data).toString(), 'state@1');
  assert.deepEqual(
    state.entries.map((e) => e.index),
    [2],
  );
});

test('a snapshot installed from a leader over a diverged log replaces all of it, also at the next open', async () => {
  const dir = freshDir();
  const s = await DurableStorage.open(dir);
  const g = s.group(6);
  g.saveSnapshot(bootstrap);
  // An old leader's log: entries 3 and 4 of term 3 were never committed.
  g.append([entry(1, 1), entry(1, 2), entry(3, 3), entry(3, 4)]);
  g.setHardState(hard(3, 1, 2));
  await s.sync();
  // The new leader (term 4) had compacted past them: it sends its snapshot at index 3, term 4.
  const installed = {
    meta: { index: asIndex(3), term: asTerm(4), config: bootstrap.meta.config },
    data: Buffer.from('state@3'),
  };
  g.saveSnapshot(installed);
  g.setHardState(hard(4, 0, 3));
  await s.close();
  const reopened = await DurableStorage.open(dir);
  try {
    const state = reopened.group(6).load()!;
    assert.equal(state.snapshot.meta.index, 3);
    assert.equal(state.snapshot.meta.term, 4);
    // Entry 4 of term 3 would follow a snapshot of term 4: a log the core refuses to start from.
    assert.deepEqual(state.entries, []);
  } finally {
    await reopened.close();
  }
});

test('an append overlapping the log replaces from its first index, at the head, in the middle, or past a snapshot', async () => {
  const s = await DurableStorage.open(freshDir());
  try {
    const g = s.group(1);
    g.saveSnapshot(bootstrap);
    g.setHardState(hard(1, 0, 0));
    const shape = () => g.load()!.entries.map((e) => `${e.index}@${e.term}`);
    g.append([entry(1, 1), entry(1, 2), entry(1, 3), entry(1, 4)]);
    g.append([entry(1, 5)]);
    assert.deepEqual(shape(), ['1@1', '2@1', '3@1', '4@1', '5@1']);
    g.append([entry(2, 3), entry(2, 4)]);
    assert.deepEqual(shape(), ['1@1', '2@1', '3@2', '4@2']);
    g.append([entry(3, 1)]);
    assert.deepEqual(shape(), ['1@3']);
    g.append([entry(3, 2), entry(3, 3), entry(3, 4)]);
    g.saveSnapshot({
      meta: { index: asIndex(2), term: asTerm(3), config: bootstrap.meta.config },
      data: Buffer.from('state@2'),
    });
    assert.deepEqual(shape(), ['3@3', '4@3']);
    g.append([entry(4, 3)]);
    assert.deepEqual(shape(), ['3@4']);
    g.append([entry(4, 4), entry(4, 5)]);
    assert.deepEqual(shape(), ['3@4', '4@4', '5@4']);
  } finally {
    await s.close();
  }
});

test('a torn tail is truncated; corruption in the middle is refused loudly', async () => {
  const dir = freshDir();
  const s = await DurableStorage.open(dir);
  const g = s.group(1);
  g.saveSnapshot(bootstrap);
  g.setHardState(hard(1, 1, 0));
  await s.sync();
  g.append([entry(1, 1)]);
  await s.sync();
  g.append([entry(1, 2)]);
  await s.close();
  const log = join(dir, 'raft.log');
  const full = statSync(log).size;

  truncateSync(log, full - 3); // the last record cut short by a crash
  const recovered = await DurableStorage.open(dir);
  assert.deepEqual(
    recovered
      .group(1)
      .load()!
      .entries.map((e) => e.index),
    [1],
  );
  await recovered.close();
  assert.ok(statSync(log).size < full - 3, 'the torn bytes are gone from the file');

  appendFileSync(log, Buffer.from([1, 2, 3])); // garbage after good records: a torn header
  await (await DurableStorage.open(dir)).close();

  const bytes = readFileSync(log);
  bytes[16] = (bytes[16]! ^ 0xff) & 0xff; // flip a byte in the first record's payload, good records follow it
  writeFileSync(log, bytes);
  await assert.rejects(
    DurableStorage.open(dir),
    (e: unknown) => e instanceof WalCorruptError && /checksum mismatch/.test(e.message),
  );
});

test('a snapshot of its own is written in the background: staged once durable, dropped if a newer one came meanwhile', async () => {
  const dir = freshDir();
  const s = await DurableStorage.open(dir);
  const g = s.group(3);
  g.saveSnapshot(bootstrap);
  g.append([entry(1, 1), entry(1, 2), entry(1, 3), entry(1, 4)]);
  g.setHardState(hard(1, 1, 4));
  await s.sync();
  const snapshotFiles = () => readdirSync(dir).filter((f) => f.startsWith('snap-'));

  // Until it is written the log keeps what it covers; once written it is staged like any snapshot.
  const writing = g.saveOwnSnapshot(snapshotAt(2, 'state@2'));
  assert.deepEqual(
    g.load()!.entries.map((e) => e.index),
    [1, 2, 3, 4],
    'nothing dropped before the snapshot is durable',
  );
  await writing;
  assert.deepEqual(
    g.load()!.entries.map((e) => e.index),
    [3, 4],
  );
  await s.sync();
  assert.deepEqual(snapshotFiles(), ['snap-3-1-2.bin']);

  // A newer snapshot (the leader's) staged while an older one of its own is written: the older is dropped.
  const older = g.saveOwnSnapshot(snapshotAt(3, 'state@3'));
  g.saveSnapshot(snapshotAt(4, 'state@4'));
  await older;
  await s.close();
  const again = await DurableStorage.open(dir);
  const state = again.group(3).load()!;
  assert.equal(state.snapshot.meta.index, 4);
  assert.equal(Buffer.from(state.snapshot.data).toString(), 'state@4');
  assert.deepEqual(state.entries, []);
  assert.deepEqual(snapshotFiles(), ['snap-3-1-4.bin'], 'the dropped and the replaced files are gone');
  await again.close();
});

test('a log that names superseded snapshots opens again and again after their files are collected', async () => {
  // Two snapshots leave two records in the log; opening it collects the first one's file (superseded),
  // while its record stays until the log is next rewritten. A second open must not need that file.
  const dir = freshDir();
  const s = await DurableStorage.open(dir);
  const g = s.group(1);
  g.saveSnapshot(bootstrap);
  g.append([entry(1, 1), entry(1, 2), entry(1, 3)]);
  g.setHardState(hard(1, 1, 3));
  g.saveSnapshot(snapshotAt(1, 'state@1'));
  await g.saveOwnSnapshot(snapshotAt(2, 'state@2'));
  await s.close();
  for (let open = 1; open <= 3; open++) {
    const again = await DurableStorage.open(dir);
    const state = again.group(1).load()!;
    assert.equal(state.snapshot.meta.index, 2, `open ${open}`);
    assert.equal(Buffer.from(state.snapshot.data).toString(), 'state@2');
    assert.deepEqual(
      state.entries.map((e) => e.index),
      [3],
    );
    assert.deepEqual(
      readdirSync(dir).filter((f) => f.startsWith('snap-')),
      ['snap-1-1-2.bin'],
    );
    await again.close();
  }
});

test('a log whose latest snapshot file is missing refuses to open, naming it', async () => {
  const dir = freshDir();
  const s = await DurableStorage.open(dir);
  const g = s.group(1);
  g.saveSnapshot(bootstrap);
  g.append([entry(1, 1)]);
  g.saveSnapshot(snapshotAt(1, 'state@1'));
  await s.close();
  rmSync(join(dir, 'snap-1-1-1.bin'));
  await assert.rejects(DurableStorage.open(dir), (e: unknown) => {
    return e instanceof WalCorruptError && /snap-1-1-1\.bin/.test(e.message);
  });
});
