import assert from 'node:assert/strict';
import { type ChildProcess, fork, spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import fs, {
  mkdirSync,
  readdirSync,
  readFileSync,
  renameSync,
  unlinkSync,
  utimesSync,
  writeFileSync,
} from 'node:fs';
import { syncBuiltinESMExports } from 'node:module';
import { createServer } from 'node:net';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { after, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { parseAddressList, parseHostPort } from '../../src/common/address.js';
import { DirLockedError, lockDir, lockHolder, MAX_TAKEOVER_ATTEMPTS } from '../../src/common/dirlock.js';
import { parseEcPolicy, parseNewEcPolicy } from '../../src/common/ec-policy.js';
import { createLogger } from '../../src/common/log.js';
import { ephemeralRangeStart, freePort, randomLoopbackHost } from '../../src/common/ports.js';
import { DOGFS_VERSION } from '../../src/common/version.js';
import { tempDir } from '../helpers/index.js';

const dir = tempDir('dogfs-common-');
after(() => dir.remove());

test('the version constant matches package.json', () => {
  const pkg = JSON.parse(readFileSync(new URL('../../../package.json', import.meta.url), 'utf8')) as {
    version: string;
  };
  assert.equal(DOGFS_VERSION, pkg.version);
});

test('a directory lock is exclusive, released, and taken over when its holder is dead', () => {
  const lock = lockDir(dir.path);
  assert.equal(lockHolder(dir.path), process.pid);
  // Made whole in one step (linked into place): nothing of the making is left beside it.
  assert.deepEqual(readdirSync(dir.path), ['LOCK']);
  // Our own pid counts as held by a live process only for others; simulate another live holder:
  writeFileSync(join(dir.path, 'LOCK'), `${process.ppid}\n`);
  assert.throws(
    () => lockDir(dir.path),
    (e: unknown) => e instanceof DirLockedError && e.holderPid === process.ppid,
  );
  writeFileSync(join(dir.path, 'LOCK'), `${process.pid}\n`);
  lock.release();
  assert.equal(lockHolder(dir.path), undefined);

  // A pid that has exited: the lock is stale and is taken over.
  const dead = spawnSync(process.execPath, [
    '-e',
    'process.stdout.write(String(process.pid))',
  ]).stdout.toString();
  writeFileSync(join(dir.path, 'LOCK'), `${dead}\n`);
  const taken = lockDir(dir.path);
  assert.equal(lockHolder(dir.path), process.pid);
  taken.release();

  // A taker that died holding its takeover claim does not keep the lock from being taken over for good.
  writeFileSync(join(dir.path, 'LOCK'), `${dead} 0123abcd\n`);
  writeFileSync(join(dir.path, 'LOCK.takeover.0123abcd'), `${dead} 4567cdef\n`);
  const past = lockDir(dir.path);
  assert.equal(lockHolder(dir.path), process.pid);
  assert.deepEqual(readdirSync(dir.path), ['LOCK'], 'the dead claim went with the takeover');
  past.release();

  // A claim naming a live process (its maker's pid reused since): fresh, it is a takeover under way, and
  // the refusal names the file; a minute old, it was left behind, and the lock is taken.
  writeFileSync(join(dir.path, 'LOCK'), `${dead} 89abcdef\n`);
  const claim = join(dir.path, 'LOCK.takeover.89abcdef');
  writeFileSync(claim, `${process.ppid} 00aa00aa\n`);
  assert.throws(
    () => lockDir(dir.path),
    (e: unknown) => e instanceof DirLockedError && /LOCK\.takeover\.89abcdef/.test(e.message),
  );
  const longAgo = new Date(Date.now() - 120_000);
  utimesSync(claim, longAgo, longAgo);
  const afterClaim = lockDir(dir.path);
  assert.equal(lockHolder(dir.path), process.pid);
  assert.deepEqual(readdirSync(dir.path), ['LOCK']);
  afterClaim.release();
});

test('two processes taking over the same stale lock at once: exactly one gets it, every time', async () => {
  const taker = fileURLToPath(new URL('./dirlock-taker.js', import.meta.url));
  const dead = Number(
    spawnSync(process.execPath, ['-e', 'process.stdout.write(String(process.pid))']).stdout.toString(),
  );
  type Answer = { ready?: true; won?: boolean; holder?: number };
  const takers: { child: ChildProcess; answers: Answer[] }[] = [];
  const answer = async (t: (typeof takers)[number]): Promise<Answer> => {
    const waiting = t.answers.shift();
    if (waiting !== undefined) return waiting;
    return await new Promise<Answer>((resolve, reject) => {
      const onExit = (code: number | null) => reject(new Error(`a taker exited (${code}) before answering`));
      t.child.once('exit', onExit);
      t.child.once('message', (m: Answer) => {
        t.child.off('exit', onExit);
        resolve(m);
      });
    });
  };
  try {
    for (let i = 0; i < 2; i++) {
      const child = fork(taker, [], { stdio: ['ignore', 'inherit', 'inherit', 'ipc'] });
      takers.push({ child, answers: [] });
    }
    for (const t of takers) assert.deepEqual(await answer(t), { ready: true });
    const rounds = 300;
    for (let round = 0; round < rounds; round++) {
      const lockDirPath = join(dir.path, `race-${round}`);
      mkdirSync(lockDirPath);
      // Stale: of a process that has exited; in the format with a nonce, and in the older pid-only one.
      writeFileSync(
        join(lockDirPath, 'LOCK'),
        round % 2 === 0 ? `${dead} ${randomBytes(12).toString('hex')}\n` : `${dead}\n`,
      );
      // Both start a few milliseconds from now (time for the message to arrive), the second from 100 µs
      // before the first to 100 µs after it: the steps of one land between the other's, round by round.
      const at = performance.timeOrigin + performance.now() + 15;
      const lag = (((round * 7) % 41) - 20) * 0.005;
      for (const [i, t] of takers.entries()) t.child.send({ dir: lockDirPath, at: i === 0 ? at : at + lag });
      const answers = await Promise.all(takers.map(answer));
      const winners = takers.filter((_, i) => answers[i]!.won === true);
      assert.equal(winners.length, 1, `round ${round}: ${JSON.stringify(answers)}`);
      const winner = winners[0]!.child.pid;
      assert.equal(lockHolder(lockDirPath), winner, `round ${round}: the lock names the winner`);
      const loser = answers.find((a) => a.won === false)!;
      assert.equal(loser.holder, winner, `round ${round}: the loser names the winner`);
      // No claim or temporary file is left beside the lock.
      assert.deepEqual(readdirSync(lockDirPath), ['LOCK'], `round ${round}`);
    }
  } finally {
    for (const t of takers) t.child.kill();
  }
});

test('a taker that runs out of takeover attempts as the winner finishes names the winner, not the dead holder', () => {
  // Between processes, the loser runs out of attempts only when the winner stalls (descheduled) between
  // its claim and its rename for all but the last of them: rare, and no timing makes it happen on
  // demand. Here the winner's steps are made by this process, inside the loser's own link calls of the
  // claim (node:fs patched, its ESM bindings synced), so each interleaving happens on every run.
  const dead = spawnSync(process.execPath, [
    '-e',
    'process.stdout.write(String(process.pid))',
  ]).stdout.toString();
  const winner = process.ppid; // live, and not this process: a holder lockDir must not take over
  const realLink = fs.linkSync;
  try {
    // The winner finishes at the loser's k-th claim link (just before it, or just after it failed), or,
    // past the last attempt, not at all. k = MAX_TAKEOVER_ATTEMPTS is the race this test is for.
    for (const finishes of ['before', 'after'] as const) {
      for (let k = 1; k <= MAX_TAKEOVER_ATTEMPTS + 1; k++) {
        const what = `winner finishes ${finishes} the loser's claim link ${k}`;
        const lockDirPath = join(dir.path, `exhausted-${finishes}-${k}`);
        mkdirSync(lockDirPath);
        const lockPath = join(lockDirPath, 'LOCK');
        const claimPath = `${lockPath}.takeover.0badc0de`;
        writeFileSync(lockPath, `${dead} 0badc0de\n`);
        // The winner has made its claim on the stale lock and not yet renamed its own over it.
        writeFileSync(claimPath, `${winner} 600d600d\n`);
        const finishWinner = () => {
          writeFileSync(`${lockPath}.winner.tmp`, `${winner} 600d600d\n`);
          renameSync(`${lockPath}.winner.tmp`, lockPath);
          unlinkSync(claimPath);
        };
        let claimLinks = 0;
        fs.linkSync = (existing: fs.PathLike, newPath: fs.PathLike) => {
          if (newPath !== claimPath) return realLink(existing, newPath);
          claimLinks++;
          if (claimLinks === k && finishes === 'before') finishWinner();
          try {
            return realLink(existing, newPath);
          } finally {
            if (claimLinks === k && finishes === 'after') finishWinner();
          }
        };
        syncBuiltinESMExports();
        assert.throws(
          () => lockDir(lockDirPath),
          (e: unknown) =>
            e instanceof DirLockedError &&
            e.holderPid === winner &&
            new RegExp(`pid ${winner}\\b`).test(e.message) &&
            !new RegExp(`pid ${dead}\\b`).test(e.message),
          what,
        );
        // Every attempt up to the winner's finish was used: with k at the bound, the loser ran out.
        assert.equal(claimLinks, Math.min(k, MAX_TAKEOVER_ATTEMPTS), what);
        if (k <= MAX_TAKEOVER_ATTEMPTS) {
          assert.equal(lockHolder(lockDirPath), winner, what);
          assert.deepEqual(readdirSync(lockDirPath), ['LOCK'], what);
        } else {
          assert.equal(lockHolder(lockDirPath), undefined, what);
          assert.deepEqual(readdirSync(lockDirPath).sort(), ['LOCK', 'LOCK.takeover.0badc0de'], what);
        }
      }
    }
  } finally {
    fs.linkSync = realLink;
    syncBuiltinESMExports();
  }
});

test('host:port parsing rejects what is not an address', () => {
  assert.deepEqual(parseHostPort('127.0.0.1:80'), { host: '127.0.0.1', port: 80 });
  for (const bad of [
    '',
    '127.0.0.1',
    ':80',
    '127.0.0.1:',
    '127.0.0.1:99999',
    'h:-1',
    'h:8a',
    'x'.repeat(400),
  ]) {
    assert.throws(() => parseHostPort(bad), /invalid address/, bad);
  }
  assert.deepEqual(parseAddressList('a:1, b:2,'), ['a:1', 'b:2']);
  assert.throws(() => parseAddressList(' , '), /empty/);
});

test('EC policy names', () => {
  assert.deepEqual(parseEcPolicy('rs-6-3'), { name: 'rs-6-3', kind: 'rs', dataShards: 6, parityShards: 3 });
  assert.deepEqual(parseEcPolicy('replicate-3'), {
    name: 'replicate-3',
    kind: 'replicate',
    dataShards: 1,
    parityShards: 2,
  });
  for (const bad of ['rs-0-3', 'rs-6-0', 'rs-30-3', 'rs-6', 'raid5', 'replicate-0', 'rs-6-3 ', 'RS-6-3']) {
    assert.throws(() => parseEcPolicy(bad), /unknown EC policy/, bad);
    assert.throws(() => parseNewEcPolicy(bad), /unknown EC policy/, bad);
  }
  // One policy, one name: a new name must be the canonical spelling (the state machine stays lenient).
  assert.equal(parseEcPolicy('rs-03-02').dataShards, 3);
  assert.throws(() => parseNewEcPolicy('rs-03-02'), /'rs-03-02' is written rs-3-2/);
  assert.throws(() => parseNewEcPolicy('replicate-03'), /is written replicate-3/);
  assert.equal(parseNewEcPolicy('rs-10-4').name, 'rs-10-4');
});

test('logs are JSON lines filtered by level', () => {
  const lines: string[] = [];
  const log = createLogger('info', { role: 'meta' }, (line) => lines.push(line));
  log.debug('hidden');
  log.info('shown', { n: 1 });
  log.child({ group: 2 }).error('failed', { error: Object.assign(new Error('boom'), { code: 'EIO' }) });
  assert.equal(lines.length, 2);
  const first = JSON.parse(lines[0]!) as Record<string, unknown>;
  assert.equal(first['msg'], 'shown');
  assert.equal(first['role'], 'meta');
  const second = JSON.parse(lines[1]!) as Record<string, unknown>;
  assert.deepEqual(second['error'], { name: 'Error', message: 'boom', code: 'EIO' });
  assert.equal(second['group'], 2);
});

test('freePort chooses ports below the ephemeral range, never the same one twice, free when chosen', async () => {
  const host = randomLoopbackHost();
  const below = ephemeralRangeStart();
  const ports = new Set<number>();
  for (let i = 0; i < 50; i++) {
    const port = await freePort(host);
    assert.ok(port < below, `${port} is below the ephemeral range (${below}-)`);
    assert.ok(!ports.has(port), `${port} handed out twice`);
    ports.add(port);
  }
  // Listeners on port 0 take from the ephemeral range, so they cannot take a chosen port.
  const servers = await Promise.all(
    Array.from({ length: 20 }, async () => {
      const server = createServer();
      await new Promise<void>((resolve) => server.listen(0, host, resolve));
      return server;
    }),
  );
  try {
    for (const server of servers) assert.ok((server.address() as { port: number }).port >= below);
  } finally {
    for (const server of servers) server.close();
  }
});
