import assert from 'node:assert/strict';
import { test } from 'node:test';
import fc from 'fast-check';
import {
  type ClusterCommand,
  ClusterState,
  DEFAULT_CLUSTER_SETTINGS,
  decodeClusterCommand,
  decodeClusterResult,
  encodeClusterCommand,
  encodeClusterResult,
  type PlacementCandidate,
  placeBlockGroup,
  StateCodecError,
} from '../../src/metadata/state/index.js';

/** A replica's state applying each command at the next log index, as it applies its log. */
class Replica extends ClusterState {
  private last = 0;
  override apply<C extends ClusterCommand>(cmd: C, index = this.last + 1) {
    this.last = index;
    return super.apply(cmd, index);
  }
  override applyEncoded(bytes: Uint8Array, index = this.last + 1) {
    this.last = index;
    return super.applyEncoded(bytes, index);
  }
}

function register(id: string, timeMs: number, domain = '', clusterId = ''): ClusterCommand {
  return {
    clusterId,
    op: 'register',
    timeMs,
    id,
    dataAddr: `127.0.0.1:${1000 + id.length}`,
    controlAddr: '127.0.0.1:2000',
    failureDomain: domain,
    capacityBytes: 1000,
    usedBytes: 10,
  };
}

test('cluster: register, heartbeat, declare dead (compare-and-set), alive again', () => {
  const cluster = new Replica();
  const reg = cluster.apply(register('cs1', 100, 'rack-a'));
  assert.ok(
    reg.ok &&
      reg.op === 'register' &&
      reg.heartbeatIntervalMs === DEFAULT_CLUSTER_SETTINGS.heartbeatIntervalMs,
  );
  cluster.apply(register('cs2', 100, 'rack-b'));
  const hb = cluster.apply({
    op: 'heartbeat',
    timeMs: 600,
    id: 'cs1',
    capacityBytes: 2000,
    usedBytes: 500,
    shardCount: 7,
    activeTransfers: 2,
  });
  assert.deepEqual(hb, { ok: true, op: 'heartbeat', reregister: false, dead: false });
  const unknown = cluster.apply({
    op: 'heartbeat',
    timeMs: 600,
    id: 'ghost',
    capacityBytes: 1,
    usedBytes: 0,
    shardCount: 0,
    activeTransfers: 0,
  });
  assert.ok(unknown.ok && unknown.reregister);
  assert.equal(cluster.server('cs1')!.usedBytes, 500);
  assert.equal(cluster.server('cs1')!.lastHeartbeatMs, 600);
  // At 10_550 the leader sees cs2 silent since 100 (past deadAfter = 10 s), but cs1 (600) not yet.
  const silent = cluster.silentServers(10_550);
  assert.deepEqual(silent, [{ id: 'cs2', silentSinceMs: 100 }]);
  // A heartbeat committed between the leader's decision and its command wins the race.
  cluster.apply({
    op: 'heartbeat',
    timeMs: 10_700,
    id: 'cs2',
    capacityBytes: 1000,
    usedBytes: 10,
    shardCount: 0,
    activeTransfers: 0,
  });
  const stale = cluster.apply({ op: 'declareDead', timeMs: 10_701, id: 'cs2', silentSinceMs: 100 });
  assert.ok(stale.ok && !stale.changed);
  assert.equal(cluster.server('cs2')!.state, 'alive');
  const dead = cluster.apply({ op: 'declareDead', timeMs: 30_000, id: 'cs2', silentSinceMs: 10_700 });
  assert.ok(dead.ok && dead.changed);
  assert.equal(cluster.server('cs2')!.state, 'dead');
  assert.equal(cluster.server('cs2')!.stateSinceMs, 30_000);
  // A dead server's heartbeat is recorded but does not revive it: the leader decides with markAlive.
  const back = cluster.apply({
    op: 'heartbeat',
    timeMs: 31_000,
    id: 'cs2',
    capacityBytes: 1000,
    usedBytes: 10,
    shardCount: 0,
    activeTransfers: 0,
  });
  assert.ok(back.ok && back.dead);
  assert.equal(cluster.server('cs2')!.state, 'dead');
  const alive = cluster.apply({ op: 'markAlive', timeMs: 31_001, id: 'cs2' });
  assert.ok(alive.ok && alive.changed);
  assert.equal(cluster.server('cs2')!.state, 'alive');
  const again = cluster.apply({ op: 'markAlive', timeMs: 31_002, id: 'cs2' });
  assert.ok(again.ok && !again.changed);
  const missing = cluster.apply({ op: 'declareDead', timeMs: 1, id: 'nope', silentSinceMs: 1 });
  assert.ok(!missing.ok && missing.code === 'NOT_FOUND');
  assert.deepEqual(
    cluster.servers().map((s) => s.id),
    ['cs1', 'cs2'],
  );
});

