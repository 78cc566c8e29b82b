/**
 * Determinism, encoding and snapshots: replicas fed the same random command sequence (through the byte
 * encoding, as Raft would) reach identical states; snapshots restore to identical states from any
 * chunking; malformed bytes give clear errors, never crashes.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import fc from 'fast-check';
import {
  type BlockGroupId,
  decodeNamespaceCommand,
  decodeNamespaceResult,
  encodeNamespaceCommand,
  encodeNamespaceResult,
  type InodeId,
  type NamespaceCommand,
  NamespaceRestorer,
  NamespaceState,
  StateCodecError,
} from '../../src/metadata/state/index.js';

// '\uFEFFb': a byte-order mark leading a name must survive every decoding (a decoder that strips it broke snapshots).
const NAMES = ['a', 'b', 'c', 'dd', 'é', '😀', '\uFEFFb'];
const SERVERS = ['s1', 's2', 's3', 's4'];

/**
 * A random command generator that knows a little about the state (inode ids and leases it was handed),
 * so sequences reach deep states — writes, overwrites, renames of full directories — not just refusals.
 */
function randomCommands(seed: number, count: number): NamespaceCommand[] {
  let x = seed >>> 0 || 1;
  const rand = (n: number) => {
    x ^= x << 13;
    x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    return x % n;
  };
  const pick = <T>(items: readonly T[]) => items[rand(items.length)]!;
  const path = () => {
    const depth = 1 + rand(3);
    let p = '';
    for (let i = 0; i < depth; i++) p += `/${pick(NAMES)}`;
    return rand(20) === 0 ? `${p}/../x` : p;
  };
  // A shadow replica tells the generator which inodes are being written, so it can continue writes.
  const shadow = new NamespaceState({ group: 1 });
  const writes: { id: InodeId; lease: string; offset: number; open?: BlockGroupId }[] = [];
  const cmds: NamespaceCommand[] = [];
  const seqs = new Map<string, number>();
  let time = 1000;
  const clientIds: string[] = [];
  for (let i = 0; i < 3; i++) {
    const open: NamespaceCommand = { op: 'openSession', timeMs: time, nonce: 'ab' };
    cmds.push(open);
    const opened = shadow.apply(open);
    assert.ok(opened.ok && opened.op === 'openSession');
    clientIds.push(opened.clientId);
  }
  for (let i = 0; i < count; i++) {
    time += rand(50);
    const clientId = pick(clientIds);
    const retry = rand(10) === 0 && cmds.length > 0;
    if (retry) {
      cmds.push(cmds[cmds.length - 1]!);
      shadow.apply(cmds[cmds.length - 1]!);
      continue;
    }
    const seq = (seqs.get(clientId) ?? 0) + 1;
    seqs.set(clientId, seq);
    const session = { clientId, seq, ackedBelow: Math.max(0, seq - 3) };
    const base = { timeMs: time, session };
    let cmd: NamespaceCommand;
    const w = writes.length > 0 ? writes[rand(writes.length)]! : undefined;
    switch (rand(11)) {
      case 0:
      case 1:
        cmd = {
          op: 'mkdir',
          ...base,
          path: path(),
          parents: rand(2) === 0,
          mode: 0o755,
          ec: rand(5) === 0 ? 'rs-3-1' : '',
        };
        break;
      case 2:
      case 3:
        cmd = {
          op: 'create',
          ...base,
          path: path(),
          overwrite: rand(2) === 0,
          mode: 0o644,
          ec: '',
          defaultEc: 'rs-2-1',
          leaseMs: 200 + rand(500),
          // A third of the creates also allocate the first block group (sometimes for another policy).
          ...(rand(3) === 0
            ? {
                firstBlockGroup: {
                  stripeSize: 4096,
                  maxBytes: 8192,
                  servers: SERVERS.slice(0, rand(4) === 0 ? 4 : 3),
                },
              }
            : {}),
        };
        break;
      case 4:
        cmd = w
          ? w.open === undefined
            ? {
                op: 'allocateBlockGroup',
                ...base,
                inodeId: w.id,
                leaseId: w.lease,
                offset: w.offset,
                stripeSize: 4096,
                maxBytes: 8192,
                servers: SERVERS.slice(0, 3),
              }
            : {
                op: 'commitBlockGroup',
                ...base,
                inodeId: w.id,
                leaseId: w.lease,
                blockGroupId: w.open,
                length: 1 + rand(8192),
                shards: [0, 1, 2].map((index) => ({
                  index,
                  length: 4096,
                  crc32c: rand(1 << 30),
                  durable: rand(8) > 0,
                })),
              }
          : { op: 'delete', ...base, path: path(), recursive: false };
        break;
      case 5:
        cmd = w
          ? w.open === undefined || rand(4) === 0
            ? { op: 'completeFile', ...base, inodeId: w.id, leaseId: w.lease, size: w.offset }
            : {
                // The last block group's commit with the completion, in one command.
                op: 'completeFile',
                ...base,
                inodeId: w.id,
                leaseId: w.lease,
                size: w.offset + 4096,
                commit: {
                  blockGroupId: w.open,
                  length: 4096,
                  shards: [0, 1, 2].map((index) => ({
                    index,
                    length: 2048,
                    crc32c: rand(1 << 30),
                    durable: rand(8) > 0,
                  })),
                },
              }
          : { op: 'delete', ...base, path: path(), recursive: false };
        break;
      case 6:
        cmd = { op: 'rename', ...base, src: path(), dst: path(), noReplace: rand(4) === 0 };
        break;
      case 7:
        cmd = { op: 'delete', ...base, path: path(), recursive: rand(2) === 0 };
        break;
      case 8:
        cmd = { op: 'expireLeases', timeMs: time, expiresAtOrBeforeMs: time - rand(300) };
        break;
      case 9: {
        const garbage = shadow.garbage(3).map((g) => g.id);
        cmd = { op: 'collectGarbage', timeMs: time, blockGroupIds: garbage };
        break;
      }
      default:
        cmd = w
          ? { op: 'abandonFile', ...base, inodeId: w.id, leaseId: w.lease }
          : { op: 'mkdir', ...base, path: path(), parents: true, mode: 0o700, ec: '' };
    }
    cmds.push(cmd);
    const result = shadow.apply(cmd);
    if (result.ok && result.op === 'create')
      writes.push({ id: result.inode.id, lease: result.leaseId, offset: 0, open: result.blockGroup?.id });
    if (result.ok && result.op === 'allocateBlockGroup' && w) w.open = result.blockGroup.id;
    if (result.ok && result.op === 'commitBlockGroup' && w) {
      w.offset += result.blockGroup.length;
      w.open = undefined;
    }
  }
  return cmds;
}

