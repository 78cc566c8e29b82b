/**
 * test/consensus/sim/sim — the deterministic cluster simulator. One seed drives one Prng, which decides
 * everything: cluster shape and limits, message delays, drops, duplicates and reordering, partitions
 * (symmetric, asymmetric, isolate-then-rejoin), crashes (losing unsynced disk writes, possibly keeping a
 * prefix of them) and restarts, membership changes, leadership transfers, compaction, and client
 * operations on a KV state machine. Time is simulated (each node ticks every TICK time units).
 *
 * After every step the SafetyChecker verifies Election Safety, Log Matching, Leader Completeness and State
 * Machine Safety. After the fault phase the network heals and every node restarts; a leader must be
 * elected and a new command committed within `livenessBound` time units. The clients' history is checked
 * for linearizability. Any failure reports the seed; replay with
 *   SEED=<seed> node --test dist/test/consensus/sim.test.js
 */

import type {
  ConfState,
  LogIndex,
  Message,
  NodeId,
  RaftConfig,
  Ready,
  Snapshot,
  TestingBugs,
} from '../../../src/consensus/index.js';
import {
  asIndex,
  asNodeId,
  bootstrapSnapshot,
  defaultConfig,
  Prng,
  Raft,
} from '../../../src/consensus/index.js';
import { checkKvHistory, describeOps, type HistoryOp } from '../linearizability.js';
import { SafetyChecker } from './checker.js';
import { SimDisk } from './disk.js';
import { decodeCommand, encodeCommand, type KvInput, KvStateMachine } from './kv.js';

export interface SimOptions {
  readonly seed: number;
  /** Events processed in the fault phase. */
  readonly steps: number;
  readonly faults?: boolean;
  readonly clients?: number;
  readonly bugs?: TestingBugs;
  /** Simulated time allowed, after faults stop, to elect a leader and commit a new command. */
  readonly livenessBound?: number;
}

export interface SimStats {
  readonly events: number;
  readonly time: number;
  readonly committed: number;
  readonly leaderTerms: number;
  readonly crashes: number;
  readonly snapshotsSent: number;
  readonly configChanges: number;
  readonly historyOps: number;
  readonly livenessTime: number;
}

export type SimResult =
  | { readonly ok: true; readonly seed: number; readonly stats: SimStats }
  | { readonly ok: false; readonly seed: number; readonly failure: string; readonly stats: SimStats };

export function replayCommand(seed: number, steps = 5000): string {
  return `SEED=${seed} SIM_STEPS=${steps} node --test dist/test/consensus/sim.test.js`;
}

const TICK = 10;
/**
 * Once faults stop: a leader elected and a new command applied within 200 ticks (10 to 20 randomized
 * election timeouts). Observed over 500 CI seeds: median 46, worst 675 time units.
 */
const LIVENESS_BOUND = 200 * TICK;
const CLIENT_TIMEOUT = 300;
const MAX_ATTEMPTS = 40;
const MAX_TIMEOUTS = 3;
const KEYS = ['x', 'y', 'z', 'u', 'v', 'w'];

type SimEvent =
  | { readonly kind: 'tick'; readonly node: NodeId; readonly inc: number }
  | { readonly kind: 'deliver'; readonly msg: Message }
  | { readonly kind: 'persist'; readonly node: NodeId; readonly inc: number }
  | { readonly kind: 'sync'; readonly node: NodeId; readonly inc: number }
  | { readonly kind: 'fault' }
  | { readonly kind: 'heal' }
  | { readonly kind: 'restart'; readonly node: NodeId }
  | { readonly kind: 'knockOut'; readonly node: NodeId; readonly inc: number }
  | { readonly kind: 'rejoin'; readonly node: NodeId }
  | { readonly kind: 'clientStart'; readonly client: number }
  | { readonly kind: 'clientAttempt'; readonly client: number; readonly opId: number }
  | {
      readonly kind: 'clientTimeout';
      readonly client: number;
      readonly opId: number;
      readonly attempt: number;
    };

interface Scheduled {
  readonly time: number;
  readonly seq: number;
  readonly ev: SimEvent;
}