function heartbeat(id: string, timeMs: number, indexed?: boolean): ClusterCommand {
  return {
    op: 'heartbeat',
    timeMs,
    id,
    capacityBytes: 1000,
    usedBytes: 10,
    shardCount: 0,
    activeTransfers: 0,
    ...(indexed === undefined ? {} : { indexed }),
  };
}

test('cluster: declareDead loses to a heartbeat logged after the leader judged, even one of the same millisecond', () => {
  const cluster = new Replica();
  cluster.apply({ ...register('cs1', 100), indexed: true }, 1);
  // The leader, having applied through index 1, judges at 10_200: cs1 silent since 100.
  assert.deepEqual(cluster.silentServers(10_200), [{ id: 'cs1', silentSinceMs: 100 }]);
  const judged = {
    op: 'declareDead',
    timeMs: 10_200,
    id: 'cs1',
    silentSinceMs: 100,
    silentThroughIndex: 1,
  } as const;
  // Before that commits, cs1 heartbeats through a leader whose clock is behind the state's: the beat gets
  // the state's time, 100, the very millisecond judged by.
  cluster.apply(heartbeat('cs1', 90, true), 2);
  assert.equal(cluster.server('cs1')?.lastHeartbeatMs, 100);
  assert.equal(cluster.server('cs1')?.lastHeartbeatIndex, 2);
  const raced = cluster.apply(judged, 3);
  assert.ok(raced.ok && !raced.changed, 'heard at index 2, after the index judged by');
  assert.equal(cluster.server('cs1')?.state, 'alive');
  // Judged again with nothing heard since: dead.
  const dead = cluster.apply({ ...judged, timeMs: 20_000, silentThroughIndex: 3 }, 4);
  assert.ok(dead.ok && dead.changed);
  // The index is state: snapshots keep it, commands carry their new fields.
  assert.equal(ClusterState.restore(cluster.snapshot()).server('cs1')?.lastHeartbeatIndex, 2);
  for (const cmd of [judged, heartbeat('cs1', 5, true), { ...register('cs1', 5), indexed: true }])
    assert.deepEqual(decodeClusterCommand(encodeClusterCommand(cmd)), cmd);
  const refused = cluster.apply({ ...judged, silentThroughIndex: -1 }, 5);
  assert.ok(!refused.ok && refused.code === 'INVALID_ARGUMENT');
});

test('cluster: entries and snapshots from before heartbeat indexes read, and apply, as they did', () => {
  // Encoded without the new fields, a command is byte for byte what was logged before they existed, and
  // reads back without them.
  const legacy = [heartbeat('cs1', 90), register('cs1', 100)];
  for (const cmd of legacy) assert.deepEqual(decodeClusterCommand(encodeClusterCommand(cmd)), cmd);
  assert.equal(
    encodeClusterCommand(heartbeat('cs1', 90, true)).length,
    encodeClusterCommand(heartbeat('cs1', 90)).length + 1,
  );
  // Such a heartbeat records no index, and such a declareDead judges by time alone: the tie goes as it
  // went (dead), on every replica alike.
  const cluster = new Replica();
  cluster.apply(register('cs1', 100));
  cluster.apply(heartbeat('cs1', 90));
  assert.equal(cluster.server('cs1')?.lastHeartbeatIndex, 0);
  const old = cluster.apply({ op: 'declareDead', timeMs: 10_200, id: 'cs1', silentSinceMs: 100 });
  assert.ok(old.ok && old.changed);
  // A snapshot from before ends after the cluster id: its servers restore with index 0, the rest equal.
  const replica = new Replica();
  replica.apply({ ...register('cs1', 100), indexed: true }, 7);
  replica.apply({ ...register('cs2', 100), indexed: true }, 8);
  const snapshot = replica.snapshot();
  const before = ClusterState.restore(snapshot.subarray(0, snapshot.length - 3)); // count 2, indexes 7, 8
  assert.deepEqual(
    before.servers(),
    replica.servers().map((s) => ({ ...s, lastHeartbeatIndex: 0 })),
  );
  assert.deepEqual(ClusterState.restore(snapshot).servers(), replica.servers());
  const lying = snapshot.slice();
  lying[lying.length - 3] = 3; // three indexes for two servers
  assert.throws(() => ClusterState.restore(lying), StateCodecError);
});

