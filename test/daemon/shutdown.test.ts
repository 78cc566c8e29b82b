/**
 * How a server process stops (src/daemon/daemon.ts): it takes no new connections or calls, lets the
 * calls it took finish against state that is still whole, and only then runs the hooks that tear that
 * state down. The daemons run in this test's own process (node --test gives each file one), so the test
 * holds the gates their handlers and hooks wait on.
 */
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { after, test } from 'node:test';
import { runDaemon, SHUTDOWN_DRAIN_MS } from '../../src/daemon/daemon.js';
import { DogfsError } from '../../src/wire/errors.js';
import { type MetadataMethods, MetadataService } from '../../src/wire/gen/types.js';
import { FrameType, LEAN_MAGIC } from '../../src/wire/lean.js';
import { RpcChannel, type ServiceHandlers } from '../../src/wire/rpc.js';
import { gate, tempDir, waitFor } from '../helpers/index.js';
import { errorOf, rawLeanConnection, statAnswer, statOnly, statRequest } from '../helpers/lean.js';

const dir = tempDir('dogfs-daemon-');
after(() => dir.remove());

/** A server process's life in this process: its Metadata service is `handlers`, its one hook `hook`. */
function startDaemon(
  name: string,
  handlers: ServiceHandlers<MetadataMethods>,
  hook: () => Promise<void> | void,
): ReturnType<typeof runDaemon> {
  return runDaemon(
    { role: 'chunk', dir: join(dir.path, name), listen: { host: '127.0.0.1', port: 0 }, logLevel: 'error' },
    (context) => {
      context.rpc.addService(MetadataService, handlers);
      context.onShutdown(hook);
    },
  );
}

function portOf(addr: string): number {
  return Number(addr.slice(addr.lastIndexOf(':') + 1));
}

test('shutdown stops taking calls, lets the running ones finish, and only then runs its hooks', async () => {
  const call = gate();
  const hook = gate();
  /** What the handlers read; the hook tears it down, as a real one closes a Raft host or a store. */
  let state: string | undefined = 'whole';
  let started = 0;
  let hookStarted = false;
  const daemon = await startDaemon(
    'order',
    statOnly(
      async (path) => {
        started++;
        if (path === 'wait') await call.passed;
      },
      () => {
        if (state === undefined) throw new DogfsError('INTERNAL', 'state torn down under a running call');
        return state;
      },
    ),
    async () => {
      hookStarted = true;
      await hook.passed;
      state = undefined;
    },
  );
  const raw = await rawLeanConnection(portOf(daemon.addr));
  const channel = new RpcChannel(daemon.addr, { transport: 'grpc' });
  try {
    raw.socket.write(LEAN_MAGIC);
    raw.socket.write(statRequest(1, 'wait'));
    await waitFor('the call to start', () => started === 1);
    const stopping = daemon.shutdown();
    const goAway = () => raw.frames.find((f) => f.type === FrameType.GOAWAY);
    await waitFor('the server to stop taking calls, or a hook to start', () => hookStarted || goAway());
    assert.equal(hookStarted, false, 'a hook started while the server took calls and one still ran');
    assert.equal(goAway()?.callId, 1, 'the GOAWAY names the last call taken');

    // A call after it, on a connection already open, is refused as retryable; a new connection finds
    // nobody listening.
    raw.socket.write(statRequest(2, 'late'));
    await waitFor('the late call to be refused', () => errorOf(raw.frames, 2));
    assert.equal(errorOf(raw.frames, 2)?.code, 'UNAVAILABLE');
    assert.match(errorOf(raw.frames, 2)?.message ?? '', /shutting down/);
    await assert.rejects(
      channel.call(MetadataService, 'Stat', { path: 'late' }, { timeoutMs: 5000 }),
      (error: DogfsError) => error.code === 'UNAVAILABLE',
    );
    assert.equal(hookStarted, false, 'the hooks wait for the running call');

    call.open();
    await waitFor('the running call to be answered', () =>
      raw.frames.find((f) => f.callId === 1 && f.type !== FrameType.GOAWAY),
    );
    assert.equal(
      statAnswer(raw.frames.find((f) => f.callId === 1 && f.type === FrameType.RESPONSE)),
      'whole',
    );
    await waitFor('the hooks to run once the call returned', () => hookStarted);
    hook.open();
    await stopping;
    assert.equal(started, 1, 'nothing taken after the shutdown began ran');
  } finally {
    call.open();
    hook.open();
    channel.close();
    raw.socket.destroy();
    await daemon.shutdown();
  }
});

test('a call that outlives the drain limit does not hold the shutdown: the hooks run after the limit', async () => {
  let started = false;
  let hookRan = false;
  const daemon = await startDaemon(
    'limit',
    statOnly(async () => {
      started = true;
      await new Promise(() => {}); // a wait that never ends (a proposal without a quorum)
    }),
    () => {
      hookRan = true;
    },
  );
  const channel = new RpcChannel(daemon.addr, { transport: 'lean' });
  try {
    const stuck = channel.call(MetadataService, 'Stat', { path: 'stuck' }, { timeoutMs: 60_000 });
    await waitFor('the call to start', () => started);
    const began = Date.now();
    await daemon.shutdown();
    const took = Date.now() - began;
    assert.equal(hookRan, true);
    assert.ok(took >= SHUTDOWN_DRAIN_MS - 50, `the hooks waited for the call: ${took} ms`);
    assert.ok(took < 15_000, `the shutdown ended well before the 30 s watchdog: ${took} ms`);
    // Its connection was cut once the grace after the hooks passed.
    await assert.rejects(stuck, (error: DogfsError) => error.code === 'UNAVAILABLE');
  } finally {
    channel.close();
  }
});
