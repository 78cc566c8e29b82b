/**
 * metadata/state/placement — choosing the chunk servers of a new block group. A pure function: the same
 * servers, policy and seed give the same answer on every machine, so the leader can choose and put the
 * choice into the allocateBlockGroup command (the state machine then only checks it).
 *
 * Rules:
 * - only live servers with free space (capacity > used) that are not excluded; K+M distinct ones;
 * - spread over failure domains: each pick goes to a domain with the fewest picks so far, so with D
 *   domains every domain gets ⌊n/D⌋ or ⌈n/D⌉ shards (one per domain when D >= K+M). A server without a
 *   label is a domain of its own (unknown means "assume independent");
 * - weighted by free space: among the least-used domains, one is drawn with probability proportional
 *   to its servers' free bytes, then a server within it likewise;
 * - fewer than `minDurableShards(K, M)` (K+1; K when M <= 1) eligible servers: refused with
 *   FAILED_PRECONDITION, which callers do not retry: a write should fail now with the counts in its
 *   message, not wait out its deadline for servers that may never come back. Between that and K+M: as many as possible, data shards
 *   first, and `missing` lists the shard indexes left without a target (servers[i] === '').
 */
import { Prng } from '../../consensus/prng.js';
import { minDurableShards } from './commands.js';
import { type Failure, fail } from './result.js';

export interface PlacementCandidate {
  readonly id: string;
  readonly failureDomain: string;
  readonly capacityBytes: number;
  readonly usedBytes: number;
  readonly state: 'alive' | 'dead';
}

export interface PlacementRequest {
  readonly servers: readonly PlacementCandidate[];
  readonly dataShards: number;
  readonly parityShards: number;
  /** Any integer; the leader may use e.g. the Raft index of the proposal. */
  readonly seed: number;
  /** Servers not to use (e.g. holders of the surviving shards, when placing a repair). */
  readonly exclude?: readonly string[];
  /**
   * Servers already holding shards of the group (a repair's survivors): their failure domains count as
   * picked once each, so new shards go to other domains first.
   */
  readonly occupied?: readonly string[];
}

export interface Placement {
  readonly ok: true;
  /** One per shard index, K+M long; '' where no server could be given. */
  readonly servers: readonly string[];
  /** Shard indexes without a target (always the highest, parity first to go). */
  readonly missing: readonly number[];
}

interface Domain {
  readonly key: string;
  readonly servers: { id: string; free: number }[];
  picks: number;
}

function freeBytes(s: PlacementCandidate): number {
  return Math.max(0, s.capacityBytes - s.usedBytes);
}

/** Draws an index with probability proportional to weights[i] (all > 0). */
function weightedIndex(weights: readonly number[], rand: () => number): number {
  let total = 0;
  for (const w of weights) total += w;
  let x = rand() * total;
  for (let i = 0; i < weights.length; i++) {
    x -= weights[i]!;
    if (x < 0) return i;
  }
  return weights.length - 1;
}

export function placeBlockGroup(request: PlacementRequest): Placement | Failure {
  const k = request.dataShards;
  const m = request.parityShards;
  if (!Number.isInteger(k) || !Number.isInteger(m) || k < 1 || m < 0)
    return fail('INVALID_ARGUMENT', `placement: bad geometry K=${k} M=${m}`);
  const total = k + m;
  const excluded = new Set(request.exclude ?? []);
  const eligible = request.servers
    .filter((s) => s.state === 'alive' && !excluded.has(s.id) && freeBytes(s) > 0)
    .slice()
    // Input order must not matter: sort by id (ids are unique in the registry).
    .sort((a, b) => (a.id < b.id ? -1 : a.id > b.id ? 1 : 0));
  const need = minDurableShards(k, m);
  if (eligible.length < need) {
    const live = request.servers.filter((s) => s.state === 'alive').length;
    return fail(
      'FAILED_PRECONDITION',
      `placement: ${eligible.length} usable chunk servers (${live} live of ${request.servers.length} registered); ` +
        `${k}+${m} shards need at least ${need}, ideally ${total}`,
    );
  }
  const byKey = new Map<string, Domain>();
  for (const s of eligible) {
    const key = s.failureDomain === '' ? `\0server:${s.id}` : s.failureDomain;
    let domain = byKey.get(key);
    if (domain === undefined) {
      domain = { key, servers: [], picks: 0 };
      byKey.set(key, domain);
    }
    domain.servers.push({ id: s.id, free: freeBytes(s) });
  }
  const domains = [...byKey.values()].sort((a, b) => (a.key < b.key ? -1 : a.key > b.key ? 1 : 0));
  for (const id of request.occupied ?? []) {
    const server = request.servers.find((s) => s.id === id);
    if (server === undefined) continue;
    const domain = byKey.get(server.failureDomain === '' ? `\0server:${server.id}` : server.failureDomain);
    if (domain !== undefined) domain.picks++;
  }
  const prng = new Prng(request.seed >>> 0);
  const n = Math.min(total, eligible.length);
  const chosen: string[] = [];
  for (let pick = 0; pick < n; pick++) {
    let fewest = Number.POSITIVE_INFINITY;
    for (const d of domains) if (d.servers.length > 0 && d.picks < fewest) fewest = d.picks;
    const open = domains.filter((d) => d.servers.length > 0 && d.picks === fewest);
    const domain =
      open[
        weightedIndex(
          open.map((d) => d.servers.reduce((sum, s) => sum + s.free, 0)),
          prng.next,
        )
      ]!;
    const at = weightedIndex(
      domain.servers.map((s) => s.free),
      prng.next,
    );
    chosen.push(domain.servers[at]!.id);
    domain.servers.splice(at, 1);
    domain.picks++;
  }
  const servers = new Array<string>(total).fill('');
  for (let i = 0; i < chosen.length; i++) servers[i] = chosen[i]!;
  const missing: number[] = [];
  for (let i = chosen.length; i < total; i++) missing.push(i);
  return { ok: true, servers, missing };
}
