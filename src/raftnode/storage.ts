/**
 * raftnode/storage — what the host needs from durable storage, per group, and one sync for all groups
 * (group commit: a Ready round of every hosted group costs one fdatasync, not one per group).
 */
import type { Entry, HardState, RaftStorageState, Snapshot } from '../consensus/index.js';

export interface GroupStorage {
  /** What this group's disk holds, or undefined for a group never started on this node. */
  load(): RaftStorageState | undefined;
  /** Stages entries; an entry whose index is already stored replaces it and everything after it. */
  append(entries: readonly Entry[]): void;
  setHardState(hardState: HardState): void;
  /** Stages a snapshot received from the leader or taken locally; entries it covers may be dropped. */
  saveSnapshot(snapshot: Snapshot): void;
  /**
   * As saveSnapshot, for a snapshot this node took of its own state, with the payload written off the
   * event loop: staged once it is durable, unless a newer snapshot was staged meanwhile (then dropped).
   * Until then the log keeps the entries it covers, so a crash meanwhile loses nothing.
   */
  saveOwnSnapshot(snapshot: Snapshot): Promise<void>;
}

export interface HostStorage {
  group(groupId: number): GroupStorage;
  /** Makes everything staged so far, in every group, durable. */
  sync(): Promise<void>;
  close(): Promise<void>;
}

/** Volatile storage: for tests of the host's logic only; a "crash" loses everything. */
export class MemoryStorage implements HostStorage {
  private readonly groups = new Map<number, MemoryGroupStorage>();

  group(groupId: number): GroupStorage {
    let g = this.groups.get(groupId);
    if (g === undefined) {
      g = new MemoryGroupStorage();
      this.groups.set(groupId, g);
    }
    return g;
  }

  async sync(): Promise<void> {}
  async close(): Promise<void> {}
}

class MemoryGroupStorage implements GroupStorage {
  private hardState: HardState | undefined;
  private snapshot: Snapshot | undefined;
  private entries: Entry[] = [];

  load(): RaftStorageState | undefined {
    if (this.hardState === undefined || this.snapshot === undefined) return undefined;
    return { hardState: this.hardState, snapshot: this.snapshot, entries: [...this.entries] };
  }

  append(entries: readonly Entry[]): void {
    const first = entries[0];
    if (first === undefined) return;
    this.entries = this.entries.filter((e) => e.index < first.index).concat(entries);
  }

  setHardState(hardState: HardState): void {
    this.hardState = hardState;
  }

  saveSnapshot(snapshot: Snapshot): void {
    const { index, term } = snapshot.meta;
    // As durable.ts's applySnapshot: the entries after it stay only if the log holds its last entry.
    const last = this.entries.find((e) => e.index === index);
    const holdsLast =
      last !== undefined
        ? last.term === term
        : this.snapshot?.meta.index === index && this.snapshot.meta.term === term;
    this.snapshot = snapshot;
    this.entries = holdsLast ? this.entries.filter((e) => e.index > index) : [];
  }

  async saveOwnSnapshot(snapshot: Snapshot): Promise<void> {
    if (this.snapshot === undefined || this.snapshot.meta.index < snapshot.meta.index)
      this.saveSnapshot(snapshot);
  }
}
