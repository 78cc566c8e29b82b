/**
 * metadata/rebalance — which chunk servers hold more than their share (DESIGN §4: "move shards toward
 * even usage"). Soft state of group 0's leader, time-free and pure: each duty round hands it the servers
 * as the cluster group records them (capacity and used bytes from their heartbeats), and it says which
 * ones shed. Automatic repair then moves, in a cluster with nothing damaged, a few files at a time that
 * have a shard on a shedding server: the shard is copied to another server (PlanRepair names it
 * `readable`, as a drain's: the repairer reads that one copy, and rebuilds from the rest of its block
 * group only when the copy fails) and the old copy deleted once the new location is committed.
 *
 * A server sheds when its share of its capacity in use is more than START_ABOVE_MEAN over the cluster's
 * (all used over all capacity, alive servers not being drained), and stops at STOP_ABOVE_MEAN: the gap
 * between the two keeps a server near the line from starting and stopping with every heartbeat. Which
 * shard moves where is the service's (`rebalanceMove`): never to a server that would crowd one failure
 * domain with more of a group's shards or end fuller than the source; when nothing can move,
 * rebalancing pauses.
 */
import { assert } from '../common/assert.js';

/** Usage above the cluster's at which a server starts shedding, and at which it stops (fractions of capacity). */
export const START_ABOVE_MEAN = 0.1;
export const STOP_ABOVE_MEAN = 0.05;

export interface ServerUsage {
  readonly id: string;
  readonly alive: boolean;
  readonly draining: boolean;
  readonly capacityBytes: number;
  readonly usedBytes: number;
}

export class RebalancePlan {
  private readonly shedding = new Map<string, { usage: number; mean: number }>();
  private pausedUntilMs = 0;

  /**
   * Takes the servers' latest usage at `nowMs`; returns the ids that started or stopped shedding. While
   * paused (`pause`), none sheds.
   */
  update(nowMs: number, servers: readonly ServerUsage[]): { started: string[]; stopped: string[] } {
    const counted = servers.filter((s) => s.alive && !s.draining && s.capacityBytes > 0);
    let used = 0;
    let capacity = 0;
    for (const s of counted) {
      used += Math.min(s.usedBytes, s.capacityBytes);
      capacity += s.capacityBytes;
    }
    const mean = capacity === 0 ? 0 : used / capacity;
    assert(mean >= 0 && mean <= 1, 'mean usage is a fraction');
    const started: string[] = [];
    const stopped: string[] = [];
    const now = new Set<string>();
    for (const s of nowMs < this.pausedUntilMs ? [] : counted) {
      const usage = Math.min(s.usedBytes, s.capacityBytes) / s.capacityBytes;
      const was = this.shedding.has(s.id);
      if (usage > mean + (was ? STOP_ABOVE_MEAN : START_ABOVE_MEAN)) {
        now.add(s.id);
        this.shedding.set(s.id, { usage, mean });
        if (!was) started.push(s.id);
      }
    }
    for (const id of this.shedding.keys()) {
      if (now.has(id)) continue;
      this.shedding.delete(id);
      stopped.push(id);
    }
    return { started, stopped };
  }

  /**
   * No server sheds until `untilMs`: a walk found nothing on the shedding servers that could move (every
   * move would crowd a failure domain or overfill its target), and asking again every few
   * seconds would walk the namespace for nothing. The next update drops the shedding servers.
   */
  pause(untilMs: number): void {
    this.pausedUntilMs = Math.max(this.pausedUntilMs, untilMs);
  }

  isShedding(id: string): boolean {
    return this.shedding.has(id);
  }

  /** The shedding servers with their usage and the cluster's mean at the last update, by id. */
  sheddingServers(): { id: string; usage: number; mean: number }[] {
    return [...this.shedding]
      .map(([id, u]) => ({ id, ...u }))
      .sort((a, b) => (a.id < b.id ? -1 : a.id > b.id ? 1 : 0));
  }

  clear(): void {
    this.shedding.clear();
    this.pausedUntilMs = 0;
  }
}
