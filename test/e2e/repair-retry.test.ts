/**
 * A repair whose commit was lost, retried (`dogfs up`, 3 metadata servers, 6 chunk servers, rs-3-2: with
 * one holder dead, the one chunk server holding no shard of the group is the only place a rebuilt shard
 * may go). A copy of the shard id planted there that is not the rebuilt bytes is refused. Then the first
 * repair writes its shard there and its CommitRepair is lost; the retry finds the copy already there
 * (ALREADY_EXISTS), reads it back, and commits it because it is exactly the rebuilt bytes. Without that,
 * the retry could never succeed: the copy blocks the only target.
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, test } from 'node:test';
import {
  ClientSession,
  DataTransferShardTransport,
  DogfsClient,
  MetadataConnection,
  repairFile,
} from '../../src/client/index.js';
import { DogfsError } from '../../src/wire/errors.js';
import { ChunkControlService } from '../../src/wire/gen/types.js';
import { RpcChannel } from '../../src/wire/rpc.js';
import { killChunkServers, putRandomFile, runDogfs, startCluster } from '../helpers/index.js';

const up = startCluster(['--meta', '3', '--chunk', '6', '--ec', 'rs-3-2']);
after(() => up.stop());

/** The shard files of block group `blockGroupId` under a chunk server's directory. */
function shardFiles(root: string, blockGroupId: number): string[] {
  const found: string[] = [];
  const walk = (d: string) => {
    for (const e of readdirSync(d, { withFileTypes: true })) {
      if (e.isDirectory()) walk(join(d, e.name));
      else if (e.name.startsWith(`b${blockGroupId}_`) && e.name.endsWith('.shard'))
        found.push(join(d, e.name));
    }
  };
  walk(root);
  return found;
}

test('a repair retried after its commit was lost takes the copy it left, and only if it is the same bytes', async () => {
  const cluster = await up.ready();
  const env = { ...process.env, DOGFS_CLUSTER: up.clusterPath };
  const chunks = cluster.processes.filter((p) => p.role === 'chunk');
  assert.equal((await runDogfs(['admin', 'settings', '--dead-after', '3000'], { env })).status, 0);
  const { data, local } = await putRandomFile(up, '/a.bin', 900_000);

  const meta = new MetadataConnection({ seeds: cluster.meta });
  const session = new ClientSession();
  const transport = new DataTransferShardTransport();
  const client = new DogfsClient({ meta: cluster.meta });
  try {
    const groupOf = async () => (await meta.call('Stat', { path: '/a.bin' })).inode!.blockGroups[0]!;
    const bg = await groupOf();
    const victim = chunks.find((c) => bg.shards.some((s) => s.chunkServerId === c.id))!;
    const index = bg.shards.find((s) => s.chunkServerId === victim.id)!.index;
    const holder = async () => (await groupOf()).shards.find((s) => s.index === index)!.chunkServerId;
    await killChunkServers([victim], () => client.report());
    const plan = await meta.call('PlanRepair', { path: '/a.bin', suspects: [] });
    const target = plan.blockGroups[0]!.targets[0]!;
    assert.equal(target.index, index);
    const targetProcess = chunks.find((c) => c.id === target.chunkServerId)!;
    const shard = { blockGroupId: bg.id, index, generation: 0 };
    assert.equal(
      shardFiles(targetProcess.dir, bg.id).length,
      0,
      'the only target holds nothing of the group',
    );

    // 1. A copy of the same shard id that is not the rebuilt bytes is never taken.
    const stale = randomBytes(bg.shards[0]!.length);
    const planted = transport.openWrite(
      { addr: target.addr, shard },
      { length: stale.length, deadline: Date.now() + 10_000 },
    );
    await planted.write(stale);
    await planted.finish();
    const refused = await repairFile({ meta, session, transport }, '/a.bin');
    assert.equal(refused.shardsRebuilt, 0);
    assert.match(refused.unrepaired.join('; '), /already there, and holds another copy/);
    assert.equal(await holder(), victim.id, 'nothing committed');
    const control = new RpcChannel(targetProcess.addr);
    try {
      assert.equal((await control.call(ChunkControlService, 'DeleteShard', { shard })).existed, true);
    } finally {
      control.close();
    }

    // 2. The first repair's commit is lost after its shard was written.
    const losingCommit = {
      call: meta.call.bind(meta),
      mutate: (...args: Parameters<MetadataConnection['mutate']>) =>
        args[1] === 'CommitRepair'
          ? Promise.reject(new DogfsError('UNAVAILABLE', 'commit lost (test)'))
          : meta.mutate(...args),
    } as unknown as MetadataConnection;
    const first = await repairFile({ meta: losingCommit, session, transport }, '/a.bin');
    assert.equal(first.shardsRebuilt, 0);
    assert.match(first.unrepaired.join('; '), /commit refused: commit lost/);
    assert.equal(shardFiles(targetProcess.dir, bg.id).length, 1, 'the lost commit left its copy');

    // 3. The retry finds that copy on the only target, reads it back, and commits it.
    const retry = await repairFile({ meta, session, transport }, '/a.bin');
    assert.deepEqual(retry.unrepaired, []);
    assert.equal(retry.shardsRebuilt, 1);
    assert.equal(await holder(), target.chunkServerId);
    assert.ok((await client.readFile('/a.bin')).equals(data));
    assert.ok(readFileSync(local).equals(data));
  } finally {
    transport.close();
    client.close();
    meta.close();
  }
});
