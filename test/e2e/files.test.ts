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
import { assertOneLineError, runDogfs, startCluster } from '../helpers/index.js';

const up = startCluster(['--meta', '3', '--chunk', '5', '--ec', 'rs-3-2']);
const dir = up.dir;
after(() => up.stop());

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
