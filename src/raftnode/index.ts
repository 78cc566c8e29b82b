/**
 * raftnode — hosting the pure consensus core (src/consensus) in a real process: the multi-group host and
 * its event loop (host.ts), the Raft transport over the wire layer (messages.ts), and durable storage
 * (storage.ts interface; the write-ahead log). Owns: everything about Raft that touches time, disk or
 * network. May import: consensus, wire, common.
 */

export * from './durable.js';
export * from './host.js';
export * from './messages.js';
export * from './storage.js';
