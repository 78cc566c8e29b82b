/**
 * raftnode/messages — the consensus core's Message union to and from the wire's RaftMessage (raft.proto),
 * which flattens the union: `type` says which fields mean something. Decoding validates what a peer sent
 * (known type, ids and indexes that are safe integers) so a lying or broken peer gets an error, not a
 * core that asserts.
 */

import { assert } from '../common/assert.js';
import {
  type AppendRequest,
  asIndex,
  asNodeId,
  asTerm,
  type ConfState,
  type Entry,
  type Message,
  type MessageType,
  type SnapshotMeta,
} from '../consensus/index.js';
import { DogfsError } from '../wire/errors.js';
import {
  type RaftConfState,
  type RaftEntry,
  type RaftMessage,
  RaftMessageType,
  type RaftSnapshotMeta,
} from '../wire/gen/types.js';
import { encodeMessage, type Init } from '../wire/proto.js';

const WIRE_TYPE: Record<MessageType, RaftMessageType> = {
  preVote: RaftMessageType.PRE_VOTE,
  vote: RaftMessageType.VOTE,
  preVoteResp: RaftMessageType.PRE_VOTE_RESP,
  voteResp: RaftMessageType.VOTE_RESP,
  append: RaftMessageType.APPEND,
  appendResp: RaftMessageType.APPEND_RESP,
  heartbeat: RaftMessageType.HEARTBEAT,
  heartbeatResp: RaftMessageType.HEARTBEAT_RESP,
  snapshotChunk: RaftMessageType.SNAPSHOT_CHUNK,
  snapshotChunkResp: RaftMessageType.SNAPSHOT_CHUNK_RESP,
  timeoutNow: RaftMessageType.TIMEOUT_NOW,
  readIndex: RaftMessageType.READ_INDEX,
  readIndexResp: RaftMessageType.READ_INDEX_RESP,
};
const CORE_TYPE = new Map<number, MessageType>(
  Object.entries(WIRE_TYPE).map(([core, wire]) => [wire, core as MessageType]),
);

function confToWire(c: ConfState): Init<RaftConfState> {
  return { voters: [...c.voters], learners: [...c.learners] };
}

export function entryToWire(e: Entry): Init<RaftEntry> {
  return e.kind === 'normal'
    ? { term: e.term, index: e.index, data: e.data }
    : { term: e.term, index: e.index, config: confToWire(e.config) };
}

export function metaToWire(m: SnapshotMeta): Init<RaftSnapshotMeta> {
  return { index: m.index, term: m.term, config: confToWire(m.config) };
}

export function messageToWire(group: number, m: Message): Init<RaftMessage> {
  if (m.type === 'append') return { ...appendHeadToWire(group, m), entries: m.entries.map(entryToWire) };
  return messageHeadToWire(group, m);
}

/** An append's fields but its entries (which encodeWireMessage splices in, encoded once). */
function appendHeadToWire(group: number, m: AppendRequest): Init<RaftMessage> {
  return {
    group,
    type: RaftMessageType.APPEND,
    from: m.from,
    to: m.to,
    term: m.term,
    prevIndex: m.prevIndex,
    prevTerm: m.prevTerm,
    commit: m.commit,
  };
}

function messageHeadToWire(group: number, m: Message): Init<RaftMessage> {
  const base = { group, type: WIRE_TYPE[m.type], from: m.from, to: m.to, term: m.term };
  switch (m.type) {
    case 'preVote':
    case 'vote':
      return { ...base, lastIndex: m.lastIndex, lastTerm: m.lastTerm, transfer: m.transfer };
    case 'preVoteResp':
    case 'voteResp':
      return { ...base, granted: m.granted };
    case 'append':
      return appendHeadToWire(group, m);
    case 'appendResp':
      return { ...base, reject: m.reject, index: m.index, hintIndex: m.hintIndex, hintTerm: m.hintTerm };
    case 'heartbeat':
      return { ...base, commit: m.commit, readSeq: m.readSeq };
    case 'heartbeatResp':
      return { ...base, readSeq: m.readSeq };
    case 'snapshotChunk':
      return {
        ...base,
        snapshotMeta: metaToWire(m.meta),
        totalBytes: m.totalBytes,
        offset: m.offset,
        data: m.data,
      };
    case 'snapshotChunkResp':
      return { ...base, snapshotIndex: m.snapshotIndex, nextOffset: m.nextOffset, reject: m.reject };
    case 'timeoutNow':
      return base;
    case 'readIndex':
      return { ...base, ctx: m.ctx };
    case 'readIndexResp':
      return { ...base, ctx: m.ctx, index: m.index, reject: m.reject };
  }
}

