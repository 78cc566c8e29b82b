/**
 * bench/raft-encode — CPU to encode a Raft host's entries, in one process: per round, 13 fresh 370-byte
 * entries (bench:raft's commands at c=64 come ~13 to a round) written to the log (a WalRecord) and, on a
 * leader, sent to two followers (a RaftBatch frame each). Entries written by hand behind the other fields
 * (raftnode/messages.ts spliceEntries, what the host does) against protobufjs encoding the whole record
 * and each frame (the reference: what the host did before), in the same run, with their ratio.
 *   node dist/bench/raft-encode.js        (BENCH_ROUNDS, default 20000, sets each measurement's length)
 */
import { crc32c } from '@node-rs/crc32';
import type { Entry, Message } from '../src/consensus/index.js';
import { asIndex, asNodeId, asTerm } from '../src/consensus/index.js';
import {
  encodeBatchFrame,
  encodeWireMessage,
  entryToWire,
  messageToWire,
  spliceEntries,
  TAG_WAL_RECORD_ENTRIES,
} from '../src/raftnode/messages.js';
import { encodeFrame } from '../src/raftnode/transport.js';
import { encodeMessage } from '../src/wire/proto.js';
import { emit, machine } from './lib.js';

const ROUNDS = Number(process.env['BENCH_ROUNDS'] ?? '20000');
const PER_ROUND = 13;
/** Distinct rounds cycled through, so entries are not the same few objects every time. */
const DISTINCT = 2000;
const COMMAND = new TextEncoder().encode(
  JSON.stringify({
    clientId: 'bench-1-3',
    seq: 12345,
    ackedBelow: 12300,
    time: Date.now(),
    input: { op: 'put', key: 'k3-5', value: 'v'.repeat(256) },
  }),
);

let nextIndex = 1;
function round(): Entry[] {
  return Array.from({ length: PER_ROUND }, () => ({
    kind: 'normal' as const,
    term: asTerm(3),
    index: asIndex(nextIndex++),
    data: COMMAND.slice(),
  }));
}

function append(entries: Entry[], to: number): Message {
  const prev = asIndex(entries[0]!.index - 1);
  return {
    type: 'append',
    from: asNodeId(1),
    to: asNodeId(to),
    term: asTerm(3),
    prevIndex: prev,
    prevTerm: asTerm(3),
    entries,
    commit: prev,
  };
}

type Way = (entries: Entry[]) => void;

const reference = {
  wal: (entries: Entry[]) => {
    const payload = encodeMessage('dogfs.v1.WalRecord', { group: 1, entries: entries.map(entryToWire) });
    crc32c(Buffer.from(payload.buffer, payload.byteOffset, payload.byteLength));
  },
  send: (entries: Entry[], to: number) =>
    encodeFrame({ fromNode: 1, messages: [messageToWire(1, append(entries, to))] }),
};
const spliced = {
  wal: (entries: Entry[]) => {
    const head = encodeMessage('dogfs.v1.WalRecord', { group: 1 });
    crc32c(spliceEntries(12, head, TAG_WAL_RECORD_ENTRIES, entries).subarray(12));
  },
  send: (entries: Entry[], to: number) => encodeBatchFrame(1, [encodeWireMessage(1, append(entries, to))]),
};

function cpuPerEntry(way: Way): number {
  const rounds = Array.from({ length: DISTINCT }, round);
  for (const r of rounds) way(r); // warm-up
  const start = process.cpuUsage();
  for (let i = 0; i < ROUNDS; i++) way(rounds[i % DISTINCT]!);
  const used = process.cpuUsage(start);
  return (used.user + used.system) / ROUNDS / PER_ROUND;
}

emit({ bench: 'raft-encode', metric: 'machine', value: 0, unit: 'none', ...machine() });
const roles: [string, (w: typeof spliced) => Way][] = [
  ['follower', (w) => (entries) => w.wal(entries)],
  [
    'leader',
    (w) => (entries) => {
      w.wal(entries);
      w.send(entries, 2);
      w.send(entries, 3);
    },
  ],
];
for (const [role, make] of roles) {
  // Alternated three times each; the median of each is reported.
  const ref: number[] = [];
  const ours: number[] = [];
  for (let r = 0; r < 3; r++) {
    ref.push(cpuPerEntry(make(reference)));
    ours.push(cpuPerEntry(make(spliced)));
  }
  const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[1]!;
  const tags = { role, entriesPerRound: PER_ROUND, commandBytes: COMMAND.byteLength };
  emit({
    bench: 'raft-encode',
    metric: 'cpu_per_entry',
    value: +median(ours).toFixed(2),
    unit: 'us',
    way: 'spliced',
    ...tags,
  });
  emit({
    bench: 'raft-encode',
    metric: 'cpu_per_entry',
    value: +median(ref).toFixed(2),
    unit: 'us',
    way: 'protobufjs',
    ...tags,
  });
  emit({
    bench: 'raft-encode',
    metric: 'ratio_vs_protobufjs',
    value: +(median(ours) / median(ref)).toFixed(2),
    unit: 'x',
    ...tags,
  });
}
