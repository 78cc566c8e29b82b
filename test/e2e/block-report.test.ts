/**
 * Block reports reconciled with the namespace (`dogfs up`, 3 metadata servers, 4 chunk servers, rs-2-1): a
 * chunk server whose disk lost a shard file while it was down comes back, and the shard it no longer has
 * is found from its block report — `admin report` names the file (nobody read it, no scrubber ran); the
 * file put back, the next report withdraws the note; removed again, `admin repair` rebuilds it. Without
 * the reconciliation nothing would notice until a read.
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, test } from 'node:test';
import { DogfsClient, MetadataConnection } from '../../src/client/index.js';
import {
  chunkRestartArgs,
  processAlive,
  runDogfs,
  shardFile,
  startCluster,
  startDogfs,
  waitFor,
} from '../helpers/index.js';

const up = startCluster(['--meta', '3', '--chunk', '4', '--ec', 'rs-2-1']);
after(() => up.stop());

test('a shard lost from a chunk server while it was down is found from its block report and repaired', async () => {
  const cluster = await up.ready();
  const env = { ...process.env, DOGFS_CLUSTER: up.clusterPath };
  const data = randomBytes(900_000);
  const local = join(up.dir.path, 'data.bin');
  writeFileSync(local, data);
  const put = await runDogfs(['put', local, '/f.bin'], { env });
  assert.equal(put.status, 0, put.stderr);

  const client = new DogfsClient({ meta: cluster.meta });
  const metaConnection = new MetadataConnection({ seeds: cluster.meta });
  let restarted: ReturnType<typeof startDogfs> | undefined;
  try {
    // A report from an id no server registered is refused (it would hold a set of its shard keys).
    await assert.rejects(
      metaConnection.call('BlockReport', {
        id: 'nobody-registered-this',
        first: true,
        last: false,
        shards: [],
      }),
      { code: 'FAILED_PRECONDITION' },
    );
    const bg = (await metaConnection.call('Stat', { path: '/f.bin' })).inode!.blockGroups[0]!;
    const lost = bg.shards[0]!;
    const holder = cluster.processes.find((p) => p.id === lost.chunkServerId)!;
    const file = shardFile(holder.dir, bg.id, lost.index);
    assert.ok(file !== undefined, 'the shard file is on its server');
    const saved = readFileSync(file);
    /** Stops the holder, does `meanwhile` to its disk, starts it again (it registers and reports). */
    const restartHolder = async (meanwhile: () => void) => {
      const pid = restarted?.child.pid ?? holder.pid;
      process.kill(pid, 'SIGKILL');
      await waitFor('the holder to die', () => !processAlive(pid));
      meanwhile();
      restarted = startDogfs(chunkRestartArgs(up.clusterDir, holder.id, holder.dir), env);
    };
    /** The report once the holder is alive and the file is (or is not) named damaged. */
    const reportWith = (damaged: boolean) =>
      waitFor(
        damaged ? 'the file to be reported damaged' : 'the file to be reported whole',
        async () => {
          const r = await client.report();
          const server = r.chunkServers.find((c) => c.id === holder.id);
          return server?.state === 'alive' && r.filesWithMissingShards.includes('/f.bin') === damaged && r;
        },
        30_000,
      );

    // The shard file is gone while its server is down: registered again, the server sends its whole
    // inventory, and the reconciliation finds the shard absent.
    await restartHolder(() => rmSync(file));
    assert.equal((await reportWith(true)).filesWithMissingShardsCount, 1);
    // The disk had it after all (mounted back): the next report names it, and the note goes.
    await restartHolder(() => writeFileSync(file, saved));
    await reportWith(false);
    // Gone for good: found again, and repaired.
    await restartHolder(() => rmSync(file));
    await reportWith(true);
    const repair = await runDogfs(['admin', 'repair', '/f.bin'], { env });
    assert.equal(repair.status, 0, repair.stderr);
    assert.match(repair.stdout, /rebuilt 1 shard\(s\)/);
    assert.deepEqual((await client.report()).filesWithMissingShards, []);
    assert.ok((await client.readFile('/f.bin')).equals(data));
  } finally {
    client.close();
    metaConnection.close();
    if (restarted !== undefined) {
      restarted.child.kill('SIGKILL');
      await restarted.exited;
    }
  }
});

test('a chunk server back with an empty disk: every file with a shard there is reported at once, not 256 a report', async () => {
  const cluster = await up.ready();
  const env = { ...process.env, DOGFS_CLUSTER: up.clusterPath };
  const client = new DogfsClient({ meta: cluster.meta });
  let restarted: ReturnType<typeof startDogfs> | undefined;
  try {
    const files = 400;
    await client.mkdir('/wiped');
    for (let i = 0; i < files; i++)
      await client.writeFile(`/wiped/f${i}`, randomBytes(1000), { ec: 'rs-2-1' });
    // The server holding shards of the most of them: more than one report's 256 checks.
    const holders = await Promise.all(
      Array.from({ length: files }, async (_, i) =>
        (await client.stat(`/wiped/f${i}`)).inode.blockGroups[0]!.shards.map((s) => s.chunkServerId),
      ),
    );
    const holding = (id: string) => holders.filter((h) => h.includes(id)).length;
    const victim = cluster.processes
      .filter((p) => p.role === 'chunk' && processAlive(p.pid))
      .sort((a, b) => holding(b.id) - holding(a.id))[0]!;
    const expected = holding(victim.id);
    assert.ok(expected > 256, `${victim.id} holds shards of ${expected} files`);
    process.kill(victim.pid, 'SIGKILL');
    await waitFor('the victim to die', () => !processAlive(victim.pid));
    // Its disk is replaced: the shard files are gone, its identity stays.
    rmSync(join(victim.dir, 'shards'), { recursive: true, force: true });
    restarted = startDogfs(chunkRestartArgs(up.clusterDir, victim.id, victim.dir), env);
    const onVictim = Array.from({ length: files }, (_, i) => i)
      .filter((i) => holders[i]!.includes(victim.id))
      .map((i) => `/wiped/f${i}`);
    // With the victim alive again, its shards are missing only as its report says: all of them at once.
    await waitFor(
      'every file with a shard on the emptied server reported damaged',
      async () => {
        const r = await client.report();
        const listed = new Set(r.filesWithMissingShards);
        return (
          r.chunkServers.find((c) => c.id === victim.id)?.state === 'alive' &&
          onVictim.every((path) => listed.has(path))
        );
      },
      30_000,
    );
  } finally {
    client.close();
    if (restarted !== undefined) {
      restarted.child.kill('SIGKILL');
      await restarted.exited;
    }
  }
});