/** Binary min-heap on (time, seq): equal times run in scheduling order, so runs are reproducible. */
class EventQueue {
  private heap: Scheduled[] = [];
  private seq = 0;
  push(time: number, ev: SimEvent): void {
    const item = { time, seq: this.seq++, ev };
    const h = this.heap;
    h.push(item);
    let i = h.length - 1;
    while (i > 0) {
      const p = (i - 1) >> 1;
      if (less(h[p]!, item)) break;
      h[i] = h[p]!;
      i = p;
    }
    h[i] = item;
  }
  pop(): Scheduled | undefined {
    const h = this.heap;
    const top = h[0];
    const last = h.pop();
    if (top === undefined || last === undefined || h.length === 0) return top;
    let i = 0;
    for (;;) {
      const l = 2 * i + 1;
      if (l >= h.length) break;
      const r = l + 1;
      const c = r < h.length && less(h[r]!, h[l]!) ? r : l;
      if (less(last, h[c]!)) break;
      h[i] = h[c]!;
      i = c;
    }
    h[i] = last;
    return top;
  }
}
function less(a: Scheduled, b: Scheduled): boolean {
  return a.time < b.time || (a.time === b.time && a.seq < b.seq);
}

interface SimNode {
  readonly id: NodeId;
  readonly disk: SimDisk;
  readonly cfg: RaftConfig;
  raft: Raft | undefined;
  sm: KvStateMachine;
  inc: number;
  busy: boolean;
  persistScheduled: boolean;
  inflight: Ready | undefined;
  lastApplied: LogIndex;
  /** Highest commit index already reported to the checker (per incarnation). */
  commitSeen: number;
  removed: boolean;
  /** Configuration as of the last applied entry (committed, so removals seen here are final). */
  appliedConfig: ConfState;
  /** ReadIndex answers waiting for the state machine to catch up: ctx -> read index. */
  readsWaiting: Map<string, LogIndex>;
}

interface ClientOp {
  readonly id: number;
  readonly seq: number;
  readonly input: KvInput;
  readonly call: number;
  attempt: number;
  timeouts: number;
  target: NodeId;
  done: boolean;
}

interface SimClient {
  readonly name: string;
  /** Session id: the name plus an incarnation, renewed when the cluster refuses an unknown session. */
  session: string;
  incarnation: number;
  seq: number;
  /** History indexes of this session's abandoned writes not yet fenced by a later completed write. */
  openUnknown: number[];
  op: ClientOp | undefined;
  leaderHint: NodeId;
  lastSeen: Map<string, string | null>;
}

class Failure extends Error {
  override name = 'SimulationFailure';
}

export function runSimulation(opts: SimOptions): SimResult {
  const sim = new Simulation(opts);
  try {
    sim.run();
    return { ok: true, seed: opts.seed, stats: sim.stats() };
  } catch (e) {
    const msg = e instanceof Error ? `${e.name}: ${e.message}` : String(e);
    return {
      ok: false,
      seed: opts.seed,
      failure: `${msg}\n  at time ${sim.now}, event ${sim.events}`,
      stats: sim.stats(),
    };
  }
}

class Simulation {
  private readonly rng: Prng;
  private readonly queue = new EventQueue();
  private readonly nodes = new Map<NodeId, SimNode>();
  private readonly checker = new SafetyChecker();
  private readonly clients: SimClient[] = [];
  private readonly history: HistoryOp[] = [];
  private readonly blocked = new Set<string>();
  private readonly pendingRemovals = new Set<NodeId>();
  private readonly faults: boolean;
  private base: Omit<RaftConfig, 'id' | 'rand'>;
  private nextNodeId: number;
  private maxNodeId: number;
  private dropRate = 0;
  private dupRate = 0;
  private maxDelay = 6;
  private calm = false;
  private opIds = 0;
  private crashes = 0;
  private snapshotsSent = 0;
  private configChanges = 0;
  private livenessTime = 0;
  private compactEvery: number;
  private readonly profile: 'calm' | 'mixed' | 'churn';
  private crashAfterCommit = 0;
  private crashAfterPropose = 0;
  /** fdatasync latency bound: some seeds have disks slower than the network (as real ones often are). */
  private maxSyncDelay = 4;
  now = 0;
  events = 0;

