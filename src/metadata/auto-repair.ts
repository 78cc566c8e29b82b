/**
 * metadata/auto-repair — the cluster leader's schedule of automatic repairs (DESIGN §4, "Repair"): which
 * damaged files are handed to which chunk server, when, and when to try again. Chunk servers do the
 * rebuilding (the same code as `dogfs admin repair`, client/repair.ts); this only decides who and when.
 *
 * Soft state of one leadership, like the shard-health notes it is fed from: a new leader starts empty,
 * learns what is being repaired from the servers' heartbeats (each names the files it holds), and finds
 * the damage again with its own scans. It needs no Raft entry: two servers repairing one file by mistake
 * cost work, not data, since each commit is a compare-and-set on the shard's previous holder.
 *
 * Why a delay before a file is handed out: most damage is a server restarting or a short partition, and
 * rebuilding everything it holds at once would move a whole disk's worth of shards for nothing (HDFS waits
 * ~10 minutes before it declares a DataNode dead; Ceph as long before it marks an OSD out). Why a backoff
 * per file: some damage cannot be repaired yet (no live server outside the block group's holders, or
 * fewer than K sources), and handing it out on every scan would keep a worker spinning.
 *
 * No I/O and no clock: the service hands in its times, so the schedule is tested without waiting.
 */
import { assert } from '../common/assert.js';

export interface AutoRepairLimits {
  /** How long a file must have been seen damaged before it is handed out. */
  readonly delayMs: number;
  /** Files handed out and not yet done, over the whole cluster. */
  readonly maxInFlight: number;
  /** Files one chunk server is handed at once (it repairs them one after another). */
  readonly perServer: number;
  /** Damaged files remembered (their first sighting and backoff); more are found by later scans. */
  readonly maxTracked: number;
  /** After a repair of a file ends with the file still damaged, the wait before the next, doubling. */
  readonly retryBaseMs: number;
  readonly retryMaxMs: number;
  /** An assignment its server has not been told of this long (its heartbeats stopped) is withdrawn. */
  readonly undeliveredMs: number;
}

export const DEFAULT_AUTO_REPAIR_LIMITS: Omit<AutoRepairLimits, 'delayMs'> = {
  // A server repairs one file at a time (client/repair-worker.ts): that is the throttle. What it is handed
  // at once is its queue, so that many small files do not wait a heartbeat round trip each (one file per
  // server per heartbeat left 298 of a chaos run's files damaged 20 s after the heal).
  maxInFlight: 32,
  perServer: 8,
  maxTracked: 10_000,
  retryBaseMs: 10_000,
  retryMaxMs: 10 * 60_000,
  undeliveredMs: 30_000,
};

/** Files one heartbeat may name as being repaired (the worker's queue is smaller). */
export const MAX_REPAIRING_NAMED = 64;

export interface RepairAssignment {
  readonly path: string;
  readonly server: string;
  /** When it was handed out (or, adopted from a heartbeat, first heard of). */
  readonly sinceMs: number;
}

interface Assignment extends RepairAssignment {
  /** When the server was told (in a heartbeat's answer); undefined until then. */
  deliveredAtMs: number | undefined;
}

export class AutoRepairSchedule {
  /** Damaged files and when this leadership first saw each damaged: insertion order is first-seen order. */
  private readonly damagedSince = new Map<string, number>();
  private readonly retry = new Map<string, { attempts: number; notBeforeMs: number }>();
  private readonly assigned = new Map<string, Assignment>();
  /** Why the latest repair of a tracked file did not finish, as its server said. */
  private readonly unfinished = new Map<string, { reason: string; server: string; atMs: number }>();

  constructor(readonly limits: AutoRepairLimits) {
    assert(limits.delayMs >= 0 && limits.maxInFlight >= 1 && limits.perServer >= 1, 'auto-repair limits');
    assert(limits.maxTracked >= limits.maxInFlight, 'auto-repair tracks at least what it runs');
  }

