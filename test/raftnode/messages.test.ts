import assert from 'node:assert/strict';
import { test } from 'node:test';
import { asIndex, asNodeId, asTerm, type Entry, type Message } from '../../src/consensus/index.js';
import {
  encodeBatchFrame,
  encodeWireMessage,
  entryToWire,
  messageFromWire,
  messageToWire,
  spliceEntries,
  splitBatches,
  TAG_WAL_RECORD_ENTRIES,
} from '../../src/raftnode/messages.js';
import { encodeFrame, MAX_FRAME_BYTES } from '../../src/raftnode/transport.js';
import { decodeMessage, encodeMessage } from '../../src/wire/proto.js';

const n = asNodeId;
const t = asTerm;
const i = asIndex;

function normal(index: number, bytes: number): Entry {
  const data = new Uint8Array(bytes);
  for (let b = 0; b < bytes; b++) data[b] = (index * 31 + b) & 0xff;
  return { kind: 'normal', term: t(7), index: i(index), data };
}

const config: Entry = {
  kind: 'config',
  term: t(7),
  index: i(13),
  config: { voters: [n(1), n(2), n(3)], learners: [n(4)] },
};

/** One message of every shape, appends with entries whose lengths need 1, 2 and 3 varint bytes. */
const MESSAGES: Message[] = [
  { type: 'preVote', from: n(1), to: n(2), term: t(8), lastIndex: i(9), lastTerm: t(7), transfer: true },
  { type: 'voteResp', from: n(2), to: n(1), term: t(8), granted: true },
  {
    type: 'append',
    from: n(1),
    to: n(2),
    term: t(7),
    prevIndex: i(9),
    prevTerm: t(6),
    entries: [normal(10, 0), normal(11, 100), normal(12, 300), config, normal(14, 20_000)],
    commit: i(9),
  },
  {
    type: 'append',
    from: n(1),
    to: n(3),
    term: t(7),
    prevIndex: i(14),
    prevTerm: t(7),
    entries: [],
    commit: i(14),
  },
  {
    type: 'appendResp',
    from: n(2),
    to: n(1),
    term: t(7),
    reject: true,
    index: i(9),
    hintIndex: i(5),
    hintTerm: t(3),
  },
  { type: 'heartbeat', from: n(1), to: n(2), term: t(7), commit: i(14), readSeq: 2 ** 40 },
  { type: 'heartbeatResp', from: n(2), to: n(1), term: t(7), readSeq: 3 },
  {
    type: 'snapshotChunk',
    from: n(1),
    to: n(2),
    term: t(7),
    meta: { index: i(100), term: t(6), config: { voters: [n(1), n(2)], learners: [] } },
    totalBytes: 5,
    offset: 2,
    data: new Uint8Array([1, 2, 3]),
  },
  {
    type: 'snapshotChunkResp',
    from: n(2),
    to: n(1),
    term: t(7),
    snapshotIndex: i(100),
    nextOffset: 0,
    reject: true,
  },
  { type: 'timeoutNow', from: n(1), to: n(2), term: t(7) },
  { type: 'readIndexResp', from: n(1), to: n(2), term: t(7), ctx: '2:17', index: i(14), reject: false },
];

/** Bytes as plain arrays (Buffer's toJSON runs before a replacer sees it, so both forms are mapped). */
function plain(value: unknown): unknown {
  return JSON.parse(
    JSON.stringify(value, (_key, v: unknown) => {
      if (v instanceof Uint8Array) return [...v];
      if (typeof v === 'object' && v !== null && (v as { type?: unknown }).type === 'Buffer')
        return (v as { data: number[] }).data;
      return v;
    }),
  );
}

test('a spliced batch frame is the same protobuf as protobufjs encodes, and decodes to the same messages', () => {
  for (const fromNode of [1, 300, 2 ** 40]) {
    const spliced = encodeBatchFrame(
      fromNode,
      MESSAGES.map((m) => encodeWireMessage(5, m)),
    );
    const reference = encodeFrame({ fromNode, messages: MESSAGES.map((m) => messageToWire(5, m)) });
    assert.equal(spliced.readUInt32BE(0), spliced.byteLength - 4, 'frame length');
    const decoded = decodeMessage('dogfs.v1.RaftBatch', spliced.subarray(4));
    assert.deepEqual(decoded, decodeMessage('dogfs.v1.RaftBatch', reference.subarray(4)));
    assert.equal(decoded.fromNode, fromNode);
    // Decoded bytes fields are Buffers over the frame: compare them as plain bytes.
    assert.deepEqual(
      plain(decoded.messages.map((w) => [w.group, messageFromWire(w)])),
      plain(MESSAGES.map((m) => [5, m])),
    );
  }
});

