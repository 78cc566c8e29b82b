/**
 * The whole path as a user runs it: `dogfs up` (3 metadata servers, real chunk servers), the `dogfs` CLI
 * putting and getting a file through the real metadata service, and reads that survive M SIGKILLed chunk
 * servers and fail clearly past M.
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, test } from 'node:test';
import { DogfsClient } from '../../src/client/index.js';
import { DEFAULT_CLUSTER_SETTINGS } from '../../src/metadata/state/cluster.js';
import { assertOneLineError, runDogfs, startCluster, waitFor } from '../helpers/index.js';

const up = startCluster(['--meta', '3', '--chunk', '5', '--ec', 'rs-3-2']);
const dir = up.dir;
after(() => up.stop());

test('byte-exact round trips at every size boundary, over several block groups (admin settings)', async () => {
  const cluster = await up.ready();
  const env = { ...process.env, DOGFS_CLUSTER: up.clusterPath };
  // rs-3-2 with 4 KiB cells: a stripe holds 12 KiB of file data, a block group 3 stripes.
  const cell = 4096;
  const stripe = 3 * cell;
  const group = 3 * stripe;
  const set = await runDogfs(
    ['admin', 'settings', '--json', '--stripe-size', String(stripe), '--block-group-size', String(group)],
    { env },
  );
  assert.equal(set.status, 0, set.stderr);
  const settings = JSON.parse(set.stdout) as {
    stripeSize: number;
    blockGroupMaxBytes: number;
    leaseMs: number;
  };
  assert.deepEqual([settings.stripeSize, settings.blockGroupMaxBytes], [stripe, group]);
  assert.equal(settings.leaseMs, 60_000, 'fields not given keep their value');
  const refused = await runDogfs(['admin', 'settings', '--stripe-size', '5000'], { env });
  assert.equal(refused.status, 1);
  assert.match(assertOneLineError(refused.stderr), /stripe size must be a multiple of 4096/);
  // rs-3-2 (the metadata servers' --ec) needs three 4 KiB cells a stripe: 8 KiB would fail every write.
  const tooSmall = await runDogfs(['admin', 'settings', '--stripe-size', '8192'], { env });
  assert.equal(tooSmall.status, 1);
  assert.match(assertOneLineError(tooSmall.stderr), /stripe size must be at least 12288 bytes for rs-3-2/);

  const client = new DogfsClient({ meta: cluster.meta });
  try {
    await client.mkdir('/sizes');
    const sizes = [
      0,
      1,
      cell - 1,
      cell,
      cell + 1,
      stripe - 1,
      stripe,
      stripe + 1,
      5 * stripe + 7,
      group,
      2 * group + 100,
    ];
    for (const size of sizes) {
      const data = randomBytes(size);
      await client.writeFile(`/sizes/${size}`, data);
      const status = await client.stat(`/sizes/${size}`);
      assert.equal(status.size, size);
      assert.equal(status.inode.blockGroups.length, Math.ceil(size / group), `${size} bytes: block groups`);
      assert.ok((await client.readFile(`/sizes/${size}`)).equals(data), `${size} bytes round trip`);
    }
    // A range across a block-group boundary reads only what it asks for.
    const whole = await client.readFile(`/sizes/${2 * group + 100}`);
    const range = await client.readFile(`/sizes/${2 * group + 100}`, { start: group - 10, end: group + 9 });
    assert.ok(range.equals(whole.subarray(group - 10, group + 10)));
  } finally {
    client.close();
  }
  // Back to the defaults for the test below.
  const reset = await runDogfs(
    [
      'admin',
      'settings',
      '--stripe-size',
      String(DEFAULT_CLUSTER_SETTINGS.stripeSize),
      '--block-group-size',
      String(DEFAULT_CLUSTER_SETTINGS.blockGroupMaxBytes),
    ],
    { env },
  );
  assert.equal(reset.status, 0, reset.stderr);
});

test('a write outlives a short lease by renewing it; an abandoned write frees its name at once', async () => {
  const cluster = await up.ready();
  const env = { ...process.env, DOGFS_CLUSTER: up.clusterPath };
  const short = await runDogfs(['admin', 'settings', '--lease', '1000'], { env });
  assert.equal(short.status, 0, short.stderr);
  const client = new DogfsClient({ meta: cluster.meta });
  try {
    const data = randomBytes(300_000);
    const stream = client.createWriteStream('/leased', { size: data.length });
    const stored = new Promise<void>((resolve, reject) => {
      stream.once('finish', resolve);
      stream.once('error', reject);
    });
    await new Promise<void>((resolve) => stream.write(data.subarray(0, 1000), () => resolve()));
    // Hold the write open for several lease lengths: only renewals keep it alive.
    const started = Date.now();
    await waitFor('three lease lengths', () => Date.now() - started > 3000, 10_000, 100);
    stream.end(data.subarray(1000));
    await stored;
    assert.ok((await client.readFile('/leased')).equals(data));

    // A write that gives up: with a 60 s lease again, the name is free for a new create (no overwrite)
    // within seconds only because the stream abandoned it.
    const long = await runDogfs(['admin', 'settings', '--lease', '60000'], { env });
    assert.equal(long.status, 0, long.stderr);
    const abandoned = client.createWriteStream('/abandoned', { size: 10 });
    await new Promise<void>((resolve) => abandoned.write(Buffer.alloc(5), () => resolve()));
    const failed = new Promise((resolve) => abandoned.once('error', resolve));
    abandoned.destroy(new Error('given up'));
    await failed;
    await waitFor(
      'the name free again',
      async () =>
        client.touch('/abandoned').then(
          () => true,
          () => false,
        ),
      5000,
    );
    assert.equal((await client.stat('/abandoned')).size, 0);
  } finally {
    client.close();
    const reset = await runDogfs(['admin', 'settings', '--lease', '60000'], { env });
    assert.equal(reset.status, 0, reset.stderr);
  }
});

test('put, get, and degraded get through the real metadata service', async () => {
  const cluster = await up.ready();
  const env = { ...process.env, DOGFS_CLUSTER: up.clusterPath };
  const original = randomBytes(2_500_000 + 17);
  const local = join(dir.path, 'original.bin');
  writeFileSync(local, original);

  assert.equal((await runDogfs(['mkdir', '-p', '/data'], { env, timeoutMs: 60_000 })).status, 0);
  const put = await runDogfs(['put', local, '/data/file.bin'], { env, timeoutMs: 60_000 });
  assert.equal(put.status, 0, put.stderr);
  const stat = await runDogfs(['stat', '--json', '/data/file.bin'], { env });
  const status = JSON.parse(stat.stdout) as { type: string; size: number; ec: string };
  assert.deepEqual([status.type, status.size, status.ec], ['file', original.length, 'rs-3-2']);

  const copy = join(dir.path, 'copy.bin');
  const get = await runDogfs(['get', '/data/file.bin', copy], { env, timeoutMs: 60_000 });
  assert.equal(get.status, 0, get.stderr);
  assert.ok(readFileSync(copy).equals(original), 'bytes come back identical');

  const chunks = cluster.processes.filter((p) => p.role === 'chunk');
  for (const victim of chunks.slice(0, 2)) process.kill(victim.pid, 'SIGKILL');
  const degraded = join(dir.path, 'degraded.bin');
  const get2 = await runDogfs(['get', '/data/file.bin', degraded], { env, timeoutMs: 60_000 });
  assert.equal(get2.status, 0, get2.stderr);
  assert.ok(readFileSync(degraded).equals(original), 'identical with M = 2 chunk servers SIGKILLed');

  process.kill(chunks[2]!.pid, 'SIGKILL');
  const get3 = await runDogfs(['get', '/data/file.bin', join(dir.path, 'lost.bin')], {
    env,
    timeoutMs: 60_000,
  });
  assert.notEqual(get3.status, 0);
  assert.match(assertOneLineError(get3.stderr), /shards unavailable/);
});
