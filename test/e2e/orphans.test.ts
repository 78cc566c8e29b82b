/**
 * Orphan shards (`dogfs up`, 3 metadata servers, 4 chunk servers, rs-2-1): a chunk server down while one of
 * its files is deleted and while another file's shard on it is rebuilt elsewhere keeps both shard files;
 * the garbage collector gives up on a dead server and the replaced copy's deletion is dropped with it. When
 * the server is back, the namespace leader's sweep of its inventory finds the two files no metadata
 * records and deletes them — and nothing else: the shard the server still rightly holds stays, and every
 * file reads back whole.
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { existsSync, mkdirSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, test } from 'node:test';
import { DogfsClient, MetadataConnection } from '../../src/client/index.js';
import {
  chunkRestartArgs,
  killChunkServers,
  processAlive,
  runDogfs,
  shardFile,
  startCluster,
  startDogfs,
  waitFor,
} from '../helpers/index.js';

// Garbage is collected at once; shard files no metadata records go once a second old.
const up = startCluster(['--meta', '3', '--chunk', '4', '--ec', 'rs-2-1'], {
  ...process.env,
  DOGFS_GC_GRACE_MS: '0',
  DOGFS_ORPHAN_AGE_MS: '1000',
});
after(() => up.stop());

test('shard files left on a server that was down are deleted once no metadata records them', async () => {
  const cluster = await up.ready();
  const env = { ...process.env, DOGFS_CLUSTER: up.clusterPath };
  const client = new DogfsClient({ meta: cluster.meta });
  const metaConnection = new MetadataConnection({ seeds: cluster.meta });
  let restarted: ReturnType<typeof startDogfs> | undefined;
  try {
    const fast = await runDogfs(['admin', 'settings', '--dead-after', '3000'], { env });
    assert.equal(fast.status, 0, fast.stderr);
    const put = async (name: string) => {
      const data = randomBytes(300_000);
      const local = join(up.dir.path, name);
      writeFileSync(local, data);
      const r = await runDogfs(['put', local, `/${name}`], { env });
      assert.equal(r.status, 0, r.stderr);
      const bg = (await metaConnection.call('Stat', { path: `/${name}` })).inode!.blockGroups[0]!;
      return { name, data, bg };
    };
    const keep = await put('keep.bin');
    const moved = await put('moved.bin');
    // A server holding a shard of both (3 of the 4 servers hold each file's shards).
    const holderId = keep.bg.shards
      .map((s) => s.chunkServerId)
      .find((id) => moved.bg.shards.some((s) => s.chunkServerId === id))!;
    const onHolder = (f: typeof keep) => f.bg.shards.find((s) => s.chunkServerId === holderId);
    let gone: typeof keep | undefined;
    for (let i = 0; i < 30 && gone === undefined; i++) {
      const f = await put(`gone-${i}.bin`);
      if (onHolder(f) !== undefined) gone = f;
    }
    assert.ok(gone !== undefined, 'a file with a shard on the holder');
    const holder = cluster.processes.find((p) => p.id === holderId)!;
    const fileOf = (f: typeof keep) => shardFile(holder.dir, f.bg.id, onHolder(f)!.index);
    const [keepFile, movedFile, goneFile] = [fileOf(keep), fileOf(moved), fileOf(gone)];
    assert.ok(keepFile && movedFile && goneFile, 'the shard files are on the holder');

    await killChunkServers([holder], () => client.report());
    // While it is dead: a file deleted (its garbage collection skips the dead server) and another's shard
    // rebuilt on the spare server (the replaced copy's deletion is dropped: its server may never return).
    const rm = await runDogfs(['rm', `/${gone.name}`], { env });
    assert.equal(rm.status, 0, rm.stderr);
    const repair = await runDogfs(['admin', 'repair', '/moved.bin'], { env });
    assert.equal(repair.status, 0, repair.stderr);
    assert.match(repair.stdout, /rebuilt 1 shard\(s\)/);
    const others = cluster.processes.filter((p) => p.role === 'chunk' && p.id !== holderId);
    await waitFor(
      'the deleted file to be collected from the live servers',
      () =>
        others.every((p) => gone.bg.shards.every((s) => shardFile(p.dir, gone.bg.id, s.index) === undefined)),
      30_000,
    );

    restarted = startDogfs(chunkRestartArgs(up.clusterDir, holderId, holder.dir), env);
    await waitFor(
      'the two orphans to be deleted',
      () => !existsSync(movedFile) && !existsSync(goneFile),
      60_000,
    );
    assert.ok(existsSync(keepFile), 'the shard the holder still rightly holds is kept');
    const report = await client.report();
    assert.equal(report.chunkServers.find((c) => c.id === holderId)?.state, 'alive');
    assert.deepEqual(report.filesWithMissingShards, []);
    assert.ok((await client.readFile('/keep.bin')).equals(keep.data));
    assert.ok((await client.readFile('/moved.bin')).equals(moved.data));
  } finally {
    client.close();
    metaConnection.close();
    if (restarted !== undefined) {
      restarted.child.kill('SIGKILL');
      await restarted.exited;
    }
  }
});

test('a chunk server of another cluster is refused, and its shards are left alone; a new one joins this cluster', async () => {
  const cluster = await up.ready();
  const client = new DogfsClient({ meta: cluster.meta });
  const servers: ReturnType<typeof startDogfs>[] = [];
  try {
    const { clusterId } = await client.report();
    assert.match(clusterId, /^[0-9a-f-]{36}$/, 'the cluster has an identity');
    // Every chunk server of this cluster recorded it at its first registration.
    for (const p of cluster.processes.filter((p) => p.role === 'chunk'))
      assert.equal(readFileSync(join(p.dir, 'cluster-id'), 'utf8').trim(), clusterId);

    const meta = cluster.meta.join(',');
    const strangerDir = join(up.dir.path, 'stranger');
    mkdirSync(strangerDir);
    writeFileSync(join(strangerDir, 'cluster-id'), 'aaaaaaaa-0000-4000-8000-000000000000\n');
    const stranger = startDogfs(['chunk', '--dir', strangerDir, '--id', 'stranger', '--meta', meta]);
    servers.push(stranger);
    await waitFor(
      'the refusal to be logged',
      () =>
        /registration refused.*belongs to cluster aaaaaaaa-0000-4000-8000-000000000000, not to this one/.test(
          stranger.output.stderr,
        ),
      30_000,
    );
    const newcomerDir = join(up.dir.path, 'newcomer');
    const newcomer = startDogfs(['chunk', '--dir', newcomerDir, '--id', 'newcomer', '--meta', meta]);
    servers.push(newcomer);
    await waitFor(
      'the new server to join',
      async () =>
        (await client.report()).chunkServers.some((c) => c.id === 'newcomer' && c.state === 'alive'),
      30_000,
    );
    // Its registration is committed (it shows alive) a moment before it has written the id down.
    await waitFor('the new server to record the id', () => {
      try {
        return readFileSync(join(newcomerDir, 'cluster-id'), 'utf8').trim() === clusterId;
      } catch {
        return false;
      }
    });
    const report = await client.report();
    assert.equal(
      report.chunkServers.find((c) => c.id === 'stranger'),
      undefined,
      'never registered',
    );
    assert.equal(
      readFileSync(join(strangerDir, 'cluster-id'), 'utf8').trim(),
      'aaaaaaaa-0000-4000-8000-000000000000',
    );
  } finally {
    client.close();
    for (const s of servers) {
      s.child.kill('SIGKILL');
      await s.exited;
    }
  }
});

test('a chunk server whose old shards are mostly unknown to the metadata is left alone by the sweep', async () => {
  const cluster = await up.ready();
  const client = new DogfsClient({ meta: cluster.meta });
  const metaConnection = new MetadataConnection({ seeds: cluster.meta });
  let restarted: ReturnType<typeof startDogfs> | undefined;
  try {
    // The tests before left three of the original servers running (and stopped the ones they started):
    // once the report agrees, each rs-2-1 file has a shard on each of the three.
    const chunks = cluster.processes.filter((p) => p.role === 'chunk' && processAlive(p.pid));
    assert.equal(chunks.length, 3);
    const running = new Set(chunks.map((p) => p.id));
    await waitFor(
      'the report to show the running servers alive and only them',
      async () =>
        (await client.report()).chunkServers.every((c) => (c.state === 'alive') === running.has(c.id)),
      30_000,
    );
    const holder = chunks[0]!;
    // 120 files, all with a shard on the holder; then the holder is down while they are all deleted, and
    // the garbage collector gives up on it. Back, most of its shards are unknown to the metadata: the
    // sweep cannot tell that from a server pointed at the wrong cluster, and deletes nothing there.
    await client.mkdir('/many');
    const manyGroups = new Set<number>();
    for (let i = 0; i < 120; i++) {
      await client.writeFile(`/many/f${i}`, randomBytes(1 + i));
      manyGroups.add((await metaConnection.call('Stat', { path: `/many/f${i}` })).inode!.blockGroups[0]!.id);
    }
    /** The shard files of those 120 files under a chunk server's directory. */
    const manyShardsOn = (root: string) =>
      readdirSync(root, { recursive: true })
        .map(String)
        .filter((n) => n.endsWith('.shard') && manyGroups.has(Number(/(?:^|\/)b(\d+)_i\d+_/.exec(n)?.[1])));
    const onHolder = manyShardsOn(holder.dir);
    assert.ok(onHolder.length > 100, `${onHolder.length} of the files have a shard on the holder`);
    await killChunkServers([holder], () => client.report());
    await client.delete('/many', { recursive: true });
    const others = chunks.filter((p) => p !== holder);
    await waitFor(
      'the garbage to be collected from the live servers',
      () => others.every((p) => manyShardsOn(p.dir).length === 0),
      30_000,
    );
    restarted = startDogfs(chunkRestartArgs(up.clusterDir, holder.id, holder.dir));
    const logs = () =>
      cluster.processes
        .filter((p) => p.role === 'meta')
        .map((p) => {
          try {
            return readFileSync(join(p.dir, 'dogfs.log'), 'utf8');
          } catch {
            return '';
          }
        })
        .join('');
    await waitFor(
      'the sweep to decline the holder',
      () =>
        logs()
          .split('\n')
          .some(
            (l) => l.includes('most shards of this chunk server are unknown') && l.includes(`"${holder.id}"`),
          ),
      30_000,
    );
    assert.deepEqual(manyShardsOn(holder.dir), onHolder, 'nothing deleted on it');
  } finally {
    client.close();
    metaConnection.close();
    if (restarted !== undefined) {
      restarted.child.kill('SIGKILL');
      await restarted.exited;
    }
  }
});