  constructor(private readonly opts: SimOptions) {
    this.rng = new Prng(opts.seed);
    this.faults = opts.faults ?? true;
    const rng = this.rng;
    // Fault profiles: 'mixed' spreads faults of every kind; 'churn' kills leaders around proposals and
    // commits with tiny appends, which is where commitment-rule mistakes (Figure 8) surface.
    this.profile = opts.faults === false ? 'calm' : rng.chance(0.25) ? 'churn' : 'mixed';
    const churn = this.profile === 'churn';
    const voters = churn || rng.chance(0.4) ? 5 : 3;
    const template = defaultConfig(asNodeId(1), () => 0);
    this.base = {
      ...template,
      preVote: rng.chance(0.85),
      checkQuorum: rng.chance(0.85),
      readMode: 'safe',
      earlyAppends: rng.chance(0.5),
      maxEntriesPerAppend: churn ? 1 : rng.pick([1, 2, 4, 16, 64]),
      maxBytesPerAppend: rng.pick([256, 4096, 1 << 20]),
      maxInflightMsgs: churn ? 1 : rng.pick([1, 2, 4, 16]),
      maxInflightBytes: rng.pick([512, 1 << 20]),
      maxSnapshotChunkBytes: rng.pick([64, 256, 4096]),
      maxCommittedBytesPerReady: rng.pick([200, 1 << 20]),
      testingBugs: opts.bugs ?? {},
    };
    // Lease reads rely on equal tick rates, which the simulator provides (every node ticks every TICK).
    if (this.base.checkQuorum && rng.chance(0.3)) this.base = { ...this.base, readMode: 'lease' };
    this.compactEvery = rng.pick([8, 30, 1_000_000]);
    this.maxSyncDelay = rng.pick([4, 4, 30]);
    const ids = Array.from({ length: voters }, (_, i) => asNodeId(i + 1));
    const boot = bootstrapSnapshot(ids);
    for (const id of ids) this.startNode(id, boot);
    this.nextNodeId = voters + 1;
    this.maxNodeId = voters + 2;
    const clientCount = opts.clients ?? (churn ? 12 : 3);
    for (let c = 0; c < clientCount; c++) {
      this.clients.push({
        name: `c${c}`,
        session: `c${c}`,
        incarnation: 0,
        seq: 0,
        openUnknown: [],
        op: undefined,
        leaderHint: asNodeId(1),
        lastSeen: new Map(),
      });
      this.queue.push(rng.int(0, 50), { kind: 'clientStart', client: c });
    }
    if (this.faults) {
      this.dropRate = rng.pick([0, 0.02, 0.1]);
      this.dupRate = rng.pick([0, 0.02, 0.05]);
      this.maxDelay = rng.pick([4, 10, 30]);
      this.crashAfterCommit = churn ? 0.5 : rng.pick([0, 0.02, 0.1]);
      this.crashAfterPropose = churn ? 0.6 : rng.pick([0, 0.02, 0.1]);
      if (churn) this.dropRate = 0;
      this.queue.push(rng.int(50, 300), { kind: 'fault' });
    }
  }

  stats(): SimStats {
    return {
      events: this.events,
      time: this.now,
      committed: this.checker.committedCount(),
      leaderTerms: 0,
      crashes: this.crashes,
      snapshotsSent: this.snapshotsSent,
      configChanges: this.configChanges,
      historyOps: this.history.length,
      livenessTime: this.livenessTime,
    };
  }

  run(): void {
    for (let i = 0; i < this.opts.steps; i++) this.step();
    this.enterCalm();
    const start = this.now;
    const bound = this.opts.livenessBound ?? LIVENESS_BOUND;
    let sentinel: { node: NodeId; index: LogIndex } | undefined;
    let proven = false;
    while (!proven) {
      if (this.now - start > bound) {
        throw new Failure(
          `Liveness: no leader committed a new command within ${bound} time units after faults stopped`,
        );
      }
      this.step();
      const leader = this.currentLeader();
      if (leader === undefined) continue;
      if (sentinel === undefined || sentinel.node !== leader.id) {
        const r = leader.raft!.propose(new TextEncoder().encode('liveness'));
        if (r.ok) sentinel = { node: leader.id, index: r.index };
        this.kick(leader);
      }
      if (sentinel !== undefined) {
        const n = this.nodes.get(sentinel.node)!;
        if (n.raft !== undefined && n.lastApplied >= sentinel.index) {
          const e = n.raft.logEntry(sentinel.index);
          proven =
            e === undefined || (e.kind === 'normal' && new TextDecoder().decode(e.data) === 'liveness');
          if (!proven) sentinel = undefined;
        }
      }
    }
    this.livenessTime = this.now - start;
    // Let outstanding client operations finish or time out, then check the history.
    const drainUntil = this.now + CLIENT_TIMEOUT * (MAX_TIMEOUTS + 2);
    while (this.now < drainUntil && this.clients.some((c) => c.op !== undefined)) this.step();
    for (const c of this.clients) if (c.op !== undefined) this.abandon(c);
    const lin = checkKvHistory(this.history);
    if (lin.ok === false) {
      throw new Failure(
        `Linearizability: history for key ${lin.key} is not linearizable:\n${describeOps(lin.ops)}`,
      );
    }
    if (lin.ok === 'unknown')
      throw new Failure(`Linearizability check gave up on key ${lin.key}: ${lin.reason}`);
  }