test('cluster: bad inputs are refused and change nothing; settings are validated', () => {
  const cluster = new Replica();
  cluster.apply(register('cs1', 100));
  const hash = cluster.stateHash();
  const refuse = (cmd: ClusterCommand, code = 'INVALID_ARGUMENT') => {
    const r = cluster.apply(cmd);
    assert.ok(!r.ok && r.code === code, JSON.stringify(r));
  };
  refuse(register('', 100));
  refuse(register('x'.repeat(200), 100));
  refuse({ ...register('cs3', 100), capacityBytes: -1 } as ClusterCommand);
  refuse({ ...register('cs3', 100), dataAddr: '' } as ClusterCommand);
  refuse({
    op: 'heartbeat',
    timeMs: 100,
    id: 'cs1',
    capacityBytes: 1.5,
    usedBytes: 0,
    shardCount: 0,
    activeTransfers: 0,
  });
  refuse({ op: 'setSettings', timeMs: 100, settings: { ...DEFAULT_CLUSTER_SETTINGS, defaultEc: 'rs-0-0' } });
  refuse({ op: 'setSettings', timeMs: 100, settings: { ...DEFAULT_CLUSTER_SETTINGS, stripeSize: 1000 } });
  refuse({
    op: 'setSettings',
    timeMs: 100,
    settings: { ...DEFAULT_CLUSTER_SETTINGS, blockGroupMaxBytes: 4096 },
  });
  refuse({ op: 'setSettings', timeMs: 100, settings: { ...DEFAULT_CLUSTER_SETTINGS, deadAfterMs: 1000 } });
  assert.equal(cluster.stateHash(), hash);
  const set = cluster.apply({
    op: 'setSettings',
    timeMs: 200,
    settings: { ...DEFAULT_CLUSTER_SETTINGS, defaultEc: 'rs-4-2', blockGroupMaxBytes: 12 << 20 },
  });
  assert.ok(set.ok);
  assert.equal(cluster.settings.defaultEc, 'rs-4-2');
  assert.equal(DEFAULT_CLUSTER_SETTINGS.stripeSize, 6 << 20);
});

test('cluster: commands, results and snapshots round-trip; replicas agree; bad bytes are clear errors', () => {
  const commands: ClusterCommand[] = [];
  for (let i = 0; i < 200; i++) {
    const id = `cs${i % 13}`;
    const t = 1000 + i * 500;
    switch (i % 6) {
      case 0:
        commands.push(register(id, t, `rack-${i % 3}`));
        break;
      case 1:
        commands.push({
          op: 'heartbeat',
          timeMs: t,
          id,
          capacityBytes: 5000 + i,
          usedBytes: i,
          shardCount: i,
          activeTransfers: i % 4,
        });
        break;
      case 2:
        commands.push({ op: 'declareDead', timeMs: t, id, silentSinceMs: Math.max(0, t - 20_000) });
        break;
      case 3:
        commands.push({ op: 'markAlive', timeMs: t, id });
        break;
      case 4:
        commands.push({ op: 'setDraining', timeMs: t, id, draining: i % 4 === 0 });
        break;
      default:
        commands.push({
          op: 'setSettings',
          timeMs: t,
          settings: { ...DEFAULT_CLUSTER_SETTINGS, leaseMs: 2000 + i },
        });
    }
  }
  const a = new Replica();
  const b = new Replica();
  for (const cmd of commands) {
    const bytes = encodeClusterCommand(cmd);
    assert.deepEqual(decodeClusterCommand(bytes), cmd);
    const ra = a.applyEncoded(bytes);
    assert.deepEqual(decodeClusterResult(encodeClusterResult(ra)), ra);
    assert.deepEqual(b.apply(cmd), ra);
  }
  assert.equal(a.stateHash(), b.stateHash());
  const restored = ClusterState.restore(a.snapshot());
  assert.equal(restored.stateHash(), a.stateHash());
  assert.deepEqual(restored.servers(), a.servers());
  const bad = a.applyEncoded(Uint8Array.of(1, 77));
  assert.ok(!bad.ok && bad.code === 'INVALID_ARGUMENT' && /unknown op tag 77/.test(bad.message));
  fc.assert(
    fc.property(fc.nat(), fc.nat(255), (at, value) => {
      const snap = a.snapshot();
      snap[at % snap.length] = value;
      try {
        ClusterState.restore(snap);
      } catch (error) {
        assert.ok(error instanceof StateCodecError, String(error));
      }
    }),
    { numRuns: 200 },
  );
});

