/**
 * consensus/log — the replica's view of its Raft log: a snapshot point followed by in-memory entries, with
 * the commit index and the boundary between entries known to be durable ("stable") and entries still
 * waiting to be persisted by the host. Also indexes configuration entries, because membership takes effect
 * as soon as a configuration entry is in the log (see raft.ts header).
 *
 * Invariants (asserted): entries are contiguous from snapshot.index+1; commit never decreases; nothing at or
 * below commit is ever truncated; stable <= lastIndex.
 */

import { assert } from '../common/assert.js';
import type { ConfState, Entry, LogIndex, SnapshotMeta, Term } from './types.js';
import { asIndex, asTerm, entryBytes } from './types.js';

export class RaftLog {
  private snap: SnapshotMeta;
  private ents: Entry[] = [];
  /** Indices of configuration entries currently in `ents`, ascending. */
  private configIndexes: LogIndex[] = [];
  private commitIndex: LogIndex;
  /** Highest index whose entry is known to be durable on the host's disk, identical to ours. */
  private stableIndex: LogIndex;

  constructor(snapshot: SnapshotMeta, entries: readonly Entry[], commit: LogIndex) {
    this.snap = snapshot;
    this.commitIndex = snapshot.index;
    this.stableIndex = snapshot.index;
    this.appendAfter(entries);
    this.stableIndex = this.lastIndex();
    assert(commit <= this.lastIndex(), `restored commit ${commit} beyond last index ${this.lastIndex()}`);
    this.commitIndex = asIndex(Math.max(commit, snapshot.index));
  }

  snapshotMeta(): SnapshotMeta {
    return this.snap;
  }
  firstIndex(): LogIndex {
    return asIndex(this.snap.index + 1);
  }
  lastIndex(): LogIndex {
    return asIndex(this.snap.index + this.ents.length);
  }
  lastTerm(): Term {
    const last = this.ents[this.ents.length - 1];
    return last === undefined ? this.snap.term : last.term;
  }
  committed(): LogIndex {
    return this.commitIndex;
  }
  stable(): LogIndex {
    return this.stableIndex;
  }

  /** Term at `index`, or undefined if it is compacted away (below the snapshot) or beyond the end. */
  term(index: LogIndex): Term | undefined {
    if (index === this.snap.index) return this.snap.term;
    if (index < this.snap.index || index > this.lastIndex()) return undefined;
    return this.ents[index - this.snap.index - 1]!.term;
  }

  entry(index: LogIndex): Entry | undefined {
    if (index <= this.snap.index) return undefined;
    return this.ents[index - this.snap.index - 1];
  }

  matchTerm(index: LogIndex, term: Term): boolean {
    return this.term(index) === term;
  }

  /** §5.4.1: is a log ending at (lastIndex, lastTerm) at least as up to date as ours? */
  isUpToDate(lastIndex: LogIndex, lastTerm: Term): boolean {
    return lastTerm > this.lastTerm() || (lastTerm === this.lastTerm() && lastIndex >= this.lastIndex());
  }

  /**
   * Entries [lo, hi] limited to `maxEntries` and `maxBytes` (always at least one entry if any is asked for,
   * so a single large entry still moves). Returns undefined if `lo` is compacted.
   */
  slice(lo: LogIndex, hi: LogIndex, maxEntries: number, maxBytes: number): Entry[] | undefined {
    if (lo <= this.snap.index) return undefined;
    const out: Entry[] = [];
    let bytes = 0;
    for (let i = lo; i <= hi && i <= this.lastIndex(); i++) {
      const e = this.ents[i - this.snap.index - 1]!;
      const size = entryBytes(e);
      if (out.length > 0 && (out.length >= maxEntries || bytes + size > maxBytes)) break;
      out.push(e);
      bytes += size;
    }
    return out;
  }

  /** Entries not yet handed to the host for persistence: (stable, last]. */
  unstableEntries(): Entry[] {
    return this.ents.slice(Math.max(0, this.stableIndex - this.snap.index));
  }

