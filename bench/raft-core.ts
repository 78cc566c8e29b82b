/**
 * bench/raft-core — the pure consensus core alone (no disk, no network, no serialization): a 3-replica
 * cluster in one process, messages handed over in memory, every Ready persisted instantly. It measures
 * the ceiling the core itself puts on a host: committed 256-byte commands per second, with proposals
 * arriving in batches of 1, 16, 64 and 256 between Ready rounds, and the messages each command costs.
 *   node dist/bench/raft-core.js        (BENCH_SECONDS, default 2, sets each measurement's length)
 */

import type { Message } from '../src/consensus/index.js';
import {
  asNodeId,
  bootstrapSnapshot,
  defaultConfig,
  emptyHardState,
  Prng,
  Raft,
} from '../src/consensus/index.js';
import { emit, machine } from './lib.js';

const SECONDS = Number(process.env['BENCH_SECONDS'] ?? '2');
const COMMAND = new Uint8Array(256).fill(7);

function cluster(): Raft[] {
  const ids = [1, 2, 3].map(asNodeId);
  const rng = new Prng(1);
  return ids.map(
    (id) =>
      new Raft(defaultConfig(id, rng.fork().next), {
        hardState: emptyHardState(),
        snapshot: bootstrapSnapshot(ids),
        entries: [],
      }),
  );
}

/** One round: every replica's Ready is "persisted", its messages delivered, its entries applied. */
function round(nodes: Raft[]): { messages: number; applied: number } {
  let messages = 0;
  let applied = 0;
  const inbox: Message[] = [];
  for (const n of nodes) {
    if (!n.hasReady()) continue;
    const rd = n.ready();
    inbox.push(...rd.earlyMessages, ...rd.messages);
    messages += rd.earlyMessages.length + rd.messages.length;
    if (n.status().role === 'leader') applied += rd.committedEntries.length;
    n.advance(rd);
  }
  for (const m of inbox) nodes[m.to - 1]!.step(m);
  return { messages, applied };
}

function run(batch: number): void {
  const nodes = cluster();
  const leader = nodes[0]!;
  while (leader.status().role !== 'leader') {
    leader.tick();
    round(nodes);
  }
  for (let i = 0; i < 10; i++) round(nodes);
  let applied = 0;
  let messages = 0;
  let proposed = 0;
  const started = performance.now();
  const deadline = started + SECONDS * 1000;
  let rounds = 0;
  while (performance.now() < deadline) {
    for (let i = 0; i < batch; i++) if (leader.propose(COMMAND).ok) proposed++;
    for (let r = 0; r < 3; r++) {
      const out = round(nodes);
      applied += out.applied;
      messages += out.messages;
    }
    if (++rounds % 50 === 0) for (const n of nodes) n.tick();
  }
  const seconds = (performance.now() - started) / 1000;
  const base = { bench: 'raft-core', replicas: 3, commandBytes: 256, batch };
  emit({ ...base, metric: 'commits_per_second', value: Math.round(applied / seconds), unit: 'ops/s' });
  emit({
    ...base,
    metric: 'messages_per_command',
    value: Number((messages / Math.max(1, applied)).toFixed(3)),
    unit: 'msgs',
  });
  if (applied < proposed - batch * 3) throw new Error(`only ${applied} of ${proposed} proposals committed`);
}

emit({ bench: 'raft-core', metric: 'machine', value: 0, unit: '', ...machine() });
for (const batch of [1, 16, 64, 256]) run(batch);
