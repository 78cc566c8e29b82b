import assert from 'node:assert/strict';
import { test } from 'node:test';
import {
  decodeNamespaceCommand,
  decodeNamespaceResult,
  encodeNamespaceCommand,
  encodeNamespaceResult,
  groupOfId,
  type InodeId,
  MAX_LIST_LIMIT,
  MAX_PENDING_FILES_PER_CLIENT,
  type NamespaceCommand,
  NamespaceState,
  ROOT_INODE_ID,
} from '../../src/metadata/state/index.js';
import { openSession, TestClient } from './helpers.js';

function fresh(): { ns: NamespaceState; c: TestClient } {
  const ns = new NamespaceState({ group: 1 });
  return { ns, c: new TestClient(ns) };
}

/** Runs `body`, which must be refused with `code`, and checks that the state did not change. */
function refusedUnchanged(
  ns: NamespaceState,
  c: TestClient,
  code: string,
  body: Parameters<TestClient['send']>[0],
) {
  // The session table records every result (a refusal too), so the whole-state hash changes; what must
  // not change is the namespace: every path and inode, pending writes, garbage.
  const before = fingerprint(ns);
  const hashBefore = ns.stateHash(false);
  const result = c.send(body);
  assert.equal(result.ok, false, `${body.op} should be refused`);
  if (!result.ok) assert.equal(result.code, code, result.message);
  assert.equal(ns.stateHash(false), hashBefore, `${body.op} refused with ${code} must change nothing`);
  assert.equal(fingerprint(ns), before);
  ns.checkInvariants();
  return result;
}

/** The namespace's visible content: every path with its inode, pending files and garbage. */
function fingerprint(ns: NamespaceState): string {
  const lines: string[] = [];
  const walk = (path: string) => {
    let after = '';
    for (;;) {
      const page = ns.list(path, after, MAX_LIST_LIMIT);
      assert.ok(page.ok);
      for (const e of page.entries) {
        const child = path === '/' ? `/${e.name}` : `${path}/${e.name}`;
        lines.push(`${child} ${JSON.stringify(e.inode)}`);
        if (e.inode.type === 'dir') walk(child);
      }
      if (!page.more) break;
      after = page.entries[page.entries.length - 1]!.name;
    }
  };
  walk('/');
  lines.push(JSON.stringify(ns.counts()), JSON.stringify(ns.garbage(1e9)));
  return lines.join('\n');
}

test('ids carry the group in the high bits and stay below 2^53', () => {
  const { c } = fresh();
  const made = c.ok({ op: 'mkdir', path: '/a', parents: false, mode: 0o755, ec: '' });
  assert.equal(groupOfId(made.inode.id), 1);
  assert.equal(groupOfId(ROOT_INODE_ID), 1);
  assert.ok(Number.isSafeInteger(made.inode.id));
  const ns7 = new NamespaceState({ group: 7 });
  assert.equal(ns7.counts().directories, 0, 'only the root group holds the root directory');
  const elsewhere = new TestClient(ns7).mkdir('/x');
  assert.ok(!elsewhere.ok && elsewhere.code === 'FAILED_PRECONDITION');
  const stat = ns7.stat('/x');
  assert.ok(!stat.ok && stat.code === 'FAILED_PRECONDITION');
});

test('mkdir: single, with parents, existing; bad inputs change nothing', () => {
  const { ns, c } = fresh();
  const a = c.mkdir('/a');
  assert.ok(a.ok && a.created);
  const deep = c.mkdir('/a/b/c/d', true);
  assert.ok(deep.ok && deep.created);
  const again = c.mkdir('/a/b/c/d', true);
  assert.ok(again.ok && !again.created);
  assert.equal(again.inode.id, deep.inode.id);
  assert.ok(c.mkdir('/', true).ok);
  refusedUnchanged(ns, c, 'ALREADY_EXISTS', { op: 'mkdir', path: '/a', parents: false, mode: 0o755, ec: '' });
  refusedUnchanged(ns, c, 'ALREADY_EXISTS', { op: 'mkdir', path: '/', parents: false, mode: 0o755, ec: '' });
  refusedUnchanged(ns, c, 'NOT_FOUND', { op: 'mkdir', path: '/x/y', parents: false, mode: 0o755, ec: '' });
  refusedUnchanged(ns, c, 'INVALID_ARGUMENT', {
    op: 'mkdir',
    path: '/a/../b',
    parents: true,
    mode: 0o755,
    ec: '',
  });
  refusedUnchanged(ns, c, 'INVALID_ARGUMENT', {
    op: 'mkdir',
    path: '/a//b',
    parents: true,
    mode: 0o755,
    ec: '',
  });
  refusedUnchanged(ns, c, 'INVALID_ARGUMENT', {
    op: 'mkdir',
    path: `/${'n'.repeat(256)}`,
    parents: true,
    mode: 0o755,
    ec: '',
  });
  refusedUnchanged(ns, c, 'INVALID_ARGUMENT', {
    op: 'mkdir',
    path: '/a\0',
    parents: true,
    mode: 0o755,
    ec: '',
  });
  refusedUnchanged(ns, c, 'INVALID_ARGUMENT', {
    op: 'mkdir',
    path: '/z',
    parents: true,
    mode: 0o10000,
    ec: '',
  });
  refusedUnchanged(ns, c, 'INVALID_ARGUMENT', {
    op: 'mkdir',
    path: '/z',
    parents: true,
    mode: 0o755,
    ec: 'rs-9-99',
  });
  c.writeFile('/a/f', 10);
  const overFile = refusedUnchanged(ns, c, 'ALREADY_EXISTS', {
    op: 'mkdir',
    path: '/a/f',
    parents: true,
    mode: 0o755,
    ec: '',
  });
  assert.match(overFile.message, /file exists/);
  refusedUnchanged(ns, c, 'NOT_A_DIRECTORY', {
    op: 'mkdir',
    path: '/a/f/g',
    parents: true,
    mode: 0o755,
    ec: '',
  });
  ns.checkInvariants();
});

test('create → allocate → commit → complete: the file appears only at complete, with all its bytes', () => {
  const { ns, c } = fresh();
  c.mkdir('/d');
  const created = c.ok({
    op: 'create',
    path: '/d/f',
    overwrite: false,
    mode: 0o600,
    ec: '',
    defaultEc: 'rs-2-1',
    leaseMs: 10_000,
  });
  assert.equal(ns.stat('/d/f').ok, false, 'not visible before complete');
  const list = ns.list('/d');
  assert.ok(list.ok && list.entries.length === 0);
  const bg1 = c.allocateOk(created, 0, ['s1', 's2', ''], 4 << 20);
  // The next group cannot be allocated before this one is committed.
  assert.equal(c.allocate(created.inode.id, created.leaseId, 0).ok, false);
  const commit = c.send({
    op: 'commitBlockGroup',
    inodeId: created.inode.id,
    leaseId: created.leaseId,
    blockGroupId: bg1.blockGroup.id,
    length: 4 << 20,
    shards: [
      { index: 0, length: 2 << 20, crc32c: 1, durable: true },
      { index: 1, length: 2 << 20, crc32c: 2, durable: true },
    ],
  });
  assert.ok(commit.ok, 'K durable shards suffice when M = 1');
  const bg2 = c.allocateOk(created, 4 << 20, ['s3', 's1', 's2'], 4 << 20);
  c.ok({
    op: 'commitBlockGroup',
    inodeId: created.inode.id,
    leaseId: created.leaseId,
    blockGroupId: bg2.blockGroup.id,
    length: 5,
    shards: [0, 1, 2].map((index) => ({ index, length: 3, crc32c: 0xffffffff, durable: true })),
  });
  assert.equal(ns.stat('/d/f').ok, false);
  const done = c.ok({
    op: 'completeFile',
    inodeId: created.inode.id,
    leaseId: created.leaseId,
    size: (4 << 20) + 5,
  });
  const stat = ns.stat('/d/f/');
  assert.ok(stat.ok && stat.inode.type === 'file');
  assert.equal(stat.inode.size, (4 << 20) + 5);
  assert.equal(stat.inode.blockGroups.length, 2);
  assert.deepEqual(stat.inode.blockGroups[1]!.crcs, [0xffffffff, 0xffffffff, 0xffffffff]);
  assert.equal(stat.inode.blockGroups[0]!.durableMask, 0b011);
  assert.equal(stat.inode.mode, 0o600);
  assert.equal(stat.inode.ec, 'rs-2-1');
  assert.equal(done.inode.id, created.inode.id);
  ns.checkInvariants();
});

