/**
 * src/consensus — DogFS's Raft consensus core.
 *
 * Owns: the pure, deterministic Raft replica (raft.ts: Step/Ready/Advance), its log view (log.ts), the
 * leader's per-follower replication state (progress.ts), quorum arithmetic (quorum.ts), client sessions
 * for exactly-once commands (sessions.ts), the message and entry types (types.ts), and a seeded PRNG
 * (prng.ts) that hosts and the simulator use to feed the core its randomness.
 *
 * May import: only ../common/assert.js. No `node:` modules, no clocks, no Math.random, no I/O of any kind:
 * time arrives as tick() calls and randomness as the `rand` function in RaftConfig, so a whole cluster runs
 * inside one seeded simulation (test/consensus/sim) and every run replays exactly.
 *
 * Hosting contract (see raft.ts header for detail): after step/tick/propose, take `ready()`, persist its
 * snapshot, entries and hard state (fdatasync when `mustSync`), then send its messages, apply its
 * committed entries, serve its read states, and call `advance(ready)`. Durable storage lives in
 * src/raftnode (wal.ts), which imports this directory.
 */

export { Prng } from './prng.js';
export type {
  ConfChange,
  ConfChangeResult,
  ProposeResult,
  RaftConfig,
  RaftStorageState,
  ReadIndexResult,
  Ready,
  SoftState,
  Status,
  TestingBugs,
  TransferResult,
} from './raft.js';
export { applyConfChange, bootstrapSnapshot, defaultConfig, emptyHardState, Raft } from './raft.js';
export type { SessionCommand, SessionLimits, SessionOutcome, SessionsSnapshot } from './sessions.js';
export { ClientSessions } from './sessions.js';
export * from './types.js';
