/**
 * test/consensus/harness — a hand-driven cluster for scripted tests: instant in-memory persistence, and a
 * network that only moves messages when the test says so (deliver all, or drop/keep by a filter), so a
 * test can stage exact interleavings such as the paper's Figure 8.
 */

import type {
  Entry,
  HardState,
  Message,
  NodeId,
  RaftConfig,
  ReadState,
  Snapshot,
  TestingBugs,
} from '../../src/consensus/index.js';
import {
  asNodeId,
  bootstrapSnapshot,
  defaultConfig,
  emptyHardState,
  Prng,
  Raft,
} from '../../src/consensus/index.js';

export interface HarnessNode {
  readonly id: NodeId;
  raft: Raft;
  cfg: RaftConfig;
  hardState: HardState;
  snapshot: Snapshot;
  entries: Entry[];
  applied: Entry[];
  readStates: ReadState[];
  failedReads: string[];
  up: boolean;
}

export class Harness {
  readonly nodes = new Map<NodeId, HarnessNode>();
  /** Messages sent and not yet delivered or dropped. */
  inFlight: Message[] = [];
  private readonly rng: Prng;

  constructor(
    count: number,
    overrides: Partial<RaftConfig> = {},
    seed = 1,
    readonly bugs: TestingBugs = {},
  ) {
    this.rng = new Prng(seed);
    const ids = Array.from({ length: count }, (_, i) => asNodeId(i + 1));
    for (const id of ids) this.add(id, bootstrapSnapshot(ids), overrides);
  }

  add(id: NodeId, snapshot: Snapshot, overrides: Partial<RaftConfig> = {}): HarnessNode {
    const cfg: RaftConfig = {
      ...defaultConfig(id, this.rng.fork().next),
      testingBugs: this.bugs,
      ...overrides,
      id,
    };
    const node: HarnessNode = {
      id,
      cfg,
      raft: new Raft(cfg, { hardState: emptyHardState(), snapshot, entries: [] }),
      hardState: emptyHardState(),
      snapshot,
      entries: [],
      applied: [],
      readStates: [],
      failedReads: [],
      up: true,
    };
    this.nodes.set(id, node);
    return node;
  }

  node(id: number): HarnessNode {
    const n = this.nodes.get(asNodeId(id));
    if (n === undefined) throw new RangeError(`no node ${id}`);
    return n;
  }

  raft(id: number): Raft {
    return this.node(id).raft;
  }

  /** Runs every pending Ready: persist, queue messages, apply, advance. */
  flush(): void {
    let again = true;
    while (again) {
      again = false;
      for (const n of this.nodes.values()) {
        if (!n.up || !n.raft.hasReady()) continue;
        again = true;
        const rd = n.raft.ready();
        if (rd.snapshot !== undefined) {
          n.snapshot = rd.snapshot;
          n.entries = [];
          n.applied = [];
        }
        const first = rd.entries[0];
        if (first !== undefined)
          n.entries = n.entries.filter((e) => e.index < first.index).concat(rd.entries);
        if (rd.hardState !== undefined) n.hardState = rd.hardState;
        this.inFlight.push(...rd.earlyMessages, ...rd.messages);
        n.applied.push(...rd.committedEntries);
        n.readStates.push(...rd.readStates);
        n.failedReads.push(...rd.failedReads);
        n.raft.advance(rd);
      }
    }
  }

  /** Delivers queued messages (those `keep` accepts; the rest are dropped) until the network is quiet. */
  deliver(keep: (m: Message) => boolean = () => true, rounds = 100): void {
    for (let r = 0; r < rounds; r++) {
      this.flush();
      const batch = this.inFlight;
      this.inFlight = [];
      if (batch.length === 0) return;
      for (const m of batch) {
        const to = this.nodes.get(m.to);
        if (to?.up && keep(m)) to.raft.step(m);
      }
    }
    this.flush();
  }

  /** Delivers messages only among `group` (both ends inside); others are dropped. */
  deliverWithin(group: readonly number[], rounds = 100): void {
    this.deliver((m) => group.includes(m.from) && group.includes(m.to), rounds);
  }

  tick(id: number, times = 1): void {
    for (let i = 0; i < times; i++) this.node(id).raft.tick();
    this.flush();
  }

  tickAll(times = 1): void {
    for (let i = 0; i < times; i++) for (const n of this.nodes.values()) if (n.up) n.raft.tick();
    this.flush();
  }

  /** Makes `id` campaign now and runs the election among `group` to completion. */
  elect(id: number, group: readonly number[] = [...this.nodes.keys()]): void {
    const n = this.node(id);
    if (n.cfg.readMode === 'lease') {
      // Freshly booted lease-mode replicas refuse votes for one election timeout: let it pass.
      for (let i = 0; i < n.cfg.electionTicks; i++) {
        for (const other of group) if (other !== id) this.node(other).raft.tick();
        this.deliver(() => false);
      }
    }
    for (let i = 0; i < 2 * n.cfg.electionTicks && n.raft.status().role !== 'leader'; i++) {
      n.raft.tick();
      this.deliverWithin(group);
    }
    if (n.raft.status().role !== 'leader') throw new Error(`node ${id} did not win an election`);
    this.deliverWithin(group);
  }

  crash(id: number): void {
    const n = this.node(id);
    n.up = false;
    this.inFlight = this.inFlight.filter((m) => m.to !== n.id && m.from !== n.id);
  }

  restart(id: number): void {
    const n = this.node(id);
    n.raft = new Raft(n.cfg, { hardState: n.hardState, snapshot: n.snapshot, entries: n.entries });
    n.applied = [];
    n.up = true;
  }

  leaders(): HarnessNode[] {
    return [...this.nodes.values()].filter((n) => n.up && n.raft.status().role === 'leader');
  }
}

export const bytes = (s: string): Uint8Array => new TextEncoder().encode(s);
export const text = (e: Entry): string => (e.kind === 'normal' ? new TextDecoder().decode(e.data) : `config`);
/** Application commands among applied entries (no-ops and configuration entries left out). */
export const commands = (n: HarnessNode): string[] =>
  n.applied.filter((e) => e.kind === 'normal' && e.data.byteLength > 0).map(text);