function bad(detail: string): DogfsError {
  return new DogfsError('INVALID_ARGUMENT', `malformed raft message: ${detail}`);
}

function safe(n: number, what: string): number {
  if (!Number.isSafeInteger(n) || n < 0) throw bad(`${what} ${n} is not a non-negative safe integer`);
  return n;
}

/** Members (voters and learners) one group's configuration may name. */
export const MAX_MEMBERS = 64;

function confFromWire(c: RaftConfState | null | undefined): ConfState {
  if (!c) throw bad('missing configuration');
  if (c.voters.length + c.learners.length > MAX_MEMBERS) throw bad('configuration too large');
  return {
    voters: c.voters.map((v) => asNodeId(safe(v, 'voter'))),
    learners: c.learners.map((v) => asNodeId(safe(v, 'learner'))),
  };
}

export function entryFromWire(e: RaftEntry): Entry {
  const term = asTerm(safe(e.term, 'entry term'));
  const index = asIndex(safe(e.index, 'entry index'));
  if (e.config) return { kind: 'config', term, index, config: confFromWire(e.config) };
  // A proto3 sender omits an empty `data`; protobufjs then hands its shared default, a plain array with
  // no byteLength, which the hand-written WAL and append encoders cannot size.
  return { kind: 'normal', term, index, data: e.data instanceof Uint8Array ? e.data : NO_DATA };
}

const NO_DATA = new Uint8Array(0);

export function metaFromWire(m: RaftSnapshotMeta | null | undefined): SnapshotMeta {
  if (!m) throw bad('missing snapshot meta');
  return {
    index: asIndex(safe(m.index, 'snapshot index')),
    term: asTerm(safe(m.term, 'snapshot term')),
    config: confFromWire(m.config),
  };
}

/** Validates and converts; throws INVALID_ARGUMENT for anything a correct peer would not send. */
export function messageFromWire(w: RaftMessage): Message {
  const type = CORE_TYPE.get(w.type);
  if (type === undefined) throw bad(`unknown type ${w.type}`);
  const base = {
    from: asNodeId(safe(w.from, 'from')),
    to: asNodeId(safe(w.to, 'to')),
    term: asTerm(safe(w.term, 'term')),
  };
  switch (type) {
    case 'preVote':
    case 'vote':
      return {
        ...base,
        type,
        lastIndex: asIndex(safe(w.lastIndex, 'lastIndex')),
        lastTerm: asTerm(safe(w.lastTerm, 'lastTerm')),
        transfer: w.transfer,
      };
    case 'preVoteResp':
    case 'voteResp':
      return { ...base, type, granted: w.granted };
    case 'append': {
      const prevIndex = asIndex(safe(w.prevIndex, 'prevIndex'));
      const prevTerm = asTerm(safe(w.prevTerm, 'prevTerm'));
      const entries = w.entries.map(entryFromWire);
      // What a correct leader sends: entries prevIndex+1, +2, ... with terms from prevTerm up to the
      // message's own. Anything else would trip the core's log assertions half way through an append.
      let lastTerm = prevTerm;
      entries.forEach((e, i) => {
        if (e.index !== prevIndex + 1 + i)
          throw bad(`append entry ${i} has index ${e.index}, expected ${prevIndex + 1 + i}`);
        if (e.term < lastTerm || e.term > base.term)
          throw bad(`append entry ${e.index} has term ${e.term}, outside ${lastTerm}..${base.term}`);
        lastTerm = e.term;
      });
      return { ...base, type, prevIndex, prevTerm, entries, commit: asIndex(safe(w.commit, 'commit')) };
    }
    case 'appendResp':
      return {
        ...base,
        type,
        reject: w.reject,
        index: asIndex(safe(w.index, 'index')),
        hintIndex: asIndex(safe(w.hintIndex, 'hintIndex')),
        hintTerm: asTerm(safe(w.hintTerm, 'hintTerm')),
      };
    case 'heartbeat':
      return {
        ...base,
        type,
        commit: asIndex(safe(w.commit, 'commit')),
        readSeq: safe(w.readSeq, 'readSeq'),
      };
    case 'heartbeatResp':
      return { ...base, type, readSeq: safe(w.readSeq, 'readSeq') };
    case 'snapshotChunk':
      return {
        ...base,
        type,
        meta: metaFromWire(w.snapshotMeta),
        totalBytes: safe(w.totalBytes, 'totalBytes'),
        offset: safe(w.offset, 'offset'),
        data: w.data,
      };
    case 'snapshotChunkResp':
      return {
        ...base,
        type,
        snapshotIndex: asIndex(safe(w.snapshotIndex, 'snapshotIndex')),
        nextOffset: safe(w.nextOffset, 'nextOffset'),
        // A peer from before refusals were sent says false: its leader resends at once, as it did.
        reject: w.reject,
      };
    case 'timeoutNow':
      return { ...base, type };
    case 'readIndex':
      return { ...base, type, ctx: w.ctx };
    case 'readIndexResp':
      return { ...base, type, ctx: w.ctx, index: asIndex(safe(w.index, 'index')), reject: w.reject };
  }
}