test('replicas applying the same encoded commands reach identical states (property)', () => {
  fc.assert(
    fc.property(fc.integer({ min: 1, max: 2 ** 31 - 1 }), (seed) => {
      const cmds = randomCommands(seed, 400);
      const a = new NamespaceState({ group: 1 });
      const b = new NamespaceState({ group: 1 });
      const resultsA: unknown[] = [];
      const resultsB: unknown[] = [];
      for (const cmd of cmds) {
        const bytes = encodeNamespaceCommand(cmd);
        assert.deepEqual(decodeNamespaceCommand(bytes), cmd);
        resultsA.push(a.applyEncoded(bytes));
        resultsB.push(b.applyEncoded(Uint8Array.from(bytes)));
      }
      assert.deepEqual(resultsA, resultsB);
      assert.equal(a.stateHash(), b.stateHash());
      a.checkInvariants();
      // Restoring a snapshot midway and continuing gives the same end state too.
      const half = cmds.length >> 1;
      const c = new NamespaceState({ group: 1 });
      for (const cmd of cmds.slice(0, half)) c.apply(cmd);
      const d = NamespaceState.restore(c.snapshot());
      assert.equal(d.stateHash(), c.stateHash());
      for (const cmd of cmds.slice(half)) d.apply(cmd);
      assert.equal(d.stateHash(), a.stateHash());
    }),
    { numRuns: 25 },
  );
});