  /**
   * Appends entries whose first index is <= lastIndex+1, truncating any existing suffix from that index.
   * Callers (the follower path) have already skipped entries that match, so a truncation here is a real
   * conflict and must be above the commit index.
   */
  appendAfter(entries: readonly Entry[]): void {
    const first = entries[0];
    if (first === undefined) return;
    assert(
      first.index > this.commitIndex,
      `truncating committed entry ${first.index} <= ${this.commitIndex}`,
    );
    assert(first.index <= this.lastIndex() + 1, `gap: appending ${first.index} after ${this.lastIndex()}`);
    if (first.index <= this.lastIndex()) this.truncateFrom(first.index);
    for (const e of entries) {
      assert(e.index === this.lastIndex() + 1, `non-contiguous entry ${e.index} after ${this.lastIndex()}`);
      assert(e.term >= this.lastTerm(), `entry term ${e.term} below previous ${this.lastTerm()}`);
      this.ents.push(e);
      if (e.kind === 'config') this.configIndexes.push(e.index);
    }
  }

  private truncateFrom(index: LogIndex): void {
    this.ents.length = index - this.snap.index - 1;
    while (this.configIndexes.length > 0 && this.configIndexes[this.configIndexes.length - 1]! >= index) {
      this.configIndexes.pop();
    }
    if (this.stableIndex >= index) this.stableIndex = asIndex(index - 1);
  }

  /**
   * etcd's findConflictByTerm: the largest index <= `index` whose term is <= `term`. Used on both sides of a
   * rejected append to skip every entry of a conflicting term in one round trip.
   */
  findConflictByTerm(index: LogIndex, term: Term): LogIndex {
    let i = Math.min(index, this.lastIndex());
    while (i > this.snap.index) {
      const t = this.term(asIndex(i));
      if (t === undefined || t <= term) break;
      i--;
    }
    return asIndex(i);
  }

  commitTo(index: LogIndex): boolean {
    if (index <= this.commitIndex) return false;
    assert(index <= this.lastIndex(), `commit ${index} beyond last index ${this.lastIndex()}`);
    this.commitIndex = index;
    return true;
  }

  /** Marks entries through `index` durable, if the entry there is still the one that was persisted. */
  stableTo(index: LogIndex, term: Term): void {
    if (index > this.stableIndex && this.term(index) === term) this.stableIndex = index;
  }

  /** Configuration in force at the end of the log (the latest configuration entry, else the snapshot's). */
  lastConfig(): { config: ConfState; index: LogIndex } {
    const idx = this.configIndexes[this.configIndexes.length - 1];
    if (idx === undefined) return { config: this.snap.config, index: this.snap.index };
    const e = this.entry(idx);
    assert(e !== undefined && e.kind === 'config', 'config index points at a non-config entry');
    return { config: e.config, index: idx };
  }

  /** Configuration in force at `index` (which must not be compacted below the snapshot). */
  configAt(index: LogIndex): ConfState {
    assert(index >= this.snap.index, `configAt(${index}) below snapshot ${this.snap.index}`);
    for (let i = this.configIndexes.length - 1; i >= 0; i--) {
      const idx = this.configIndexes[i]!;
      if (idx <= index) {
        const e = this.entry(idx);
        assert(e !== undefined && e.kind === 'config', 'config index points at a non-config entry');
        return e.config;
      }
    }
    return this.snap.config;
  }

  /** Discards entries through `meta.index`, which the application has captured in a durable snapshot. */
  compact(meta: SnapshotMeta): void {
    assert(meta.index > this.snap.index, `compact to ${meta.index} not above snapshot ${this.snap.index}`);
    assert(meta.index <= this.commitIndex, `compact to ${meta.index} beyond commit ${this.commitIndex}`);
    assert(meta.index <= this.stableIndex, `compact to ${meta.index} beyond stable ${this.stableIndex}`);
    assert(this.term(meta.index) === meta.term, 'compaction snapshot term does not match the log');
    this.ents = this.ents.slice(meta.index - this.snap.index);
    this.configIndexes = this.configIndexes.filter((i) => i > meta.index);
    this.snap = meta;
  }

  /** Replaces the whole log with a snapshot received from the leader. */
  restore(meta: SnapshotMeta): void {
    assert(meta.index > this.commitIndex, `restoring snapshot ${meta.index} at or below commit`);
    this.snap = meta;
    this.ents = [];
    this.configIndexes = [];
    this.commitIndex = meta.index;
    // The snapshot itself becomes stable when the host persists it (see Raft.advance).
    this.stableIndex = asIndex(Math.min(this.stableIndex, meta.index - 1));
  }

  markSnapshotStable(meta: SnapshotMeta): void {
    if (this.snap.index === meta.index && this.stableIndex < meta.index) this.stableIndex = meta.index;
  }
}

export const ZERO_TERM = asTerm(0);
export const ZERO_INDEX = asIndex(0);
