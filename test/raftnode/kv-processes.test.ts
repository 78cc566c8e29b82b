/**
 * Issue 3's real-process claim: three real processes host the Raft library (test/raftnode/kv-node.ts, fsync
 * on); clients run a mixed put/get/cas load while the leader is SIGKILLed and restarted twice; afterwards
 * the recorded history — operations that timed out count as unknown outcomes — is linearizable.
 */
import assert from 'node:assert/strict';
import type { ChildProcess } from 'node:child_process';
import { after, test } from 'node:test';
import { freePort, randomLoopbackHost } from '../../src/common/ports.js';
import { checkKvHistory, describeOps, type HistoryOp } from '../consensus/linearizability.js';
import type { KvInput } from '../consensus/sim/kv.js';
import { tempDir, waitFor } from '../helpers/index.js';
import { KvClient, spawnKvNode } from './kv-client.js';

const dir = tempDir('dogfs-kv-');
const procs: (ChildProcess | undefined)[] = [];
after(() => {
  for (const p of procs) p?.kill('SIGKILL');
  dir.remove();
});

async function startNode(addrs: string[], i: number): Promise<void> {
  // Frequent snapshots: restarted nodes recover from snapshot + log, and lagging ones get InstallSnapshot.
  procs[i] = await spawnKvNode(addrs, i, dir.path, ['--snapshot-every', '50']);
}

test('a history recorded across two leader SIGKILLs and restarts is linearizable', async () => {
  // Its own loopback address: the SIGKILLed leader must get its port back when it restarts.
  const host = randomLoopbackHost();
  const addrs: string[] = [];
  for (let i = 0; i < 3; i++) addrs.push(`${host}:${await freePort(host)}`);
  await Promise.all(addrs.map((_, i) => startNode(addrs, i)));

  const history: HistoryOp[] = [];
  const keys = ['a', 'b', 'c'];
  let stop = false;
  let acknowledged = 0;
  const clients = Array.from({ length: 4 }, (_, c) => new KvClient(addrs, `client-${c}`));
  const load = clients.map(async (client, c) => {
    for (let i = 0; !stop && i < 100_000; i++) {
      const key = keys[(c + i) % keys.length]!;
      const roll = (c * 7 + i * 13) % 10;
      const input: KvInput =
        roll < 4
          ? { op: 'put', key, value: `${c}-${i}` }
          : roll < 7
            ? { op: 'get', key }
            : { op: 'cas', key, expected: `${(c + 1) % 4}-${i - 1}`, value: `${c}-${i}-cas` };
      const call = performance.now();
      try {
        const output = await client.run(input, Date.now() + 4000);
        history.push({ clientId: client.clientId, input, call, ret: performance.now(), output });
        acknowledged++;
      } catch {
        history.push({ clientId: client.clientId, input, call, ret: undefined, output: undefined });
      }
    }
  });

  for (let round = 0; round < 2; round++) {
    const before = acknowledged;
    await waitFor('progress before the kill', () => acknowledged >= before + 30, 30_000);
    const leader = clients[0]!.leader;
    const index = addrs.indexOf(leader);
    procs[index]!.kill('SIGKILL');
    const afterKill = acknowledged;
    await waitFor('progress after the leader was killed', () => acknowledged >= afterKill + 30, 30_000);
    await startNode(addrs, index);
  }
  const end = acknowledged;
  await waitFor('progress with every node back', () => acknowledged >= end + 30, 30_000);
  stop = true;
  await Promise.all(load);
  for (const c of clients) c.close();

  const result = checkKvHistory(history);
  if (result.ok !== true) {
    assert.fail(
      result.ok === false
        ? `not linearizable on key ${result.key}:\n${describeOps(result.ops)}`
        : `checker gave up on key ${result.key}: ${result.reason}`,
    );
  }
  assert.ok(
    history.filter((h) => h.ret !== undefined && h.input.op !== 'get').length > 50,
    'writes were acknowledged',
  );
});