test('create and write-path bad inputs are refused and change nothing', () => {
  const { ns, c } = fresh();
  c.mkdir('/d');
  c.writeFile('/d/old', 3);
  const create = (
    path: string,
    extra: Partial<{ overwrite: boolean; ec: string; defaultEc: string; leaseMs: number; mode: number }> = {},
  ) =>
    ({
      op: 'create',
      path,
      overwrite: false,
      mode: 0o644,
      ec: '',
      defaultEc: 'rs-2-1',
      leaseMs: 1000,
      ...extra,
    }) as const;
  refusedUnchanged(ns, c, 'IS_A_DIRECTORY', create('/d'));
  refusedUnchanged(ns, c, 'IS_A_DIRECTORY', create('/'));
  refusedUnchanged(ns, c, 'ALREADY_EXISTS', create('/d/old'));
  refusedUnchanged(ns, c, 'NOT_FOUND', create('/nope/f'));
  refusedUnchanged(ns, c, 'NOT_A_DIRECTORY', create('/d/old/f'));
  const unknownEc = refusedUnchanged(ns, c, 'INVALID_ARGUMENT', create('/d/x', { ec: 'rs-7' }));
  assert.match(unknownEc.message, /unknown EC policy/);
  refusedUnchanged(ns, c, 'INVALID_ARGUMENT', create('/d/x', { defaultEc: '' }));
  refusedUnchanged(ns, c, 'INVALID_ARGUMENT', create('/d/x', { leaseMs: 0 }));
  refusedUnchanged(ns, c, 'INVALID_ARGUMENT', create('/d/../x'));

  const w = c.ok(create('/d/new', { ec: 'rs-3-2' }));
  const id = w.inode.id;
  const lease = w.leaseId;
  const alloc = (over: object) =>
    ({
      op: 'allocateBlockGroup',
      inodeId: id,
      leaseId: lease,
      offset: 0,
      stripeSize: 1 << 20,
      maxBytes: 1 << 30,
      servers: ['a', 'b', 'c', 'd', 'e'],
      ...over,
    }) as const;
  refusedUnchanged(ns, c, 'FAILED_PRECONDITION', alloc({ leaseId: 'L999' }));
  refusedUnchanged(ns, c, 'NOT_FOUND', alloc({ inodeId: 12345 as InodeId }));
  refusedUnchanged(ns, c, 'INVALID_ARGUMENT', alloc({ offset: 7 }));
  refusedUnchanged(ns, c, 'INVALID_ARGUMENT', alloc({ servers: ['a', 'b', 'c'] }));
  refusedUnchanged(ns, c, 'INVALID_ARGUMENT', alloc({ servers: ['a', 'a', 'c', 'd', 'e'] }));
  refusedUnchanged(ns, c, 'FAILED_PRECONDITION', alloc({ servers: ['a', 'b', 'c', '', ''] }));
  refusedUnchanged(ns, c, 'INVALID_ARGUMENT', alloc({ stripeSize: 100 }));
  refusedUnchanged(ns, c, 'INVALID_ARGUMENT', alloc({ maxBytes: 10 }));
  const bg = c.ok(alloc({ servers: ['a', 'b', 'c', 'd', ''] }));
  const commit = (over: object) =>
    ({
      op: 'commitBlockGroup',
      inodeId: id,
      leaseId: lease,
      blockGroupId: bg.blockGroup.id,
      length: 30,
      shards: [0, 1, 2, 3].map((index) => ({ index, length: 10, crc32c: index, durable: true })),
      ...over,
    }) as const;
  refusedUnchanged(
    ns,
    c,
    'FAILED_PRECONDITION',
    commit({ shards: [0, 1, 2].map((index) => ({ index, length: 10, crc32c: 0, durable: true })) }),
  );
  refusedUnchanged(
    ns,
    c,
    'INVALID_ARGUMENT',
    commit({ shards: [0, 1, 2, 4].map((index) => ({ index, length: 10, crc32c: 0, durable: true })) }),
  );
  refusedUnchanged(
    ns,
    c,
    'INVALID_ARGUMENT',
    commit({ shards: [0, 1, 2, 9].map((index) => ({ index, length: 10, crc32c: 0, durable: true })) }),
  );
  refusedUnchanged(
    ns,
    c,
    'INVALID_ARGUMENT',
    commit({
      shards: [0, 1, 2, 3].map((index) => ({ index, length: 10 + index, crc32c: 0, durable: true })),
    }),
  );
  refusedUnchanged(ns, c, 'INVALID_ARGUMENT', commit({ length: 31 }));
  refusedUnchanged(ns, c, 'INVALID_ARGUMENT', commit({ length: 0 }));
  refusedUnchanged(ns, c, 'NOT_FOUND', commit({ blockGroupId: 42 }));
  refusedUnchanged(ns, c, 'FAILED_PRECONDITION', {
    op: 'completeFile',
    inodeId: id,
    leaseId: lease,
    size: 0,
  });
  c.ok(commit({}));
  refusedUnchanged(ns, c, 'FAILED_PRECONDITION', commit({}));
  refusedUnchanged(ns, c, 'INVALID_ARGUMENT', { op: 'completeFile', inodeId: id, leaseId: lease, size: 29 });
  c.ok({ op: 'completeFile', inodeId: id, leaseId: lease, size: 30 });
  refusedUnchanged(ns, c, 'NOT_FOUND', { op: 'completeFile', inodeId: id, leaseId: lease, size: 30 });
  ns.checkInvariants();
});

test('overwrite replaces atomically at complete; old block groups become garbage', () => {
  const { ns, c } = fresh();
  const oldId = c.writeFile('/f', 10);
  const oldStat = ns.stat('/f');
  assert.ok(oldStat.ok && oldStat.inode.type === 'file');
  const oldBg = oldStat.inode.blockGroups[0]!.id;
  const w = c.startWrite('/f', { overwrite: true, leaseMs: 1000 });
  const mid = ns.stat('/f');
  assert.ok(
    mid.ok && mid.inode.id === oldId && mid.inode.type === 'file' && mid.inode.size === 10,
    'old version while writing',
  );
  const bg = c.allocateOk(w, 0, ['x', 'y', 'z'], 1 << 20);
  c.ok({
    op: 'commitBlockGroup',
    inodeId: w.inode.id,
    leaseId: w.leaseId,
    blockGroupId: bg.blockGroup.id,
    length: 20,
    shards: [0, 1, 2].map((index) => ({ index, length: 10, crc32c: 0, durable: true })),
  });
  assert.deepEqual(ns.garbage(10), []);
  c.ok({ op: 'completeFile', inodeId: w.inode.id, leaseId: w.leaseId, size: 20 });
  const after = ns.stat('/f');
  assert.ok(
    after.ok && after.inode.type === 'file' && after.inode.size === 20 && after.inode.id === w.inode.id,
  );
  assert.deepEqual(
    ns.garbage(10).map((g) => g.id),
    [oldBg],
  );
  assert.equal(ns.counts().files, 1);
  const collected = c.ns.apply({
    op: 'collectGarbage',
    timeMs: c.timeMs,
    blockGroupIds: [oldBg as never, 999 as never],
  });
  assert.ok(collected.ok && collected.removed === 1);
  assert.deepEqual(ns.garbage(10), []);
});

test('one writer per name: a second create is refused, or with overwrite supersedes the first', () => {
  const { ns, c } = fresh();
  const other = new TestClient(ns, 'client-2');
  const first = c.startWrite('/f', { overwrite: false, leaseMs: 1000 });
  c.allocateOk(first, 0, ['x', 'y', 'z'], 1 << 20);
  other.timeMs = c.timeMs;
  const refused = other.create('/f');
  assert.ok(!refused.ok && refused.code === 'ALREADY_EXISTS' && /being written/.test(refused.message));
  const second = other.create('/f', { overwrite: true });
  assert.ok(second.ok);
  assert.equal(ns.garbage(10).length, 1, "the superseded write's block group is garbage");
  const late = c.send({ op: 'completeFile', inodeId: first.inode.id, leaseId: first.leaseId, size: 0 });
  assert.ok(!late.ok && late.code === 'NOT_FOUND');
  other.ok({ op: 'completeFile', inodeId: second.inode.id, leaseId: second.leaseId, size: 0 });
  const stat = ns.stat('/f');
  assert.ok(stat.ok && stat.inode.type === 'file' && stat.inode.size === 0);
  ns.checkInvariants();
});

test('lease expiry: an unfinished file never appears, its block groups become garbage', () => {
  const { ns, c } = fresh();
  const w = c.startWrite('/f', { overwrite: false, leaseMs: 1000 });
  c.allocateOk(w, 0, ['x', 'y', 'z'], 1 << 20);
  const renewedUntil = ns.pendingFile(w.inode.id)!.expiresMs;
  assert.equal(ns.earliestLeaseExpiryMs(), renewedUntil);
  assert.ok(renewedUntil > w.leaseExpiresMs, 'allocation renews the lease');
  const early = ns.apply({ op: 'expireLeases', timeMs: c.timeMs, expiresAtOrBeforeMs: renewedUntil - 1 });
  assert.ok(early.ok && early.expired.length === 0);
  // Past the lease, the writer's commands are refused even before the expiry command.
  c.timeMs = renewedUntil + 5;
  const tooLate = c.send({ op: 'completeFile', inodeId: w.inode.id, leaseId: w.leaseId, size: 0 });
  assert.ok(!tooLate.ok && tooLate.code === 'FAILED_PRECONDITION' && /expired/.test(tooLate.message));
  const expired = ns.apply({ op: 'expireLeases', timeMs: c.timeMs, expiresAtOrBeforeMs: renewedUntil });
  assert.ok(expired.ok);
  assert.deepEqual(expired.expired, [w.inode.id]);
  assert.equal(ns.stat('/f').ok, false);
  assert.equal(ns.garbage(10).length, 1);
  assert.equal(ns.earliestLeaseExpiryMs(), undefined);
  // The name is free again.
  assert.ok(c.create('/f').ok);
});