  private step(): void {
    const item = this.queue.pop();
    if (item === undefined) throw new Failure('event queue ran dry');
    this.now = item.time;
    this.events++;
    this.handle(item.ev);
    for (const n of this.nodes.values()) {
      if (n.raft === undefined) continue;
      const st = n.raft.status();
      if (st.role === 'leader') this.checker.observeLeader(st.term, n.id, n.raft);
      if (st.commit > n.commitSeen) {
        for (let i = Math.max(n.commitSeen + 1, st.snapshotIndex + 1); i <= st.commit; i++) {
          const e = n.raft.logEntry(asIndex(i));
          if (e !== undefined) this.checker.observeCommitted(n.id, e);
        }
        n.commitSeen = st.commit;
        // Targeted nemesis: a leader that dies right after advancing its commit index leaves the
        // cluster in the narrowest window there is (the commit known to one node only).
        if (st.role === 'leader' && !this.calm && this.rng.chance(this.crashAfterCommit)) this.knockOut(n);
      }
    }
  }

  private currentLeader(): SimNode | undefined {
    let best: SimNode | undefined;
    for (const n of this.nodes.values()) {
      if (n.raft === undefined || n.raft.status().role !== 'leader') continue;
      if (best === undefined || n.raft.status().term > best.raft!.status().term) best = n;
    }
    return best;
  }

  // ------------------------------------------------------------------ nodes

  private startNode(id: NodeId, boot: Snapshot): void {
    const cfg: RaftConfig = { ...this.base, id, rand: this.rng.fork().next };
    const node: SimNode = {
      id,
      disk: new SimDisk(boot),
      cfg,
      raft: undefined,
      sm: new KvStateMachine(),
      inc: 0,
      busy: false,
      persistScheduled: false,
      inflight: undefined,
      lastApplied: asIndex(0),
      commitSeen: 0,
      removed: false,
      appliedConfig: boot.meta.config,
      readsWaiting: new Map(),
    };
    this.nodes.set(id, node);
    this.boot(node);
  }

  private boot(n: SimNode): void {
    const storage = n.disk.load();
    n.raft = new Raft(n.cfg, storage);
    n.sm = KvStateMachine.restore(storage.snapshot.data);
    n.lastApplied = storage.snapshot.meta.index;
    n.commitSeen = 0;
    n.appliedConfig = storage.snapshot.meta.config;
    n.inc++;
    n.busy = false;
    n.persistScheduled = false;
    n.inflight = undefined;
    n.readsWaiting.clear();
    this.queue.push(this.now + this.rng.int(1, TICK), { kind: 'tick', node: n.id, inc: n.inc });
  }

  /** Takes a node out for a while: a crash (losing unsynced writes) or an isolation (keeping them). */
  private knockOut(n: SimNode): void {
    if (this.rng.chance(0.5)) {
      this.crash(n);
      this.queue.push(this.now + this.rng.int(20, 300), { kind: 'restart', node: n.id });
    } else {
      for (const other of this.nodes.keys()) {
        if (other === n.id) continue;
        this.blocked.add(`${n.id}>${other}`);
        this.blocked.add(`${other}>${n.id}`);
      }
      this.queue.push(this.now + this.rng.int(50, 400), { kind: 'rejoin', node: n.id });
    }
  }

