/**
 * metadata/state — the metadata state machines, pure and deterministic, to be hosted on Raft:
 * the namespace (namespace.ts, commands in commands.ts), the cluster group 0 (cluster.ts), placement
 * (placement.ts), path rules (paths.ts), ids (ids.ts). No clock, no randomness, no I/O: time and
 * placement choices arrive inside commands, stamped by the leader.
 * May import: common, consensus (sessions, PRNG), wire (error codes and types).
 */
export * from './bytes.js';
export * from './cluster.js';
export * from './commands.js';
export * from './ids.js';
export * from './namespace.js';
export * from './paths.js';
export * from './placement.js';
export * from './result.js';
export * from './sorted-names.js';