test('renewLease: a writer at work keeps its lease; an expired or foreign lease is refused', () => {
  const { ns, c } = fresh();
  const w = c.startWrite('/r', { leaseMs: 1000 });
  c.timeMs += 900;
  const renewed = c.ok({ op: 'renewLease', inodeId: w.inode.id, leaseId: w.leaseId });
  assert.equal(renewed.leaseExpiresMs, c.timeMs + 1000);
  assert.equal(ns.pendingFile(w.inode.id)!.expiresMs, renewed.leaseExpiresMs);
  refusedUnchanged(ns, c, 'FAILED_PRECONDITION', { op: 'renewLease', inodeId: w.inode.id, leaseId: 'L999' });
  c.timeMs += 1001;
  refusedUnchanged(ns, c, 'FAILED_PRECONDITION', {
    op: 'renewLease',
    inodeId: w.inode.id,
    leaseId: w.leaseId,
  });
  refusedUnchanged(ns, c, 'NOT_FOUND', {
    op: 'renewLease',
    inodeId: (w.inode.id + 1) as InodeId,
    leaseId: w.leaseId,
  });
});

test('abandonFile: nothing appears and the name is free', () => {
  const { ns, c } = fresh();
  const w = c.startWrite('/f', { overwrite: false, leaseMs: 1000 });
  c.ok({ op: 'abandonFile', inodeId: w.inode.id, leaseId: w.leaseId });
  assert.equal(ns.stat('/f').ok, false);
  assert.ok(c.create('/f').ok);
});

test('complete re-checks the name: directory there now, parent removed', () => {
  const { ns, c } = fresh();
  c.mkdir('/d');
  const w = c.startWrite('/d/x', { overwrite: false, leaseMs: 10_000 });
  c.mkdir('/d/x');
  const dirThere = c.send({ op: 'completeFile', inodeId: w.inode.id, leaseId: w.leaseId, size: 0 });
  assert.ok(!dirThere.ok && dirThere.code === 'IS_A_DIRECTORY');
  c.ok({ op: 'delete', path: '/d', recursive: true });
  const gone = c.send({ op: 'completeFile', inodeId: w.inode.id, leaseId: w.leaseId, size: 0 });
  assert.ok(!gone.ok && gone.code === 'NOT_FOUND');
  ns.checkInvariants();
});

test('EC policy: explicit, inherited from the nearest directory, or the cluster default', () => {
  const { ns, c } = fresh();
  c.ok({ op: 'mkdir', path: '/hot/cold', parents: true, mode: 0o755, ec: 'rs-4-2' });
  c.ok({ op: 'mkdir', path: '/hot/cold/x', parents: true, mode: 0o755, ec: '' });
  c.writeFile('/plain', 0);
  c.writeFile('/hot/cold/x/f', 0);
  c.writeFile('/hot/cold/g', 0, { ec: 'replicate-3' });
  const ec = (p: string) => {
    const s = ns.stat(p);
    assert.ok(s.ok);
    return s.inode.ec;
  };
  assert.equal(ec('/plain'), 'rs-2-1');
  assert.equal(ec('/hot/cold'), 'rs-4-2');
  assert.equal(ec('/hot/cold/x/f'), 'rs-4-2');
  assert.equal(ec('/hot/cold/g'), 'replicate-3');
});

test('rename: files and directories, POSIX replacement rules, own-subtree refusal', () => {
  const { ns, c } = fresh();
  c.mkdir('/a/b/c', true);
  c.writeFile('/a/b/c/f', 5);
  c.writeFile('/a/g', 7);
  c.mkdir('/empty');
  c.mkdir('/full/x', true);
  const mv = (src: string, dst: string, noReplace = false) =>
    ({ op: 'rename', src, dst, noReplace }) as const;
  refusedUnchanged(ns, c, 'INVALID_ARGUMENT', mv('/a', '/a/b/c/a2'));
  refusedUnchanged(ns, c, 'INVALID_ARGUMENT', mv('/a/b', '/a/b/x'));
  refusedUnchanged(ns, c, 'INVALID_ARGUMENT', mv('/', '/z'));
  refusedUnchanged(ns, c, 'INVALID_ARGUMENT', mv('/a', '/'));
  refusedUnchanged(ns, c, 'NOT_FOUND', mv('/missing', '/z'));
  refusedUnchanged(ns, c, 'NOT_FOUND', mv('/a/g', '/missing/z'));
  refusedUnchanged(ns, c, 'NOT_A_DIRECTORY', mv('/a/g', '/a/g/z'));
  refusedUnchanged(ns, c, 'NOT_EMPTY', mv('/a', '/full'));
  refusedUnchanged(ns, c, 'IS_A_DIRECTORY', mv('/a/g', '/empty'));
  refusedUnchanged(ns, c, 'NOT_A_DIRECTORY', mv('/a/b', '/a/g'));
  refusedUnchanged(ns, c, 'ALREADY_EXISTS', mv('/a/b', '/empty', true));
  refusedUnchanged(ns, c, 'INVALID_ARGUMENT', mv('/a/./b', '/q'));
  assert.ok(c.send(mv('/a', '/a')).ok, 'rename onto itself is a no-op');
  // A directory moves as one entry; its subtree comes along.
  const before = ns.stat('/a/b');
  c.ok(mv('/a/b', '/moved'));
  const after = ns.stat('/moved/c/f');
  assert.ok(after.ok && after.inode.type === 'file' && after.inode.size === 5);
  assert.ok(before.ok && (ns.stat('/moved') as { inode: { id: number } }).inode.id === before.inode.id);
  assert.equal(ns.stat('/a/b').ok, false);
  // A directory replaces an empty directory.
  c.ok(mv('/moved', '/empty'));
  assert.ok(ns.stat('/empty/c/f').ok);
  // A file replaces a file; the replaced file's blocks are garbage.
  c.writeFile('/h', 3);
  c.ok(mv('/a/g', '/h'));
  const h = ns.stat('/h');
  assert.ok(h.ok && h.inode.type === 'file' && h.inode.size === 7);
  assert.equal(ns.garbage(10).length, 1);
  ns.checkInvariants();
});

test('rename with ifDstId replaces only that inode: a missing or other one is refused and changes nothing; encoded as a trailing field', () => {
  const { ns, c } = fresh();
  c.writeFile('/staged', 4);
  c.writeFile('/key', 2);
  const key = ns.stat('/key');
  assert.ok(key.ok);
  const mv = (dst: string, ifDstId: number, noReplace = false) =>
    ({ op: 'rename', src: '/staged', dst, noReplace, ifDstId: ifDstId as InodeId }) as const;
  refusedUnchanged(ns, c, 'FAILED_PRECONDITION', mv('/key', key.inode.id + 1000));
  refusedUnchanged(ns, c, 'FAILED_PRECONDITION', mv('/missing', key.inode.id));
  refusedUnchanged(ns, c, 'INVALID_ARGUMENT', mv('/key', key.inode.id, true));
  const staged = ns.stat('/staged');
  assert.ok(staged.ok);
  c.ok(mv('/key', key.inode.id));
  const replaced = ns.stat('/key');
  assert.ok(replaced.ok && replaced.inode.type === 'file' && replaced.inode.id === staged.inode.id);
  assert.equal(replaced.inode.size, 4);
  assert.equal(ns.stat('/staged').ok, false);
  ns.checkInvariants();
  // Without the condition a rename encodes as before the field existed; with it, the field round-trips.
  const base = { op: 'rename', timeMs: 1, src: '/a', dst: '/b', noReplace: false } as const;
  const plain = encodeNamespaceCommand(base);
  assert.deepEqual(decodeNamespaceCommand(plain), base);
  const conditional = encodeNamespaceCommand({ ...base, ifDstId: 77 as InodeId });
  assert.deepEqual(conditional.subarray(0, plain.length), plain, 'the condition only appends');
  assert.deepEqual(decodeNamespaceCommand(conditional), { ...base, ifDstId: 77 });
});

test('delete: file, empty directory, recursive; non-empty without recursive is refused', () => {
  const { ns, c } = fresh();
  c.mkdir('/t/u/v', true);
  c.writeFile('/t/u/v/f1', 1);
  c.writeFile('/t/u/f2', (6 << 20) + 1); // two block groups
  c.writeFile('/t/f3', 1);
  c.mkdir('/e');
  refusedUnchanged(ns, c, 'NOT_EMPTY', { op: 'delete', path: '/t', recursive: false });
  refusedUnchanged(ns, c, 'INVALID_ARGUMENT', { op: 'delete', path: '/', recursive: true });
  refusedUnchanged(ns, c, 'NOT_FOUND', { op: 'delete', path: '/nope', recursive: true });
  refusedUnchanged(ns, c, 'NOT_A_DIRECTORY', { op: 'delete', path: '/t/f3/x', recursive: true });
  const e = c.ok({ op: 'delete', path: '/e', recursive: false });
  assert.deepEqual([e.files, e.dirs], [0, 1]);
  const f = c.ok({ op: 'delete', path: '/t/f3', recursive: false });
  assert.deepEqual([f.files, f.dirs], [1, 0]);
  const r = c.ok({ op: 'delete', path: '/t', recursive: true });
  assert.deepEqual([r.files, r.dirs], [2, 3]);
  assert.equal(ns.garbage(100).length, 4);
  assert.deepEqual(ns.counts().directories, 1);
  const root = ns.list('/');
  assert.ok(root.ok && root.entries.length === 0);
  // Creating inside a removed directory is refused.
  assert.equal(c.create('/t/u/new').ok, false);
  ns.checkInvariants();
});

