/**
 * The client library against a fake metadata service (in-process gRPC) and an in-memory data plane with
 * fault injection: namespace calls, leader discovery, exactly-once retries, no-quorum errors, the write
 * path's stripes/block groups/durability rule and the read path's ranges and degraded reads.
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { Readable } from 'node:stream';
import { finished } from 'node:stream/promises';
import { after, before, describe, test } from 'node:test';
import {
  ClientSession,
  DogfsClient,
  type PositionalSource,
  type ReadStreamOptions,
} from '../../src/client/index.js';

import { StripeLayout } from '../../src/codec/stripe.js';
import { DogfsError } from '../../src/wire/errors.js';
import { gate, waitFor } from '../helpers/index.js';
import { FakeMeta, FakeMetaState, startFakeMetaCluster } from './fake-meta.js';
import { MemoryTransport } from './memory-transport.js';

const STRIPE = 64 * 1024; // rs-3-2: cells of 20 KiB, stripes of 60 KiB
const layout = new StripeLayout({ k: 3, m: 2, stripeSize: STRIPE });

/** A PositionalSource over `data` that returns at most `most` bytes per read. */
function bytesSource(data: Buffer, most: number): PositionalSource {
  return {
    read: async (buffer, offset, length, position) => {
      const n = Math.max(0, Math.min(length, most, data.length - position));
      data.copy(buffer, offset, position, position + n);
      return { bytesRead: n };
    },
  };
}

/**
 * DogfsClient.readInto into memory: each reservation is pre-filled with 0xee, so bytes the reader
 * failed to fill show. Checks that no reservation exceeds a stripe and that commits follow reserves.
 */
async function readIntoBuffer(client: DogfsClient, path: string, options: ReadStreamOptions = {}) {
  const parts: Buffer[] = [];
  let open: Buffer | undefined;
  const outcome = await client.readInto(
    path,
    {
      reserve: (length) => {
        assert.equal(open, undefined, 'one reservation at a time');
        assert.ok(length > 0 && length <= layout.stripeDataSize, `reservation of ${length}`);
        open = Buffer.alloc(length, 0xee);
        return open;
      },
      commit: async () => {
        assert.ok(open !== undefined, 'commit after reserve');
        parts.push(open);
        open = undefined;
      },
    },
    options,
  );
  return { bytes: Buffer.concat(parts), outcome };
}

/** DogfsClient.readInto into memory, calling `afterStripe` with the count of stripes committed so far. */
async function readIntoPausing(
  client: DogfsClient,
  path: string,
  afterStripe: (stripes: number) => void | Promise<void>,
  options: ReadStreamOptions = {},
) {
  const parts: Buffer[] = [];
  let open: Buffer | undefined;
  const outcome = await client.readInto(
    path,
    {
      reserve: (length) => {
        open = Buffer.alloc(length, 0xee);
        return open;
      },
      commit: async () => {
        parts.push(open!);
        await afterStripe(parts.length);
      },
    },
    options,
  );
  return { bytes: Buffer.concat(parts), outcome };
}

async function rejectsWith(promise: Promise<unknown>, code: string, pattern?: RegExp): Promise<DogfsError> {
  try {
    await promise;
  } catch (error) {
    assert.ok(error instanceof DogfsError, `a DogfsError, got ${String(error)}`);
    assert.equal(error.code, code, error.message);
    if (pattern) assert.match(error.message, pattern);
    return error;
  }
  assert.fail(`expected ${code}`);
}

