/**
 * The client library against real `dogfs chunk` processes (the data-transfer protocol over TCP) and a
 * fake metadata service: byte-exact round trips, a flipped byte on disk, a chunk server SIGKILLed
 * mid-write (stored with K+1 durable; with too few, nothing appears), and reads with M and M+1 servers
 * SIGKILLed. rs-3-2 on six chunk servers; placement is chosen by the test so each kill hits known shards.
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { type AddressInfo, connect, createServer, type Socket } from 'node:net';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { DogfsClient } from '../../src/client/index.js';
import { StripeLayout } from '../../src/codec/stripe.js';
import { DogfsError } from '../../src/wire/errors.js';
import type { RunningChunk } from '../chunk/helpers.js';
import { tempDir } from '../helpers/index.js';
import { startChunkServers, startFakeMetaCluster } from './fake-meta.js';

const STRIPE = 256 * 1024;
const layout = new StripeLayout({ k: 3, m: 2, stripeSize: STRIPE });
const GROUP = 4 * layout.stripeDataSize;

/** The on-disk file of one shard (header of 64 bytes, then the data). */
function shardFile(chunkDir: string, blockGroupId: number, index: number): string {
  const name = readdirSync(join(chunkDir, 'shards'), { recursive: true })
    .map(String)
    .find((f) => new RegExp(`(^|/)b${blockGroupId}_i${index}_g\\d+_.*\\.shard$`).test(f));
  assert.ok(name, `shard ${blockGroupId}/${index} on disk in ${chunkDir}`);
  return join(chunkDir, 'shards', name);
}

/**
 * A TCP proxy to `target` whose answers come back slowly: 16 KiB every 40 ms (a slow link that keeps
 * delivering). What the client sends passes at once.
 */
