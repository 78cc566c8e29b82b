/**
 * Chunk-server liveness across a stall of the metadata servers (`dogfs up`, 3 metadata servers, 4 chunk
 * servers): a frozen process (GC pause, suspended VM, SIGSTOP) reads no heartbeats while the clock runs
 * on, and when it resumes its timers run before the heartbeats queued in its sockets are read. Found by
 * `npm run chaos`: group 0's leader then declared healthy chunk servers dead and puts were refused.
 * And what survives the loss of group 0's leader: a shard found corrupt stays reported.
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, test } from 'node:test';
import type { ClusterReportResponse } from '../../src/wire/gen/types.js';
import { runDogfs, startCluster, waitFor } from '../helpers/index.js';

const up = startCluster(['--meta', '3', '--chunk', '4', '--ec', 'rs-2-1']);
after(() => up.stop());
/** Processes this file stopped: resumed however the test ends, or they would stay stopped for good. */
const stopped = new Set<number>();
const resumeAll = () => {
  for (const pid of stopped) {
    try {
      process.kill(pid, 'SIGCONT');
    } catch {
      // already gone
    }
  }
  stopped.clear();
};
process.on('exit', resumeAll);
after(resumeAll);
function pause(pid: number): void {
  stopped.add(pid);
  process.kill(pid, 'SIGSTOP');
}
function resume(pid: number): void {
  process.kill(pid, 'SIGCONT');
  stopped.delete(pid);
}

/** How long every metadata server is frozen: longer than the dead-timeout set below. */
const FREEZE_MS = 4500;
const DEAD_AFTER_MS = 3000;
/** How long the group 0 leader alone is paused: past an election, short of the dead-timeout. */
const PAUSE_MS = 2500;

const dogfs = (args: string[]) =>
  runDogfs(args, { env: { ...process.env, DOGFS_CLUSTER: up.clusterPath }, timeoutMs: 60_000 });
async function report(): Promise<ClusterReportResponse> {
  const r = await dogfs(['admin', 'report', '--json']);
  assert.equal(r.status, 0, r.stderr);
  return JSON.parse(r.stdout) as ClusterReportResponse;
}
async function shortDeadTimeout(): Promise<void> {
  const settings = await dogfs(['admin', 'settings', '--dead-after', String(DEAD_AFTER_MS)]);
  assert.equal(settings.status, 0, settings.stderr);
}

test('a stall of the metadata servers longer than the dead-timeout declares no chunk server dead', async () => {
  const cluster = await up.ready();
  await shortDeadTimeout();
  await waitFor('every chunk server alive', async () => {
    const r = await report();
    return r.chunkServers.length === 4 && r.chunkServers.every((s) => s.state === 'alive');
  });

  const metas = cluster.processes.filter((p) => p.role === 'meta');
  for (const meta of metas) pause(meta.pid);
  // The fault itself lasts FREEZE_MS (not a wait for anything).
  await new Promise((resolve) => setTimeout(resolve, FREEZE_MS));
  for (const meta of metas) resume(meta.pid);

  // Group 0 commits each server's heartbeat every third of the dead-timeout: four more entries mean the
  // leader has run its first duty rounds since resuming (where the false deaths came).
  const commitAt = async () => (await report()).groups.find((g) => g.group === 0)!.commitIndex;
  const resumedAt = await commitAt();
  await waitFor(
    'group 0 committing heartbeats again',
    async () => (await commitAt()) >= resumedAt + 4,
    30_000,
  );

  const declared = metas.flatMap((m) =>
    readFileSync(join(m.dir, 'dogfs.log'), 'utf8')
      .split('\n')
      .filter((line) => line.includes('chunk server declared dead')),
  );
  assert.deepEqual(declared, [], 'no chunk server was declared dead');
  const r = await report();
  assert.ok(
    r.chunkServers.every((s) => s.state === 'alive'),
    JSON.stringify(r.chunkServers),
  );
  const put = await dogfs(['touch', '/after-the-stall']);
  assert.equal(put.status, 0, put.stderr);
});