  /**
   * A walk's findings: every damaged file this schedule tracks (the walk names those whatever their
   * number) and some new ones. A tracked file not named is repaired, or gone, and is forgotten with its
   * backoff; new ones are tracked from now while there is room (`urgent` ones as if seen a delay ago).
   */
  observeScan(damaged: readonly string[], nowMs: number, urgent?: ReadonlySet<string>): void {
    const named = new Set(damaged);
    for (const path of this.damagedSince.keys()) {
      if (named.has(path)) continue;
      this.damagedSince.delete(path);
      this.retry.delete(path);
      this.unfinished.delete(path);
    }
    for (const path of damaged) {
      if (this.damagedSince.size >= this.limits.maxTracked) break;
      // An urgent file (its shards are on a server being drained) waits no delay.
      if (!this.damagedSince.has(path))
        this.damagedSince.set(path, urgent?.has(path) ? nowMs - this.limits.delayMs : nowMs);
    }
  }

  /** Whether `path` is tracked as damaged (a walk names every such file it finds still damaged). */
  isTracked(path: string): boolean {
    return this.damagedSince.has(path);
  }

  /**
   * Hands eligible files (damaged for the delay, not backing off, not assigned) to `workers` (live servers
   * that take repairs), the least busy first; `pick` chooses among equally busy ones (a random index).
   * Returns the new assignments; each is told to its server in that server's next heartbeat answer.
   */
  plan(workers: readonly string[], nowMs: number, pick: (n: number) => number): RepairAssignment[] {
    // An assignment whose server has not heartbeated since is withdrawn, so a silent server (not yet
    // declared dead) does not hold files that another could repair.
    for (const [path, a] of this.assigned) {
      if (a.deliveredAtMs === undefined && nowMs - a.sinceMs > this.limits.undeliveredMs)
        this.assigned.delete(path);
    }
    const load = new Map<string, number>(workers.map((w) => [w, 0]));
    for (const a of this.assigned.values())
      if (load.has(a.server)) load.set(a.server, load.get(a.server)! + 1);
    const made: RepairAssignment[] = [];
    for (const [path, since] of this.damagedSince) {
      if (this.assigned.size >= this.limits.maxInFlight) break;
      if (nowMs - since < this.limits.delayMs) continue;
      if (this.assigned.has(path)) continue;
      if ((this.retry.get(path)?.notBeforeMs ?? 0) > nowMs) continue;
      const server = this.leastBusy(load, pick);
      if (server === undefined) break;
      load.set(server, load.get(server)! + 1);
      // Tried again now: the last attempt's reason is no longer the news (it is said again if it recurs).
      this.unfinished.delete(path);
      const assignment: Assignment = { path, server, sinceMs: nowMs, deliveredAtMs: undefined };
      this.assigned.set(path, assignment);
      made.push({ path, server, sinceMs: nowMs });
    }
    return made;
  }

  private leastBusy(load: ReadonlyMap<string, number>, pick: (n: number) => number): string | undefined {
    let best = Number.POSITIVE_INFINITY;
    let candidates: string[] = [];
    for (const [server, n] of load) {
      if (n >= this.limits.perServer || n > best) continue;
      if (n < best) {
        best = n;
        candidates = [];
      }
      candidates.push(server);
    }
    if (candidates.length === 0) return undefined;
    const i = pick(candidates.length);
    assert(Number.isInteger(i) && i >= 0 && i < candidates.length, 'pick returns an index');
    return candidates[i];
  }

