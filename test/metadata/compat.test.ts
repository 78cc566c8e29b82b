/**
 * Logs and snapshots written by an earlier version (test/metadata/fixtures/state-d12aa2d.json: cluster and
 * namespace commands, and the snapshots after them, encoded by d12aa2d's code) replay and restore today
 * to the same state. The tests of each change encode their "old" entries with today's encoder; these are
 * the bytes an older version really wrote.
 */
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { test } from 'node:test';
import { ClusterState } from '../../src/metadata/state/cluster.js';
import { NamespaceState } from '../../src/metadata/state/index.js';

interface Fixture {
  readonly commit: string;
  readonly cluster: { readonly entries: readonly string[]; readonly snapshot: string };
  readonly namespace: {
    readonly entries: readonly string[];
    readonly snapshot: string;
    readonly stateHash: string;
  };
}

const fixture = JSON.parse(
  readFileSync(new URL('../../../test/metadata/fixtures/state-d12aa2d.json', import.meta.url), 'utf8'),
) as Fixture;
const bytes = (hex: string) => Uint8Array.from(Buffer.from(hex, 'hex'));

test('cluster group: entries of d12aa2d replay to the state its snapshot restores', () => {
  const replayed = new ClusterState();
  for (const [i, entry] of fixture.cluster.entries.entries()) replayed.applyEncoded(bytes(entry), i + 1);
  const restored = ClusterState.restore(bytes(fixture.cluster.snapshot));
  assert.deepEqual(Buffer.from(replayed.snapshot()), Buffer.from(restored.snapshot()));
});

test('namespace group: entries of d12aa2d (sessions that opened themselves) replay to the very state it had', () => {
  const replayed = new NamespaceState({ group: 1 });
  for (const entry of fixture.namespace.entries) {
    const result = replayed.applyEncoded(bytes(entry));
    assert.ok(result.ok, JSON.stringify(result));
  }
  assert.equal(replayed.stateHash(), fixture.namespace.stateHash);
  const restored = NamespaceState.restore(bytes(fixture.namespace.snapshot));
  assert.equal(restored.stateHash(), fixture.namespace.stateHash);
  assert.equal(replayed.stat('/a/b/c').ok, true);
  assert.equal(replayed.stat('/x').ok, true);
  // The delete reused the rename's sequence number (4): answered as that duplicate, never applied.
  assert.equal(replayed.stat('/a/g').ok, true);
  assert.equal(replayed.stat('/a/f').ok, false);
});