  private crash(n: SimNode): void {
    if (n.raft === undefined) return;
    n.raft = undefined;
    n.disk.crash(this.rng);
    n.inc++;
    n.readsWaiting.clear();
    this.crashes++;
  }

  private kick(n: SimNode): void {
    if (n.raft === undefined || n.busy || n.persistScheduled || !n.raft.hasReady()) return;
    n.persistScheduled = true;
    this.queue.push(this.now + this.rng.int(0, 1), { kind: 'persist', node: n.id, inc: n.inc });
  }

  private handle(ev: SimEvent): void {
    switch (ev.kind) {
      case 'tick': {
        const n = this.nodes.get(ev.node)!;
        if (n.raft === undefined || n.inc !== ev.inc) return;
        n.raft.tick();
        this.queue.push(this.now + TICK, { kind: 'tick', node: n.id, inc: n.inc });
        this.kick(n);
        return;
      }
      case 'deliver': {
        const n = this.nodes.get(ev.msg.to);
        if (n?.raft === undefined || this.blocked.has(`${ev.msg.from}>${ev.msg.to}`)) return;
        n.raft.step(ev.msg);
        this.kick(n);
        return;
      }
      case 'persist':
        this.persist(ev.node, ev.inc);
        return;
      case 'sync':
        this.syncAndApply(ev.node, ev.inc);
        return;
      case 'fault':
        this.injectFault();
        if (!this.calm) this.queue.push(this.now + this.rng.int(20, 250), { kind: 'fault' });
        return;
      case 'heal':
        this.blocked.clear();
        return;
      case 'knockOut': {
        const n = this.nodes.get(ev.node)!;
        if (n.raft !== undefined && n.inc === ev.inc) this.knockOut(n);
        return;
      }
      case 'rejoin':
        for (const key of [...this.blocked]) {
          const [a, b] = key.split('>').map(Number);
          if (a === ev.node || b === ev.node) this.blocked.delete(key);
        }
        return;
      case 'restart': {
        const n = this.nodes.get(ev.node)!;
        if (n.raft === undefined && !n.removed) this.boot(n);
        return;
      }
      case 'clientStart':
        this.clientStart(ev.client);
        return;
      case 'clientAttempt':
        this.clientAttempt(ev.client, ev.opId);
        return;
      case 'clientTimeout':
        this.clientTimeout(ev.client, ev.opId, ev.attempt);
        return;
    }
  }

  private persist(id: NodeId, inc: number): void {
    const n = this.nodes.get(id)!;
    if (n.raft === undefined || n.inc !== inc) return;
    n.persistScheduled = false;
    if (n.busy || !n.raft.hasReady()) return;
    const raft = n.raft;
    const rd = raft.ready();
    const first = rd.entries[0];
    if (first !== undefined)
      this.checker.observePersist(id, rd.entries, raft.logTerm(asIndex(first.index - 1)));
    if (rd.snapshot !== undefined) n.disk.writeSnapshot(rd.snapshot);
    n.disk.writeEntries(rd.entries);
    if (rd.hardState !== undefined) n.disk.writeHardState(rd.hardState);
    // Leader appends may leave before the disk write completes (earlyAppends); everything else waits.
    for (const m of rd.earlyMessages) this.send(m);
    n.busy = true;
    n.inflight = rd;
    this.queue.push(this.now + (rd.mustSync ? this.rng.int(1, this.maxSyncDelay) : 0), {
      kind: 'sync',
      node: id,
      inc,
    });
  }

  private syncAndApply(id: NodeId, inc: number): void {
    const n = this.nodes.get(id)!;
    if (n.raft === undefined || n.inc !== inc || n.inflight === undefined) return;
    const rd = n.inflight;
    if (rd.mustSync) n.disk.sync();
    for (const m of rd.messages) this.send(m);
    if (rd.snapshot !== undefined) {
      n.sm = KvStateMachine.restore(rd.snapshot.data);
      n.lastApplied = rd.snapshot.meta.index;
      n.appliedConfig = rd.snapshot.meta.config;
    }
    for (const e of rd.committedEntries) {
      this.checker.observeApply(id, e, n.lastApplied);
      n.lastApplied = e.index;
      if (e.kind === 'config') {
        this.onConfigApplied(n, e.config);
        continue;
      }
      if (e.data.byteLength === 0 || e.data[0] !== 0x7b) continue; // no-op or liveness sentinel
      const cmd = decodeCommand(e.data);
      const result = n.sm.apply(cmd);
      this.clientWriteApplied(n, cmd.clientId, cmd.seq, result.kind === 'ok' ? result.output : result.reason);
    }
    for (const rs of rd.readStates) n.readsWaiting.set(rs.ctx, rs.index);
    for (const ctx of rd.failedReads) this.clientReadFailed(ctx);
    n.raft.advance(rd);
    n.busy = false;
    n.inflight = undefined;
    this.serveReads(n);
    this.maybeCompact(n);
    this.kick(n);
    this.applyRemovals();
  }