  /**
   * A heartbeat from `server` that arrived at `nowMs`, naming the files it is repairing (queued or
   * running). Returns the files to hand it in the answer. An assignment told to the server earlier and
   * no longer named has ended: the repair finished or failed (or the answer that carried it was lost); if
   * the file is still damaged at the next scan it is handed out again after a backoff.
   */
  heartbeat(server: string, takesRepairs: boolean, repairing: readonly string[], nowMs: number): string[] {
    const named = new Set(repairing.slice(0, MAX_REPAIRING_NAMED));
    for (const [path, a] of this.assigned) {
      if (a.server !== server || a.deliveredAtMs === undefined || named.has(path)) continue;
      // Told in the answer to a later heartbeat than this one (which waited on a slow commit, and whose
      // list was made before the server heard of it): not ended.
      if (a.deliveredAtMs > nowMs) continue;
      this.assigned.delete(path);
      this.backOff(path, nowMs);
    }
    // Repairs this leadership did not hand out (an earlier leader did): known now, so not handed twice.
    // At most a server's share, so a server naming files it is not repairing cannot hold the cluster's.
    let held = 0;
    for (const a of this.assigned.values()) if (a.server === server) held++;
    for (const path of named) {
      if (held >= this.limits.perServer) break;
      if (this.assigned.has(path)) continue;
      this.assigned.set(path, { path, server, sinceMs: nowMs, deliveredAtMs: nowMs });
      held++;
    }
    const tell: string[] = [];
    for (const a of this.assigned.values()) {
      if (a.server !== server || a.deliveredAtMs !== undefined) continue;
      if (!takesRepairs) {
        this.assigned.delete(a.path);
        continue;
      }
      a.deliveredAtMs = nowMs;
      tell.push(a.path);
    }
    return tell;
  }

  private backOff(path: string, nowMs: number): void {
    if (!this.damagedSince.has(path)) return; // not tracked: nothing to hold back
    const attempts = (this.retry.get(path)?.attempts ?? 0) + 1;
    const waitMs = Math.min(this.limits.retryMaxMs, this.limits.retryBaseMs * 2 ** (attempts - 1));
    this.retry.set(path, { attempts, notBeforeMs: nowMs + waitMs });
  }

  /**
   * What a server said of its repairs that did not finish. Kept for files still tracked as damaged (a
   * file repaired since, by anyone, is forgotten at the next walk), at most one reason per file.
   */
  noteUnfinished(server: string, failures: readonly { path: string; reason: string }[], nowMs: number): void {
    for (const { path, reason } of failures) {
      if (!this.damagedSince.has(path)) continue;
      // Handed to another server since: what this one says is an older attempt's.
      const holder = this.assigned.get(path)?.server;
      if (holder !== undefined && holder !== server) continue;
      const known = this.unfinished.get(path);
      if (known !== undefined && known.reason === reason && known.server === server) continue;
      this.unfinished.set(path, { reason, server, atMs: nowMs });
    }
  }

  /** Tracked files whose latest repair did not finish, and why, newest first (for `admin report`). */
  unfinishedRepairs(): { path: string; reason: string; server: string; atMs: number }[] {
    return [...this.unfinished].map(([path, u]) => ({ path, ...u })).sort((a, b) => b.atMs - a.atMs);
  }

  /** A server declared dead (or no longer taking repairs): what it was handed is handed out again. */
  serverGone(server: string): void {
    for (const [path, a] of this.assigned) if (a.server === server) this.assigned.delete(path);
    for (const [path, u] of this.unfinished) if (u.server === server) this.unfinished.delete(path);
  }

  /** Assignments now, oldest first (for `admin report`). */
  inProgress(): RepairAssignment[] {
    return [...this.assigned.values()]
      .map(({ path, server, sinceMs }) => ({ path, server, sinceMs }))
      .sort((a, b) => a.sinceMs - b.sinceMs);
  }

  /** Files seen damaged and not yet known repaired. */
  get trackedCount(): number {
    return this.damagedSince.size;
  }

  /** Leadership ended: everything here was this leadership's view. */
  clear(): void {
    this.damagedSince.clear();
    this.retry.clear();
    this.assigned.clear();
    this.unfinished.clear();
  }
}