// ---------------------------------------------------------------- entries written by hand
//
// Entries are most of the bytes a leader writes to its log and sends to every follower. protobufjs
// encodes each one into a writer of its own (and each RaftMessage of an append into another), which
// costs more per entry than the bytes themselves; a normal entry is three fields, so they are written
// by hand straight into the record's or message's buffer (configuration entries, rare, go through
// protobufjs). The result is ordinary protobuf, each entry byte for byte what protobufjs writes: a message's
// fields may come in any order, so entries are spliced in behind the other fields, which protobufjs
// encodes (test/raftnode/messages.test.ts compares the bytes and decodes every spliced form).

/** Tag bytes of the repeated message fields spliced by hand: field number << 3 | 2 (length-delimited). */
export const TAG_RAFT_MESSAGE_ENTRIES = (12 << 3) | 2;
export const TAG_RAFT_BATCH_MESSAGES = (2 << 3) | 2;
export const TAG_WAL_RECORD_ENTRIES = (2 << 3) | 2;
/** RaftEntry's field tags: term = 1 and index = 2 (varints), data = 3 (bytes). */
const TAG_ENTRY_TERM = (1 << 3) | 0;
const TAG_ENTRY_INDEX = (2 << 3) | 0;
const TAG_ENTRY_DATA = (3 << 3) | 2;

function varintLength(n: number): number {
  let bytes = 1;
  for (let v = n; v >= 0x80; v = Math.floor(v / 0x80)) bytes++;
  return bytes;
}

function writeVarint(buf: Buffer, at: number, n: number): number {
  let v = n;
  let i = at;
  while (v >= 0x80) {
    buf[i++] = (v % 0x80) | 0x80;
    v = Math.floor(v / 0x80);
  }
  buf[i++] = v;
  return i;
}

/**
 * `head` (an encoded message) followed by `items` as the elements of its repeated length-delimited field
 * `tag`, written at `offset` of a new buffer whose first `offset` bytes the caller fills (a frame header).
 */
export function spliceRepeated(
  offset: number,
  head: Uint8Array,
  tag: number,
  items: readonly Uint8Array[],
): Buffer {
  assert(tag < 0x80, 'a one-byte tag');
  let size = offset + head.byteLength;
  for (const item of items) size += 1 + varintLength(item.byteLength) + item.byteLength;
  const buf = Buffer.allocUnsafe(size);
  buf.set(head, offset);
  let at = offset + head.byteLength;
  for (const item of items) {
    buf[at++] = tag;
    at = writeVarint(buf, at, item.byteLength);
    buf.set(item, at);
    at += item.byteLength;
  }
  assert(at === size, 'spliced message fills its buffer');
  return buf;
}

/** Bytes of a normal entry's RaftEntry: every field written, zeros too, as protobufjs does for set fields. */
function normalEntryLength(e: Entry & { kind: 'normal' }): number {
  return (
    3 + varintLength(e.term) + varintLength(e.index) + varintLength(e.data.byteLength) + e.data.byteLength
  );
}