test('the random sequences reach interesting states (the property is not vacuous)', () => {
  const ns = new NamespaceState({ group: 1 });
  const ops = new Map<string, number>();
  let maxFiles = 0;
  for (const cmd of randomCommands(12345, 3000)) {
    const r = ns.apply(cmd);
    maxFiles = Math.max(maxFiles, ns.counts().files);
    if (r.ok) ops.set(r.op, (ops.get(r.op) ?? 0) + 1);
    if (r.ok && r.op === 'completeFile' && r.inode.size > 0) ops.set('non-empty file', 1);
    if (r.ok && r.op === 'create' && r.blockGroup !== undefined) ops.set('create with a block group', 1);
    if (r.ok && cmd.op === 'completeFile' && cmd.commit !== undefined) ops.set('complete with a commit', 1);
  }
  for (const op of [
    'mkdir',
    'create',
    'allocateBlockGroup',
    'commitBlockGroup',
    'completeFile',
    'rename',
    'delete',
    'expireLeases',
    'create with a block group',
    'complete with a commit',
  ])
    assert.ok((ops.get(op) ?? 0) > 0, `some ${op} succeeded: ${JSON.stringify([...ops])}`);
  assert.ok(maxFiles > 3, `files seen at once: ${maxFiles}`);
});

test('a refused command changes nothing but the session table and clock, in any state (random sequences)', () => {
  for (const seed of [5, 6, 7]) {
    const ns = new NamespaceState({ group: 1 });
    let refusals = 0;
    for (const cmd of randomCommands(seed, 600)) {
      const before = ns.stateHash(false);
      const result = ns.apply(cmd);
      if (result.ok) continue;
      refusals++;
      assert.equal(
        ns.stateHash(false),
        before,
        `${cmd.op} refused (${result.code}: ${result.message}) changed the state`,
      );
    }
    assert.ok(refusals > 50, `refusals exercised: ${refusals}`);
    ns.checkInvariants();
  }
});

test('snapshots restore to an identical state from any chunking', () => {
  const ns = new NamespaceState({ group: 1 });
  for (const cmd of randomCommands(777, 2000)) ns.apply(cmd);
  const hash = ns.stateHash();
  const whole = ns.snapshot();
  for (const chunkBytes of [64, 100, 4096, 1 << 20]) {
    const chunks = [...ns.snapshotChunks(chunkBytes)];
    for (const c of chunks.slice(0, -1)) assert.equal(c.length, chunkBytes, 'chunks are exactly the bound');
    assert.ok(chunks[chunks.length - 1]!.length <= chunkBytes);
    assert.deepEqual(Buffer.concat(chunks), Buffer.from(whole));
    const restorer = new NamespaceRestorer();
    for (const c of chunks) restorer.push(c);
    assert.equal(restorer.finish().stateHash(), hash);
  }
  // Any re-chunking on the receiving side works too (split at odd places).
  const restorer = new NamespaceRestorer();
  for (let at = 0; at < whole.length; at += 7) restorer.push(whole.subarray(at, at + 7));
  assert.equal(restorer.finish().stateHash(), hash);
});

test('a streamed snapshot is the state at its call, whatever is applied while it is drained (property)', () => {
  fc.assert(
    fc.property(
      fc.integer({ min: 1, max: 2 ** 31 - 1 }),
      fc.integer({ min: 1, max: 4 }),
      fc.constantFrom(64, 100, 4096),
      (seed, commandsPerChunk, chunkBytes) => {
        // The generator's later commands continue its earlier ones (renames of full directories,
        // recursive deletes, overwrites), so they reach records the stream has and has not yet read.
        const cmds = randomCommands(seed, 1200);
        const ns = new NamespaceState({ group: 1 });
        const reference = new NamespaceState({ group: 1 });
        for (const cmd of cmds.slice(0, 600)) ns.apply(cmd);
        const expected = ns.snapshot();
        const expectedHash = ns.stateHash();
        const stream = ns.streamSnapshot(chunkBytes);
        const chunks: Uint8Array[] = [];
        let next = 600;
        for (let r = stream.next(); r.done !== true; r = stream.next()) {
          chunks.push(r.value);
          for (let i = 0; i < commandsPerChunk && next < cmds.length; i++) ns.apply(cmds[next++]!);
        }
        assert.deepEqual(Buffer.concat(chunks), Buffer.from(expected));
        assert.equal(NamespaceState.restore(Buffer.concat(chunks)).stateHash(), expectedHash);
        // The live state went on as if no stream had been read.
        for (const cmd of cmds.slice(next)) ns.apply(cmd);
        for (const cmd of cmds) reference.apply(cmd);
        assert.equal(ns.stateHash(), reference.stateHash());
        ns.checkInvariants();
      },
    ),
    { numRuns: 60 },
  );
});