  private maybeCompact(n: SimNode): void {
    const raft = n.raft!;
    const st = raft.status();
    if (st.applied - st.snapshotIndex < this.compactEvery || st.applied !== n.lastApplied) return;
    const data = n.sm.snapshot();
    // Write the snapshot durably first (tmp + fsync + rename), then let the core drop the log prefix.
    const meta = raft.compact(st.applied, data);
    n.disk.saveCompactionSnapshot({ meta, data });
  }

  /** Members dropped by a committed configuration are decommissioned for good (after this Ready). */
  private onConfigApplied(n: SimNode, next: ConfState): void {
    const prev = n.appliedConfig;
    n.appliedConfig = next;
    for (const id of [...prev.voters, ...prev.learners]) {
      if (!next.voters.includes(id) && !next.learners.includes(id)) this.pendingRemovals.add(id);
    }
  }

  private applyRemovals(): void {
    for (const id of this.pendingRemovals) {
      const n = this.nodes.get(id);
      if (n === undefined || n.removed) continue;
      n.removed = true;
      this.crash(n);
    }
    this.pendingRemovals.clear();
  }

  private send(m: Message): void {
    if (m.type === 'snapshotChunk' && m.offset === 0) this.snapshotsSent++;
    if (this.blocked.has(`${m.from}>${m.to}`)) return;
    if (this.rng.chance(this.dropRate)) return;
    this.queue.push(this.now + this.rng.int(1, this.maxDelay), { kind: 'deliver', msg: m });
    if (this.rng.chance(this.dupRate)) {
      this.queue.push(this.now + this.rng.int(1, this.maxDelay * 2), { kind: 'deliver', msg: m });
    }
  }

  // ------------------------------------------------------------------ faults

  private liveMembers(): SimNode[] {
    return [...this.nodes.values()].filter((n) => !n.removed);
  }

  private injectFault(): void {
    if (this.calm) return;
    const rng = this.rng;
    const members = this.liveMembers();
    const roll = rng.int(0, 99);
    if (roll < 22) {
      const victim = rng.pick(members);
      if (victim.raft !== undefined) {
        this.crash(victim);
        this.queue.push(this.now + rng.int(20, 600), { kind: 'restart', node: victim.id });
      }
    } else if (roll < 34) {
      // Symmetric partition into two random sides.
      const ids = members.map((n) => n.id);
      const side = new Set(ids.filter(() => rng.chance(0.5)));
      for (const a of ids)
        for (const b of ids) if (side.has(a) !== side.has(b)) this.blocked.add(`${a}>${b}`);
      this.queue.push(this.now + rng.int(50, 800), { kind: 'heal' });
    } else if (roll < 42) {
      // Asymmetric: some links fail in one direction only.
      const ids = members.map((n) => n.id);
      for (let k = rng.int(1, 4); k > 0; k--) this.blocked.add(`${rng.pick(ids)}>${rng.pick(ids)}`);
      this.queue.push(this.now + rng.int(50, 800), { kind: 'heal' });
    } else if (roll < 52) {
      // Isolate one node (often the leader), rejoin later.
      const leader = this.currentLeader();
      const victim = leader !== undefined && rng.chance(0.6) ? leader : rng.pick(members);
      for (const other of members) {
        this.blocked.add(`${victim.id}>${other.id}`);
        this.blocked.add(`${other.id}>${victim.id}`);
      }
      this.queue.push(this.now + rng.int(100, 1000), { kind: 'heal' });
    } else if (roll < 62) {
      this.blocked.clear();
    } else if (roll < 72) {
      this.membershipChange();
    } else if (roll < 80) {
      const leader = this.currentLeader();
      if (leader !== undefined) {
        const voters = leader.raft!.status().config.voters.filter((v) => v !== leader.id);
        if (voters.length > 0) leader.raft!.transferLeader(rng.pick(voters));
        this.kick(leader);
      }
    } else if (roll < 88) {
      this.dropRate = rng.pick([0, 0.02, 0.1, 0.3]);
      this.dupRate = rng.pick([0, 0.02, 0.05]);
      this.maxDelay = rng.pick([4, 10, 30, 60]);
    } else {
      // Crash several nodes at once (possibly a majority), restart soon.
      for (const victim of members) {
        if (victim.raft !== undefined && rng.chance(0.5)) {
          this.crash(victim);
          this.queue.push(this.now + rng.int(10, 300), { kind: 'restart', node: victim.id });
        }
      }
    }
  }