test('entries written by hand are byte for byte what protobufjs writes (WAL record order)', () => {
  const entries: Entry[] = [
    { kind: 'normal', term: t(0), index: i(0), data: new Uint8Array(0) },
    normal(1, 1),
    normal(127, 127),
    normal(128, 128),
    normal(2 ** 40, 20_000),
    config,
    { kind: 'normal', term: t(2 ** 33), index: i(16_384), data: new Uint8Array([0]) },
  ];
  for (const group of [0, 1, 300]) {
    const head = encodeMessage('dogfs.v1.WalRecord', { group });
    assert.deepEqual(
      spliceEntries(0, head, TAG_WAL_RECORD_ENTRIES, entries),
      Buffer.from(encodeMessage('dogfs.v1.WalRecord', { group, entries: entries.map(entryToWire) })),
    );
  }
});

test('an entry whose empty data field was left out (as proto3 senders do) decodes to empty data and is stored', () => {
  const append = messageToWire(1, MESSAGES.find((m) => m.type === 'append')!);
  // protobufjs omits an unset field: this entry's bytes carry term and index only (08 06 10 0a).
  const wire = { ...append, entries: [{ term: 6, index: 10 }] };
  const decoded = messageFromWire(
    decodeMessage('dogfs.v1.RaftMessage', encodeMessage('dogfs.v1.RaftMessage', wire)),
  );
  assert.ok(decoded.type === 'append');
  const entry = decoded.entries[0]!;
  assert.ok(entry.kind === 'normal' && entry.data instanceof Uint8Array && entry.data.length === 0);
  const head = encodeMessage('dogfs.v1.WalRecord', { group: 1 });
  assert.deepEqual(
    spliceEntries(0, head, TAG_WAL_RECORD_ENTRIES, decoded.entries),
    Buffer.from(encodeMessage('dogfs.v1.WalRecord', { group: 1, entries: decoded.entries.map(entryToWire) })),
  );
});

test('an append whose entries are not what a leader sends is refused before it reaches the core', () => {
  const good = MESSAGES.find((m) => m.type === 'append' && m.entries.length > 0)!;
  assert.ok(good.type === 'append');
  const roundTrip = (m: Message) =>
    messageFromWire(
      decodeMessage('dogfs.v1.RaftMessage', encodeMessage('dogfs.v1.RaftMessage', messageToWire(1, m))),
    );
  assert.doesNotThrow(() => roundTrip(good));
  const variants: [string, Entry[]][] = [
    ['a gap in the indexes', [normal(10, 1), normal(12, 1)]],
    ['not following prevIndex', [normal(11, 1)]],
    [
      'a term going back',
      [
        { ...normal(10, 1), term: t(7) },
        { ...normal(11, 1), term: t(6) },
      ],
    ],
    ['a term below prevTerm', [{ ...normal(10, 1), term: t(5) }]],
    ['a term above the message', [{ ...normal(10, 1), term: t(8) }]],
  ];
  for (const [what, entries] of variants) {
    assert.throws(
      () => roundTrip({ ...good, entries }),
      (error: Error & { code?: string }) => error.code === 'INVALID_ARGUMENT',
      what,
    );
  }
});

test('batches are cut by bytes too, so a catching-up follower is not sent a frame the transport drops', () => {
  // 20 appends of 256 entries of 4 KiB (~1 MiB each): what one round sends a follower in the replicate
  // state with a 16 MiB window. In one batch: a frame of ~21 MiB, over MAX_FRAME_BYTES.
  const appends: Uint8Array[] = [];
  for (let k = 0; k < 20; k++) {
    const entries = Array.from({ length: 256 }, (_, j) => normal(k * 256 + j + 1, 4096));
    appends.push(
      encodeWireMessage(1, {
        type: 'append',
        from: n(1),
        to: n(2),
        term: t(3),
        prevIndex: i(k * 256),
        prevTerm: t(3),
        entries,
        commit: i(0),
      }),
    );
  }
  const heartbeat = encodeWireMessage(0, MESSAGES[0]!);
  const messages = [heartbeat, ...appends];
  const batches = splitBatches(messages, 4096, MAX_FRAME_BYTES - 64 * 1024);
  assert.ok(batches.length >= 2);
  assert.deepEqual(batches.flat(), messages, 'every message, in order');
  for (const batch of batches) assert.ok(encodeBatchFrame(1, batch).byteLength - 4 <= MAX_FRAME_BYTES);
  assert.deepEqual(
    splitBatches(messages, 3, Number.MAX_SAFE_INTEGER).map((b) => b.length),
    [3, 3, 3, 3, 3, 3, 3],
    'and by count',
  );
  const huge = new Uint8Array(100);
  assert.deepEqual(splitBatches([huge], 10, 50), [[huge]], 'a message over the limit alone');
});