async function slowProxy(target: string): Promise<{ address: string; close: () => Promise<void> }> {
  const [host, port] = [
    target.slice(0, target.lastIndexOf(':')),
    Number(target.slice(target.lastIndexOf(':') + 1)),
  ];
  const sockets = new Set<Socket>();
  const server = createServer((client) => {
    const upstream = connect(port, host);
    sockets.add(client).add(upstream);
    client.pipe(upstream);
    const queue: Buffer[] = [];
    const pace = setInterval(() => {
      const next = queue.shift();
      if (next === undefined) return;
      if (next.length > 16 * 1024) queue.unshift(next.subarray(16 * 1024));
      client.write(next.subarray(0, 16 * 1024));
      if (queue.length === 0) upstream.resume();
    }, 40);
    upstream.on('data', (chunk: Buffer) => {
      queue.push(chunk);
      upstream.pause();
    });
    const end = () => {
      clearInterval(pace);
      client.destroy();
      upstream.destroy();
    };
    client.on('close', end).on('error', end);
    upstream.on('close', end).on('error', end);
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return {
    address: `127.0.0.1:${(server.address() as AddressInfo).port}`,
    close: () =>
      new Promise<void>((resolve) => {
        for (const socket of sockets) socket.destroy();
        server.close(() => resolve());
      }),
  };
}

describe('client ↔ real chunk servers', () => {
  const dir = tempDir('dogfs-client-chunks-');
  const chunks: RunningChunk[] = [];
  let meta: Awaited<ReturnType<typeof startFakeMetaCluster>>;
  let client: DogfsClient;
  const files = new Map<string, Buffer>();
  const ids = ['cs0', 'cs1', 'cs2', 'cs3', 'cs4', 'cs5'];

  before(async () => {
    meta = await startFakeMetaCluster(0, { stripeSize: STRIPE, blockGroupBytes: GROUP, defaultEc: 'rs-3-2' });
    chunks.push(...(await startChunkServers(meta.state, dir.path, ids)));
    // Data shards 0 and 1 on cs3 and cs4: the servers the later tests kill.
    meta.state.placement = ['cs3', 'cs4', 'cs0', 'cs1', 'cs2'];
    client = new DogfsClient({ meta: [meta.leader.address], timeoutMs: 10_000 });
  });

  after(async () => {
    client?.close();
    await Promise.all(chunks.map((c) => c.stop().catch(() => {})));
    await meta?.close();
    dir.remove();
  });

  test('round trips: 0, 1, stripe ± 1 and several MiB over several block groups', async () => {
    for (const size of [0, 1, layout.stripeDataSize - 1, layout.stripeDataSize + 1, 5 * 1024 * 1024 + 3]) {
      const data = randomBytes(size);
      const path = `/rt-${size}`;
      const stream = await client.writeFile(path, data);
      assert.equal(stream.blockGroups.length, Math.ceil(size / GROUP));
      for (const group of stream.blockGroups) assert.ok(group.shards.every((s) => s.durable));
      assert.deepEqual(await client.readFile(path), data, `${size} bytes back`);
      files.set(path, data);
    }
    const big = files.get(`/rt-${5 * 1024 * 1024 + 3}`)!;
    const start = GROUP - 1000;
    const end = 2 * GROUP + 5000;
    assert.deepEqual(
      await client.readFile(`/rt-${big.length}`, { start, end }),
      big.subarray(start, end + 1),
    );
  });

  test('a flipped byte on disk: the right bytes come back and the shard is reported', async () => {
    const data = randomBytes(layout.stripeDataSize * 2);
    await client.writeFile('/flipped', data);
    const block = (await client.stat('/flipped')).inode.blockGroups[0]!;
    // Shard 2 lives on cs0 (placement); flip a byte inside its data.
    const path = shardFile(chunks[0]!.dir, block.id, 2);
    const bytes = readFileSync(path);
    bytes[64 + 1000] = bytes[64 + 1000]! ^ 0xff;
    writeFileSync(path, bytes);
    const reports = meta.state.badShards.length;
    const stream = client.createReadStream('/flipped');
    const parts: Buffer[] = [];
    for await (const part of stream) parts.push(part as Buffer);
    assert.deepEqual(Buffer.concat(parts), data);
    const reported = meta.state.badShards.slice(reports);
    assert.deepEqual(
      reported.map((r) => [r.blockGroupId, r.index, r.chunkServerId]),
      [[block.id, 2, 'cs0']],
    );
    assert.match(reported[0]!.reason, /^CORRUPT/);
  });

  test('a slow link that keeps delivering is read, though a packet takes longer than the stall timeout', async () => {
    // The data shards' servers behind proxies that pass 16 KiB every 40 ms back to the client (~400
    // KiB/s): a shard's packet (~340 KiB here) takes ~0.85 s to come in whole, the stall timeout is 250
    // ms. Bytes arriving inside a packet are progress; only silence is a stall.
    const proxies = await Promise.all(
      ['cs3', 'cs4', 'cs0'].map((id) => slowProxy(meta.state.chunkServers.get(id)!.addr)),
    );
    const direct = new Map(['cs3', 'cs4', 'cs0'].map((id) => [id, meta.state.chunkServers.get(id)!.addr]));
    try {
      ['cs3', 'cs4', 'cs0'].forEach((id, i) => {
        meta.state.chunkServers.get(id)!.addr = proxies[i]!.address;
      });
      const data = randomBytes(GROUP);
      await client.writeFile('/slow-link', data);
      const stream = client.createReadStream('/slow-link', { shardTimeoutMs: 250 });
      const parts: Buffer[] = [];
      for await (const part of stream) parts.push(part as Buffer);
      assert.deepEqual(Buffer.concat(parts), data);
      assert.deepEqual(stream.badShards, [], 'no shard was given up as stalled');
    } finally {
      for (const [id, addr] of direct) meta.state.chunkServers.get(id)!.addr = addr;
      await Promise.all(proxies.map((p) => p.close()));
    }
  });

  test('a chunk server SIGKILLed mid-write: stored with K+1 durable, read back exactly', async () => {
    meta.state.placement = ['cs5', 'cs1', 'cs2', 'cs3', 'cs4'];
    const data = randomBytes(3 * layout.stripeDataSize + 17);
    const stream = client.createWriteStream('/killed-mid-write', { size: data.length });
    const done = new Promise<void>((resolve, reject) => {
      stream.once('finish', resolve);
      stream.once('error', reject);
    });
    await new Promise<void>((resolve) =>
      stream.write(data.subarray(0, layout.stripeDataSize + 5), () => resolve()),
    );
    await chunks[5]!.kill();
    meta.state.chunkServers.get('cs5')!.alive = false;
    stream.end(data.subarray(layout.stripeDataSize + 5));
    await done;
    const shards = stream.blockGroups[0]!.shards;
    assert.deepEqual(
      shards.filter((s) => !s.durable).map((s) => s.chunkServerId),
      ['cs5'],
    );
    assert.match(shards[0]!.error?.message ?? '', /shard 0 on cs5/);
    assert.deepEqual(await client.readFile('/killed-mid-write'), data);
  });

  test('too few durable shards: the write fails cleanly, CompleteFile is never called', async () => {
    meta.state.placement = ['cs3', 'cs4', 'cs0', 'cs1', 'cs2'];
    const completes = meta.state.count('CompleteFile');
    const commits = meta.state.count('CommitBlockGroup');
    const data = randomBytes(2 * layout.stripeDataSize);
    const stream = client.createWriteStream('/too-few', { size: data.length, shardTimeoutMs: 5000 });
    const done = new Promise<void>((resolve, reject) => {
      stream.once('finish', resolve);
      stream.once('error', reject);
    });
    await new Promise<void>((resolve) =>
      stream.write(data.subarray(0, layout.stripeDataSize), () => resolve()),
    );
    await Promise.all([chunks[3]!.kill(), chunks[4]!.kill()]);
    stream.end(data.subarray(layout.stripeDataSize));
    await assert.rejects(done, (error: unknown) => {
      assert.ok(error instanceof DogfsError);
      assert.match(error.message, /^\/too-few: write failed: only 3 of 5 shards .* 4 needed/);
      assert.match(error.message, /shard 0 on cs3 .*shard 1 on cs4/);
      return true;
    });
    assert.equal(stream.completed, false);
    assert.equal(meta.state.count('CompleteFile'), completes);
    assert.equal(meta.state.count('CommitBlockGroup'), commits);
    await assert.rejects(
      client.stat('/too-few'),
      (e: unknown) => e instanceof DogfsError && e.code === 'NOT_FOUND',
    );
  });

  test('M chunk servers SIGKILLed: every earlier file reads back identical (degraded)', async () => {
    // cs3 and cs4 (data shards 0 and 1 of the round-trip files) are dead now.
    for (const [path, data] of files) {
      const stream = client.createReadStream(path);
      const parts: Buffer[] = [];
      for await (const part of stream) parts.push(part as Buffer);
      assert.deepEqual(Buffer.concat(parts), data, path);
      if (data.length > 0)
        assert.deepEqual([...new Set(stream.badShards.map((b) => b.index))].sort(), [0, 1]);
    }
  });

  test('M+1 SIGKILLed: the read fails within its deadline, naming the unavailable shards', async () => {
    await chunks[0]!.kill();
    const started = Date.now();
    await assert.rejects(client.readFile('/rt-1', { shardTimeoutMs: 3000 }), (error: unknown) => {
      assert.ok(error instanceof DogfsError);
      assert.equal(error.code, 'UNAVAILABLE');
      assert.match(error.message, /^\/rt-1: block group \d+: 3 of 5 shards unavailable/);
      assert.match(error.message, /shard 0 on cs3 .*shard 1 on cs4 .*shard 2 on cs0/);
      return true;
    });
    assert.ok(Date.now() - started < 10_000, 'within the deadline');
  });
});