describe('namespace and leader discovery', () => {
  let cluster: Awaited<ReturnType<typeof startFakeMetaCluster>>;
  let client: DogfsClient;

  before(async () => {
    cluster = await startFakeMetaCluster(2);
    // A dead seed first, then a follower: the client must move on and follow the hint.
    client = new DogfsClient({ meta: ['127.0.0.1:1', cluster.followers[0]!.address], timeoutMs: 5000 });
  });
  after(async () => {
    client.close();
    await cluster.close();
  });

  test('mkdir, stat, list in pages, rename, delete', async () => {
    const made = await client.mkdir('/a/b/c', { parents: true });
    assert.equal(made.type, 'dir');
    assert.equal(client.metadata.knownLeader(1), cluster.leader.address, 'found the leader');
    await rejectsWith(client.mkdir('/x/y'), 'NOT_FOUND', /No such file/);
    await rejectsWith(client.mkdir('/a'), 'ALREADY_EXISTS');
    for (let i = 0; i < 7; i++) await client.mkdir(`/a/d${i}`);
    const seen: string[] = [];
    const listCallsBefore = cluster.state.count('List');
    for await (const entry of client.list('/a', { pageSize: 3 })) seen.push(entry.name);
    assert.deepEqual(seen, ['b', 'd0', 'd1', 'd2', 'd3', 'd4', 'd5', 'd6']);
    assert.equal(cluster.state.count('List') - listCallsBefore, 3, 'three pages of at most 3');
    await client.rename('/a/d0', '/a/b/moved');
    assert.equal((await client.stat('a/b/moved/')).path, '/a/b/moved');
    await rejectsWith(client.stat('/a/d0'), 'NOT_FOUND');
    await rejectsWith(client.delete('/a'), 'NOT_EMPTY');
    await client.delete('/a', { recursive: true });
    await rejectsWith(client.stat('/a/b'), 'NOT_FOUND');
  });

  test('list pages advance in code-point order, where it and UTF-16 order disagree', async () => {
    // U+FFFF sorts before U+1F600 by code point (and UTF-8 bytes, the service's order), after it by
    // UTF-16 code units (JavaScript's <): a page boundary between them must not look like going back.
    await client.mkdir('/order');
    for (const name of ['\uffff', '\u{1f600}', '\u{1f601}', 'z']) await client.touch(`/order/${name}`);
    const seen: string[] = [];
    for await (const entry of client.list('/order', { pageSize: 1 })) seen.push(entry.name);
    assert.deepEqual(seen, ['z', '\uffff', '\u{1f600}', '\u{1f601}']);
    await client.delete('/order', { recursive: true });
  });

  test('a new client opens one session before its first mutations, however many start at once', async () => {
    const fresh = new DogfsClient({ meta: [cluster.leader.address], timeoutMs: 5000 });
    try {
      const opensBefore = cluster.state.count('OpenSession');
      assert.equal(fresh.session.clientId, undefined, 'nothing opened before a mutation');
      await Promise.all(Array.from({ length: 5 }, (_, i) => fresh.mkdir(`/opened-${i}`)));
      assert.equal(cluster.state.count('OpenSession') - opensBefore, 1, 'one open shared by the five calls');
      assert.match(fresh.session.clientId ?? '', /^session-/);
      assert.equal(fresh.session.lastSeq, 5);
      await fresh.delete('/opened-0');
      assert.equal(cluster.state.count('OpenSession') - opensBefore, 1, 'the session is kept');
    } finally {
      fresh.close();
    }
  });

  test('a retried mutation reuses its sequence number: applied once, answered with the first result', async () => {
    cluster.state.dropReply.set('Mkdir', 1);
    const seqBefore = client.session.lastSeq;
    const made = await client.mkdir('/once');
    assert.equal(made.path, '/once', 'the retry got the original answer, not ALREADY_EXISTS');
    assert.equal(client.session.lastSeq, seqBefore + 1, 'one sequence number for the call and its retry');
    assert.ok(cluster.state.count('Mkdir') >= 2);
  });

  test('a session the service forgot is renewed and the call redone once', async () => {
    cluster.state.failNext.set('Mkdir', {
      error: new DogfsError(
        'FAILED_PRECONDITION',
        'session expired: client x seq 9 is unknown; open a new session',
      ),
      count: 1,
    });
    const before = client.session.clientId;
    assert.equal((await client.mkdir('/renewed')).path, '/renewed');
    assert.notEqual(client.session.clientId, before);
    assert.equal(client.session.lastSeq, 1, 'the new session starts at 1');
  });

  test('a session forgotten while a call had no answer: not redone, the unknown outcome said', async () => {
    cluster.state.dropReply.set('Mkdir', 1);
    cluster.state.failAfterDrop.set(
      'Mkdir',
      new DogfsError('FAILED_PRECONDITION', 'session expired: client x seq 9 is unknown; open a new session'),
    );
    const calls = cluster.state.count('Mkdir');
    await rejectsWith(client.mkdir('/maybe'), 'DEADLINE_EXCEEDED', /may or may not have been applied/);
    // Applied once by the attempt whose answer was lost; a redo on a new session would have applied it
    // again (here: ALREADY_EXISTS for a mkdir that succeeded).
    assert.equal((await client.stat('/maybe')).type, 'dir');
    assert.equal(cluster.state.count('Mkdir'), calls + 2, 'the attempt and the refused retry, no redo');
  });

  test('a session forgotten after an attempt refused before it was proposed: renewed and redone', async () => {
    cluster.state.failInTurn.set('Mkdir', [
      new DogfsError('UNAVAILABLE', 'metadata group 1 is electing a leader; retry'),
      new DogfsError('FAILED_PRECONDITION', 'session expired: client x seq 9 is unknown; open a new session'),
    ]);
    const before = client.session.clientId;
    assert.equal((await client.mkdir('/refused-then-renewed')).path, '/refused-then-renewed');
    assert.notEqual(client.session.clientId, before);
  });

  test('every server without quorum: NO_QUORUM within the deadline', async () => {
    const state = new FakeMetaState();
    const servers = [new FakeMeta(state), new FakeMeta(state)];
    for (const s of servers) {
      await s.start();
      s.noQuorum = true;
    }
    const c = new DogfsClient({ meta: servers.map((s) => s.address), timeoutMs: 800 });
    const started = Date.now();
    const error = await rejectsWith(c.stat('/'), 'NO_QUORUM', /no quorum/);
    assert.ok(
      Date.now() - started < 3000,
      `failed within the deadline (${Date.now() - started} ms): ${error.message}`,
    );
    c.close();
    await Promise.all(servers.map((s) => s.close()));
  });

  test('no quorum after an attempt that got no answer: NO_QUORUM that says the mutation may have been applied', async () => {
    const state = new FakeMetaState();
    const server = new FakeMeta(state);
    await server.start();
    const c = new DogfsClient({ meta: [server.address], timeoutMs: 800 });
    await c.mkdir('/opened'); // the session is open before the fault
    // Applied, its answer lost; then every attempt until the deadline finds no quorum.
    state.dropReply.set('Mkdir', 1);
    state.failAfterDrop.set('Mkdir', {
      error: new DogfsError('NO_QUORUM', 'no quorum: cannot reach a majority'),
      count: 1_000_000,
    });
    await rejectsWith(c.mkdir('/maybe-applied'), 'NO_QUORUM', /no quorum.*may or may not have been applied/);
    assert.equal((await c.stat('/maybe-applied')).type, 'dir', 'the first attempt was applied');
    // Refused before anything could apply: plain NO_QUORUM.
    const plain = await rejectsWith(c.mkdir('/never'), 'NO_QUORUM', /no quorum/);
    assert.doesNotMatch(plain.message, /may or may not/);
    c.close();
    await server.close();
  });

  test('an attempt with no answer, then nothing reachable: UNAVAILABLE that says the mutation may have been applied', async () => {
    const state = new FakeMetaState();
    const server = new FakeMeta(state);
    await server.start();
    // Every attempt on the server is applied and never answered (cut at the attempt cap, as a lost
    // connection would be); the other seed refuses connections: no server ever answers.
    const c = new DogfsClient({
      meta: [server.address, '127.0.0.1:1'],
      timeoutMs: 1000,
      attemptTimeoutMs: 150,
    });
    const held = gate();
    try {
      await c.mkdir('/opened'); // the session is open before the fault
      state.holdReply.set('Mkdir', held.passed);
      const error = await rejectsWith(
        c.mkdir('/unanswered'),
        'UNAVAILABLE',
        /^cannot reach any metadata server .*; an attempt got no answer, so it may or may not have been applied/,
      );
      held.open();
      assert.equal(
        (await c.stat('/unanswered')).type,
        'dir',
        `applied, though the error said: ${error.message}`,
      );
      // A read whose answers are lost changed nothing: its error says nothing of the kind.
      state.failNext.set('Stat', {
        error: new DogfsError('UNAVAILABLE', 'metadata server is shutting down'),
        count: 1_000_000,
      });
      const read = await rejectsWith(c.stat('/unanswered'), 'UNAVAILABLE');
      assert.doesNotMatch(read.message, /may or may not/);
    } finally {
      held.open();
      c.close();
      await server.close();
    }
  });

  test("a leader's refusal after an attempt with no answer says the mutation may have been applied; refusals alone do not", async () => {
    const state = new FakeMetaState();
    const server = new FakeMeta(state);
    await server.start();
    const c = new DogfsClient({ meta: [server.address], timeoutMs: 600 });
    const refusal = new DogfsError('UNAVAILABLE', 'need 9 live chunk servers, 3 alive');
    try {
      await c.mkdir('/opened');
      state.dropReply.set('Mkdir', 1);
      state.failAfterDrop.set('Mkdir', { error: refusal, count: 1_000_000 });
      await rejectsWith(
        c.mkdir('/maybe-refused'),
        'UNAVAILABLE',
        /^need 9 live chunk servers, 3 alive; an attempt got no answer, so it may or may not have been applied/,
      );
      assert.equal((await c.stat('/maybe-refused')).type, 'dir', 'the first attempt was applied');
      // Every attempt answered with the refusal: nothing was applied, and the error is the refusal itself.
      const plain = await rejectsWith(
        c.mkdir('/refused'),
        'UNAVAILABLE',
        /^need 9 live chunk servers, 3 alive$/,
      );
      assert.doesNotMatch(plain.message, /may or may not/);
    } finally {
      c.close();
      await server.close();
    }
  });

  test('a mutation cancelled while an attempt awaits its answer says it may have been applied; one cancelled before it is sent does not', async () => {
    const state = new FakeMetaState();
    const server = new FakeMeta(state);
    await server.start();
    const c = new DogfsClient({ meta: [server.address], timeoutMs: 5000 });
    const held = gate();
    try {
      await c.mkdir('/opened');
      state.holdReply.set('Mkdir', held.passed);
      const aborted = new AbortController();
      const sent = state.count('Mkdir');
      const call = c.mkdir('/cancelled-in-flight', { signal: aborted.signal });
      await waitFor('the mkdir to reach the server', () => state.count('Mkdir') > sent);
      aborted.abort();
      await rejectsWith(
        call,
        'CANCELLED',
        /cancelled; an attempt got no answer, so it may or may not have been applied/,
      );
      const early = await rejectsWith(c.mkdir('/cancelled-early', { signal: aborted.signal }), 'CANCELLED');
      assert.doesNotMatch(early.message, /may or may not/);
      assert.equal(state.count('Mkdir'), sent + 1, 'the call cancelled early was never sent');
    } finally {
      held.open();
      c.close();
      await server.close();
    }
  });

  test('a majority down, the survivor still electing: NO_QUORUM naming what each server said', async () => {
    const state = new FakeMetaState();
    const survivor = new FakeMeta(state, '');
    await survivor.start();
    state.failNext.set('Stat', {
      error: new DogfsError('UNAVAILABLE', 'metadata group 1 is electing a leader; retry'),
      count: 1_000_000,
    });
    const c = new DogfsClient({ meta: ['127.0.0.1:1', survivor.address], timeoutMs: 800 });
    // Closed whatever the outcome: a failed assertion must fail this test, not hang the file.
    try {
      await rejectsWith(
        c.stat('/'),
        'NO_QUORUM',
        /^metadata service has no quorum: Stat not served within \d+ ms \(127\.0\.0\.1:1: unreachable; .*electing a leader/,
      );
    } finally {
      c.close();
      await survivor.close();
    }
  });

  test('every server reachable and electing until the deadline (cut off from each other): NO_QUORUM', async () => {
    const state = new FakeMetaState();
    const servers = [new FakeMeta(state, ''), new FakeMeta(state, '')];
    for (const s of servers) await s.start();
    state.failNext.set('Stat', {
      error: new DogfsError('UNAVAILABLE', 'metadata group 1 is electing a leader; retry'),
      count: 1_000_000,
    });
    const c = new DogfsClient({ meta: servers.map((s) => s.address), timeoutMs: 800 });
    try {
      await rejectsWith(c.stat('/'), 'NO_QUORUM', /^metadata service has no quorum: .*electing a leader/);
    } finally {
      c.close();
      await Promise.all(servers.map((s) => s.close()));
    }
  });

  test("an election early in a call, then the leader refusing it until the deadline: the leader's refusal, not NO_QUORUM; a follower's is no sign of a leader", async () => {
    for (const [leads, code] of [
      [true, 'RESOURCE_EXHAUSTED'],
      [false, 'NO_QUORUM'],
    ] as const) {
      const state = new FakeMetaState();
      // A leader names itself in FindLeader; a follower that knows no leader names none.
      const server = leads ? new FakeMeta(state) : new FakeMeta(state, '');
      await server.start();
      state.failInTurn.set('Stat', [
        new DogfsError('UNAVAILABLE', 'metadata group 1 is electing a leader; retry'),
      ]);
      state.failNext.set('Stat', {
        error: new DogfsError('RESOURCE_EXHAUSTED', 'server busy: 4096 handlers running'),
        count: 1_000_000,
      });
      const c = new DogfsClient({ meta: [server.address], timeoutMs: 800 });
      try {
        await rejectsWith(c.stat('/'), code, code === 'NO_QUORUM' ? /no quorum/ : /server busy/);
      } finally {
        c.close();
        await server.close();
      }
    }
  });

  test('a seed cut off from the others (NO_QUORUM) is left for the next seed, which leads', async () => {
    const state = new FakeMetaState();
    const isolated = new FakeMeta(state);
    const leader = new FakeMeta(state);
    await isolated.start();
    await leader.start();
    isolated.noQuorum = true;
    const c = new DogfsClient({ meta: [isolated.address, leader.address], timeoutMs: 2_000 });
    try {
      const root = await c.stat('/');
      assert.equal(root.type, 'dir');
    } finally {
      c.close();
      await isolated.close();
      await leader.close();
    }
  });

  test('no server reachable: UNAVAILABLE naming the seeds', async () => {
    const c = new DogfsClient({ meta: ['127.0.0.1:1', '127.0.0.1:2'], timeoutMs: 600 });
    await rejectsWith(c.stat('/'), 'UNAVAILABLE', /127\.0\.0\.1:1, 127\.0\.0\.1:2/);
    c.close();
  });

  test('followers that know no leader, and one that does: the client finds it', async () => {
    const state = new FakeMetaState();
    const leader = new FakeMeta(state);
    await leader.start();
    const lost = new FakeMeta(state, '');
    await lost.start();
    const c = new DogfsClient({ meta: [lost.address, leader.address], timeoutMs: 3000 });
    assert.equal((await c.stat('/')).type, 'dir');
    c.close();
    await Promise.all([leader.close(), lost.close()]);
  });
});

/** A settled call's error as `CODE message`, or 'no error'. */
function reasonOf(r: PromiseSettledResult<unknown> | undefined): string {
  return r?.status === 'rejected' && r.reason instanceof DogfsError
    ? `${r.reason.code} ${r.reason.message}`
    : 'no error';
}

describe('client sessions', () => {
  let server: FakeMeta;
  let state: FakeMetaState;
  before(async () => {
    state = new FakeMetaState();
    server = new FakeMeta(state);
    await server.start();
  });
  after(async () => {
    await server.close();
  });
  const fresh = () => new DogfsClient({ meta: [server.address], timeoutMs: 5000 });

  test('a session the service forgot (evicted): the next call opens a new one and is applied once', async () => {
    const c = fresh();
    try {
      await c.mkdir('/evicted-a');
      const first = c.session.clientId!;
      state.openSessions.delete(first);
      const opens = state.count('OpenSession');
      await c.mkdir('/evicted-b');
      assert.equal(state.count('OpenSession'), opens + 1);
      assert.notEqual(c.session.clientId, first);
      assert.equal(c.session.lastSeq, 1);
    } finally {
      c.close();
    }
  });

  test('a shared open: each call waits for it only within its own deadline and signal, and one with time left gets it', async () => {
    const c = fresh();
    try {
      // The open fails three times (retried within the deadline of the call that started it), then succeeds.
      state.failNext.set('OpenSession', { error: new DogfsError('UNAVAILABLE', 'try again'), count: 3 });
      const opens = state.count('OpenSession');
      const began = Date.now();
      const aborted = new AbortController();
      const calls = Promise.allSettled([
        c.mkdir('/patient'),
        c.mkdir('/short', { timeoutMs: 5 }),
        c.mkdir('/cancelled', { signal: aborted.signal }),
      ]);
      aborted.abort();
      const [patient, short, cancelled] = await calls;
      assert.match(reasonOf(short), /^DEADLINE_EXCEEDED .*opening a session/);
      assert.match(reasonOf(cancelled), /^CANCELLED .*opening a session/);
      assert.equal(patient?.status, 'fulfilled', reasonOf(patient));
      assert.ok(Date.now() - began < 4000);
      assert.equal(state.count('OpenSession') - opens, 4, 'one open for the three calls (and its retries)');
    } finally {
      c.close();
    }
    // The calls fail with the open's own reason (here: no quorum), not a bare "deadline exceeded while
    // opening a session" (a fresh CLI command against a cluster without quorum said only that).
    const d = fresh();
    try {
      server.noQuorum = true;
      const [first, second] = await Promise.allSettled([
        d.mkdir('/first', { timeoutMs: 300 }),
        d.mkdir('/second'),
      ]);
      assert.match(reasonOf(first), /^NO_QUORUM .*no quorum/);
      assert.match(reasonOf(second), /^NO_QUORUM .*no quorum/);
    } finally {
      server.noQuorum = false;
      d.close();
    }
  });

  test('a server that answers an invalid session id: a clear error, and the next call opens again', async () => {
    const c = fresh();
    try {
      state.sessionIds.push('', 'x'.repeat(129));
      await rejectsWith(c.mkdir('/lied-to'), 'INTERNAL', /invalid id ""/);
      await rejectsWith(c.mkdir('/lied-to'), 'INTERNAL', /invalid id "xxx/);
      assert.equal((await c.mkdir('/lied-to')).path, '/lied-to');
    } finally {
      c.close();
    }
  });

  test('forget drops only the session it names: one opened since by another call is kept', async () => {
    const session = new ClientSession();
    const wait = { deadline: Date.now() + 1000 };
    await session.run(
      async () => 'first',
      wait,
      async () => undefined,
    );
    session.forget('first');
    await session.run(
      async () => 'second',
      wait,
      async () => undefined,
    );
    session.forget('first'); // a late refusal of a call stamped with the first session
    assert.equal(session.clientId, 'second');
    assert.equal(session.lastSeq, 1);
  });
});

describe('write and read paths (in-memory data plane)', () => {
  let cluster: Awaited<ReturnType<typeof startFakeMetaCluster>>;
  let transport: MemoryTransport;
  let client: DogfsClient;

  before(async () => {
    cluster = await startFakeMetaCluster(0, {
      stripeSize: STRIPE,
      blockGroupBytes: 3 * layout.stripeDataSize,
    });
    for (let i = 0; i < 7; i++) {
      cluster.state.chunkServers.set(`cs-${i}`, { id: `cs-${i}`, addr: `mem-${i}:1`, alive: true });
    }
    transport = new MemoryTransport();
    client = new DogfsClient({ meta: [cluster.leader.address], transport, timeoutMs: 5000 });
  });
  after(async () => {
    client.close();
    await cluster.close();
  });

  const S = layout.stripeDataSize;
  const G = 3 * S;
  /** Runs `body` against a service that combines commands (as the real one) or not (an older one). */
  async function withCombined(combined: boolean, body: () => Promise<void>): Promise<void> {
    const before = cluster.state.options;
    cluster.state.options = { ...before, combined };
    try {
      await body();
    } finally {
      cluster.state.options = before;
    }
  }

  const sizes = [0, 1, layout.cellSize - 1, layout.cellSize + 1, S - 1, S, S + 1, G, G + 1, 2 * G + 5];
  for (const [size, combined] of sizes.flatMap((n) => [
    [n, false],
    [n, true],
  ])) {
    const service = combined ? 'combining service' : 'older service';
    test(`round trip of ${size} bytes (known and unknown size, ${service})`, () =>
      withCombined(combined as boolean, () => roundTrip(size as number)));
  }

  async function roundTrip(size: number): Promise<void> {
    {
      const data = randomBytes(size);
      const written = await client.writeFile(`/f-${size}`, data, { ec: 'rs-3-2' });
      assert.equal(written.blockGroups.length, Math.ceil(size / G), 'block groups of at most G bytes');
      assert.deepEqual(await client.readFile(`/f-${size}`), data);
      const stat = await client.stat(`/f-${size}`);
      assert.equal(stat.size, size);
      // Unknown size (a stream): same bytes back.
      await client.writeFile(
        `/s-${size}`,
        Readable.from([data.subarray(0, size >> 1), data.subarray(size >> 1)]),
      );
      assert.deepEqual(await client.readFile(`/s-${size}`), data);
      // Read from a source into the stripe buffers (what `dogfs put` of a local file does), in short
      // reads of at most 7000 bytes, so reads end inside cells.
      const progress: number[] = [];
      await finished(
        client
          .createWriteStream(`/r-${size}`, {
            size,
            source: bytesSource(data, 7000),
            onProgress: (bytes) => progress.push(bytes),
          })
          .end(),
      );
      assert.deepEqual(await client.readFile(`/r-${size}`), data);
      assert.equal(progress.at(-1) ?? 0, size, 'progress reaches the size');
      for (const path of [`/f-${size}`, `/s-${size}`, `/r-${size}`]) await client.delete(path);
    }
  }

  for (const combined of [false, true])
    test(`a source shorter or longer than its size fails the stream and nothing appears; write() is refused (combined ${combined})`, () =>
      withCombined(combined, sourceMismatch));

  async function sourceMismatch(): Promise<void> {
    const data = randomBytes(2 * S + 10);
    const short = client.createWriteStream('/short', {
      size: data.length + 1,
      source: bytesSource(data, 1 << 20),
    });
    await rejectsWith(
      finished(short.end()),
      'INVALID_ARGUMENT',
      /ended after 122890 of its announced 122891/,
    );
    await rejectsWith(client.stat('/short'), 'NOT_FOUND');
    // A source with more bytes than its size (a file that grew after it was measured) fails too.
    const long = client.createWriteStream('/long', {
      size: data.length - 1,
      source: bytesSource(data, 1 << 20),
    });
    await rejectsWith(finished(long.end()), 'INVALID_ARGUMENT', /more than its announced 122889 bytes/);
    await rejectsWith(client.stat('/long'), 'NOT_FOUND');
    const both = client.createWriteStream('/both', { size: 1, source: bytesSource(Buffer.from('x'), 1) });
    await rejectsWith(finished(both.end(Buffer.from('y'))), 'INVALID_ARGUMENT', /reads its source/);
    await rejectsWith(client.stat('/both'), 'NOT_FOUND');
    assert.throws(
      () => client.createWriteStream('/nosize', { source: bytesSource(data, 1) }),
      /needs its size/,
    );
  }

  /** The metadata calls `run` makes, per write-path method. */
  async function callsOf(run: () => Promise<unknown>): Promise<Record<string, number>> {
    const methods = ['Create', 'AllocateBlockGroup', 'CommitBlockGroup', 'CompleteFile', 'AbandonFile'];
    const before = methods.map((m) => cluster.state.count(m));
    await run();
    return Object.fromEntries(methods.map((m, i) => [m, cluster.state.count(m) - before[i]!]));
  }
  const calls = (create: number, allocate: number, commit: number, complete: number) => ({
    Create: create,
    AllocateBlockGroup: allocate,
    CommitBlockGroup: commit,
    CompleteFile: complete,
    AbandonFile: 0,
  });

  test('a put of 0 bytes is one command (Create with complete), with the refusals and overwrite of a write', async () => {
    const empty = Buffer.alloc(0);
    // Known size, unknown size (a stream that ends at once: `dogfs put - <empty`), and a source.
    assert.deepEqual(await callsOf(() => client.writeFile('/e-known', empty)), calls(1, 0, 0, 0));
    assert.deepEqual(
      await callsOf(() => client.writeFile('/e-stream', Readable.from([]))),
      calls(1, 0, 0, 0),
    );
    assert.deepEqual(
      await callsOf(() =>
        finished(client.createWriteStream('/e-source', { size: 0, source: bytesSource(empty, 1) }).end()),
      ),
      calls(1, 0, 0, 0),
    );
    for (const path of ['/e-known', '/e-stream', '/e-source']) {
      const stat = await client.stat(path);
      assert.equal(stat.type, 'file');
      assert.equal(stat.size, 0);
    }
    // The same refusals as a write with bytes, with the path named.
    await client.mkdir('/e-dir');
    await rejectsWith(client.writeFile('/e-known', empty), 'ALREADY_EXISTS', /^\/e-known: /);
    await rejectsWith(client.writeFile('/e-dir', empty), 'IS_A_DIRECTORY', /^\/e-dir: /);
    await rejectsWith(client.writeFile('/e-none/f', empty), 'NOT_FOUND', /^\/e-none\/f: /);
    await rejectsWith(client.writeFile('/e-x', empty, { ec: 'rs-9' }), 'INVALID_ARGUMENT');
    // Overwrite replaces a file with bytes by an empty one.
    await client.writeFile('/e-full', randomBytes(S + 1), { ec: 'rs-3-2' });
    const stream = await client.writeFile('/e-full', empty, { overwrite: true });
    assert.equal(stream.completed, true);
    assert.equal((await client.stat('/e-full')).size, 0);
    assert.deepEqual(await client.readFile('/e-full'), empty);
  });

  test('a combining service: a one-group put is 2 commands, more groups 2 more each; an older one 4', async () => {
    const data = randomBytes(2 * G + 9);
    await withCombined(true, async () => {
      for (const [name, bytes] of [
        ['one', data.subarray(0, S + 1)],
        ['exact', data.subarray(0, G)],
      ] as const) {
        assert.deepEqual(
          await callsOf(() => client.writeFile(`/n-${name}`, bytes, { ec: 'rs-3-2' })),
          calls(1, 0, 0, 1),
        );
        assert.deepEqual(
          await callsOf(() =>
            client.writeFile(`/n-${name}-stream`, Readable.from([bytes]), { ec: 'rs-3-2' }),
          ),
          calls(1, 0, 0, 1),
        );
      }
      assert.deepEqual(
        await callsOf(() => client.writeFile('/n-three', data, { ec: 'rs-3-2' })),
        calls(1, 2, 2, 1),
      );
      for (const path of ['/n-one', '/n-one-stream', '/n-exact', '/n-exact-stream', '/n-three']) {
        const expected = path.startsWith('/n-one')
          ? data.subarray(0, S + 1)
          : path.startsWith('/n-exact')
            ? data.subarray(0, G)
            : data;
        assert.deepEqual(await client.readFile(path), expected, path);
        const stat = await client.stat(path);
        assert.equal(stat.inode.blockGroups.length, Math.ceil(expected.length / G));
      }
      // Too few chunk servers at Create: the create goes alone, and AllocateBlockGroup says why.
      for (const id of ['cs-0', 'cs-1', 'cs-2']) cluster.state.chunkServers.get(id)!.alive = false;
      try {
        await rejectsWith(
          client.writeFile('/n-refused', randomBytes(10), { ec: 'rs-3-2' }),
          'UNAVAILABLE',
          /^\/n-refused: need 5 live chunk servers, 4 alive$/,
        );
      } finally {
        for (const id of ['cs-0', 'cs-1', 'cs-2']) cluster.state.chunkServers.get(id)!.alive = true;
      }
      await rejectsWith(client.stat('/n-refused'), 'NOT_FOUND');
    });
    // An older service answers Create without a block group: the writer makes the separate calls.
    await withCombined(false, async () => {
      assert.deepEqual(
        await callsOf(() => client.writeFile('/n-old', data.subarray(0, S + 1), { ec: 'rs-3-2' })),
        calls(1, 1, 1, 1),
      );
      assert.deepEqual(await client.readFile('/n-old'), data.subarray(0, S + 1));
    });
  });

  test('combined commands: lost replies are retried under the same numbers and applied once', async () => {
    await withCombined(true, async () => {
      for (const method of ['Create', 'AllocateBlockGroup', 'CommitBlockGroup', 'CompleteFile'])
        cluster.state.dropReply.set(method, 1);
      const data = randomBytes(G + 5);
      await client.writeFile('/n-lost', data, { ec: 'rs-3-2' });
      const inode = (await client.stat('/n-lost')).inode;
      assert.equal(inode.blockGroups.length, 2, 'each block group allocated and committed once');
      assert.deepEqual(await client.readFile('/n-lost'), data);
      cluster.state.dropReply.clear();
    });
  });

  test('an open write renews its lease past the lease length; a failed write is abandoned at once', async () => {
    cluster.state.options = { ...cluster.state.options, leaseMs: 1500 };
    try {
      const data = randomBytes(2 * S);
      const stream = client.createWriteStream('/long-write', { ec: 'rs-3-2', size: data.length });
      const done = new Promise<void>((resolve, reject) => {
        stream.once('finish', resolve);
        stream.once('error', reject);
      });
      await new Promise<void>((resolve) => stream.write(data.subarray(0, S), () => resolve()));
      const started = Date.now();
      const before = cluster.state.count('RenewLease');
      // Outlive the original lease (1.5 s) with renewals, then finish: the commits need a valid lease.
      await waitFor(
        'renewals past the first lease',
        () => Date.now() - started > 2000 && cluster.state.count('RenewLease') >= before + 4,
        10_000,
      );
      stream.end(data.subarray(S));
      await done;
      assert.deepEqual(await client.readFile('/long-write'), data);

      const abandonsBefore = cluster.state.count('AbandonFile');
      const failing = client.createWriteStream('/given-up', { ec: 'rs-3-2', size: 10 });
      await new Promise<void>((resolve) => failing.write(Buffer.alloc(5), () => resolve()));
      const failed = new Promise((resolve) => failing.once('error', resolve));
      failing.destroy(new Error('the caller gave up'));
      await failed;
      await waitFor('the write abandoned', () => cluster.state.count('AbandonFile') > abandonsBefore);
      assert.ok(
        ![...cluster.state.pending.values()].some((p) => p.path === '/given-up'),
        'no pending file left',
      );
    } finally {
      cluster.state.options = { ...cluster.state.options, leaseMs: 60_000 };
    }
  });

  test('range reads fetch only the shard bytes they need', async () => {
    const data = randomBytes(G + S);
    await client.writeFile('/ranges', data, { ec: 'rs-3-2' });
    for (const [start, end] of [
      [0, 0],
      [5, 100],
      [layout.cellSize - 2, layout.cellSize + 2],
      [S - 1, S],
      [G - 3, G + 3],
      [0, G + S - 1],
      [G + S - 1, G + S + 100],
    ] as const) {
      transport.reads.length = 0;
      const got = await client.readFile('/ranges', { start, end });
      assert.deepEqual(got, data.subarray(start, end + 1), `range ${start}-${end}`);
      const fetched = transport.reads.reduce((a, r) => a + r.length, 0);
      assert.ok(
        fetched <= end - start + 1 + layout.cellSize * 3,
        `range ${start}-${end} fetched ${fetched} bytes`,
      );
      const into = await readIntoBuffer(client, '/ranges', { start, end });
      assert.deepEqual(into.bytes, data.subarray(start, end + 1), `readInto range ${start}-${end}`);
      assert.equal(into.outcome.bytes, data.subarray(start, end + 1).length);
    }
    assert.deepEqual(await client.readFile('/ranges', { start: G + S + 10 }), Buffer.alloc(0));
  });

  test('a directory or a missing file cannot be read or overwritten by accident', async () => {
    await client.mkdir('/dir');
    await rejectsWith(client.readFile('/dir'), 'IS_A_DIRECTORY', /^\/dir: Is a directory/);
    await rejectsWith(client.readFile('/nope'), 'NOT_FOUND', /^\/nope: No such file/);
    await client.writeFile('/exists', Buffer.from('one'));
    await rejectsWith(client.writeFile('/exists', Buffer.from('two')), 'ALREADY_EXISTS');
    await client.writeFile('/exists', Buffer.from('three'), { overwrite: true });
    assert.equal((await client.readFile('/exists')).toString(), 'three');
  });

  test('M shards unreachable or missing: degraded read returns the bytes, reports only the missing copy; M+1: a clear error', async () => {
    const data = randomBytes(2 * S + 777);
    await client.writeFile('/degraded', data, { ec: 'rs-3-2' });
    const inode = (await client.stat('/degraded')).inode;
    const shards = inode.blockGroups[0]!.shards;
    // Shard 0's server is down (its copy says nothing about itself); shard 2's server lost its copy.
    transport.dead.add(shards.find((s) => s.index === 0)!.addr);
    const shard2 = shards.find((s) => s.index === 2)!;
    const shard2Key = `${shard2.addr}/${inode.blockGroups[0]!.id}/2`;
    const shard2Bytes = transport.shards.get(shard2Key)!;
    assert.ok(transport.shards.delete(shard2Key));
    const reportsBefore = cluster.state.badShards.length;
    const stream = client.createReadStream('/degraded');
    const parts: Buffer[] = [];
    for await (const part of stream) parts.push(part as Buffer);
    assert.deepEqual(Buffer.concat(parts), data);
    assert.deepEqual(stream.badShards.map((b) => [b.index, b.error.code]).sort(), [
      [0, 'UNAVAILABLE'],
      [2, 'NOT_FOUND'],
    ]);
    const reported = cluster.state.badShards.slice(reportsBefore);
    assert.deepEqual(
      reported.map((b) => [b.index, b.chunkServerId]),
      [[2, shard2.chunkServerId]],
      'a shard on a server that is down is not reported: its copy may be intact when the server returns',
    );
    assert.match(reported[0]!.reason, /^NOT_FOUND/);
    transport.shards.set(shard2Key, shard2Bytes);
    transport.dead.add(shard2.addr);
    const into = await readIntoBuffer(client, '/degraded');
    assert.deepEqual(into.bytes, data, 'readInto decodes around the same shards');
    assert.deepEqual(into.outcome.badShards.map((b) => b.index).sort(), [0, 2]);

    transport.dead.add(shards.find((s) => s.index === 4)!.addr);
    await rejectsWith(client.readFile('/degraded'), 'UNAVAILABLE', /shard 0 on .*shard 2 on .*shard 4 on/);
    transport.dead.clear();
  });

  test('a checksum failing in transit is not reported as a bad copy; a server whose stored checksums fail is', async () => {
    const data = randomBytes(S + 10);
    await client.writeFile('/transit', data, { ec: 'rs-3-2' });
    const shards = (await client.stat('/transit')).inode.blockGroups[0]!.shards;
    const shard1 = shards.find((s) => s.index === 1)!;
    const shard2 = shards.find((s) => s.index === 2)!;
    // What the data-transfer client raises when a chunk's bytes fail the CRC the server sent with them.
    transport.failReads.set(
      shard1.addr,
      new DogfsError('CORRUPT', `${shard1.addr}: chunk at offset 0 damaged in transit (checksum mismatch)`, {
        inTransit: true,
      }),
    );
    // What a chunk server answers when the copy on its disk fails its stored checksums.
    transport.failReads.set(
      shard2.addr,
      new DogfsError('CORRUPT', `shard ${shard2.index}: chunk at offset 0 fails its stored checksum`),
    );
    const reportsBefore = cluster.state.badShards.length;
    try {
      const { bytes, outcome } = await readIntoBuffer(client, '/transit');
      assert.deepEqual(bytes, data);
      assert.deepEqual(outcome.badShards.map((b) => [b.index, b.error.code]).sort(), [
        [1, 'CORRUPT'],
        [2, 'CORRUPT'],
      ]);
      assert.deepEqual(
        cluster.state.badShards.slice(reportsBefore).map((b) => [b.index, b.chunkServerId]),
        [[2, shard2.chunkServerId]],
        'only the copy its own server found corrupt is reported',
      );
    } finally {
      transport.failReads.clear();
    }
  });

  test('a server holding a copy of another length than committed: CORRUPT for that shard, read around and reported, never its bytes', async () => {
    const data = randomBytes(2 * S + 5);
    await client.writeFile('/lying', data, { ec: 'rs-3-2' });
    const group = (await client.stat('/lying')).inode.blockGroups[0]!;
    const shard0 = group.shards.find((s) => s.index === 0)!;
    const shard0Key = `${shard0.addr}/${group.id}/0`;
    const kept = transport.shards.get(shard0Key)!;
    // Other bytes, one chunk longer (a stale or foreign copy): a server sends such a copy with chunk
    // checksums that match it, so only its length gives it away.
    transport.shards.set(shard0Key, randomBytes(kept.length + 64 * 1024));
    const reportsBefore = cluster.state.badShards.length;
    try {
      const { bytes, outcome } = await readIntoBuffer(client, '/lying');
      assert.deepEqual(bytes, data);
      assert.deepEqual(
        outcome.badShards.map((b) => [b.index, b.error.code]),
        [[0, 'CORRUPT']],
      );
      assert.deepEqual(
        cluster.state.badShards.slice(reportsBefore).map((b) => [b.index, b.chunkServerId]),
        [[0, shard0.chunkServerId]],
      );
    } finally {
      transport.shards.set(shard0Key, kept);
    }
  });

  test('a silent shard is decoded around after the shard timeout', async () => {
    const data = randomBytes(S + 10);
    await client.writeFile('/slow', data, { ec: 'rs-3-2' });
    const shard1 = (await client.stat('/slow')).inode.blockGroups[0]!.shards.find((s) => s.index === 1)!;
    transport.hung.add(shard1.addr);
    try {
      const stream = client.createReadStream('/slow', { shardTimeoutMs: 200 });
      const parts: Buffer[] = [];
      for await (const part of stream) parts.push(part as Buffer);
      assert.deepEqual(Buffer.concat(parts), data);
      assert.deepEqual(
        stream.badShards.map((b) => b.index),
        [1],
      );
    } finally {
      transport.hung.clear();
    }
  });

  /**
   * Runs `body` with block groups of stripes of `stripeSize` (default group size): cells of a third of
   * it under rs-3-2, so a cell can be made of many of the memory transport's 16 KiB pieces.
   */
  async function withStripeSize(stripeSize: number, body: () => Promise<void>): Promise<void> {
    const before = cluster.state.options;
    cluster.state.options = { ...before, stripeSize, blockGroupBytes: 0 };
    try {
      await body();
    } finally {
      cluster.state.options = before;
    }
  }
  /** Cells of 128 KiB: 8 pieces, so at 60 ms a piece a cell takes ~480 ms, past a 300 ms stall timeout. */
  const SLOW_STRIPE = 3 * 128 * 1024;
  const PIECE = 16 * 1024;

  test('a slow shard that keeps delivering is read through, however long its cell takes; one that stops mid-cell is decoded around', () =>
    withStripeSize(SLOW_STRIPE, async () => {
      const data = randomBytes(2 * SLOW_STRIPE + 10);
      await client.writeFile('/slow-link', data, { ec: 'rs-3-2' });
      const groups = (await client.stat('/slow-link')).inode.blockGroups;
      assert.equal(groups.length, 1);
      for (let i = 0; i < 7; i++) transport.slow.set(`mem-${i}:1`, 60);
      try {
        const stream = client.createReadStream('/slow-link', { shardTimeoutMs: 300 });
        const parts: Buffer[] = [];
        for await (const part of stream) parts.push(part as Buffer);
        assert.deepEqual(Buffer.concat(parts), data);
        assert.deepEqual(stream.badShards, [], 'no shard given up: each kept delivering');

        // Shard 1 sends one piece, then nothing: given up after the timeout, read around, not reported.
        const shard1 = groups[0]!.shards.find((s) => s.index === 1)!;
        transport.stallAfter.set(shard1.addr, PIECE);
        const reportsBefore = cluster.state.badShards.length;
        const again = client.createReadStream('/slow-link', { shardTimeoutMs: 300 });
        const more: Buffer[] = [];
        for await (const part of again) more.push(part as Buffer);
        assert.deepEqual(Buffer.concat(more), data);
        assert.deepEqual(
          again.badShards.map((b) => [b.index, b.error.code]),
          [[1, 'UNAVAILABLE']],
        );
        assert.match(again.badShards[0]!.error.message, /no progress in 300 ms/);
        assert.equal(
          cluster.state.badShards.length,
          reportsBefore,
          'a stalled server says nothing of its copy',
        );
      } finally {
        transport.slow.clear();
        transport.stallAfter.clear();
      }
    }));

  test('a slow shard write that keeps moving is kept, however long its cell takes; one that stops is dropped', () =>
    withStripeSize(SLOW_STRIPE, async () => {
      const data = randomBytes(2 * SLOW_STRIPE);
      // Exactly five live servers: the stalling one holds a shard.
      for (const id of ['cs-5', 'cs-6']) cluster.state.chunkServers.get(id)!.alive = false;
      for (let i = 0; i < 7; i++) transport.slow.set(`mem-${i}:1`, 60);
      const stalling = 'mem-0:1';
      transport.stallAfter.set(stalling, PIECE);
      try {
        const stream = await client.writeFile('/slow-write', data, { ec: 'rs-3-2', shardTimeoutMs: 300 });
        const shards = stream.blockGroups[0]!.shards;
        assert.deepEqual(
          shards.filter((s) => !s.durable).map((s) => s.addr),
          [stalling],
          'only the shard that stopped was given up',
        );
        const given = shards.find((s) => !s.durable)!;
        assert.equal(given.error?.code, 'DEADLINE_EXCEEDED');
        assert.match(given.error!.message, /no progress in 300 ms/);
        transport.slow.clear();
        assert.deepEqual(await client.readFile('/slow-write'), data);
      } finally {
        for (const id of ['cs-5', 'cs-6']) cluster.state.chunkServers.get(id)!.alive = true;
        transport.slow.clear();
        transport.stallAfter.clear();
      }
    }));

  test('a read stream destroyed while a shard read stalls closes at once, with no shard called bad', async () => {
    const data = randomBytes(S + 10);
    await client.writeFile('/destroyed-mid-read', data, { ec: 'rs-3-2' });
    const shard0 = (await client.stat('/destroyed-mid-read')).inode.blockGroups[0]!.shards.find(
      (s) => s.index === 0,
    )!;
    transport.hung.add(shard0.addr);
    try {
      const readsBefore = transport.reads.length;
      // A range inside shard 0's first cell: its cancelled read left K other shards that would have
      // served a decode after the close (which then waited for a consumer that was gone).
      const stream = client.createReadStream('/destroyed-mid-read', {
        start: 0,
        end: 9,
        shardTimeoutMs: 60_000,
      });
      let closed = false;
      stream.once('close', () => {
        closed = true;
      });
      stream.once('error', () => {});
      stream.resume();
      await waitFor('the stalled shard read open', () =>
        transport.reads.slice(readsBefore).some((r) => r.addr === shard0.addr),
      );
      stream.destroy();
      await waitFor('the destroyed stream closed', () => closed, 5000);
      assert.deepEqual(stream.badShards, []);
    } finally {
      transport.hung.clear();
    }
  });

  for (const first of ['dead', 'busy'] as const)
    test(`shards that failed for a while are let back: M + 1 failures over a read, never more than M at once (first ${first})`, async () => {
      const data = randomBytes(3 * S);
      const path = `/failing-in-turn-${first}`;
      await client.writeFile(path, data, { ec: 'rs-3-2' });
      const shards = (await client.stat(path)).inode.blockGroups[0]!.shards;
      const addr = (index: number) => shards.find((s) => s.index === index)!.addr;
      transport[first].add(addr(0));
      try {
        const { bytes, outcome } = await readIntoPausing(client, path, (stripes) => {
          if (stripes === 1) {
            // After the first stripe shard 0's server is back, and two others go down (M at once).
            transport[first].clear();
            transport.dead.add(addr(1));
            transport.dead.add(addr(2));
          }
        });
        assert.deepEqual(bytes, data);
        assert.deepEqual([...new Set(outcome.badShards.map((b) => b.index))].sort(), [0, 1, 2]);
      } finally {
        transport.dead.clear();
        transport.busy.clear();
      }
    });

  test('a shard read left idle (the consumer paused) is opened anew at its next use', async () => {
    const data = randomBytes(3 * S);
    await client.writeFile('/paused-read', data, { ec: 'rs-3-2' });
    const readsBefore = transport.reads.length;
    const { bytes } = await readIntoPausing(
      client,
      '/paused-read',
      async (stripes) => {
        // The consumer pauses past the idle bound after the first stripe: the pause is the input here.
        if (stripes === 1) {
          const pausedAt = Date.now();
          await waitFor('a pause longer than the idle bound', () => Date.now() - pausedAt > 100);
        }
      },
      { shardIdleRenewMs: 50 },
    );
    assert.deepEqual(bytes, data);
    const opened = transport.reads.slice(readsBefore);
    for (const index of [0, 1, 2])
      assert.equal(opened.filter((r) => r.index === index).length, 2, `shard ${index}: read, then read anew`);
  });

  test('a shard read given up as slow copies nothing into sink memory when its bytes come late', async () => {
    const data = randomBytes(2 * S + 10);
    await client.writeFile('/late', data, { ec: 'rs-3-2' });
    const shard1 = (await client.stat('/late')).inode.blockGroups[0]!.shards.find((s) => s.index === 1)!;
    let release: () => void = () => {};
    transport.late.set(shard1.addr, new Promise<void>((resolve) => (release = resolve)));
    transport.lateDeliveries = 0;
    try {
      // One piece of memory reused for every stripe, as dogfs get's staging buffers are.
      const memory = Buffer.alloc(layout.stripeDataSize);
      const parts: Buffer[] = [];
      let reserved = 0;
      const outcome = await client.readInto(
        '/late',
        {
          reserve: (length) => {
            reserved = length;
            return memory.subarray(0, length);
          },
          commit: async () => {
            parts.push(Buffer.from(memory.subarray(0, reserved)));
          },
        },
        { shardTimeoutMs: 200 },
      );
      assert.deepEqual(Buffer.concat(parts), data);
      assert.deepEqual(
        outcome.badShards.map((b) => b.index),
        [1],
      );
      memory.fill(0xee);
      release();
      await waitFor('the slow shard delivers', () => transport.lateDeliveries > 0, 5000);
      assert.ok(
        memory.every((b) => b === 0xee),
        'bytes of a given-up shard read landed in memory the sink has reused',
      );
    } finally {
      transport.late.delete(shard1.addr);
      release();
    }
  });

  test('a server dying mid-write: stored with K+1 durable, the gap recorded', async () => {
    const data = randomBytes(2 * S);
    const victim = 'mem-3:1';
    transport.dieAfter.set(victim, 100);
    // Exactly five live servers: the victim holds one shard of every block group.
    for (const id of ['cs-5', 'cs-6']) cluster.state.chunkServers.get(id)!.alive = false;
    try {
      const stream = await client.writeFile('/one-down', data, { ec: 'rs-3-2' });
      const outcome = stream.blockGroups[0]!.shards;
      assert.deepEqual(
        outcome.filter((s) => !s.durable).map((s) => s.addr),
        [victim],
      );
      const committed = (await client.stat('/one-down')).inode.blockGroups[0]!.shards;
      assert.deepEqual(
        committed.filter((s) => !s.durable).map((s) => s.addr),
        [victim],
      );
      assert.equal(committed.filter((s) => s.durable).length, 4);
      assert.deepEqual(await client.readFile('/one-down'), data);
    } finally {
      for (const id of ['cs-5', 'cs-6']) cluster.state.chunkServers.get(id)!.alive = true;
      transport.dieAfter.clear();
      transport.dead.clear();
    }
  });

  test('too few durable shards: the write fails, CompleteFile is never called, nothing appears', async () => {
    const completes = cluster.state.count('CompleteFile');
    // Four of the seven servers die after their first bytes: five shards on seven servers put at least
    // two on them, more than the one rs-3-2 may lose while keeping K+1 durable.
    for (const addr of ['mem-0:1', 'mem-1:1', 'mem-2:1', 'mem-3:1']) transport.dieAfter.set(addr, 10);
    try {
      const stream = client.createWriteStream('/too-few', { ec: 'rs-3-2' });
      const done = new Promise<void>((resolve, reject) => {
        stream.once('finish', resolve);
        stream.once('error', reject);
      });
      stream.end(randomBytes(S));
      await rejectsWith(done, 'UNAVAILABLE', /^\/too-few: write failed: only \d of 5 shards/);
      assert.equal(stream.completed, false);
      assert.equal(cluster.state.count('CompleteFile'), completes);
      await rejectsWith(client.stat('/too-few'), 'NOT_FOUND');
    } finally {
      transport.dieAfter.clear();
      transport.dead.clear();
    }
  });

  test("a server's own refusal (too few chunk servers) is the error, not a generic timeout", async () => {
    for (const id of ['cs-0', 'cs-1', 'cs-2', 'cs-3']) cluster.state.chunkServers.get(id)!.alive = false;
    const c = new DogfsClient({ meta: [cluster.leader.address], transport, timeoutMs: 700 });
    try {
      await rejectsWith(
        c.writeFile('/refused', randomBytes(10)),
        'UNAVAILABLE',
        /^\/refused: need 5 live chunk servers, 3 alive$/,
      );
    } finally {
      c.close();
      for (const id of ['cs-0', 'cs-1', 'cs-2', 'cs-3']) cluster.state.chunkServers.get(id)!.alive = true;
    }
  });

  test('lost replies to Allocate, Commit and Complete: retried under the same numbers, applied once', async () => {
    for (const method of ['Create', 'AllocateBlockGroup', 'CommitBlockGroup', 'CompleteFile']) {
      cluster.state.dropReply.set(method, 1);
    }
    const data = randomBytes(G + 5);
    await client.writeFile('/lost-replies', data, { ec: 'rs-3-2' });
    const inode = (await client.stat('/lost-replies')).inode;
    assert.equal(inode.blockGroups.length, 2, 'each block group allocated and committed once');
    assert.deepEqual(await client.readFile('/lost-replies'), data);
  });

  test('a stream destroyed while its Create is on its way gives the name back and writes nothing', async () => {
    let release: () => void = () => {};
    cluster.state.holdReply.set('Create', new Promise<void>((resolve) => (release = resolve)));
    const creates = cluster.state.count('Create');
    const allocations = cluster.state.count('AllocateBlockGroup');
    const shardsBefore = transport.shards.size;
    const abandons = cluster.state.count('AbandonFile');
    const stream = client.createWriteStream('/destroyed-early', { ec: 'rs-3-2', size: S });
    stream.on('error', () => {});
    try {
      stream.write(randomBytes(S));
      await waitFor('the Create sent', () => cluster.state.count('Create') > creates, 5000);
      const closed = new Promise<void>((resolve) => stream.once('close', () => resolve()));
      stream.destroy(new Error('the source failed'));
      await closed;
    } finally {
      cluster.state.holdReply.delete('Create');
      release();
    }
    // Applied before the stream was destroyed, answered after: the client must abandon it itself, and
    // `abandoned` (what an interrupted put waits for before its process exits) covers that AbandonFile.
    await stream.abandoned;
    assert.equal(cluster.state.count('AbandonFile'), abandons + 1, 'abandoned waited for the AbandonFile');
    assert.ok(
      ![...cluster.state.pending.values()].some((p) => p.path === '/destroyed-early'),
      'nothing pending under the name',
    );
    assert.equal(cluster.state.count('AllocateBlockGroup'), allocations);
    assert.equal(transport.shards.size, shardsBefore, 'no shard written for a destroyed stream');
    await client.writeFile('/destroyed-early', Buffer.from('the name is free'));
  });

  test('a stream destroyed while a block group is being allocated opens no shard writes for it', async () => {
    let release: () => void = () => {};
    const openBefore = transport.openWrites;
    const allocations = cluster.state.count('AllocateBlockGroup');
    const data = randomBytes(G + S);
    const stream = client.createWriteStream('/destroyed-allocating', { ec: 'rs-3-2', size: data.length });
    stream.on('error', () => {});
    try {
      // The first group comes with Create (or a first Allocate); the second is held on its way back.
      await new Promise<void>((resolve) => stream.write(data.subarray(0, G), () => resolve()));
      cluster.state.holdReply.set('AllocateBlockGroup', new Promise<void>((resolve) => (release = resolve)));
      stream.write(data.subarray(G));
      await waitFor(
        'the second allocation sent',
        () =>
          cluster.state.count('AllocateBlockGroup') > allocations + (cluster.state.options.combined ? 0 : 1),
        5000,
      );
      stream.destroy(new Error('the source failed'));
    } finally {
      cluster.state.holdReply.delete('AllocateBlockGroup');
      release();
    }
    // A later answer on the same connection: the held one has been handled by then.
    await client.stat('/');
    assert.equal(transport.openWrites, openBefore, 'no shard write left open');
  });

  test('a stream destroyed while its last commit is on its way never appears, with or without an error', async () => {
    await withCombined(false, async () => {
      for (const [name, reason] of [
        ['/cancelled-at-commit', undefined],
        ['/failed-at-commit', new DogfsError('CANCELLED', 'caller gave up')],
      ] as const) {
        let release: () => void = () => {};
        const commits = cluster.state.count('CommitBlockGroup');
        const completes = cluster.state.count('CompleteFile');
        const stream = client.createWriteStream(name, { ec: 'rs-3-2' }); // unknown size: commit in _final
        stream.on('error', () => {});
        const closed = new Promise<void>((resolve) => stream.once('close', () => resolve()));
        cluster.state.holdReply.set('CommitBlockGroup', new Promise<void>((resolve) => (release = resolve)));
        try {
          stream.end(randomBytes(100_000));
          await waitFor(
            'the last commit sent',
            () => cluster.state.count('CommitBlockGroup') > commits,
            5000,
          );
          stream.destroy(reason);
        } finally {
          cluster.state.holdReply.delete('CommitBlockGroup');
          release();
        }
        await closed;
        // A later answer on the same connection: the held one has been handled by then.
        await assert.rejects(client.stat(name), { code: 'NOT_FOUND' });
        assert.equal(cluster.state.count('CompleteFile'), completes, `${name}: CompleteFile never sent`);
      }
    });
  });

  test('a stream destroyed while its CompleteFile is on its way waits for it: the file appears and the stream says so', async () => {
    let release: () => void = () => {};
    const completes = cluster.state.count('CompleteFile');
    const abandons = cluster.state.count('AbandonFile');
    const data = randomBytes(100_000);
    const stream = client.createWriteStream('/destroyed-at-complete', { ec: 'rs-3-2' });
    stream.on('error', () => {});
    let closed = false;
    stream.once('close', () => {
      closed = true;
    });
    cluster.state.holdReply.set('CompleteFile', new Promise<void>((resolve) => (release = resolve)));
    try {
      stream.end(data);
      await waitFor('CompleteFile sent', () => cluster.state.count('CompleteFile') > completes, 5000);
      stream.destroy();
      assert.equal(closed, false, 'the stream waits for the command that decides');
    } finally {
      cluster.state.holdReply.delete('CompleteFile');
      release();
    }
    await waitFor('the stream closed', () => closed, 5000);
    assert.equal(cluster.state.count('AbandonFile'), abandons, 'no AbandonFile raced the CompleteFile');
    assert.equal(stream.appeared, true);
    assert.equal(stream.inode?.size, data.length);
    assert.deepEqual(await client.readFile('/destroyed-at-complete'), data);
  });

  test('a CompleteFile refused: the stream fails and gives the name back at once, not at lease expiry', async () => {
    const abandons = cluster.state.count('AbandonFile');
    cluster.state.failNext.set('CompleteFile', {
      error: new DogfsError('FAILED_PRECONDITION', 'refused for the test'),
      count: 1,
    });
    try {
      await assert.rejects(client.writeFile('/complete-refused', randomBytes(10_000), { ec: 'rs-3-2' }), {
        code: 'FAILED_PRECONDITION',
      });
    } finally {
      cluster.state.failNext.delete('CompleteFile');
    }
    await waitFor('AbandonFile sent', () => cluster.state.count('AbandonFile') > abandons, 5000);
    // The name is free again: a new write of it goes through without overwrite.
    const data = randomBytes(5000);
    await client.writeFile('/complete-refused', data, { ec: 'rs-3-2' });
    assert.deepEqual(await client.readFile('/complete-refused'), data);
  });

  test('shard writes all refused for want of space: the put fails with NO_SPACE, not a retryable UNAVAILABLE', async () => {
    for (let i = 0; i < 7; i++) transport.full.add(`mem-${i}:1`);
    try {
      await assert.rejects(client.writeFile('/no-room', randomBytes(10_000), { ec: 'rs-3-2' }), {
        code: 'NO_SPACE',
      });
      await assert.rejects(client.stat('/no-room'), { code: 'NOT_FOUND' });
    } finally {
      transport.full.clear();
    }
  });

  test('a block group whose placement leaves too few shard writes opens none that stay open', async () => {
    const openBefore = transport.openWrites;
    cluster.state.placement = ['cs-0', 'cs-1', 'cs-2', '', ''];
    try {
      await assert.rejects(client.writeFile('/too-few-placed', randomBytes(1000), { ec: 'rs-3-2' }), {
        code: 'UNAVAILABLE',
      });
    } finally {
      cluster.state.placement = undefined;
    }
    await waitFor('the shard writes to close', () => transport.openWrites === openBefore, 5000);
  });

  test('the metadata leader moves mid-write: the stream follows the hint and completes', async () => {
    const follower = new FakeMeta(cluster.state, cluster.leader.address);
    await follower.start();
    const c = new DogfsClient({
      meta: [cluster.leader.address, follower.address],
      transport,
      timeoutMs: 5000,
    });
    try {
      const data = randomBytes(2 * G + 9);
      const stream = c.createWriteStream('/failover', { ec: 'rs-3-2', size: data.length });
      const done = new Promise<void>((resolve, reject) => {
        stream.once('finish', resolve);
        stream.once('error', reject);
      });
      await new Promise<void>((resolve) => stream.write(data.subarray(0, G + 1), () => resolve()));
      // Leadership moves: the old leader now answers NOT_LEADER pointing at the new one.
      cluster.leader.leaderHint = follower.address;
      follower.leaderHint = undefined;
      stream.end(data.subarray(G + 1));
      await done;
      assert.equal(c.metadata.knownLeader(1), follower.address);
      assert.deepEqual(await c.readFile('/failover'), data);
    } finally {
      cluster.leader.leaderHint = undefined;
      c.close();
      await follower.close();
    }
  });

  test('a shard placement could not fill starts as a gap; K+1 others suffice', async () => {
    cluster.state.placement = ['cs-0', 'cs-1', 'cs-2', 'cs-3', ''];
    try {
      const data = randomBytes(S + 1);
      const stream = await client.writeFile('/gap', data, { ec: 'rs-3-2' });
      assert.deepEqual(
        stream.blockGroups[0]!.shards.map((s) => s.durable),
        [true, true, true, true, false],
      );
      assert.deepEqual(await client.readFile('/gap'), data);
    } finally {
      cluster.state.placement = undefined;
    }
  });

  test('replicate-N keeps copies and reads from any of them', async () => {
    const data = randomBytes(S + 3);
    await client.writeFile('/replicated', data, { ec: 'replicate-3' });
    await client.writeFile('/single', data, { ec: 'replicate-1' });
    assert.deepEqual(await client.readFile('/single'), data, 'replicate-1: K = 1, M = 0');
    const shards = (await client.stat('/replicated')).inode.blockGroups[0]!.shards;
    assert.equal(shards.length, 3);
    transport.dead.add(shards.find((s) => s.index === 0)!.addr);
    transport.dead.add(shards.find((s) => s.index === 1)!.addr);
    try {
      assert.deepEqual(await client.readFile('/replicated'), data);
    } finally {
      transport.dead.clear();
    }
  });
});

test('a stream of unknown size ends every block group but its last on a whole stripe', async () => {
  // 3 MiB stripes under rs-3-2: the 16 MiB the writer buffers before each group is 5⅓ stripes.
  const stripeSize = 3 << 20;
  const big = new StripeLayout({ k: 3, m: 2, stripeSize });
  const cluster = await startFakeMetaCluster(0, { stripeSize, blockGroupBytes: 1 << 30 });
  for (let i = 0; i < 5; i++) {
    cluster.state.chunkServers.set(`cs-${i}`, { id: `cs-${i}`, addr: `mem-${i}:1`, alive: true });
  }
  const client = new DogfsClient({
    meta: [cluster.leader.address],
    transport: new MemoryTransport(),
    timeoutMs: 5000,
  });
  try {
    const data = randomBytes(40 << 20);
    const pieces = Array.from({ length: 40 }, (_, i) => data.subarray(i << 20, (i + 1) << 20));
    const written = await client.writeFile('/stdin', Readable.from(pieces), { ec: 'rs-3-2' });
    const lengths = written.blockGroups.map((g) => g.length);
    assert.equal(
      lengths.reduce((a, b) => a + b, 0),
      data.length,
    );
    assert.ok(lengths.length > 1, 'several block groups');
    for (const length of lengths.slice(0, -1)) {
      assert.equal(length % big.stripeDataSize, 0, `a group of ${length} bytes ends on a whole stripe`);
    }
    assert.ok((await client.readFile('/stdin')).equals(data));
  } finally {
    client.close();
    await cluster.close();
  }
});
