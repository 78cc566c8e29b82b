/**
 * test/consensus/sim/disk — a simulated disk for one replica. Writes land in an unsynced buffer; `sync()`
 * makes them durable. A crash keeps what was synced plus a random prefix of the unsynced writes (the page
 * cache flushed some of them; the last surviving write may be torn, which a real WAL truncates, so a torn
 * record is modelled as not surviving). The durable state is kept materialised (snapshot, entries, hard
 * state) so a restart reads it directly.
 */

import { assert } from '../../../src/common/assert.js';
import type { Entry, HardState, Prng, RaftStorageState, Snapshot } from '../../../src/consensus/index.js';
import { emptyHardState } from '../../../src/consensus/index.js';

type DiskWrite =
  | { readonly kind: 'hardState'; readonly hardState: HardState }
  | { readonly kind: 'entries'; readonly entries: readonly Entry[] }
  | { readonly kind: 'installSnapshot'; readonly snapshot: Snapshot };

export class SimDisk {
  private hardState: HardState = emptyHardState();
  private snapshot: Snapshot;
  private entries: Entry[] = [];
  private unsynced: DiskWrite[] = [];
  syncs = 0;

  constructor(initial: Snapshot) {
    this.snapshot = initial;
  }

  writeHardState(hs: HardState): void {
    this.unsynced.push({ kind: 'hardState', hardState: hs });
  }
  writeEntries(entries: readonly Entry[]): void {
    if (entries.length > 0) this.unsynced.push({ kind: 'entries', entries });
  }
  writeSnapshot(snapshot: Snapshot): void {
    this.unsynced.push({ kind: 'installSnapshot', snapshot });
  }

  sync(): void {
    for (const w of this.unsynced) this.applyWrite(w);
    this.unsynced = [];
    this.syncs++;
  }

  /** The application's own snapshot: written tmp + fsync + rename, so durable at once; compacts the log. */
  saveCompactionSnapshot(snapshot: Snapshot): void {
    // Unsynced log writes stay unsynced; when they land, entries the snapshot covers are skipped.
    if (snapshot.meta.index <= this.snapshot.meta.index) return;
    this.snapshot = snapshot;
    this.entries = this.entries.filter((e) => e.index > snapshot.meta.index);
  }

  crash(rng: Prng): void {
    const survive = rng.int(0, this.unsynced.length);
    for (const w of this.unsynced.slice(0, survive)) this.applyWrite(w);
    this.unsynced = [];
  }

  load(): RaftStorageState {
    return { hardState: this.hardState, snapshot: this.snapshot, entries: [...this.entries] };
  }

  private applyWrite(w: DiskWrite): void {
    switch (w.kind) {
      case 'hardState':
        this.hardState = w.hardState;
        return;
      case 'installSnapshot':
        this.snapshot = w.snapshot;
        this.entries = [];
        return;
      case 'entries': {
        const first = w.entries[0]!;
        const base = this.snapshot.meta.index;
        // Entries at or below the snapshot are already covered by it.
        const fresh = w.entries.filter((e) => e.index > base);
        if (fresh.length === 0) return;
        const from = fresh[0]!.index;
        assert(
          from <= base + this.entries.length + 1,
          `disk gap: writing ${first.index} after ${base + this.entries.length}`,
        );
        this.entries.length = from - base - 1;
        this.entries.push(...fresh);
        return;
      }
    }
  }
}
