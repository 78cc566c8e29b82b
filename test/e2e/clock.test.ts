/**
 * A metadata leader whose clock was a day ahead leaves that time in the state machine (its time never
 * runs back). After it, write leases must still expire after their length in real time, not once the
 * wall clock has caught up a day later (metadata/state-clock.ts). One metadata server, real processes.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { DogfsError } from '../../src/wire/errors.js';
import { listeningAddr, startDogfs, tempDir, waitFor } from '../helpers/index.js';
import { TestMetaClient } from '../helpers/meta.js';

const DAY_MS = 86_400_000;
const LEASE_MS = 8000;

test('after a leader whose clock was a day ahead, a lease still expires after its length', async () => {
  const dir = tempDir('dogfs-clock-');
  const args = ['meta', '--dir', dir.path, '--id', 'meta-1'];
  let server = startDogfs(args, { ...process.env, DOGFS_COMMAND_CLOCK_OFFSET_MS: String(DAY_MS) });
  let client: TestMetaClient | undefined;
  try {
    const addr = await listeningAddr(server);
    client = new TestMetaClient([addr]);
    // A lease long enough that the skewed leader's own expiry duty cannot end it before the restart.
    await client.call('SetSettings', { settings: { leaseMs: LEASE_MS } }, 30_000);
    const held = await client.call('Create', { path: '/held', session: client.nextSession() });
    // The skewed clock is what stamped the lease: without this the test would show nothing.
    assert.ok(held.leaseExpiresMs > Date.now() + DAY_MS - 60_000, `lease until ${held.leaseExpiresMs}`);
    client.close();
    server.child.kill('SIGTERM');
    assert.deepEqual(await server.exited, { code: 0, signal: null });

    // The same server with a right clock (its state keeps the day-ahead time).
    server = startDogfs([...args, '--listen', addr], process.env);
    await listeningAddr(server);
    client = new TestMetaClient([addr]);
    const again = client;
    // While the lease holds, the name is taken; once it expires, a create of the same name succeeds.
    let taken = 0;
    const unexpected: unknown[] = [];
    await waitFor(
      'the lease of the write in progress to expire',
      async () => {
        try {
          await again.call('Create', { path: '/held', session: again.nextSession() });
          return true;
        } catch (error) {
          if (error instanceof DogfsError && error.code === 'ALREADY_EXISTS') taken++;
          else unexpected.push(error);
          return undefined;
        }
      },
      // A lease of a few seconds, the leader's duty every second or so, an election at start: seconds.
      30_000,
      200,
    );
    assert.deepEqual(unexpected, []);
    assert.ok(taken > 0, 'the lease still held the name after the restart');
  } finally {
    client?.close();
    server.child.kill('SIGTERM');
    await server.exited;
    dir.remove();
  }
});