test('stat and list: errors and shapes', () => {
  const { ns, c } = fresh();
  c.writeFile('/f', 1);
  assert.ok(ns.stat('/').ok);
  const s = ns.stat('/nope');
  assert.ok(!s.ok && s.code === 'NOT_FOUND');
  const l = ns.list('/f');
  assert.ok(!l.ok && l.code === 'NOT_A_DIRECTORY');
  const bad = ns.list('/a//b');
  assert.ok(!bad.ok && bad.code === 'INVALID_ARGUMENT');
  const neg = ns.list('/', '', -1);
  assert.ok(!neg.ok && neg.code === 'INVALID_ARGUMENT');
});

test('exactly-once: a retried command returns the original result and applies once', () => {
  const { ns } = fresh();
  const id = openSession(ns, 9);
  const session = (seq: number, ackedBelow = 0) => ({ clientId: id, seq, ackedBelow });
  const mkdir: NamespaceCommand = {
    op: 'mkdir',
    timeMs: 10,
    session: session(1),
    path: '/a',
    parents: false,
    mode: 0o755,
    ec: '',
  };
  const first = ns.apply(mkdir);
  const hash = ns.stateHash();
  const retry = ns.apply({ ...mkdir, timeMs: 10 });
  assert.deepEqual(retry, first, 'a retry answers the original success, not ALREADY_EXISTS');
  assert.equal(ns.stateHash(), hash);
  // A retried create does not allocate a second inode or lease.
  const create: NamespaceCommand = {
    op: 'create',
    timeMs: 11,
    session: session(2),
    path: '/a/f',
    overwrite: false,
    mode: 0o644,
    ec: '',
    defaultEc: 'rs-2-1',
    leaseMs: 1000,
  };
  const c1 = ns.apply(create);
  const c2 = ns.apply(create);
  assert.deepEqual(c2, c1);
  assert.equal(ns.counts().pending, 1);
  // A refused command's retry is refused identically (it is a result too).
  const bad: NamespaceCommand = {
    op: 'delete',
    timeMs: 12,
    session: session(3),
    path: '/zz',
    recursive: false,
  };
  assert.deepEqual(ns.apply(bad), ns.apply(bad));
  // Once acknowledged, old results are forgotten and a stale retry is refused, not re-run.
  ns.apply({
    op: 'mkdir',
    timeMs: 13,
    session: session(4, 4),
    path: '/b',
    parents: false,
    mode: 0o755,
    ec: '',
  });
  const stale = ns.apply(mkdir);
  assert.ok(!stale.ok && stale.code === 'FAILED_PRECONDITION' && /^session/.test(stale.message));
  // Client commands without a session are refused; a new client's first command must be seq 1-ish.
  const { session: _omit, ...noSession } = mkdir as { session: unknown } & NamespaceCommand;
  const none = ns.apply(noSession as NamespaceCommand);
  assert.ok(!none.ok && none.code === 'INVALID_ARGUMENT');
  const unknown = ns.apply({ ...mkdir, session: { clientId: 'new', seq: 5, ackedBelow: 5 } });
  assert.ok(!unknown.ok && /session expired/.test(unknown.message));
  // Nor does a first command open its own session: only openSession does.
  const unopened = ns.apply({ ...mkdir, path: '/c', session: { clientId: 'new', seq: 1, ackedBelow: 1 } });
  assert.ok(!unopened.ok && /session expired/.test(unopened.message));
  assert.equal(ns.stat('/c').ok, false);
});

test("exactly-once across a session eviction: a lost answer's retry is refused, never applied twice", () => {
  // Two calls of a new client in flight together (both ackedBelow 1); the second, a delete, is applied and
  // its answer lost; another client makes the directory again, and sessions opened meanwhile push the
  // first client's out of a full table before its retry arrives. Every command goes through the log's
  // encoding, as on a replica.
  const ns = new NamespaceState({
    group: 1,
    sessionLimits: { ttl: 3_600_000, maxSessions: 2, maxResultsPerClient: 64 },
  });
  const apply = (cmd: NamespaceCommand) => ns.apply(decodeNamespaceCommand(encodeNamespaceCommand(cmd)));
  const open = (timeMs: number) => {
    const opened = apply({ op: 'openSession', timeMs, nonce: '' });
    assert.ok(opened.ok && opened.op === 'openSession');
    return opened.clientId;
  };
  const mkdir = (clientId: string, seq: number, timeMs: number): NamespaceCommand => ({
    op: 'mkdir',
    timeMs,
    session: { clientId, seq, ackedBelow: 1 },
    path: '/shared',
    parents: false,
    mode: 0o755,
    ec: '',
  });
  const first = open(10);
  const remove: NamespaceCommand = {
    op: 'delete',
    timeMs: 12,
    session: { clientId: first, seq: 2, ackedBelow: 1 },
    path: '/shared',
    recursive: false,
  };
  assert.ok(apply(mkdir(first, 1, 11)).ok);
  assert.ok(apply(remove).ok);
  const second = open(13);
  assert.ok(apply(mkdir(second, 1, 14)).ok, "the other client's directory");
  open(15);
  const retry = apply({ ...remove, timeMs: 16 });
  assert.equal(ns.stat('/shared').ok, true, "the other client's directory was not deleted by the retry");
  assert.ok(!retry.ok && retry.code === 'FAILED_PRECONDITION' && /session expired/.test(retry.message));
  // Session ids are never handed out twice, so a new session cannot meet the old one's retries.
  assert.notEqual(open(17), first);
});

test('an openSession entry written without a nonce (the first hour of explicit sessions) still opens s<counter>', () => {
  const { ns } = fresh();
  const withEmpty = encodeNamespaceCommand({ op: 'openSession', timeMs: 5, nonce: '' });
  assert.equal(withEmpty.at(-1), 0, 'an empty nonce is its length byte, 0');
  const older = withEmpty.subarray(0, withEmpty.length - 1);
  assert.deepEqual(decodeNamespaceCommand(older), { op: 'openSession', timeMs: 5, nonce: '' });
  const opened = ns.applyEncoded(older);
  assert.ok(opened.ok && opened.op === 'openSession' && /^s\d+$/.test(opened.clientId));
});

test('openSession: ids from the counter and the nonce; one a logged-before entry took is passed over; bad nonces refused', () => {
  const { ns } = fresh();
  const open = (nonce: string) =>
    ns.apply(decodeNamespaceCommand(encodeNamespaceCommand({ op: 'openSession', timeMs: 5, nonce })));
  const first = open('0a1b');
  assert.ok(first.ok && first.op === 'openSession');
  const [, counter, nonce] = /^s(\d+)\.([0-9a-f]+)$/.exec(first.clientId) ?? [];
  assert.equal(nonce, '0a1b');
  // An entry from before explicit opens named its own session as the next open would: it is not reused
  // (it was an assertion failure on every replica, at the same entry, on every replay).
  const taken = `s${Number(counter) + 1}`;
  const legacy = ns.apply({
    op: 'mkdir',
    timeMs: 6,
    session: { clientId: taken, seq: 1, ackedBelow: 1, implicitOpen: true },
    path: '/legacy',
    parents: false,
    mode: 0o755,
    ec: '',
  });
  assert.ok(legacy.ok);
  const next = open('');
  assert.ok(next.ok && next.op === 'openSession');
  assert.equal(next.clientId, `s${Number(counter) + 2}`);
  const sessions = ns.counts().sessions;
  const bad = open('not-hex');
  assert.ok(!bad.ok && bad.code === 'INVALID_ARGUMENT');
  assert.equal(ns.counts().sessions, sessions, 'no session opened');
});

test('entries logged before explicit sessions still open their own session on replay, as when first applied', () => {
  const { ns } = fresh();
  const legacy: NamespaceCommand = {
    op: 'mkdir',
    timeMs: 10,
    session: { clientId: '0123abcd', seq: 1, ackedBelow: 1, implicitOpen: true },
    path: '/old',
    parents: false,
    mode: 0o755,
    ec: '',
  };
  const bytes = encodeNamespaceCommand(legacy);
  // Such an entry's session byte was the boolean 'has session' (1), which still means a session that
  // opens itself; leaders now write 2, a session that must be open.
  assert.equal(bytes[1 + 1 + 1], 1);
  const decoded = decodeNamespaceCommand(bytes);
  assert.deepEqual(decoded, legacy);
  assert.ok(ns.apply(decoded).ok);
  assert.equal(ns.stat('/old').ok, true);
  const strict = encodeNamespaceCommand({ ...legacy, session: { clientId: 'x', seq: 1, ackedBelow: 1 } });
  assert.equal(strict[3], 2);
  const corrupt = Uint8Array.from(strict);
  corrupt[3] = 3;
  assert.throws(() => decodeNamespaceCommand(corrupt), /unknown session kind 3/);
});