  private membershipChange(): void {
    const leader = this.currentLeader();
    if (leader === undefined) return;
    const raft = leader.raft!;
    const cfg = raft.status().config;
    const rng = this.rng;
    if (cfg.learners.length > 0) {
      const r = raft.proposeConfChange({ type: 'promote', node: rng.pick(cfg.learners) });
      if (r.ok) this.configChanges++;
    } else if (cfg.voters.length < 5 && this.nextNodeId <= this.maxNodeId && rng.chance(0.6)) {
      const id = asNodeId(this.nextNodeId);
      const r = raft.proposeConfChange({ type: 'addLearner', node: id });
      if (r.ok) {
        this.configChanges++;
        this.nextNodeId++;
        this.startNode(id, bootstrapSnapshot([]));
      }
    } else if (cfg.voters.length > 3) {
      const r = raft.proposeConfChange({ type: 'remove', node: rng.pick(cfg.voters) });
      if (r.ok) this.configChanges++;
    }
    this.kick(leader);
  }

  private enterCalm(): void {
    this.calm = true;
    this.blocked.clear();
    this.dropRate = 0;
    this.dupRate = 0;
    this.maxDelay = 6;
    for (const n of this.nodes.values()) if (n.raft === undefined && !n.removed) this.boot(n);
  }

  // ------------------------------------------------------------------ clients

  private clientStart(c: number): void {
    const client = this.clients[c]!;
    if (client.op !== undefined || this.calm) return;
    const rng = this.rng;
    const key = rng.pick(this.profile === 'churn' ? KEYS : KEYS.slice(0, 3));
    const roll = rng.int(0, 9);
    // Session sequence numbers count commands that go through the log; reads do not use one.
    if (roll >= 4) client.seq++;
    const value = `${client.name}.${this.opIds}`; // unique per write (the checker relies on it)
    const input: KvInput =
      roll < 4
        ? { op: 'get', key }
        : roll < 7
          ? { op: 'put', key, value }
          : { op: 'cas', key, expected: rng.chance(0.7) ? (client.lastSeen.get(key) ?? null) : null, value };
    client.op = {
      id: this.opIds++,
      seq: client.seq,
      input,
      call: this.now,
      attempt: 0,
      timeouts: 0,
      target: client.leaderHint,
      done: false,
    };
    this.clientAttempt(c, client.op.id);
  }

  private clientAttempt(c: number, opId: number): void {
    const client = this.clients[c]!;
    const op = client.op;
    if (op === undefined || op.id !== opId) return;
    op.attempt++;
    if (op.timeouts >= MAX_TIMEOUTS || op.attempt > MAX_ATTEMPTS) {
      this.abandon(client);
      return;
    }
    const members = this.liveMembers();
    // Reads go anywhere sometimes (exercising follower ReadIndex); writes go to the believed leader.
    const target =
      op.attempt > 1 || this.rng.chance(op.input.op === 'get' ? 0.4 : 0.1)
        ? this.rng.pick(members).id
        : client.leaderHint;
    op.target = target;
    const n = this.nodes.get(target);
    const retrySoon = () => this.queue.push(this.now + 20, { kind: 'clientAttempt', client: c, opId });
    if (n?.raft === undefined) {
      retrySoon();
      return;
    }
    if (op.input.op === 'get') {
      const r = n.raft.readIndex(`${c}/${op.id}/${op.attempt}`);
      if (!r.ok) {
        retrySoon();
        return;
      }
    } else {
      const r = n.raft.propose(
        encodeCommand({
          clientId: client.session,
          seq: op.seq,
          ackedBelow: op.seq,
          time: this.now,
          input: op.input,
        }),
      );
      if (!r.ok) {
        if (r.code === 'not_leader' && r.leader !== 0) client.leaderHint = r.leader;
        retrySoon();
        return;
      }
      // Targeted nemesis: a leader that dies just after appending leaves an entry of its term in few logs,
      // the raw material of Figure 8.
      if (!this.calm && this.rng.chance(this.crashAfterPropose)) {
        this.queue.push(this.now + this.rng.int(0, 8), { kind: 'knockOut', node: n.id, inc: n.inc });
      }
    }
    this.kick(n);
    this.queue.push(this.now + CLIENT_TIMEOUT, {
      kind: 'clientTimeout',
      client: c,
      opId,
      attempt: op.attempt,
    });
  }