function writeNormalEntry(buf: Buffer, at: number, e: Entry & { kind: 'normal' }): number {
  let i = at;
  buf[i++] = TAG_ENTRY_TERM;
  i = writeVarint(buf, i, e.term);
  buf[i++] = TAG_ENTRY_INDEX;
  i = writeVarint(buf, i, e.index);
  buf[i++] = TAG_ENTRY_DATA;
  i = writeVarint(buf, i, e.data.byteLength);
  buf.set(e.data, i);
  return i + e.data.byteLength;
}

/**
 * `head` (an encoded message) followed by `entries` as the elements of its repeated RaftEntry field
 * `tag`, written at `offset` of a new buffer whose first `offset` bytes the caller fills (a header).
 */
export function spliceEntries(
  offset: number,
  head: Uint8Array,
  tag: number,
  entries: readonly Entry[],
): Buffer {
  assert(tag < 0x80, 'a one-byte tag');
  let configs: Map<Entry, Uint8Array> | undefined;
  let size = offset + head.byteLength;
  for (const e of entries) {
    let length: number;
    if (e.kind === 'normal') length = normalEntryLength(e);
    else {
      const bytes = encodeMessage('dogfs.v1.RaftEntry', entryToWire(e));
      configs ??= new Map();
      configs.set(e, bytes);
      length = bytes.byteLength;
    }
    size += 1 + varintLength(length) + length;
  }
  const buf = Buffer.allocUnsafe(size);
  buf.set(head, offset);
  let at = offset + head.byteLength;
  for (const e of entries) {
    buf[at++] = tag;
    if (e.kind === 'normal') {
      at = writeVarint(buf, at, normalEntryLength(e));
      at = writeNormalEntry(buf, at, e);
    } else {
      const bytes = configs!.get(e)!;
      at = writeVarint(buf, at, bytes.byteLength);
      buf.set(bytes, at);
      at += bytes.byteLength;
    }
  }
  assert(at === size, 'spliced entries fill their buffer');
  return buf;
}

/** One RaftMessage's protobuf; an append's entries are written by hand behind its other fields. */
export function encodeWireMessage(group: number, m: Message): Uint8Array {
  const head = encodeMessage('dogfs.v1.RaftMessage', messageHeadToWire(group, m));
  if (m.type !== 'append' || m.entries.length === 0) return head;
  return spliceEntries(0, head, TAG_RAFT_MESSAGE_ENTRIES, m.entries);
}

const FRAME_LENGTH_BYTES = 4;

/** What a message adds to a batch beyond its bytes (its field's tag and length), at most. */
const BATCH_BYTES_PER_MESSAGE = 8;

/**
 * Encoded messages in order, cut into batches of at most `maxCount` messages and `maxBytes` bytes each (a
 * message larger than `maxBytes` alone makes a batch of one; the transport then refuses it as it would).
 */
export function splitBatches(
  messages: readonly Uint8Array[],
  maxCount: number,
  maxBytes: number,
): Uint8Array[][] {
  assert(maxCount >= 1 && maxBytes >= 1, 'batch limits');
  const batches: Uint8Array[][] = [];
  let batch: Uint8Array[] = [];
  let bytes = 0;
  for (const message of messages) {
    const size = message.byteLength + BATCH_BYTES_PER_MESSAGE;
    if (batch.length > 0 && (batch.length >= maxCount || bytes + size > maxBytes)) {
      batches.push(batch);
      batch = [];
      bytes = 0;
    }
    batch.push(message);
    bytes += size;
  }
  if (batch.length > 0) batches.push(batch);
  return batches;
}

/**
 * A transport frame (u32 big-endian length, then RaftBatch{from_node, messages}) of messages already
 * encoded by encodeWireMessage.
 */
export function encodeBatchFrame(fromNode: number, messages: readonly Uint8Array[]): Buffer {
  const head = encodeMessage('dogfs.v1.RaftBatch', { fromNode });
  const frame = spliceRepeated(FRAME_LENGTH_BYTES, head, TAG_RAFT_BATCH_MESSAGES, messages);
  frame.writeUInt32BE(frame.byteLength - FRAME_LENGTH_BYTES, 0);
  return frame;
}