test('time never runs backwards: a stale leader time is clamped', () => {
  const { ns, c } = fresh();
  c.timeMs = 5000;
  c.mkdir('/a');
  c.timeMs = 10;
  const made = c.ok({ op: 'mkdir', path: '/b', parents: false, mode: 0o755, ec: '' });
  assert.equal(made.inode.mtimeMs, 5001);
  assert.equal(ns.timeMs, 5001);
});

test('a directory of 100,000 entries lists in pages, in order, each page O(page)', () => {
  const { ns, c } = fresh();
  c.mkdir('/big');
  const names: string[] = [];
  const id = openSession(ns, 1);
  const session = (seq: number) => ({ clientId: id, seq, ackedBelow: seq });
  for (let i = 0; i < 100_000; i++) {
    // Insertion order is scrambled relative to name order.
    const name = `f${((i * 7919) % 100_000).toString().padStart(6, '0')}`;
    names.push(name);
    const created = ns.apply({
      op: 'create',
      timeMs: 1,
      session: session(2 * i + 1),
      path: `/big/${name}`,
      overwrite: false,
      mode: 0o644,
      ec: '',
      defaultEc: 'rs-6-3',
      leaseMs: 1000,
    });
    assert.ok(created.ok);
    const done = ns.apply({
      op: 'completeFile',
      timeMs: 1,
      session: session(2 * i + 2),
      inodeId: created.inode.id,
      leaseId: created.leaseId,
      size: 0,
    });
    assert.ok(done.ok);
  }
  names.sort();
  let after = '';
  let seen = 0;
  let pages = 0;
  for (;;) {
    const page = ns.list('/big', after, 1000);
    assert.ok(page.ok);
    assert.ok(page.entries.length <= 1000);
    for (const e of page.entries) assert.equal(e.name, names[seen++]);
    pages++;
    if (!page.more) break;
    after = page.entries[page.entries.length - 1]!.name;
  }
  assert.equal(seen, 100_000);
  assert.equal(pages, 100);
  const clamped = ns.list('/big', '', 1_000_000);
  assert.ok(clamped.ok && clamped.entries.length === MAX_LIST_LIMIT && clamped.more);
  const tail = ns.list('/big', names[99_998]!, 10);
  assert.ok(tail.ok && tail.entries.length === 1 && !tail.more);
  // Snapshot round trip of a big state, restored from small chunks.
  const hash = ns.stateHash();
  const restored = NamespaceState.restore(ns.snapshot());
  assert.equal(restored.stateHash(), hash);
});

test('repairShards: moves shards to new servers by compare-and-set; bad repairs change nothing', () => {
  const { ns, c } = fresh();
  const id = c.writeFile('/f', 5000); // rs-2-1 on s1 s2 s3, every crc 0xdeadbeef, shards of 2500 bytes
  const bg = () => {
    const stat = ns.stat('/f');
    assert.ok(stat.ok && stat.inode.type === 'file');
    return stat.inode.blockGroups[0]!;
  };
  const bgId = bg().id;
  const body = (
    shards: { index: number; server: string; replaces: string; length?: number; crc32c?: number }[],
  ) =>
    ({
      op: 'repairShards',
      path: '/f',
      inodeId: id,
      blockGroupId: bgId,
      shards: shards.map((s) => ({ length: 2500, crc32c: 0xdeadbeef, ...s })),
    }) as const;
  refusedUnchanged(ns, c, 'FAILED_PRECONDITION', body([{ index: 1, server: 's9', replaces: 's1' }]));
  refusedUnchanged(ns, c, 'INVALID_ARGUMENT', body([{ index: 1, server: 's3', replaces: 's2' }]));
  refusedUnchanged(ns, c, 'INVALID_ARGUMENT', body([{ index: 3, server: 's9', replaces: '' }]));
  refusedUnchanged(
    ns,
    c,
    'INVALID_ARGUMENT',
    body([{ index: 1, server: 's9', replaces: 's2', length: 2499 }]),
  );
  refusedUnchanged(ns, c, 'CORRUPT', body([{ index: 1, server: 's9', replaces: 's2', crc32c: 1 }]));
  refusedUnchanged(ns, c, 'INVALID_ARGUMENT', body([]));
  refusedUnchanged(ns, c, 'FAILED_PRECONDITION', {
    ...body([{ index: 1, server: 's9', replaces: 's2' }]),
    inodeId: (id + 1) as InodeId,
  });
  refusedUnchanged(ns, c, 'NOT_FOUND', { ...body([{ index: 1, server: 's9', replaces: 's2' }]), path: '/g' });
  const done = c.ok(body([{ index: 1, server: 's9', replaces: 's2' }]));
  assert.deepEqual(done.blockGroup.servers, ['s1', 's9', 's3']);
  assert.deepEqual(bg().servers, ['s1', 's9', 's3']);
  // The same repair again: s2 no longer holds shard 1, so it is refused (a racing repairer loses).
  refusedUnchanged(ns, c, 'FAILED_PRECONDITION', body([{ index: 1, server: 's8', replaces: 's2' }]));
  // A rename keeps the repaired locations; a snapshot carries them.
  c.ok({ op: 'rename', src: '/f', dst: '/g', noReplace: false });
  const restored = NamespaceState.restore(ns.snapshot());
  const moved = restored.stat('/g');
  assert.ok(moved.ok && moved.inode.type === 'file');
  assert.deepEqual(moved.inode.blockGroups[0]!.servers, ['s1', 's9', 's3']);
  assert.deepEqual(
    [...restored.files()].map((f) => f.path),
    ['/g'],
  );
  ns.checkInvariants();
});

test('repairShards: a shard that was never durable gets its length and crc from the repair', () => {
  const { c } = fresh();
  const write = c.startWrite('/h', { ec: 'rs-2-2' });
  const allocated = c.allocateOk(write, 0, ['s1', 's2', 's3', 's4']);
  c.ok({
    op: 'commitBlockGroup',
    inodeId: write.inode.id,
    leaseId: write.leaseId,
    blockGroupId: allocated.blockGroup.id,
    length: 10,
    shards: [0, 1, 2].map((index) => ({ index, length: 5, crc32c: 7, durable: true })),
  });
  c.ok({ op: 'completeFile', inodeId: write.inode.id, leaseId: write.leaseId, size: 10 });
  const repaired = c.ok({
    op: 'repairShards',
    path: '/h',
    inodeId: write.inode.id,
    blockGroupId: allocated.blockGroup.id,
    shards: [{ index: 3, server: 's5', replaces: 's4', length: 5, crc32c: 1234 }],
  });
  assert.equal(repaired.blockGroup.durableMask, 0b1111);
  assert.deepEqual(repaired.blockGroup.crcs, [7, 7, 7, 1234]);
  assert.deepEqual(repaired.blockGroup.servers, ['s1', 's2', 's3', 's5']);
});

test('files(): every complete file, depth first in name order (component by component)', () => {
  const { ns, c } = fresh();
  c.mkdir('/a');
  c.mkdir('/a/d');
  for (const path of ['/z', '/a b', '/a/x', '/a/d/y', '/b']) c.writeFile(path, 10);
  c.startWrite('/pending'); // not complete: not listed
  assert.deepEqual(
    [...ns.files()].map((f) => f.path),
    ['/a/d/y', '/a/x', '/a b', '/b', '/z'],
  );
});

test('create with complete: an empty file appears at once; overwrite replaces, a directory is refused', () => {
  const { ns, c } = fresh();
  const body = (path: string, overwrite = false) =>
    ({
      op: 'create',
      path,
      overwrite,
      mode: 0o600,
      ec: '',
      defaultEc: 'rs-2-1',
      leaseMs: 10_000,
      complete: true,
    }) as const;
  const made = c.ok(body('/t'));
  assert.equal(made.leaseId, '');
  const stat = ns.stat('/t');
  assert.ok(
    stat.ok && stat.inode.type === 'file' && stat.inode.size === 0 && stat.inode.blockGroups.length === 0,
  );
  assert.equal(ns.pendingFile(made.inode.id), undefined, 'no write in progress');
  refusedUnchanged(ns, c, 'ALREADY_EXISTS', body('/t'));
  c.writeFile('/w', 100);
  const replaced = c.ok(body('/w', true));
  const w = ns.stat('/w');
  assert.ok(w.ok && w.inode.id === replaced.inode.id && w.inode.type === 'file' && w.inode.size === 0);
  assert.equal(ns.garbage(10).length, 1, 'the replaced content is garbage');
  c.mkdir('/d');
  refusedUnchanged(ns, c, 'IS_A_DIRECTORY', body('/d', true));
  assert.equal(ns.counts().files, 2);
  ns.checkInvariants();
  // Entries written before the flag existed decode as not complete.
  const restored = NamespaceState.restore(ns.snapshot());
  assert.equal(restored.stateHash(), ns.stateHash());
});

