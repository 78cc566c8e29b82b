/**
 * The file commands of DESIGN §7, run as the real `dogfs` binary against a fake metadata service
 * (in this process) and real chunk servers: output formats, stdin/stdout, endpoints resolution, and one
 * clear line on stderr with a non-zero exit for every error.
 */
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import {
  chmodSync,
  closeSync,
  existsSync,
  lstatSync,
  mkdirSync,
  openSync,
  readdirSync,
  readFileSync,
  statSync,
  symlinkSync,
  writeFileSync,
} from 'node:fs';
import { join } from 'node:path';
import { PassThrough, Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { after, before, describe, test } from 'node:test';
import { Progress, runFileCommand } from '../../src/cli/files.js';
import { endOpenLines } from '../../src/cli/stdout.js';
import type { RunningChunk } from '../chunk/helpers.js';
import { startChunkServers, startFakeMetaCluster } from '../client/fake-meta.js';
import { assertOneLineError, DOGFS_BIN, runDogfs, tempDir, waitFor } from '../helpers/index.js';

describe('dogfs file commands', () => {
  const dir = tempDir('dogfs-cli-files-');
  const chunks: RunningChunk[] = [];
  let meta: Awaited<ReturnType<typeof startFakeMetaCluster>>;
  let env: NodeJS.ProcessEnv;

  /** The real binary (a process per call: used where the process boundary matters). */
  const binary = (args: string[], extraEnv: NodeJS.ProcessEnv = {}) =>
    runDogfs(args, { env: { ...env, ...extraEnv }, timeoutMs: 30_000 });

  /** The same command code main.ts dispatches to, in this process (the machine is shared: cheap runs). */
  async function dogfs(args: string[], extraEnv: NodeJS.ProcessEnv = {}, stdin?: Buffer) {
    const out: Buffer[] = [];
    let stderr = '';
    const stdout = new PassThrough();
    stdout.on('data', (d: Buffer) => out.push(d));
    const errors = new PassThrough();
    errors.setEncoding('utf8').on('data', (d: string) => {
      stderr += d;
    });
    const [command, ...rest] = args;
    const status = await runFileCommand(command!, rest, {
      stdout,
      stderr: errors,
      env: { ...env, ...extraEnv },
      stdin: Readable.from(stdin === undefined ? [] : [stdin]),
    });
    return { status, stdout: Buffer.concat(out).toString('utf8'), bytes: Buffer.concat(out), stderr };
  }

  /** Runs dogfs with `input` on stdin, collecting stdout as bytes. */
  function dogfsWithInput(args: string[], input: Buffer) {
    return new Promise<{ status: number | null; stdout: Buffer; stderr: string }>((resolve, reject) => {
      const child = spawn(process.execPath, [DOGFS_BIN, ...args], { env, stdio: ['pipe', 'pipe', 'pipe'] });
      const out: Buffer[] = [];
      let stderr = '';
      child.stdout.on('data', (d: Buffer) => out.push(d));
      child.stderr.setEncoding('utf8').on('data', (d: string) => {
        stderr += d;
      });
      child.once('error', reject);
      child.once('close', (status) => resolve({ status, stdout: Buffer.concat(out), stderr }));
      child.stdin.end(input);
    });
  }

  /** A random file of `bytes` put at `remote` (rs-3-2); its bytes. */
  async function putRandom(remote: string, bytes: number): Promise<Buffer> {
    const data = randomBytes(bytes);
    const local = join(dir.path, `random-${remote.replaceAll('/', '_')}`);
    writeFileSync(local, data);
    const put = await dogfs(['put', local, remote, '--ec', 'rs-3-2']);
    assert.equal(put.status, 0, put.stderr);
    return data;
  }

  before(async () => {
    meta = await startFakeMetaCluster(1, {
      stripeSize: 128 * 1024,
      blockGroupBytes: 1 << 20,
      defaultEc: 'rs-3-2',
    });
    chunks.push(...(await startChunkServers(meta.state, dir.path, ['c0', 'c1', 'c2', 'c3', 'c4'])));
    // The follower first: every command has to follow the NOT_LEADER hint.
    env = { ...process.env, DOGFS_META: `${meta.followers[0]!.address},${meta.leader.address}` };
  });

  after(async () => {
    await Promise.all(chunks.map((c) => c.stop().catch(() => {})));
    await meta?.close();
    dir.remove();
  });

  test('mkdir, ls, ls -R, ls --json, stat --json, mv, rm', async () => {
    assert.equal((await dogfs(['mkdir', '-p', '/proj/src/lib'])).status, 0);
    assert.equal((await dogfs(['mkdir', '/proj/docs'])).status, 0);
    const local = join(dir.path, 'small.txt');
    writeFileSync(local, 'hello dogfs\n');
    const put = await dogfs(['put', local, '/proj/docs/readme.txt']);
    assert.equal(put.status, 0, put.stderr);
    assert.equal(put.stderr, '', 'nothing on stderr when it is not a terminal');
    // touch: an empty file at once; again, or on a directory, changes nothing and succeeds.
    for (const path of ['/proj/docs/empty', '/proj/docs/empty', '/proj/docs']) {
      const touched = await dogfs(['touch', path]);
      assert.equal(touched.status, 0, touched.stderr);
    }
    const empty = JSON.parse((await dogfs(['stat', '--json', '/proj/docs/empty'])).stdout) as {
      type: string;
      size: number;
    };
    assert.deepEqual([empty.type, empty.size], ['file', 0]);
    assert.equal((await dogfs(['rm', '/proj/docs/empty'])).status, 0);

    const listing = await dogfs(['ls', '/proj']);
    assert.equal(listing.status, 0, listing.stderr);
    const names = listing.stdout
      .trim()
      .split('\n')
      .map((l) => l.split(/\s+/).pop());
    assert.deepEqual(names, ['docs/', 'src/']);
    assert.match(listing.stdout, /^drwxr-xr-x +0 /m);

    const recursive = await dogfs(['ls', '-R', '/proj']);
    assert.match(recursive.stdout, /^\/proj:\n/);
    assert.match(recursive.stdout, /\n\/proj\/docs:\n-rw-r--r-- +12 .* rs-3-2 +readme\.txt\n/);
    assert.match(recursive.stdout, /\n\/proj\/src\/lib:\n/);

    const json = JSON.parse((await dogfs(['ls', '--json', '-R', '/proj'])).stdout) as Record<
      string,
      unknown
    >[];
    assert.deepEqual(
      json.map((e) => [e['path'], e['type']]),
      [
        ['/proj/docs', 'dir'],
        ['/proj/src', 'dir'],
        ['/proj/docs/readme.txt', 'file'],
        ['/proj/src/lib', 'dir'],
      ],
    );
    const file = JSON.parse((await dogfs(['stat', '--json', '/proj/docs/readme.txt'])).stdout) as Record<
      string,
      unknown
    >;
    assert.equal(file['path'], '/proj/docs/readme.txt');
    assert.equal(file['type'], 'file');
    assert.equal(file['size'], 12);
    assert.equal(file['ec'], 'rs-3-2');
    assert.equal(typeof file['mtime'], 'number');
    const asDir = JSON.parse((await dogfs(['stat', '--json', '/proj'])).stdout) as Record<string, unknown>;
    assert.equal(asDir['type'], 'dir');
    assert.match(
      (await dogfs(['stat', '/proj/docs/readme.txt'])).stdout,
      /^path: \/proj\/docs\/readme\.txt\ntype: file\nsize: 12\nmode: .*\nmtime: \d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC\n/,
    );
    assert.deepEqual(JSON.parse((await dogfs(['ls', '--json', '/proj/src/lib'])).stdout), []);

    assert.equal((await dogfs(['mv', '/proj/docs', '/proj/manual'])).status, 0);
    // Into an existing directory: keeps its name.
    assert.equal((await dogfs(['mv', '/proj/manual/readme.txt', '/proj/src'])).status, 0);
    assert.equal((await dogfs(['mv', '/proj/src/readme.txt', '/proj/manual/readme.txt'])).status, 0);
    assert.equal((await dogfs(['cat', '/proj/manual/readme.txt'])).stdout, 'hello dogfs\n');
    const notEmpty = await dogfs(['rm', '/proj']);
    assert.equal(notEmpty.status, 1);
    assert.equal(assertOneLineError(notEmpty.stderr), 'dogfs: /proj: Directory not empty');
    assert.equal((await dogfs(['rm', '-r', '/proj'])).status, 0);
    const gone = await dogfs(['stat', '/proj']);
    assert.equal(gone.status, 1);
    assert.equal(assertOneLineError(gone.stderr), 'dogfs: /proj: No such file or directory');
  });

  test('put and get: files, stdin, stdout, into directories, byte-exact', async () => {
    const data = randomBytes(3 * 1024 * 1024 + 11);
    const local = join(dir.path, 'big.bin');
    writeFileSync(local, data);
    assert.equal((await dogfs(['mkdir', '/data'])).status, 0);
    const put = await binary(['put', local, '/data/big.bin', '--ec', 'rs-3-2']);
    assert.equal(put.status, 0, put.stderr);
    assert.equal(put.stderr, '', 'no progress bar when stderr is not a terminal');
    const back = join(dir.path, 'back.bin');
    const got = await binary(['get', '/data/big.bin', back]);
    assert.equal(got.status, 0, got.stderr);
    assert.ok(readFileSync(back).equals(data), 'get returns the same bytes');
    assert.deepEqual(
      readdirSync(dir.path).filter((f) => f.endsWith('.tmp')),
      [],
      'no temporary file left',
    );

    // Into an existing directory (remote and local), as cp does.
    assert.equal((await dogfs(['put', local, '/data'])).status, 1, 'big.bin already exists there');
    const into = join(dir.path, 'into');
    mkdirSync(into);
    assert.equal((await dogfs(['get', '/data/big.bin', into])).status, 0);
    assert.ok(readFileSync(join(into, 'big.bin')).equals(data));

    // stdin → DogFS → stdout.
    const piped = randomBytes(300_000);
    const fromStdin = await dogfsWithInput(['put', '-', '/data/piped'], piped);
    assert.equal(fromStdin.status, 0, fromStdin.stderr);
    const toStdout = await dogfsWithInput(['get', '/data/piped', '-'], Buffer.alloc(0));
    assert.equal(toStdout.status, 0, toStdout.stderr);
    assert.ok(toStdout.stdout.equals(piped), 'stdout carries the exact bytes');
    // Many stripes through the process's stdout pipe: its few reused stripe buffers never mix bytes.
    const bigOut = await dogfsWithInput(['get', '/data/big.bin', '-'], Buffer.alloc(0));
    assert.equal(bigOut.status, 0, bigOut.stderr);
    assert.ok(bigOut.stdout.equals(data), 'a file of many stripes through stdout, byte-exact');
    const catted = await dogfs(['cat', '/data/piped']);
    assert.ok(catted.bytes.equals(piped));
    const stdinInProcess = await dogfs(['put', '-', '/data/piped2'], {}, piped);
    assert.equal(stdinInProcess.status, 0, stdinInProcess.stderr);
    assert.ok((await dogfs(['cat', '/data/piped2'])).bytes.equals(piped));

    // -f replaces; without it, an existing file is refused.
    writeFileSync(local, 'v2');
    const refused = await dogfs(['put', local, '/data/big.bin']);
    assert.equal(assertOneLineError(refused.stderr), 'dogfs: /data/big.bin: File exists');
    assert.equal((await dogfs(['put', '-f', local, '/data/big.bin'])).status, 0);
    assert.equal((await dogfs(['cat', '/data/big.bin'])).stdout, 'v2');

    const empty = join(dir.path, 'empty');
    writeFileSync(empty, '');
    assert.equal((await dogfs(['put', empty, '/data/empty'])).status, 0);
    const emptyBack = join(dir.path, 'empty-back');
    assert.equal((await dogfs(['get', '/data/empty', emptyBack])).status, 0);
    assert.equal(readFileSync(emptyBack).length, 0);

    // A file replaced by get keeps its permissions, as cp's overwrite does.
    chmodSync(emptyBack, 0o751);
    assert.equal((await dogfs(['get', '/data/piped', emptyBack])).status, 0);
    assert.ok(readFileSync(emptyBack).equals(piped));
    assert.equal(statSync(emptyBack).mode & 0o7777, 0o751);
    // A read-only file too (its mode is set after the writes, which open the file again for writing).
    chmodSync(emptyBack, 0o444);
    assert.equal((await dogfs(['get', '/data/big.bin', emptyBack])).status, 0);
    assert.equal(statSync(emptyBack).mode & 0o7777, 0o444);
    // A name with a trailing slash means a directory, as cp reads it: no file of that name appears.
    const slashed = await dogfs(['get', '/data/piped', `${join(dir.path, 'no-such-dir')}/`]);
    assert.match(assertOneLineError(slashed.stderr), /no-such-dir\/: Not a directory$/);
    assert.equal(existsSync(join(dir.path, 'no-such-dir')), false);
    const remoteSlashed = await dogfs(['put', local, '/data/newname/']);
    assert.equal(assertOneLineError(remoteSlashed.stderr), 'dogfs: /data/newname: Not a directory');
    assert.equal((await dogfs(['stat', '/data/newname'])).status, 1, 'no file /data/newname');
  });

  test('a closed stdout ends get -, cat and ls as SIGPIPE ends a C program: killed by it, nothing on stderr', async () => {
    await putRandom('/piped-away.bin', 4 * 1024 * 1024);
    assert.equal((await dogfs(['mkdir', '-p', '/piped-dir/sub'])).status, 0);
    /** `dogfs ARGS | head -c N`: the reader takes `keep` bytes (0: none) and closes the pipe. */
    const intoClosedPipe = (args: string[], keep: number) =>
      new Promise<{ status: number | null; signal: NodeJS.Signals | null; stderr: string; got: number }>(
        (resolve, reject) => {
          const child = spawn(process.execPath, [DOGFS_BIN, ...args], {
            env,
            stdio: ['ignore', 'pipe', 'pipe'],
          });
          let stderr = '';
          let got = 0;
          child.stderr.setEncoding('utf8').on('data', (d: string) => {
            stderr += d;
          });
          if (keep === 0) child.stdout.destroy();
          else
            child.stdout.on('data', (d: Buffer) => {
              got += d.length;
              if (got >= keep) child.stdout.destroy();
            });
          child.once('error', reject);
          child.once('close', (status, signal) => resolve({ status, signal, stderr, got }));
        },
      );
    for (const [args, keep] of [
      [['get', '/piped-away.bin', '-'], 10],
      [['cat', '/piped-away.bin'], 10],
      [['cat', '/piped-away.bin'], 0],
      [['ls', '-R', '/'], 0],
    ] as const) {
      const result = await intoClosedPipe([...args], keep);
      const what = `dogfs ${args.join(' ')} into a pipe closed after ${keep} bytes`;
      // Killed by SIGPIPE, or (should Node not let the signal's default action back) its shell status.
      assert.ok(
        result.signal === 'SIGPIPE' || result.status === 141,
        `${what}: ${result.signal ?? result.status}`,
      );
      assert.equal(result.stderr, '', `${what}: nothing on stderr`);
    }
    // Any other failure of stdout is one line and status 1, even when the write fails after the command
    // has returned (version writes and returns at once). Not spawnSync: this process serves metadata.
    for (const args of [['version'], ['stat', '/piped-dir'], ['get', '/piped-away.bin', '-']]) {
      const full = openSync('/dev/full', 'w');
      try {
        const child = spawn(process.execPath, [DOGFS_BIN, ...args], { env, stdio: ['ignore', full, 'pipe'] });
        let stderr = '';
        child.stderr?.setEncoding('utf8').on('data', (d: string) => {
          stderr += d;
        });
        const status = await new Promise<number | null>((resolve) => child.once('close', resolve));
        assert.equal(status, 1, `dogfs ${args.join(' ')} > /dev/full`);
        assert.equal(assertOneLineError(stderr), 'dogfs: stdout: No space left on device');
      } finally {
        closeSync(full);
      }
    }
  });

  test('get - draws its progress bar on a terminal stderr when stdout is not one; cat stays silent', async () => {
    const data = await putRandom('/bar.bin', 2 * 1024 * 1024 + 3);
    const out = join(dir.path, 'bar-out.bin');
    // On a pseudo-terminal, stdout into a file: what arrives from the terminal is stderr alone.
    const atTerminal = await runDogfs(['get', '/bar.bin', '-'], {
      env,
      terminal: true,
      stdoutTo: out,
      timeoutMs: 30_000,
    });
    assert.equal(atTerminal.status, 0, atTerminal.stdout);
    assert.match(atTerminal.stdout, /\rget \/bar\.bin \[#{24}\] 100% 2\.0 MiB \/ 2\.0 MiB/);
    assert.ok(readFileSync(out).equals(data), 'stdout still carries exactly the file');
    const catted = await runDogfs(['cat', '/bar.bin'], {
      env,
      terminal: true,
      stdoutTo: out,
      timeoutMs: 30_000,
    });
    assert.equal(catted.status, 0, catted.stdout);
    assert.equal(catted.stdout, '', 'cat draws no bar');
    assert.ok(readFileSync(out).equals(data));
    // stdout the terminal too: no bar among the file's bytes.
    assert.equal((await dogfs(['put', '-', '/bar.txt'], {}, Buffer.from('hello\n'))).status, 0);
    const both = await runDogfs(['get', '/bar.txt', '-'], { env, terminal: true, timeoutMs: 30_000 });
    assert.equal(both.status, 0, both.stdout);
    assert.equal(both.stdout, 'hello\r\n');
    // Nor into the terminal named as a file (a character device, written in place).
    const named = await runDogfs(['get', '/bar.txt', '/dev/stdout'], {
      env,
      terminal: true,
      timeoutMs: 30_000,
    });
    assert.equal(named.status, 0, named.stdout);
    assert.equal(named.stdout, 'hello\r\n');
  });

  test('get - into a pipe closed early ends the bar it drew on a terminal stderr before dying of SIGPIPE', async () => {
    await putRandom('/piped-bar.bin', 8 * 1024 * 1024);
    // `dogfs get BIG - | head -c 100 >/dev/null` at a terminal (util-linux script(1), as runDogfs's
    // `terminal`): stderr is the terminal, stdout the pipe; its status is then printed on the terminal.
    const quote = (a: string) => `'${a.replaceAll("'", "'\\''")}'`;
    const get = [process.execPath, DOGFS_BIN, 'get', '/piped-bar.bin', '-'].map(quote).join(' ');
    const line = `{ ${get}; echo "status $?" >&2; } | head -c 100 > /dev/null`;
    const child = spawn('script', ['--quiet', '--return', '--command', line, '/dev/null'], {
      env,
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let terminal = '';
    child.stdout.setEncoding('utf8').on('data', (d: string) => {
      terminal += d;
    });
    const killer = setTimeout(() => child.kill('SIGKILL'), 30_000);
    const status = await new Promise<number | null>((resolve, reject) => {
      child.once('error', reject);
      child.once('close', resolve);
    }).finally(() => clearTimeout(killer));
    assert.equal(status, 0, terminal);
    assert.match(terminal, /\rget \/piped-bar\.bin \[/, 'a bar was drawn');
    // Died of SIGPIPE, and the status is on a line of its own: the bar's line was ended before, not left
    // for whatever the terminal shows next (the prompt) to be written onto.
    assert.ok(terminal.endsWith('\x1b[K\r\nstatus 141\r\n'), JSON.stringify(terminal.slice(-200)));
  });

  test('get into a FIFO or through a symbolic link writes where they point and replaces neither', async () => {
    const data = await putRandom('/special.bin', 2 * 1024 * 1024 + 5);

    // A FIFO (as /dev/null, a device, would be): written in place; a rename over it would make it a file.
    const fifo = join(dir.path, 'fifo');
    const made = spawnSync('mkfifo', [fifo]);
    assert.equal(made.status, 0, String(made.stderr));
    // The reader is a process, so a FIFO wrongly replaced (its reader then waiting forever) is killed.
    const reader = spawn('cat', [fifo], { stdio: ['ignore', 'pipe', 'inherit'] });
    const drained: Buffer[] = [];
    reader.stdout.on('data', (d: Buffer) => drained.push(d));
    const readerDone = new Promise((resolve) => reader.once('close', resolve));
    try {
      const intoFifo = await binary(['get', '/special.bin', fifo]);
      assert.equal(intoFifo.status, 0, intoFifo.stderr);
      assert.ok(lstatSync(fifo).isFIFO(), 'the FIFO is still a FIFO');
      await readerDone;
      assert.ok(Buffer.concat(drained).equals(data), 'the FIFO carried the exact bytes');
    } finally {
      reader.kill();
    }

    // A symbolic link: the file it names gets the bytes, the link stays a link.
    const target = join(dir.path, 'link-target.bin');
    writeFileSync(target, 'old');
    const link = join(dir.path, 'link.bin');
    symlinkSync(target, link);
    const viaLink = await dogfs(['get', '/special.bin', link]);
    assert.equal(viaLink.status, 0, viaLink.stderr);
    assert.ok(lstatSync(link).isSymbolicLink(), 'the link is still a link');
    assert.ok(readFileSync(target).equals(data), 'the linked file holds the bytes');

    // A link to nothing is refused (as cp does), not replaced by the file.
    const dangling = join(dir.path, 'dangling.bin');
    symlinkSync(join(dir.path, 'no-such-dir', 'x'), dangling);
    const refused = await dogfs(['get', '/special.bin', dangling]);
    assert.equal(refused.status, 1);
    assert.equal(
      assertOneLineError(refused.stderr),
      `dogfs: ${dangling}: not writing through a dangling symbolic link`,
    );
    assert.ok(lstatSync(dangling).isSymbolicLink(), 'the dangling link is left as it was');

    // A device that refuses the bytes, and a FIFO whose reader leaves early: one line naming it, status 1.
    const full = await binary(['get', '/special.bin', '/dev/full']);
    assert.equal(full.status, 1, full.stderr);
    assert.equal(assertOneLineError(full.stderr), 'dogfs: /dev/full: No space left on device');
    const early = spawn('head', ['-c', '1', fifo], { stdio: ['ignore', 'ignore', 'inherit'] });
    const earlyDone = new Promise((resolve) => early.once('close', resolve));
    try {
      const broken = await binary(['get', '/special.bin', fifo]);
      assert.equal(broken.status, 1, broken.stderr);
      assert.equal(assertOneLineError(broken.stderr), `dogfs: ${fifo}: Broken pipe`);
      await earlyDone;
    } finally {
      early.kill();
    }
  });

  test('every error: one line, non-zero exit, nothing changed', async () => {
    await dogfs(['mkdir', '-p', '/e/sub']);
    const local = join(dir.path, 'e.txt');
    writeFileSync(local, 'x');
    await dogfs(['put', local, '/e/file']);
    const readOnly = join(dir.path, 'ro');
    mkdirSync(readOnly);
    chmodSync(readOnly, 0o500);
    const cases: [string[], RegExp, number?][] = [
      [['put', join(dir.path, 'missing'), '/e/x'], /^dogfs: .*missing: No such file or directory$/],
      [['put', dir.path, '/e/x'], /^dogfs: .*: Is a directory$/],
      [['get', '/e/sub', join(dir.path, 'x')], /^dogfs: \/e\/sub: Is a directory$/],
      [['get', '/e/nope', join(dir.path, 'x')], /^dogfs: \/e\/nope: No such file or directory$/],
      [
        ['get', '/e/file', join(dir.path, 'no-such-dir', 'x')],
        /^dogfs: .*no-such-dir: No such file or directory$/,
      ],
      [['mkdir', '/e/a/b'], /^dogfs: \/e\/a(\/b)?: No such file or directory$/],
      [['mkdir', '/e/sub'], /^dogfs: \/e\/sub: File exists$/],
      [['mkdir', '/e/file/x'], /^dogfs: \/e\/file(\/x)?: Not a directory$/],
      [['rm', '/e'], /^dogfs: \/e: Directory not empty$/],
      [['mv', '/e', '/e/sub'], /^dogfs: \/e\/sub\/e: .*into itself/],
      [['cat', '/e/sub'], /^dogfs: \/e\/sub: Is a directory$/],
      [['ls', '/e/a//b'], /^dogfs: \/e\/a\/\/b: invalid path$/],
      // The value of a flag is not the path an error names.
      // An empty operand, or a flag's value, is not the path an error names.
      [['mkdir', ''], /^dogfs: empty path$/],
      [['cat', '--meta', meta.leader.address, ''], /^dogfs: empty path$/],
      [['put', local, '/e/y', '--ec', 'rs-9-99'], /^dogfs: unknown EC policy 'rs-9-99'/, 2],
      [['put', local], /^dogfs: put takes LOCAL REMOTE \(run 'dogfs help' for usage\)$/, 2],
      [['ls', '--bogus', '/'], /^dogfs: Unknown option '--bogus'/, 2],
      [['admin', 'frob'], /^dogfs: unknown admin command 'frob'/, 2],
      [['admin', 'repair', '/e/file', '/e/sub'], /^dogfs: admin repair takes at most one PATH \(run/, 2],
      [['touch', '/e/no-dir/t'], /^dogfs: \/e\/no-dir(\/t)?: No such file or directory$/],
    ];
    if (process.getuid?.() !== 0) {
      cases.push([['get', '/e/file', join(readOnly, 'x')], /^dogfs: .*ro: Permission denied$/]);
    }
    for (const [args, pattern, status] of cases) {
      const result = await dogfs(args);
      assert.equal(result.status, status ?? 1, `${args.join(' ')}: ${result.stderr}`);
      assert.match(assertOneLineError(result.stderr), pattern, args.join(' '));
    }
    // A deadline of 0 (or not a number) is the user's mistake, said in one line, not a crash.
    for (const bad of ['0', '10s']) {
      const result = await dogfs(['ls', '/'], { DOGFS_TIMEOUT_MS: bad });
      assert.equal(result.status, 2, result.stderr);
      assert.match(assertOneLineError(result.stderr), /^dogfs: \$DOGFS_TIMEOUT_MS must be a whole number/);
    }
    chmodSync(readOnly, 0o700);
    // The binary: same line, exit status 1, no stack trace.
    const viaBinary = await binary(['get', '/e/sub', join(dir.path, 'x')]);
    assert.equal(viaBinary.status, 1);
    assert.equal(assertOneLineError(viaBinary.stderr), 'dogfs: /e/sub: Is a directory');
    assert.equal(viaBinary.stderr.trim().split('\n').length, 1);
    const listing = JSON.parse((await dogfs(['ls', '--json', '/e'])).stdout) as { name: string }[];
    assert.deepEqual(
      listing.map((e) => e.name),
      ['file', 'sub'],
      'nothing was created by the failed commands',
    );
  });

  test('ls -R --json that fails midway still prints a JSON document (the error on stderr)', async () => {
    const deep = `/deep${'/d'.repeat(257)}`;
    assert.equal((await dogfs(['mkdir', '-p', deep])).status, 0);
    const result = await dogfs(['ls', '-R', '--json', '/deep']);
    assert.equal(result.status, 1);
    assert.match(assertOneLineError(result.stderr), /deeper than 256 levels/);
    const listed = JSON.parse(result.stdout) as { path: string }[];
    assert.equal(listed.length, 257);
    assert.equal(listed[0]!.path, '/deep/d');
  });

  /** `dogfs ARGS` as a child the test can signal: how it ended (its signal, else its code) and its stderr. */
  const spawnCli = (args: string[]) => {
    const child = spawn(process.execPath, [DOGFS_BIN, ...args], { env, stdio: ['ignore', 'ignore', 'pipe'] });
    let stderr = '';
    child.stderr.setEncoding('utf8').on('data', (d: string) => {
      stderr += d;
    });
    const exited = new Promise<NodeJS.Signals | number | null>((resolve) =>
      child.once('close', (code, signal) => resolve(signal ?? code)),
    );
    return { child, exited, stderr: () => stderr };
  };

  /**
   * A put waiting for its second block group (the service holds that answer) gets `signal`: it ends as
   * `ended` with one line, its pending file abandoned and the name free.
   */
  const interruptHeldPut = async (
    signal: NodeJS.Signals,
    ended: NodeJS.Signals | number,
    local: string,
    remote: string,
  ) => {
    let release: () => void = () => {};
    meta.state.holdReply.set('AllocateBlockGroup', new Promise<void>((resolve) => (release = resolve)));
    const allocations = meta.state.count('AllocateBlockGroup');
    const abandons = meta.state.count('AbandonFile');
    const put = spawnCli(['put', local, remote]);
    try {
      await waitFor(
        'the put to wait on an allocation',
        () => meta.state.count('AllocateBlockGroup') > allocations,
      );
      put.child.kill(signal);
      assert.equal(await put.exited, ended);
    } finally {
      meta.state.holdReply.delete('AllocateBlockGroup');
      release();
    }
    assert.equal(assertOneLineError(put.stderr()), 'dogfs: interrupted');
    assert.equal(meta.state.count('AbandonFile'), abandons + 1, 'the pending file was abandoned');
    assert.ok(
      ![...meta.state.pending.values()].some((p) => p.path === remote),
      'nothing pending under the name',
    );
    const again = await binary(['put', local, remote]);
    assert.equal(again.status, 0, again.stderr);
  };

  /**
   * A get of `remote` stalled on a stopped chunk server (a shard read waits 5 s before decoding around it)
   * gets `signal`: it ends as `ended` with one line and leaves nothing in `into`. `alsoStalled` runs
   * while the server is still stopped.
   */
  const interruptStalledGet = async (
    signal: NodeJS.Signals,
    ended: NodeJS.Signals | number,
    remote: string,
    into: string,
    alsoStalled: () => Promise<void> = async () => {},
  ) => {
    mkdirSync(into);
    const holder = meta.state.nodes.get(remote)!.blockGroups[0]!.shards.find((s) => s.index === 0)!;
    const stopped = chunks.find((c) => c.dataAddr === holder.addr)!;
    const pid = stopped.process.child.pid!;
    process.kill(pid, 'SIGSTOP');
    try {
      const get = spawnCli(['get', remote, join(into, 'got.bin')]);
      await waitFor('the temporary file', () => readdirSync(into).some((f) => f.endsWith('.tmp')));
      get.child.kill(signal);
      assert.equal(await get.exited, ended);
      assert.equal(assertOneLineError(get.stderr()), 'dogfs: interrupted');
      assert.deepEqual(readdirSync(into), [], 'no temporary file, no partial target');
      await alsoStalled();
    } finally {
      process.kill(pid, 'SIGCONT');
    }
  };

  test('SIGINT: a put abandons its file (the name is free at once), a get leaves no temporary file', async () => {
    const local = join(dir.path, 'interrupted.bin');
    writeFileSync(local, randomBytes(3 << 20));

    // Interrupted while its Create is on its way (applied, not answered): the put waits for the answer
    // and then abandons the file, as later in the put.
    let answer: () => void = () => {};
    meta.state.holdReply.set('Create', new Promise<void>((resolve) => (answer = resolve)));
    const creates = meta.state.count('Create');
    const abandonsBefore = meta.state.count('AbandonFile');
    const creating = spawnCli(['put', local, '/interrupted-creating']);
    try {
      await waitFor('the put to wait on its Create', () => meta.state.count('Create') > creates);
      creating.child.kill('SIGINT');
      await waitFor('the interrupt taken', () => creating.stderr().includes('interrupted'));
    } finally {
      meta.state.holdReply.delete('Create');
      answer();
    }
    assert.equal(await creating.exited, 130);
    assert.equal(assertOneLineError(creating.stderr()), 'dogfs: interrupted');
    assert.equal(meta.state.count('AbandonFile'), abandonsBefore + 1, 'the created file was abandoned');
    assert.ok(
      ![...meta.state.pending.values()].some((p) => p.path === '/interrupted-creating'),
      'nothing pending under the name',
    );

    await interruptHeldPut('SIGINT', 130, local, '/interrupted');
    await interruptStalledGet('SIGINT', 130, '/interrupted', join(dir.path, 'interrupted-get'));
  });

  test('SIGHUP (the terminal closed): a put abandons its file, a get leaves no temporary file; the process dies of SIGHUP', async () => {
    const local = join(dir.path, 'hangup.bin');
    writeFileSync(local, randomBytes(3 << 20));

    // Killed by the signal itself once the cleanup is done: a shell shows 129.
    await interruptHeldPut('SIGHUP', 'SIGHUP', local, '/hangup');
    const into = join(dir.path, 'hangup-get');
    await interruptStalledGet('SIGHUP', 'SIGHUP', '/hangup', into, async () => {
      // A real hangup: the get runs on a pseudo-terminal (script(1)) under a shell that leads its session,
      // as in a terminal window. Killing script closes the terminal: the kernel hangs it up, the leader
      // dies of SIGHUP and the foreground job, the get, is sent SIGHUP. Its writes to the terminal then
      // fail (EIO), and Node 20 crashes if it exits normally. A shell between them ignores SIGHUP, so it
      // outlives the terminal to record the get's status.
      const statusFile = join(dir.path, 'hangup-status');
      const quote = (word: string) => `'${word.replaceAll("'", "'\\''")}'`;
      const command = [process.execPath, DOGFS_BIN, 'get', '/hangup', join(into, 'got.bin')].map(quote);
      const recorded = `trap '' HUP; ${command.join(' ')}; echo $? > ${quote(statusFile)}`;
      // `; true`: the leader must not exec the inner shell, which would then lead, ignoring SIGHUP.
      const terminal = spawn('script', ['-qec', `sh -c ${quote(recorded)}; true`, '/dev/null'], {
        env: { ...env, SHELL: '/bin/sh' },
        stdio: 'ignore',
      });
      // script(1) is util-linux's, which .ci/run installs.
      const terminalClosed = new Promise((resolve, reject) => {
        terminal.once('close', resolve);
        terminal.once('error', reject);
      });
      await waitFor('the temporary file', () => readdirSync(into).some((f) => f.endsWith('.tmp')));
      terminal.kill('SIGKILL');
      await terminalClosed;
      const status = await waitFor('the get to end', () =>
        existsSync(statusFile) ? readFileSync(statusFile, 'utf8').trim() || undefined : undefined,
      );
      assert.equal(status, '129', 'died of SIGHUP, after its cleanup');
      assert.deepEqual(readdirSync(into), [], 'no temporary file after the terminal closed');
    });
  });
  test('endpoints: --meta, $DOGFS_META, $DOGFS_CLUSTER, ./cluster.json; none reachable: a clear error', async () => {
    const clusterFile = join(dir.path, 'cluster.json');
    writeFileSync(clusterFile, JSON.stringify({ meta: [meta.leader.address], processes: [] }));
    const noMeta = { ...env, DOGFS_META: '' };
    const viaFile = await binary(['stat', '/'], { DOGFS_META: '', DOGFS_CLUSTER: clusterFile });
    assert.equal(viaFile.status, 0, viaFile.stderr);
    const viaFlag = await dogfs(['stat', '--meta', meta.leader.address, '/'], noMeta);
    assert.equal(viaFlag.status, 0, viaFlag.stderr);
    // Help needs no cluster at all.
    const help = await dogfs(['put', '--help'], { ...noMeta, DOGFS_CLUSTER: '' });
    assert.equal(help.status, 0, help.stderr);
    assert.match(help.stdout, /put LOCAL REMOTE/);
    const none = await dogfs(['stat', '/'], { ...noMeta, DOGFS_CLUSTER: '' });
    assert.equal(none.status, 2);
    assert.match(assertOneLineError(none.stderr), /^dogfs: no metadata servers given/);
    const unreachable = await dogfs(['ls', '/'], {
      ...noMeta,
      DOGFS_META: '127.0.0.1:1',
      DOGFS_TIMEOUT_MS: '1000',
    });
    assert.equal(unreachable.status, 1);
    assert.match(
      assertOneLineError(unreachable.stderr),
      /^dogfs: cannot reach any metadata server \(127\.0\.0\.1:1\)/,
    );
  });

  test('admin report: text and --json', async () => {
    const text = await binary(['admin', 'report']);
    assert.equal(text.status, 0, text.stderr);
    assert.match(text.stdout, /Metadata groups:\n/);
    assert.match(text.stdout, /\n {2}c0 +alive /);
    assert.match(text.stdout, /5 of 5 alive/);
    const json = JSON.parse((await dogfs(['admin', 'report', '--json'])).stdout) as {
      chunkServers: { id: string; state: string }[];
      groups: { leader: string }[];
    };
    assert.deepEqual(json.chunkServers.map((c) => c.id).sort(), ['c0', 'c1', 'c2', 'c3', 'c4']);
    assert.equal(json.groups[0]!.leader, meta.leader.address);
  });
});

test("a bar's line is ended once, by done, abandon or endOpenLines (an interrupt, a death by SIGPIPE)", () => {
  const drawn: string[] = [];
  const terminal = { isTTY: true, columns: 120, write: (s: string) => drawn.push(s) > 0 };
  const newlines = () => drawn.filter((s) => s === '\n').length;
  const never = new Progress('get /none', 10, terminal);
  never.abandon();
  assert.deepEqual(drawn, [], 'a bar never drawn has no line to end');
  const cut = new Progress('get /cut', 10, terminal);
  cut.update(1);
  assert.equal(endOpenLines(), true);
  assert.equal(newlines(), 1);
  cut.abandon(); // the get's own cleanup after the interrupt: no empty line
  assert.equal(endOpenLines(), false);
  assert.equal(newlines(), 1);
  const finished = new Progress('get /done', 10, terminal);
  finished.update(10);
  finished.done();
  finished.abandon(); // a later step failed (the rename): the line is over already
  assert.equal(newlines(), 2);
  assert.equal(endOpenLines(), false);
});

test('the progress bar: bytes, rate and ETA on a terminal, nothing otherwise', async () => {
  const drawn: string[] = [];
  const terminal = { isTTY: true, columns: 120, write: (s: string) => drawn.push(s) > 0 };
  const bar = new Progress('put /x', 3 * 1024 * 1024, terminal);
  const sink = new PassThrough();
  sink.resume();
  await pipeline(
    Readable.from([Buffer.alloc(1024 * 1024), Buffer.alloc(1024 * 1024), Buffer.alloc(1024 * 1024)]),
    bar,
    sink,
  );
  const last = drawn.filter((s) => s.startsWith('\r')).pop() ?? '';
  assert.match(last, /^\rput \/x \[#{24}\] 100% 3\.0 MiB \/ 3\.0 MiB {2}[\d.]+ [KMG]?i?B\/s ETA 0:00/);
  assert.equal(drawn[drawn.length - 1], '\n');
  // A terminal that reports no size (0 columns) gets the whole line, not one cut short.
  const unsized: string[] = [];
  const repairBar = new Progress('repair /x', undefined, {
    isTTY: true,
    columns: 0,
    write: (s: string) => unsized.push(s) > 0,
  });
  repairBar.update(2048);
  repairBar.done();
  const line = unsized[0] ?? '';
  // Drawn at once: less than a second gives no rate yet (a rate from 1 ms was wildly high).
  assert.match(line, /^\rrepair \/x 2\.0 KiB {2}--\/s/);
  assert.ok(line.endsWith('/s\x1b[K'), JSON.stringify(line));
  const final = unsized.filter((s) => s.startsWith('\r')).pop() ?? '';
  assert.match(final, /^\rrepair \/x 2\.0 KiB {2}[\d.]+ [KMG]?i?B\/s/);
  // Under 1 KiB/s a rate is whole bytes, not a float's digits; no rate yet, no ETA either.
  const slow: string[] = [];
  const slowBar = new Progress('get /y', 10 * 1024 ** 3, {
    isTTY: true,
    columns: 200,
    write: (s: string) => slow.push(s) > 0,
  });
  slowBar.update(1);
  assert.match(slow[0] ?? '', / 1 B \/ 10\.0 GiB {2}--\/s ETA --:--/);
  const quiet: string[] = [];
  const pipe = new Progress('get /x', 10, {
    isTTY: false,
    columns: 80,
    write: (s: string) => quiet.push(s) > 0,
  } as never);
  await pipeline(Readable.from([Buffer.alloc(10)]), pipe, new PassThrough().resume());
  assert.deepEqual(quiet, []);
});
