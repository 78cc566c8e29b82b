/**
 * Which planned shards a repair copies from their holder rather than rebuilds (client/repair.ts,
 * `copySources`): only a shard being moved (PlanRepair's `readable`) that has a target and a copy
 * recorded durable with the group's length on a server it can reach, and not one whose copy already
 * failed in this repair. Pure: plans in, choices out.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { copySources } from '../../src/client/repair.js';
import type { BlockGroupRepair, ShardLocation } from '../../src/wire/gen/types.js';

const LENGTH = 300_000;

function shard(index: number, over: Partial<ShardLocation> = {}): ShardLocation {
  return {
    index,
    chunkServerId: `chunk-${index}`,
    addr: `127.0.0.1:${7000 + index}`,
    length: LENGTH,
    crc32c: 1000 + index,
    durable: true,
    generation: 0,
    ...over,
  };
}

function target(index: number): ShardLocation {
  return shard(index, { chunkServerId: `new-${index}`, addr: `127.0.0.1:${8000 + index}`, durable: false });
}

/** rs-3-2, block group 42: `shards` replaces the default holders by index. */
function plan(
  parts: { missing: number[]; readable: number[]; targets: number[] },
  shards: Partial<Record<number, Partial<ShardLocation>>> = {},
): BlockGroupRepair {
  return {
    blockGroup: {
      id: 42,
      dataShards: 3,
      parityShards: 2,
      stripeSize: 1 << 20,
      offset: 0,
      length: 900_000,
      shards: [0, 1, 2, 3, 4].map((i) => shard(i, shards[i] ?? {})),
    },
    missing: parts.missing,
    readable: parts.readable,
    targets: parts.targets.map(target),
  };
}

const chosen = (copies: Map<number, ShardLocation>) =>
  [...copies].map(([index, from]) => `${index}<-${from.chunkServerId}`);

test('a drained shard with a target is copied from its holder; a lost one is rebuilt', () => {
  // Shard 1 lost (its server dead), shard 3 on a server being drained: both placed.
  const copies = copySources(plan({ missing: [1, 3], readable: [3], targets: [1, 3] }), new Set());
  assert.deepEqual(chosen(copies), ['3<-chunk-3']);
});

test('a rebalancing move (readable, nothing lost) is copied', () => {
  const copies = copySources(plan({ missing: [2], readable: [2], targets: [2] }), new Set());
  assert.deepEqual(chosen(copies), ['2<-chunk-2']);
});

test('a moved shard with no target placed is not copied', () => {
  assert.equal(copySources(plan({ missing: [3], readable: [3], targets: [] }), new Set()).size, 0);
});

test('a moved shard whose copy failed in this repair is rebuilt from then on', () => {
  const failed = new Set(['42:3']);
  assert.equal(copySources(plan({ missing: [3], readable: [3], targets: [3] }), failed).size, 0);
  // Another block group's shard 3 is not this one.
  assert.equal(copySources(plan({ missing: [3], readable: [3], targets: [3] }), new Set(['41:3'])).size, 1);
});

test('a copy not recorded durable, with no server address, or of another length is not read', () => {
  const moving = { missing: [3], readable: [3], targets: [3] };
  assert.equal(copySources(plan(moving, { 3: { durable: false } }), new Set()).size, 0);
  assert.equal(copySources(plan(moving, { 3: { addr: '' } }), new Set()).size, 0);
  assert.equal(copySources(plan(moving, { 3: { length: LENGTH - 1 } }), new Set()).size, 0);
});

test('readable indexes outside missing (a malformed plan) are not copied', () => {
  assert.equal(copySources(plan({ missing: [], readable: [3], targets: [3] }), new Set()).size, 0);
});