/** A create that also allocates the first block group (rs-2-1 by default: three targets). */
function createFirst(path: string, extra: object = {}) {
  return {
    op: 'create',
    path,
    overwrite: false,
    mode: 0o644,
    ec: '',
    defaultEc: 'rs-2-1',
    leaseMs: 10_000,
    firstBlockGroup: { stripeSize: 1 << 20, maxBytes: 6 << 20, servers: ['s1', 's2', 's3'] },
    ...extra,
  } as const;
}

const durableShards = (n: number, length: number) =>
  Array.from({ length: n }, (_, index) => ({ index, length, crc32c: 7 + index, durable: true }));

test('combined commands: create with the first block group, complete with the last commit — 2 commands, same file', () => {
  const { ns, c } = fresh();
  c.mkdir('/d');
  const created = c.ok(createFirst('/d/f'));
  const bg = created.blockGroup;
  assert.ok(bg !== undefined, 'the first block group comes with the create');
  assert.deepEqual(bg.servers, ['s1', 's2', 's3']);
  assert.equal(bg.offset, 0);
  assert.equal(bg.committed, false);
  assert.deepEqual(
    created.inode.blockGroups.map((b) => b.id),
    [bg.id],
  );
  assert.equal(ns.stat('/d/f').ok, false, 'nothing visible before complete');
  assert.equal(ns.pendingFile(created.inode.id)?.blockGroups.length, 1);
  // The next group cannot be allocated before this one is committed (as after AllocateBlockGroup).
  assert.equal(c.allocate(created.inode.id, created.leaseId, 0).ok, false);
  const done = c.ok({
    op: 'completeFile',
    inodeId: created.inode.id,
    leaseId: created.leaseId,
    size: 5,
    commit: { blockGroupId: bg.id, length: 5, shards: durableShards(3, 3) },
  });
  const stat = ns.stat('/d/f');
  assert.ok(stat.ok && stat.inode.type === 'file');
  assert.equal(stat.inode.size, 5);
  assert.equal(stat.inode.blockGroups.length, 1);
  assert.equal(stat.inode.blockGroups[0]!.committed, true);
  assert.deepEqual(stat.inode.blockGroups[0]!.crcs, [7, 8, 9]);
  assert.equal(stat.inode.blockGroups[0]!.durableMask, 0b111);
  assert.deepEqual(done.inode, stat.inode);
  assert.equal(ns.counts().pending, 0);
  ns.checkInvariants();

  // Mixed: combined create, separate commits and allocations in the middle, combined last commit.
  const big = c.ok(createFirst('/d/big'));
  c.ok({
    op: 'commitBlockGroup',
    inodeId: big.inode.id,
    leaseId: big.leaseId,
    blockGroupId: big.blockGroup!.id,
    length: 6 << 20,
    shards: durableShards(3, 3 << 20),
  });
  const second = c.allocateOk(big, 6 << 20);
  c.ok({
    op: 'completeFile',
    inodeId: big.inode.id,
    leaseId: big.leaseId,
    size: (6 << 20) + 1,
    commit: { blockGroupId: second.blockGroup.id, length: 1, shards: durableShards(3, 1) },
  });
  const bigStat = ns.stat('/d/big');
  assert.ok(bigStat.ok && bigStat.inode.type === 'file' && bigStat.inode.size === (6 << 20) + 1);
  assert.ok(bigStat.inode.blockGroups.every((b) => b.committed));
  ns.checkInvariants();
});

test('combined commands: a refused part refuses the whole command and changes nothing', () => {
  const { ns, c } = fresh();
  c.mkdir('/d');
  c.writeFile('/d/old', 3);
  // The path's refusals come first, with the codes of a plain create.
  refusedUnchanged(ns, c, 'IS_A_DIRECTORY', createFirst('/d'));
  refusedUnchanged(ns, c, 'ALREADY_EXISTS', createFirst('/d/old'));
  refusedUnchanged(ns, c, 'NOT_FOUND', createFirst('/nope/f'));
  refusedUnchanged(ns, c, 'NOT_A_DIRECTORY', createFirst('/d/old/f'));
  // Then the allocation's, as AllocateBlockGroup's.
  const first = (over: object) => ({
    firstBlockGroup: { stripeSize: 1 << 20, maxBytes: 6 << 20, servers: ['s1', 's2', 's3'], ...over },
  });
  refusedUnchanged(ns, c, 'INVALID_ARGUMENT', createFirst('/d/x', first({ servers: ['s1', 's1', 's2'] })));
  refusedUnchanged(ns, c, 'INVALID_ARGUMENT', createFirst('/d/x', first({ stripeSize: 5 })));
  refusedUnchanged(ns, c, 'INVALID_ARGUMENT', createFirst('/d/x', first({ maxBytes: 1 })));
  refusedUnchanged(ns, c, 'FAILED_PRECONDITION', createFirst('/d/x', first({ servers: ['s1', '', ''] })));
  refusedUnchanged(ns, c, 'INVALID_ARGUMENT', createFirst('/d/x', { complete: true }));

  // Placed for another policy than the one that applies (the directory's changed meanwhile): the file is
  // created without a block group, and the writer allocates one itself.
  const other = c.ok(createFirst('/d/y', { ec: 'rs-3-2' }));
  assert.equal(other.blockGroup, undefined);
  assert.deepEqual(other.inode.blockGroups, []);
  c.allocateOk(other, 0, ['s1', 's2', 's3', 's4', 's5']);

  // A completion whose commit would be refused: nothing is committed, nothing appears.
  const w = c.ok(createFirst('/d/w'));
  const bgId = w.blockGroup!.id;
  const complete = (commit: object, size = 5) =>
    ({
      op: 'completeFile',
      inodeId: w.inode.id,
      leaseId: w.leaseId,
      size,
      commit: { blockGroupId: bgId, length: 5, shards: durableShards(3, 3), ...commit },
    }) as const;
  const tooFew = refusedUnchanged(ns, c, 'FAILED_PRECONDITION', complete({ shards: durableShards(1, 3) }));
  assert.match(tooFew.message, /only 1 of 3 shards are durable; 2 are needed/);
  refusedUnchanged(ns, c, 'NOT_FOUND', complete({ blockGroupId: bgId + 1000 }));
  refusedUnchanged(ns, c, 'INVALID_ARGUMENT', complete({ length: 0 }));
  // A commit that is fine but a completion that is not (wrong size): the commit is not applied either.
  refusedUnchanged(ns, c, 'INVALID_ARGUMENT', complete({}, 6));
  // The name taken by a directory meanwhile: refused whole; the block group is still uncommitted.
  c.mkdir('/d/w');
  refusedUnchanged(ns, c, 'IS_A_DIRECTORY', complete({}));
  assert.equal(ns.pendingFile(w.inode.id)?.blockGroups[0]?.committed, false);
  // Old-style separate commands still work on a combined create.
  c.ok({ op: 'delete', path: '/d/w', recursive: false });
  c.ok({
    op: 'commitBlockGroup',
    inodeId: w.inode.id,
    leaseId: w.leaseId,
    blockGroupId: bgId,
    length: 5,
    shards: durableShards(3, 3),
  });
  // ... and a combined completion of an already committed group is refused (commit it once).
  refusedUnchanged(ns, c, 'FAILED_PRECONDITION', complete({}));
  c.ok({ op: 'completeFile', inodeId: w.inode.id, leaseId: w.leaseId, size: 5 });
  assert.ok(ns.stat('/d/w').ok);
  ns.checkInvariants();
});

test('combined commands: an expired lease never appears; overwrite replaces atomically; garbage as before', () => {
  const { ns, c } = fresh();
  c.mkdir('/d');
  c.writeFile('/d/f', 10);
  const oldStat = ns.stat('/d/f');
  assert.ok(oldStat.ok && oldStat.inode.type === 'file');
  const oldGroups = oldStat.inode.blockGroups.map((b) => b.id);
  // An expiring combined write: nothing appears, its (uncommitted) block group becomes garbage.
  const lost = c.ok(createFirst('/d/lost', { leaseMs: 100 }));
  c.timeMs += 1000;
  c.ns.apply({ op: 'expireLeases', timeMs: c.timeMs, expiresAtOrBeforeMs: c.timeMs });
  assert.equal(ns.stat('/d/lost').ok, false);
  assert.ok(ns.garbage(100).some((g) => g.id === lost.blockGroup!.id));
  const late = c.send({
    op: 'completeFile',
    inodeId: lost.inode.id,
    leaseId: lost.leaseId,
    size: 5,
    commit: { blockGroupId: lost.blockGroup!.id, length: 5, shards: durableShards(3, 3) },
  });
  assert.ok(!late.ok && late.code === 'NOT_FOUND');
  // Overwrite: the old file stays visible until the combined completion, then is replaced at once.
  const w = c.ok(createFirst('/d/f', { overwrite: true }));
  const during = ns.stat('/d/f');
  assert.ok(during.ok && during.inode.type === 'file' && during.inode.size === 10);
  c.ok({
    op: 'completeFile',
    inodeId: w.inode.id,
    leaseId: w.leaseId,
    size: 5,
    commit: { blockGroupId: w.blockGroup!.id, length: 5, shards: durableShards(3, 3) },
  });
  const after = ns.stat('/d/f');
  assert.ok(after.ok && after.inode.type === 'file' && after.inode.size === 5);
  assert.equal(after.inode.id, w.inode.id);
  const garbage = ns.garbage(100).map((g) => g.id);
  for (const id of oldGroups) assert.ok(garbage.includes(id), 'the old version is garbage');
  ns.checkInvariants();
});

