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
import { crc32c } from '../../src/codec/crc32c.js';
import { asIndex, asNodeId, asTerm, type Entry } from '../../src/consensus/index.js';
import { DurableStorage, WalCorruptError } from '../../src/raftnode/durable.js';
import type { WalRecord } from '../../src/wire/gen/types.js';
import { decodeMessage, encodeMessage, type Init } from '../../src/wire/proto.js';
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

/** The log's records, decoded ([u32 length][u32 CRC32C of it][u32 CRC32C of payload][WalRecord], durable.ts). */
function walRecords(dir: string): WalRecord[] {
  const bytes = readFileSync(join(dir, 'raft.log'));
  const records: WalRecord[] = [];
  for (let at = 0; at < bytes.byteLength; ) {
    const length = bytes.readUInt32LE(at);
    records.push(decodeMessage('dogfs.v1.WalRecord', bytes.subarray(at + 12, at + 12 + length)));
    at += 12 + length;
  }
  return records;
}

function writeWal(dir: string, records: readonly Init<WalRecord>[]): void {
  const framed = records.map((r) => {
    const payload = encodeMessage('dogfs.v1.WalRecord', r);
    const header = Buffer.alloc(12);
    header.writeUInt32LE(payload.byteLength, 0);
    header.writeUInt32LE(crc32c(header.subarray(0, 4)), 4);
    header.writeUInt32LE(crc32c(payload), 8);
    return Buffer.concat([header, payload]);
  });
  writeFileSync(join(dir, 'raft.log'), Buffer.concat(framed));
}

/** 2.5 MiB, so a snapshot of its own is written (and checksummed) in several pieces. */
const bigPayload = Buffer.alloc(5 << 19);
for (let i = 0; i < bigPayload.byteLength; i++) bigPayload[i] = (i * 2654435761) >>> 24;

const snapshotWriters = {
  /** A leader's snapshot, installed (written on the event loop). */
  installed: (g: ReturnType<DurableStorage['group']>, data: Buffer) => {
    g.saveSnapshot({ meta: { index: asIndex(2), term: asTerm(1), config: bootstrap.meta.config }, data });
    return Promise.resolve();
  },
  /** One of its own (written in the background). */
  own: (g: ReturnType<DurableStorage['group']>, data: Buffer) =>
    g.saveOwnSnapshot({ meta: { index: asIndex(2), term: asTerm(1), config: bootstrap.meta.config }, data }),
};

/** A closed log of group 1 whose latest snapshot is `data` at index 2, written by `writer`; its file. */
async function logWithSnapshot(
  dir: string,
  writer: keyof typeof snapshotWriters,
  data: Buffer,
): Promise<string> {
  const s = await DurableStorage.open(dir);
  const g = s.group(1);
  g.saveSnapshot(bootstrap);
  g.append([entry(1, 1), entry(1, 2), entry(1, 3)]);
  g.setHardState(hard(1, 1, 3));
  await s.sync();
  await snapshotWriters[writer](g, data);
  await s.close();
  return join(dir, 'snap-1-1-2.bin');
}

for (const writer of ['installed', 'own'] as const) {
  test(`a snapshot file (${writer}) loads when it matches the length and CRC32C its record carries`, async () => {
    const dir = freshDir();
    await logWithSnapshot(dir, writer, bigPayload);
    const named = walRecords(dir).filter((r) => r.snapshotFile !== '');
    assert.deepEqual(
      named.map((r) => [r.snapshotFile, r.snapshotBytes, r.snapshotCrc32c]),
      [['snap-1-1-2.bin', bigPayload.byteLength, crc32c(bigPayload)]],
    );
    const s = await DurableStorage.open(dir);
    try {
      const state = s.group(1).load()!;
      assert.equal(state.snapshot.meta.index, 2);
      assert.ok(bigPayload.equals(state.snapshot.data));
    } finally {
      await s.close();
    }
  });

  test(`a snapshot file (${writer}) with a byte flipped, or cut short, refuses to open, naming it and both values`, async () => {
    const flipped = freshDir();
    const file = await logWithSnapshot(flipped, writer, bigPayload);
    const bytes = readFileSync(file);
    bytes[1_000_000] = (bytes[1_000_000]! ^ 0x01) & 0xff;
    writeFileSync(file, bytes);
    const expected = `${bigPayload.byteLength} bytes with CRC32C 0x${crc32c(bigPayload).toString(16).padStart(8, '0')}`;
    await assert.rejects(DurableStorage.open(flipped), (e: unknown) => {
      assert.ok(e instanceof WalCorruptError);
      assert.equal(e.code, 'CORRUPT');
      assert.match(e.message, /snap-1-1-2\.bin: damaged snapshot/);
      assert.ok(e.message.includes(`the log records ${expected}`), e.message);
      assert.ok(e.message.includes(`the file has ${bigPayload.byteLength} bytes`), e.message);
      return true;
    });

    const truncated = freshDir();
    const cut = await logWithSnapshot(truncated, writer, bigPayload);
    truncateSync(cut, 1 << 20);
    await assert.rejects(DurableStorage.open(truncated), (e: unknown) => {
      assert.ok(e instanceof WalCorruptError);
      assert.equal(e.code, 'CORRUPT');
      assert.ok(e.message.includes(`the log records ${expected}`), e.message);
      assert.ok(e.message.includes(`the file has ${1 << 20} bytes`), e.message);
      return true;
    });
  });
}

