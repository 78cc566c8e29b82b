/**
 * What a metadata leader asks of a chunk server: its registration and whole inventory (a heartbeat
 * answered `reregister`) until this leadership has had a whole block report from it, and again when it
 * comes back from the dead. Reporters re-send the inventory only when asked (chunk/reporter.ts), so a
 * new leader (here: the one metadata server restarted) must ask, or it would not hear one for an hour.
 * One real metadata server, the chunk server played by the test.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { listeningAddr, startDogfs, tempDir, waitFor } from '../helpers/index.js';
import { TestMetaClient } from '../helpers/meta.js';

const ID = 'chunk-inv';
const DEAD_AFTER_MS = 1000;

const heartbeat = async (client: TestMetaClient) =>
  (await client.call('Heartbeat', { id: ID, capacityBytes: 1 << 30 }, 30_000)).reregister;
/** A whole inventory (empty) in two pages. */
async function blockReport(client: TestMetaClient): Promise<void> {
  await client.call('BlockReport', { id: ID, first: true, last: false, shards: [] });
  await client.call('BlockReport', { id: ID, first: false, last: true, shards: [] });
}

test('a leader asks a chunk server for its inventory until it has had a whole report in its term, and after a death', async () => {
  const dir = tempDir('dogfs-inventory-');
  const args = ['meta', '--dir', dir.path, '--id', 'meta-1'];
  let server = startDogfs(args);
  let client: TestMetaClient | undefined;
  try {
    const addr = await listeningAddr(server);
    client = new TestMetaClient([addr]);
    await client.call(
      'SetSettings',
      { settings: { heartbeatIntervalMs: 100, deadAfterMs: DEAD_AFTER_MS } },
      30_000,
    );
    await client.call('RegisterChunkServer', {
      id: ID,
      addr: '127.0.0.1:7000',
      controlAddr: '127.0.0.1:7001',
    });
    assert.equal(await heartbeat(client), true, 'registered, no report yet: asked for one');
    // A report whose first page this leader did not see is not whole.
    await client.call('BlockReport', { id: ID, first: false, last: true, shards: [] });
    assert.equal(await heartbeat(client), true, 'half a report: asked again');
    await blockReport(client);
    assert.equal(await heartbeat(client), false, 'a whole report: no more asking');
    assert.equal(await heartbeat(client), false);

    // Silent past the dead-timeout, the server is declared dead; back, it is asked for its inventory
    // until it has sent it (a heartbeat answered after it is alive again asks too).
    const c = client;
    await waitFor(
      `${ID} declared dead`,
      async () => (await c.call('ClusterReport', {})).chunkServers.find((s) => s.id === ID)?.state === 'dead',
      30_000,
    );
    assert.equal(await heartbeat(client), true, 'back from the dead: asked');
    assert.equal(await heartbeat(client), true, 'alive again, still no report: asked');
    await blockReport(client);
    assert.equal(await heartbeat(client), false);

    // A new leadership (the server restarted) knows the chunk server but has had no report from it.
    client.close();
    server.child.kill('SIGTERM');
    assert.deepEqual(await server.exited, { code: 0, signal: null });
    server = startDogfs([...args, '--listen', addr]);
    await listeningAddr(server);
    client = new TestMetaClient([addr]);
    assert.equal(await heartbeat(client), true, 'a new leader asks for the inventory it lacks');
    await blockReport(client);
    assert.equal(await heartbeat(client), false);
  } finally {
    client?.close();
    server.child.kill('SIGTERM');
    await server.exited;
    dir.remove();
  }
});