test('combined commands: exactly once — a duplicate delivery answers the original result, also after a snapshot restore', () => {
  const { ns } = fresh();
  const id = openSession(ns, 9);
  const session = (seq: number) => ({ clientId: id, seq, ackedBelow: 0 });
  ns.apply({ op: 'mkdir', timeMs: 10, session: session(1), path: '/d', parents: false, mode: 0o755, ec: '' });
  const create: NamespaceCommand = { ...createFirst('/d/f'), timeMs: 11, session: session(2) };
  const c1 = ns.apply(create);
  assert.ok(c1.ok && c1.op === 'create' && c1.blockGroup !== undefined);
  const hash = ns.stateHash();
  // Delivered again (the client's retry through a new leader, or a duplicate): same inode, lease and
  // block group; no second pending file, no second id.
  assert.deepEqual(ns.apply(create), c1);
  assert.equal(ns.stateHash(), hash);
  assert.equal(ns.counts().pending, 1);
  const complete: NamespaceCommand = {
    op: 'completeFile',
    timeMs: 12,
    session: session(3),
    inodeId: c1.inode.id,
    leaseId: c1.leaseId,
    size: 5,
    commit: { blockGroupId: c1.blockGroup.id, length: 5, shards: durableShards(3, 3) },
  };
  const done = ns.apply(complete);
  assert.ok(done.ok, JSON.stringify(done));
  // Through the encodings, as Raft and a snapshot carry them: a restored replica answers both retries
  // with the original results (the create's with its block group).
  const restored = NamespaceState.restore(ns.snapshot());
  assert.equal(restored.stateHash(), ns.stateHash());
  for (const cmd of [create, complete]) {
    const bytes = encodeNamespaceCommand(cmd);
    assert.deepEqual(decodeNamespaceCommand(bytes), cmd);
    assert.deepEqual(restored.applyEncoded(bytes), ns.apply(cmd));
  }
  assert.deepEqual(restored.apply(create), c1);
  assert.deepEqual(decodeNamespaceResult(encodeNamespaceResult(c1)), c1);
  assert.deepEqual(decodeNamespaceResult(encodeNamespaceResult(done)), done);
  assert.equal(restored.stateHash(), ns.stateHash());
});

test('blockGroupsAmong: files (also after a rename), writes in progress and garbage; hasAllocated', () => {
  const { ns, c } = fresh();
  c.mkdir('/a');
  c.mkdir('/b');
  c.writeFile('/a/f', 5000); // one block group on s1 s2 s3
  const bgOf = (path: string) => {
    const stat = ns.stat(path);
    assert.ok(stat.ok && stat.inode.type === 'file');
    return stat.inode.blockGroups[0]!.id;
  };
  const kept = bgOf('/a/f');
  const writing = c.startWrite('/b/w');
  const inProgress = c.allocateOk(writing, 0, ['s4', 's2', '']).blockGroup.id;
  c.writeFile('/a/gone', 10);
  const gone = bgOf('/a/gone');
  c.ok({ op: 'delete', path: '/a/gone', recursive: false });
  const never = gone + 1000;
  const all = new Set([kept, inProgress, gone, never]);
  const expect = (found: ReturnType<NamespaceState['blockGroupsAmong']>) => {
    assert.deepEqual(found.get(kept as never), { servers: ['s1', 's2', 's3'], garbage: false });
    assert.deepEqual(found.get(inProgress as never), { servers: ['s4', 's2', ''], garbage: false });
    assert.deepEqual(found.get(gone as never), { servers: ['s1', 's2', 's3'], garbage: true });
    assert.equal(found.has(never as never), false);
  };
  expect(ns.blockGroupsAmong(all));
  // Moved between directories: still found.
  c.ok({ op: 'rename', src: '/a', dst: '/b/a', noReplace: false });
  expect(ns.blockGroupsAmong(all));
  assert.equal(ns.blockGroupsAmong(new Set([never])).size, 0);
  // Collected garbage is recorded nowhere; a restored state answers the same.
  c.ok({ op: 'collectGarbage', blockGroupIds: [gone] });
  const restored = NamespaceState.restore(ns.snapshot());
  for (const state of [ns, restored]) {
    const found = state.blockGroupsAmong(all);
    assert.deepEqual([...found.keys()].sort(), [kept, inProgress].sort());
    assert.ok(state.hasAllocated(kept) && state.hasAllocated(gone) && state.hasAllocated(inProgress));
    assert.equal(state.hasAllocated(never), false, 'an id not handed out yet');
    assert.equal(state.hasAllocated(kept + 2 ** 40), false, "another group's id");
    assert.equal(state.hasAllocated(0), false);
  }
  ns.checkInvariants();
});

test('a file stops growing before its size could pass 2^53 - 1 bytes (sizes are JS numbers end to end)', () => {
  const { ns, c } = fresh();
  const write = c.startWrite('/huge');
  const groupBytes = 2 ** 40;
  // 8,191 full groups of 2^40 bytes reach 2^53 - 2^40; one more of 2^40 could end past 2^53 - 1.
  let offset = 0;
  for (let i = 0; i < 2 ** 13 - 1; i++) {
    const bg = c.allocateOk(write, offset, ['s1', 's2', 's3'], groupBytes);
    c.ok({
      op: 'commitBlockGroup',
      inodeId: write.inode.id,
      leaseId: write.leaseId,
      blockGroupId: bg.blockGroup.id,
      length: groupBytes,
      shards: [0, 1, 2].map((index) => ({ index, length: groupBytes / 2, crc32c: 0, durable: true })),
    });
    offset += groupBytes;
  }
  const refused = refusedUnchanged(ns, c, 'FAILED_PRECONDITION', {
    op: 'allocateBlockGroup',
    inodeId: write.inode.id,
    leaseId: write.leaseId,
    offset,
    stripeSize: 1 << 20,
    maxBytes: groupBytes,
    servers: ['s1', 's2', 's3'],
  });
  assert.match(refused.message, /2\^53 - 1/);
  // A smaller last group that ends at 2^53 - 1 or before is still taken.
  c.allocateOk(write, offset, ['s1', 's2', 's3'], 1 << 20);
});

/** A snapshot's length-prefixed records, to damage one the way a bad disk or a buggy writer could. */
function snapshotRecords(bytes: Uint8Array): Buffer[] {
  const records: Buffer[] = [];
  const all = Buffer.from(bytes);
  for (let at = 0; at < all.length; ) {
    const length = all.readUInt32LE(at);
    records.push(all.subarray(at + 4, at + 4 + length));
    at += 4 + length;
  }
  return records;
}

function joinRecords(records: readonly Buffer[]): Uint8Array {
  return Buffer.concat(
    records.flatMap((body) => {
      const length = Buffer.alloc(4);
      length.writeUInt32LE(body.length);
      return [length, body];
    }),
  );
}

const SNAP_DIR_TAG = 2;
const SNAP_ENTRY_TAG = 3;

test('a snapshot restore refuses a namespace that is not a tree or reuses ids, and takes the intact one', () => {
  const { ns, c } = fresh();
  c.ok({ op: 'mkdir', path: '/a/b', parents: true, mode: 0o755, ec: '' });
  c.writeFile('/a/f', 10);
  const intact = ns.snapshot();
  assert.equal(NamespaceState.restore(intact).stateHash(), ns.stateHash());
  const records = snapshotRecords(intact);
  const dirAt = records.map((r, i) => (r[0] === SNAP_DIR_TAG ? i : -1)).filter((i) => i >= 0);
  // Records: header, dir /, entry a, dir /a, entry b, entry f, dir /a/b, (sessions), end.
  assert.equal(dirAt.length, 3);
  const [rootDir, aDir, bDir] = dirAt as [number, number, number];
  const entryA = rootDir + 1;
  assert.equal(records[entryA]![0], SNAP_ENTRY_TAG);
  assert.ok(entryA < aDir && aDir < bDir);

  // A cycle out of the root's reach: /a's entry moved from the root into /a/b (the same record count,
  // so every record is well formed and every directory is still named by exactly one entry).
  const cycle = records.filter((_, i) => i !== entryA);
  cycle.splice(bDir, 0, records[entryA]!);
  assert.throws(() => NamespaceState.restore(joinRecords(cycle)), /reachable from the root/);

  // One directory named by two entries: /a's entry also under /a/b (one record more: the end record's
  // count is mended so that only the tree is wrong).
  const twoParents = [...records];
  twoParents.splice(bDir + 1, 0, records[entryA]!);
  const end = twoParents[twoParents.length - 1]!;
  twoParents[twoParents.length - 1] = Buffer.from([end[0]!, twoParents.length]);
  assert.throws(() => NamespaceState.restore(joinRecords(twoParents)), /named once/);

  // One file under two names: /a/f's record copied with its name changed to 'g' (same inode, same
  // block groups: collecting one's garbage would delete the other's shards).
  const fEntry = records.findIndex(
    (r) => r[0] === SNAP_ENTRY_TAG && r[1] === 1 && r[2] === 'f'.charCodeAt(0),
  );
  assert.ok(fEntry > aDir && fEntry < bDir);
  const gRecord = Buffer.from(records[fEntry]!);
  gRecord[2] = 'g'.charCodeAt(0);
  const twoNames = [...records];
  twoNames.splice(fEntry + 1, 0, gRecord);
  const end2 = twoNames[twoNames.length - 1]!;
  twoNames[twoNames.length - 1] = Buffer.from([end2[0]!, twoNames.length]);
  assert.throws(() => NamespaceState.restore(joinRecords(twoNames)), /named once/);

  // A header whose id counter is behind the ids in use: the next create would hand one out again.
  const header = Buffer.from(records[0]!);
  // tag, version, group (1 byte), next counter (1 byte while the state is this small).
  assert.ok(header[3]! > 2 && header[3]! < 0x80);
  header[3] = 2;
  const behind = [header, ...records.slice(1)];
  assert.throws(() => NamespaceState.restore(joinRecords(behind)), /handed out/);
});