test("a paused group 0 leader, replaced meanwhile, does not hold chunk servers' heartbeats past the new leader's safe mode", async () => {
  const cluster = await up.ready();
  await shortDeadTimeout();
  const metas = cluster.processes.filter((p) => p.role === 'meta');
  const declaredDead = () =>
    metas.flatMap((m) =>
      readFileSync(join(m.dir, 'dogfs.log'), 'utf8')
        .split('\n')
        .filter((line) => line.includes('chunk server declared dead')),
    );
  const before = declaredDead().length;
  const group0 = async () => (await report()).groups.find((g) => g.group === 0)!;
  const old = await group0();
  const leader = metas.find((m) => m.addr === old.leader)!;
  // Heartbeats sent to the paused leader wait in its socket; resumed, it proposes them in its old term
  // and steps down. Those proposals must fail at once, so the chunk servers turn to the new leader
  // before its safe mode (one dead-timeout) ends, instead of at their 5 s call timeout.
  pause(leader.pid);
  // The fault itself lasts PAUSE_MS (not a wait for anything): long enough for the others to elect.
  await new Promise((resolve) => setTimeout(resolve, PAUSE_MS));
  resume(leader.pid);
  const resumed = await waitFor('a new leader of group 0', async () => {
    const g = await group0();
    return g.leader !== '' && g.term > old.term && g;
  });
  // Each chunk server's heartbeat is committed every third of the dead-timeout: three rounds of all
  // four take the new leader past its safe mode.
  await waitFor(
    'three rounds of heartbeats committed',
    async () => (await group0()).commitIndex >= resumed.commitIndex + 12,
    30_000,
  );
  assert.deepEqual(declaredDead().slice(before), [], 'no chunk server was declared dead');
  assert.ok((await report()).chunkServers.every((s) => s.state === 'alive'));
});

test("a corrupt shard stays reported after group 0's leader is SIGKILLed (the chunk server re-sends it)", async () => {
  const cluster = await up.ready();
  const data = randomBytes(300_000);
  const local = join(up.dir.path, 'small.bin');
  writeFileSync(local, data);
  const put = await dogfs(['put', local, '/small.bin']);
  assert.equal(put.status, 0, put.stderr);
  // Flip a byte of the file's first data shard, past the 64-byte header.
  const stat = JSON.parse((await dogfs(['stat', '--json', '/small.bin'])).stdout) as {
    blockGroups: { id: number }[];
  };
  const id = stat.blockGroups[0]!.id;
  const shardFile = cluster.processes
    .filter((p) => p.role === 'chunk')
    .flatMap((c) => shardFilesUnder(c.dir))
    .find((f) => f.includes(`/b${id}_i0_`))!;
  const bytes = readFileSync(shardFile);
  bytes[64 + 1000]! ^= 0x5a;
  writeFileSync(shardFile, bytes);
  const got = join(up.dir.path, 'got.bin');
  const get = await dogfs(['get', '/small.bin', got]);
  assert.equal(get.status, 0, get.stderr);
  assert.ok(readFileSync(got).equals(data), 'the get decodes around the corrupt shard');
  const reported = await waitFor('the corrupt shard in the report', async () => {
    const r = await report();
    return r.filesWithMissingShards.includes('/small.bin') && r;
  });
  // Group 0's leader keeps bad-shard reports in memory only; the chunk server's store remembers the
  // corruption its read found and names it in every heartbeat, so a new leader learns it again.
  const oldLeader = reported.groups.find((g) => g.group === 0)!.leader;
  const leader = cluster.processes.find((p) => p.role === 'meta' && p.addr === oldLeader);
  assert.ok(leader, `group 0's leader ${oldLeader} is one of the metadata servers`);
  const chunks = cluster.processes.filter((p) => p.role === 'chunk');
  const logBefore = new Map(chunks.map((c) => [c.id, readFileSync(join(c.dir, 'dogfs.log'), 'utf8').length]));
  process.kill(leader.pid, 'SIGKILL');
  const newLeader = await waitFor(
    'a new leader of group 0 naming the corrupt shard',
    async () => {
      const r = await report();
      const now = r.groups.find((g) => g.group === 0)?.leader;
      return (
        now !== undefined &&
        now !== '' &&
        now !== oldLeader &&
        r.filesWithMissingShards.includes('/small.bin') &&
        now
      );
    },
    30_000,
  );
  // And the new leader has every chunk server's inventory: it asks for it (chunk servers send it only
  // when asked, not after each failed heartbeat), and a registration is followed by the whole report.
  await waitFor(
    'every chunk server registered with the new leader',
    () =>
      chunks.every((c) =>
        readFileSync(join(c.dir, 'dogfs.log'), 'utf8')
          .slice(logBefore.get(c.id))
          .split('\n')
          .some(
            (line) =>
              line.includes('"msg":"registered with metadata"') && line.includes(`"target":"${newLeader}"`),
          ),
      ),
    30_000,
  );
});

/** Shard files under a chunk server's directory. */
function shardFilesUnder(root: string): string[] {
  return readdirSync(root, { recursive: true, encoding: 'utf8' })
    .filter((name) => name.endsWith('.shard'))
    .map((name) => join(root, name));
}
