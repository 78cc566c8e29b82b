/**
 * raftnode/messages — the consensus core's Message union to and from the wire's RaftMessage (raft.proto),
 * which flattens the union: `type` says which fields mean something. Decoding validates what a peer sent
 * (known type, ids and indexes that are safe integers) so a lying or broken peer gets an error, not a
 * core that asserts.
 */
import {
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
import type { Init } from '../wire/proto.js';

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
  const base = { group, type: WIRE_TYPE[m.type], from: m.from, to: m.to, term: m.term };
  switch (m.type) {
    case 'preVote':
    case 'vote':
      return { ...base, lastIndex: m.lastIndex, lastTerm: m.lastTerm, transfer: m.transfer };
    case 'preVoteResp':
    case 'voteResp':
      return { ...base, granted: m.granted };
    case 'append':
      return {
        ...base,
        prevIndex: m.prevIndex,
        prevTerm: m.prevTerm,
        entries: m.entries.map(entryToWire),
        commit: m.commit,
      };
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
      return { ...base, snapshotIndex: m.snapshotIndex, nextOffset: m.nextOffset };
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

const MAX_MEMBERS = 64;

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
  return { kind: 'normal', term, index, data: e.data };
}

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
    case 'append':
      return {
        ...base,
        type,
        prevIndex: asIndex(safe(w.prevIndex, 'prevIndex')),
        prevTerm: asTerm(safe(w.prevTerm, 'prevTerm')),
        entries: w.entries.map(entryFromWire),
        commit: asIndex(safe(w.commit, 'commit')),
      };
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
      };
    case 'timeoutNow':
      return { ...base, type };
    case 'readIndex':
      return { ...base, type, ctx: w.ctx };
    case 'readIndexResp':
      return { ...base, type, ctx: w.ctx, index: asIndex(safe(w.index, 'index')), reject: w.reject };
  }
}