test('a client writes at most MAX_PENDING_FILES_PER_CLIENT files at once; others, completes and its own overwrites go on', () => {
  const { ns, c } = fresh();
  const writes = [];
  for (let i = 0; i < MAX_PENDING_FILES_PER_CLIENT; i++) writes.push(c.startWrite(`/w${i}`));
  const create = (path: string, overwrite = false) =>
    ({
      op: 'create',
      path,
      overwrite,
      mode: 0o644,
      ec: '',
      defaultEc: 'rs-2-1',
      leaseMs: 60_000,
    }) as const;
  const refused = refusedUnchanged(ns, c, 'FAILED_PRECONDITION', create('/one-more'));
  assert.match(refused.message, new RegExp(`client ${c.sessionId} is writing 1024 files already`));
  // Superseding one of its own writes frees that write's place first.
  c.ok(create('/w0', true));
  // Another client is not held back by this one.
  new TestClient(ns, 'client-2').startWrite('/theirs');
  // A complete (and an abandon) gives a place back.
  c.ok({ op: 'completeFile', inodeId: writes[1]!.inode.id, leaseId: writes[1]!.leaseId, size: 0 });
  c.startWrite('/after-complete');
  refusedUnchanged(ns, c, 'FAILED_PRECONDITION', create('/still-full'));
  c.ok({ op: 'abandonFile', inodeId: writes[2]!.inode.id, leaseId: writes[2]!.leaseId });
  c.startWrite('/after-abandon');
  // The count is derived state: a restored replica refuses the same create.
  const restored = NamespaceState.restore(ns.snapshot());
  restored.checkInvariants();
  const again = new TestClient(restored, 'client-1', c.timeMs);
  again.seq = c.seq;
  again.sessionId = c.sessionId;
  const result = again.create('/one-more');
  assert.equal(result.ok, false);
  ns.checkInvariants();
});

test('composeFile: joins complete files without copying, in order, atomically; bad joins change nothing', () => {
  const { ns, c } = fresh();
  c.mkdir('/parts');
  c.mkdir('/out');
  const sizes = [(6 << 20) + 5, 7, 0, 3];
  for (const [i, size] of sizes.entries()) c.writeFile(`/parts/${i + 1}`, size);
  const before = (name: string) => {
    const stat = ns.stat(`/parts/${name}`);
    assert.ok(stat.ok && stat.inode.type === 'file');
    return stat.inode;
  };
  const parts = ['1', '2', '3', '4'].map(before);
  const oldTarget = c.writeFile('/out/obj', 9);
  const oldStat = ns.stat('/out/obj');
  assert.ok(oldStat.ok && oldStat.inode.type === 'file');
  const compose = (extra: object = {}) =>
    ({
      op: 'composeFile',
      path: '/out/obj',
      sourceDir: '/parts',
      sources: ['1', '2', '3', '4'],
      sourceIds: [] as InodeId[],
      overwrite: true,
      mode: 0o644,
      ...extra,
    }) as const;

  refusedUnchanged(ns, c, 'ALREADY_EXISTS', compose({ overwrite: false }));
  refusedUnchanged(ns, c, 'NOT_FOUND', compose({ sources: ['1', 'nope'] }));
  refusedUnchanged(ns, c, 'INVALID_ARGUMENT', compose({ sources: ['1', '2', '1'] }));
  refusedUnchanged(ns, c, 'INVALID_ARGUMENT', compose({ sources: [] }));
  refusedUnchanged(ns, c, 'INVALID_ARGUMENT', compose({ sources: ['..'] }));
  refusedUnchanged(ns, c, 'INVALID_ARGUMENT', compose({ path: '/parts/1', sources: ['1', '2'] }));
  refusedUnchanged(ns, c, 'IS_A_DIRECTORY', compose({ path: '/out' }));
  refusedUnchanged(ns, c, 'NOT_FOUND', compose({ sourceDir: '/missing' }));
  c.writeFile('/parts/other-ec', 0, { ec: 'replicate-3' });
  refusedUnchanged(ns, c, 'FAILED_PRECONDITION', compose({ sources: ['1', 'other-ec'] }));
  // Joined by the ids the caller checked: a part replaced since is refused.
  const ids = parts.map((p) => p.id);
  refusedUnchanged(ns, c, 'FAILED_PRECONDITION', compose({ sourceIds: [ids[0], ids[2], ids[1], ids[3]] }));
  refusedUnchanged(ns, c, 'INVALID_ARGUMENT', compose({ sourceIds: ids.slice(1) }));
  // Replacing only the version the caller checked (S3's If-Match): another one, or none, is refused.
  refusedUnchanged(ns, c, 'FAILED_PRECONDITION', compose({ ifDstId: (oldStat.inode.id + 1000) as InodeId }));
  refusedUnchanged(ns, c, 'FAILED_PRECONDITION', compose({ path: '/out/new', ifDstId: oldStat.inode.id }));
  refusedUnchanged(ns, c, 'INVALID_ARGUMENT', compose({ overwrite: false, ifDstId: oldStat.inode.id }));
  const conditional = encodeNamespaceCommand({ ...compose({ ifDstId: 77 as InodeId }), timeMs: 1 });
  assert.equal(
    (decodeNamespaceCommand(conditional) as { ifDstId?: number }).ifDstId,
    77,
    'the condition round-trips',
  );

  const done = c.ok(compose({ sourceIds: ids, ifDstId: oldStat.inode.id }));
  const stat = ns.stat('/out/obj');
  assert.ok(stat.ok && stat.inode.type === 'file');
  assert.deepEqual(done.inode, stat.inode);
  assert.notEqual(stat.inode.id, oldTarget, 'a new version');
  assert.equal(
    stat.inode.size,
    sizes.reduce((a, b) => a + b, 0),
  );
  // The same block groups (ids, placement, checksums), one after another at the joined file's offsets.
  const joined = parts.flatMap((p) => p.blockGroups);
  assert.deepEqual(
    stat.inode.blockGroups.map((b) => [b.id, b.length, b.servers, b.crcs]),
    joined.map((b) => [b.id, b.length, b.servers, b.crcs]),
  );
  let offset = 0;
  for (const bg of stat.inode.blockGroups) {
    assert.equal(bg.offset, offset);
    offset += bg.length;
  }
  for (const name of ['1', '2', '3', '4']) assert.equal(ns.stat(`/parts/${name}`).ok, false, `${name} moved`);
  // The old version's block groups are garbage; none of the moved ones are.
  assert.deepEqual(
    ns.garbage(10).map((g) => g.id),
    oldStat.inode.blockGroups.map((b) => b.id),
  );
  ns.checkInvariants();

  // A retried delivery answers the recorded result and applies nothing twice.
  const cmd = encodeNamespaceCommand({
    ...compose({ sourceIds: ids }),
    timeMs: c.timeMs,
    session: { clientId: c.sessionId!, seq: c.seq, ackedBelow: 0 },
  } as NamespaceCommand);
  const hash = ns.stateHash(false);
  const again = ns.applyEncoded(cmd);
  assert.ok(again.ok && again.op === 'composeFile' && again.inode.id === done.inode.id);
  assert.equal(ns.stateHash(false), hash);
  // Encoded and decoded faithfully, results too.
  assert.deepEqual(
    decodeNamespaceCommand(cmd),
    decodeNamespaceCommand(encodeNamespaceCommand(decodeNamespaceCommand(cmd))),
  );
  assert.deepEqual(decodeNamespaceResult(encodeNamespaceResult(done)), done);
  // And it survives a snapshot.
  const restored = NamespaceState.restore(ns.snapshot());
  assert.deepEqual(restored.stat('/out/obj'), stat);
  restored.checkInvariants();
});