test('cluster: a drained server gets no new shards and stays drained through a restart and a snapshot', () => {
  const cluster = new Replica();
  const never = new Replica();
  for (const r of [cluster, never]) {
    r.apply(register('cs1', 100));
    r.apply(register('cs2', 100));
  }
  const drain = (id: string, draining: boolean) =>
    cluster.apply({ op: 'setDraining', timeMs: 100, id, draining });
  assert.deepEqual(drain('nope', true), {
    ok: false,
    code: 'NOT_FOUND',
    message: 'chunk server nope is not registered',
  });
  assert.deepEqual(drain('cs1', true), { ok: true, op: 'setDraining', changed: true });
  assert.deepEqual(drain('cs1', true), { ok: true, op: 'setDraining', changed: false });
  assert.deepEqual(
    cluster.placementCandidates().map((s) => s.id),
    ['cs2'],
  );
  cluster.apply(register('cs1', 100)); // a restart registers again
  assert.equal(cluster.server('cs1')?.draining, true);
  const restored = ClusterState.restore(cluster.snapshot());
  assert.equal(restored.server('cs1')?.draining, true);
  assert.equal(restored.server('cs2')?.draining, false);
  assert.equal(restored.stateHash(), cluster.stateHash());
  assert.deepEqual(drain('cs1', false), { ok: true, op: 'setDraining', changed: true });
  never.apply(register('cs1', 100));
  // Undrained, the snapshot is what it would have been without (so the last version reads it too).
  assert.deepEqual(Buffer.from(cluster.snapshot()), Buffer.from(never.snapshot()));
});

// ---- placement ----

function servers(count: number, domains: number, free = (i: number) => 1000 + i): PlacementCandidate[] {
  return Array.from({ length: count }, (_, i) => ({
    id: `s${String(i).padStart(2, '0')}`,
    failureDomain: domains === 0 ? '' : `d${i % domains}`,
    capacityBytes: free(i) + 100,
    usedBytes: 100,
    state: 'alive' as const,
  }));
}

test('placement: K+M distinct live servers, spread evenly over failure domains (property)', () => {
  fc.assert(
    fc.property(
      fc.integer({ min: 1, max: 8 }),
      fc.integer({ min: 0, max: 4 }),
      fc.integer({ min: 1, max: 30 }),
      fc.integer({ min: 0, max: 10 }),
      fc.integer(),
      fc.array(fc.nat(29), { maxLength: 5 }),
      (k, m, n, domainCount, seed, deadIdx) => {
        const all = servers(n, domainCount, (i) => 1 + ((i * 7919) % 1000)).map((s, i) =>
          deadIdx.includes(i) ? { ...s, state: 'dead' as const } : s,
        );
        const live = all.filter((s) => s.state === 'alive');
        const need = m <= 1 ? k : k + 1;
        const p = placeBlockGroup({ servers: all, dataShards: k, parityShards: m, seed });
        if (live.length < need) {
          assert.ok(!p.ok && p.code === 'FAILED_PRECONDITION', 'refused below the minimum');
          return;
        }
        assert.ok(p.ok);
        assert.equal(p.servers.length, k + m);
        const chosen = p.servers.filter((s) => s !== '');
        assert.equal(chosen.length, Math.min(k + m, live.length));
        assert.equal(new Set(chosen).size, chosen.length, 'distinct');
        for (const id of chosen) assert.equal(all.find((s) => s.id === id)!.state, 'alive');
        // Data shards are filled first; the missing ones are the highest indexes.
        assert.deepEqual(
          p.missing,
          Array.from({ length: k + m - chosen.length }, (_, i) => chosen.length + i),
        );
        // Spread: per-domain counts differ by at most one among domains that still had servers to give.
        if (domainCount > 0) {
          const perDomain = new Map<string, number>();
          const available = new Map<string, number>();
          for (const s of live) available.set(s.failureDomain, (available.get(s.failureDomain) ?? 0) + 1);
          for (const id of chosen) {
            const d = all.find((s) => s.id === id)!.failureDomain;
            perDomain.set(d, (perDomain.get(d) ?? 0) + 1);
          }
          const max = Math.max(...perDomain.values());
          for (const [d, avail] of available) {
            const used = perDomain.get(d) ?? 0;
            assert.ok(used === avail || used >= max - 1, `domain ${d}: ${used} of ${avail}, max ${max}`);
          }
        }
        // Deterministic: same input (in any order) and seed → same answer.
        const again = placeBlockGroup({ servers: [...all].reverse(), dataShards: k, parityShards: m, seed });
        assert.deepEqual(again, p);
      },
    ),
    { numRuns: 300 },
  );
});