test('a record from before snapshots carried a length and CRC32C loads its file unchecked', async () => {
  const dir = freshDir();
  await logWithSnapshot(dir, 'installed', Buffer.from('state@2'));
  // The same log as written before the fields existed: records carrying only the old schema's fields.
  writeWal(
    dir,
    walRecords(dir).map((r) => ({
      group: r.group,
      entries: r.entries,
      hardState: r.hardState,
      snapshot: r.snapshot,
      snapshotFile: r.snapshotFile,
    })),
  );
  assert.ok(walRecords(dir).every((r) => r.snapshotBytes === 0 && r.snapshotCrc32c === 0));
  const s = await DurableStorage.open(dir);
  try {
    const state = s.group(1).load()!;
    assert.equal(state.snapshot.meta.index, 2);
    assert.equal(Buffer.from(state.snapshot.data).toString(), 'state@2');
    assert.deepEqual(
      state.entries.map((e) => e.index),
      [3],
    );
  } finally {
    await s.close();
  }
});

test('zeros after the last record (a file extended by blocks never written) are a torn tail, not corruption', async () => {
  const dir = freshDir();
  const storage = await DurableStorage.open(dir);
  storage.group(1).saveSnapshot(bootstrap);
  storage.group(1).append([entry(1, 1), entry(1, 2)]);
  storage.group(1).setHardState(hard(1, 1, 2));
  await storage.close();
  const synced = statSync(join(dir, 'raft.log')).size;
  appendFileSync(join(dir, 'raft.log'), Buffer.alloc(4096));
  const reopened = await DurableStorage.open(dir);
  const state = reopened.group(1).load();
  assert.deepEqual(
    state?.entries.map((e) => e.index),
    [1, 2],
  );
  assert.deepEqual(state?.hardState, hard(1, 1, 2));
  await reopened.close();
  assert.equal(statSync(join(dir, 'raft.log')).size, synced, 'the zeros are cut away');
  // A non-zero byte among them is still damage, refused as before.
  appendFileSync(
    join(dir, 'raft.log'),
    Buffer.concat([Buffer.alloc(100), Buffer.from([1]), Buffer.alloc(100)]),
  );
  await assert.rejects(DurableStorage.open(dir), WalCorruptError);
});

test('a rewrite of a tail larger than a record may be is written in records replay accepts', async () => {
  const dir = freshDir();
  const storage = await DurableStorage.open(dir, { rewriteThresholdBytes: 70 << 20 });
  const group = storage.group(1);
  group.saveSnapshot(bootstrap);
  // 72 MiB of entries in rounds of 8 MiB (each record well under the 64 MiB limit), no snapshot since:
  // the rewrite that the 70 MiB threshold sets off keeps them all.
  await storage.sync();
  const firstInode = statSync(join(dir, 'raft.log')).ino;
  const data = Buffer.alloc(8192, 7);
  let index = 0;
  for (let round = 0; round < 9; round++) {
    const entries: Entry[] = [];
    for (let i = 0; i < 1024; i++)
      entries.push({ kind: 'normal', term: asTerm(1), index: asIndex(++index), data });
    group.append(entries);
    group.setHardState(hard(1, 1, index));
    await storage.sync();
  }
  assert.notEqual(
    statSync(join(dir, 'raft.log')).ino,
    firstInode,
    'the log was rewritten (renamed into place)',
  );
  await storage.close();
  const reopened = await DurableStorage.open(dir);
  const state = reopened.group(1).load();
  assert.equal(state?.entries.length, index);
  assert.equal(state?.entries.at(-1)?.index, index);
  assert.deepEqual(state?.hardState, hard(1, 1, index));
  await reopened.close();
});