test('a streamed snapshot given up early leaves the state as it is, and the next one streams', () => {
  const cmds = randomCommands(31337, 900);
  const ns = new NamespaceState({ group: 1 });
  for (const cmd of cmds.slice(0, 300)) ns.apply(cmd);
  const first = ns.streamSnapshot(64);
  assert.throws(() => ns.streamSnapshot(64), /one snapshot streams at a time/);
  for (let i = 0; i < 20; i++) first.next();
  for (const cmd of cmds.slice(300, 600)) ns.apply(cmd);
  first.close();
  const expected = ns.snapshot();
  const second = ns.streamSnapshot(64);
  const chunks: Uint8Array[] = [];
  let next = 600;
  for (let r = second.next(); r.done !== true; r = second.next()) {
    chunks.push(r.value);
    if (next < cmds.length) ns.apply(cmds[next++]!);
  }
  assert.deepEqual(Buffer.concat(chunks), Buffer.from(expected));
  const reference = new NamespaceState({ group: 1 });
  for (const cmd of cmds) reference.apply(cmd);
  for (const cmd of cmds.slice(next)) ns.apply(cmd);
  assert.equal(ns.stateHash(), reference.stateHash());
});

test('snapshot streaming refuses a state that changes under it', () => {
  const ns = new NamespaceState({ group: 1 });
  for (const cmd of randomCommands(99, 300)) ns.apply(cmd);
  const stream = ns.snapshotChunks(64);
  stream.next();
  ns.apply({ op: 'expireLeases', timeMs: 1, expiresAtOrBeforeMs: 0 });
  assert.throws(() => [...stream], /changed while its snapshot was streamed/);
});

test('malformed bytes give a clear error, never a crash (commands, results, snapshots)', () => {
  const ns = new NamespaceState({ group: 1 });
  const cmds = randomCommands(4242, 200);
  for (const cmd of cmds) ns.apply(cmd);
  const snapshot = ns.snapshot();
  const good = encodeNamespaceCommand(cmds[0]!);
  assert.throws(() => decodeNamespaceCommand(new Uint8Array(0)), /truncated/);
  assert.throws(() => decodeNamespaceCommand(Uint8Array.of(9, 1)), /format version 9/);
  assert.throws(() => decodeNamespaceCommand(Uint8Array.of(1, 99)), /unknown op tag 99/);
  assert.throws(() => decodeNamespaceCommand(Uint8Array.from([...good, 0])), /trailing bytes/);
  const before = ns.stateHash();
  const r = ns.applyEncoded(good.subarray(0, good.length - 1));
  assert.ok(!r.ok && r.code === 'INVALID_ARGUMENT' && /truncated/.test(r.message));
  assert.equal(ns.stateHash(), before);
  // Random corruption: decoding either succeeds or throws StateCodecError — nothing else.
  fc.assert(
    fc.property(fc.nat(), fc.nat(255), fc.nat(), (which, value, cut) => {
      const bytes = encodeNamespaceCommand(cmds[which % cmds.length]!).slice();
      bytes[which % bytes.length] = value;
      for (const input of [bytes, bytes.subarray(0, cut % (bytes.length + 1))]) {
        try {
          decodeNamespaceCommand(input);
        } catch (error) {
          assert.ok(error instanceof StateCodecError, String(error));
        }
      }
      const snap = snapshot.slice();
      snap[which % snap.length] = value;
      try {
        NamespaceState.restore(snap.subarray(0, snap.length - (cut % 3)));
      } catch (error) {
        assert.ok(error instanceof StateCodecError, String(error));
      }
    }),
    { numRuns: 300 },
  );
  assert.throws(() => NamespaceState.restore(snapshot.subarray(0, snapshot.length - 1)), /truncated/);
});

test('results round-trip through their encoding', () => {
  const ns = new NamespaceState({ group: 1 });
  for (const cmd of randomCommands(31337, 500)) {
    const result = ns.apply(cmd);
    assert.deepEqual(decodeNamespaceResult(encodeNamespaceResult(result)), result);
  }
});