test('placement: one shard per domain when there are enough domains', () => {
  for (let seed = 0; seed < 50; seed++) {
    const p = placeBlockGroup({ servers: servers(27, 9), dataShards: 6, parityShards: 3, seed });
    assert.ok(p.ok);
    const domains = new Set(p.servers.map((id) => `d${Number(id.slice(1)) % 9}`));
    assert.equal(domains.size, 9);
  }
});

test('placement for a repair: the rebuilt shards go to failure domains the survivors do not hold', () => {
  // 27 servers in 9 domains (s<n> in d<n % 9>); the survivors of a group hold one shard in each of d0..d6.
  const survivors = ['s00', 's01', 's02', 's03', 's04', 's05', 's06'];
  for (let seed = 0; seed < 50; seed++) {
    const p = placeBlockGroup({
      servers: servers(27, 9),
      dataShards: 2,
      parityShards: 0,
      seed,
      exclude: survivors,
      occupied: survivors,
    });
    assert.ok(p.ok);
    const domains = p.servers.map((id) => Number(id.slice(1)) % 9).sort();
    assert.deepEqual(domains, [7, 8], `seed ${seed}: ${p.servers.join(', ')}`);
  }
});

test('placement: weighted by free space; full, dead and excluded servers are never chosen', () => {
  const pool: PlacementCandidate[] = [
    { id: 'big', failureDomain: '', capacityBytes: 10_000, usedBytes: 0, state: 'alive' },
    { id: 'small', failureDomain: '', capacityBytes: 1_000, usedBytes: 0, state: 'alive' },
    { id: 'full', failureDomain: '', capacityBytes: 1_000, usedBytes: 1_000, state: 'alive' },
    { id: 'dead', failureDomain: '', capacityBytes: 99_000, usedBytes: 0, state: 'dead' },
    { id: 'other', failureDomain: '', capacityBytes: 1_000, usedBytes: 0, state: 'alive' },
  ];
  const firstPick = new Map<string, number>();
  for (let seed = 0; seed < 2000; seed++) {
    const p = placeBlockGroup({ servers: pool, dataShards: 1, parityShards: 0, seed, exclude: ['other'] });
    assert.ok(p.ok);
    firstPick.set(p.servers[0]!, (firstPick.get(p.servers[0]!) ?? 0) + 1);
  }
  assert.deepEqual([...firstPick.keys()].sort(), ['big', 'small']);
  const ratio = firstPick.get('big')! / firstPick.get('small')!;
  assert.ok(ratio > 7 && ratio < 13, `free space 10:1 → picks ${ratio.toFixed(2)}:1`);
});