  private clientTimeout(c: number, opId: number, attempt: number): void {
    const op = this.clients[c]!.op;
    if (op === undefined || op.id !== opId || op.attempt !== attempt) return;
    op.timeouts++;
    this.clientAttempt(c, opId);
  }

  private abandon(client: SimClient): void {
    const op = client.op!;
    // A write that may or may not have happened: unknown outcome. A read has no effect; drop it.
    if (op.input.op !== 'get') {
      client.openUnknown.push(this.history.length);
      this.history.push({
        clientId: client.name,
        input: op.input,
        call: op.call,
        ret: undefined,
        output: undefined,
      });
    }
    this.finish(client);
  }

  private finish(client: SimClient): void {
    client.op = undefined;
    const c = this.clients.indexOf(client);
    this.queue.push(this.now + this.rng.int(1, 30), { kind: 'clientStart', client: c });
  }

  private complete(client: SimClient, output: string | boolean | null, leader: NodeId): void {
    const op = client.op!;
    this.history.push({ clientId: client.name, input: op.input, call: op.call, ret: this.now, output });
    if (op.input.op !== 'get') {
      // This command carried ackedBelow = its seq and has been applied, so the session now refuses every
      // earlier seq: the client's abandoned writes took effect before now or never will.
      for (const i of client.openUnknown) this.history[i] = { ...this.history[i]!, deadline: this.now };
      client.openUnknown = [];
    }
    if (op.input.op === 'get') client.lastSeen.set(op.input.key, output as string | null);
    else if (op.input.op === 'put' || output === true) client.lastSeen.set(op.input.key, op.input.value);
    client.leaderHint = leader;
    this.finish(client);
  }

  private clientWriteApplied(
    n: SimNode,
    clientId: string,
    seq: number,
    output: string | boolean | null,
  ): void {
    const client = this.clients.find((c) => c.session === clientId);
    const op = client?.op;
    if (client === undefined || op === undefined || op.input.op === 'get') return;
    if (op.seq !== seq || op.target !== n.id) return;
    if (output === 'session_expired') {
      // Refused without executing (the session table does not know us): register anew and move on.
      client.session = `${client.name}~${++client.incarnation}`;
      client.openUnknown = []; // the new session does not fence the old one's commands
      client.seq = 0;
      this.finish(client);
      return;
    }
    if (output === 'result_forgotten') {
      throw new Failure(
        `session forgot the result of the client's current command ${clientId}#${seq} on node ${n.id}`,
      );
    }
    this.complete(client, output, n.id);
  }

  private serveReads(n: SimNode): void {
    for (const [ctx, index] of n.readsWaiting) {
      if (n.lastApplied < index) continue;
      n.readsWaiting.delete(ctx);
      const [c, opId, attempt] = ctx.split('/').map(Number) as [number, number, number];
      const client = this.clients[c]!;
      const op = client.op;
      if (op === undefined || op.id !== opId || op.attempt !== attempt || op.input.op !== 'get') continue;
      this.complete(client, n.sm.get(op.input.key), n.raft!.status().leader);
    }
  }

  private clientReadFailed(ctx: string): void {
    const [c, opId, attempt] = ctx.split('/').map(Number) as [number, number, number];
    const op = this.clients[c]?.op;
    if (op === undefined || op.id !== opId || op.attempt !== attempt) return;
    this.queue.push(this.now + 5, { kind: 'clientAttempt', client: c, opId });
  }
}