test('placement: refusal below K+1 names the counts; between K+1 and K+M returns what it can', () => {
  const refused = placeBlockGroup({ servers: servers(6, 3), dataShards: 6, parityShards: 3, seed: 1 });
  assert.ok(!refused.ok);
  assert.equal(refused.code, 'FAILED_PRECONDITION');
  assert.match(refused.message, /6 usable chunk servers .*need at least 7, ideally 9/);
  const partial = placeBlockGroup({ servers: servers(7, 3), dataShards: 6, parityShards: 3, seed: 1 });
  assert.ok(partial.ok);
  assert.deepEqual(partial.missing, [7, 8]);
  assert.deepEqual(partial.servers.slice(7), ['', '']);
  const rs41 = placeBlockGroup({ servers: servers(4, 0), dataShards: 4, parityShards: 1, seed: 1 });
  assert.ok(rs41.ok && rs41.missing.length === 1, 'with M = 1, K servers suffice');
  const bad = placeBlockGroup({ servers: servers(4, 0), dataShards: 0, parityShards: 1, seed: 1 });
  assert.ok(!bad.ok && bad.code === 'INVALID_ARGUMENT');
});

test('cluster identity: set once; a chunk server of another cluster is refused and changes nothing; old encodings read', () => {
  const cluster = new Replica();
  assert.equal(cluster.clusterId, '');
  assert.equal(cluster.apply({ op: 'initCluster', timeMs: 1, clusterId: 'Bad id!' }).ok, false);
  assert.equal(cluster.apply({ op: 'initCluster', timeMs: 1, clusterId: 'short' }).ok, false);
  // A claim before the cluster has an id cannot be checked: refused.
  assert.equal(cluster.apply(register('cs0', 5, '', '0123456789abcdef')).ok, false);
  assert.deepEqual(cluster.apply({ op: 'initCluster', timeMs: 10, clusterId: '0123456789abcdef' }), {
    ok: true,
    op: 'initCluster',
    clusterId: '0123456789abcdef',
    changed: true,
  });
  // A second init (another leader's proposal) changes nothing and answers the id in force.
  assert.deepEqual(cluster.apply({ op: 'initCluster', timeMs: 11, clusterId: 'ffffffffffffffff' }), {
    ok: true,
    op: 'initCluster',
    clusterId: '0123456789abcdef',
    changed: false,
  });
  const fresh = cluster.apply(register('cs1', 20));
  assert.ok(fresh.ok && fresh.op === 'register' && fresh.clusterId === '0123456789abcdef');
  const member = cluster.apply(register('cs2', 21, '', '0123456789abcdef'));
  assert.ok(member.ok);
  const before = JSON.stringify(cluster.servers());
  const stranger = cluster.apply(register('cs3', 22, '', 'aaaaaaaaaaaaaaaa'));
  assert.ok(!stranger.ok && stranger.code === 'FAILED_PRECONDITION');
  assert.match(stranger.message, /belongs to cluster aaaaaaaaaaaaaaaa, not to this one \(0123456789abcdef\)/);
  // (The command's time still advances the clock, as every command's does.)
  assert.equal(JSON.stringify(cluster.servers()), before, 'a refused registration changes nothing');
  assert.equal(cluster.clusterId, '0123456789abcdef');
  assert.equal(cluster.server('cs3'), undefined);
  // The id survives a snapshot; commands and results round-trip.
  assert.equal(ClusterState.restore(cluster.snapshot()).clusterId, '0123456789abcdef');
  for (const cmd of [
    register('cs4', 30, 'r', '0123456789abcdef'),
    { op: 'initCluster', timeMs: 31, clusterId: 'abcdefgh' } as const,
  ])
    assert.deepEqual(decodeClusterCommand(encodeClusterCommand(cmd)), cmd);
  for (const result of [fresh, cluster.apply({ op: 'initCluster', timeMs: 32, clusterId: 'abcdefgh' })])
    assert.deepEqual(decodeClusterResult(encodeClusterResult(result)), result);
  // Written before cluster ids existed: a register entry without the claim, a snapshot without the id.
  const legacy = encodeClusterCommand(register('cs5', 40));
  const withoutClaim = legacy.subarray(0, legacy.length - 1); // the empty claim is one length byte
  assert.deepEqual(decodeClusterCommand(withoutClaim), register('cs5', 40));
  const old = new Replica();
  old.apply(register('cs6', 50));
  const snapshot = old.snapshot();
  // The empty id is one length byte, the heartbeat indexes written after it two (a count, one 0).
  const restored = ClusterState.restore(snapshot.subarray(0, snapshot.length - 3));
  assert.equal(restored.clusterId, '');
  assert.ok(restored.server('cs6'));
});
