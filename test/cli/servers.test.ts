import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { createServer, type Server } from 'node:net';
import { join } from 'node:path';
import { after, test } from 'node:test';
import { HealthService } from '../../src/wire/gen/types.js';
import { RpcChannel } from '../../src/wire/rpc.js';
import { assertOneLineError, runDogfs, startDogfs, tempDir, waitFor } from '../helpers/index.js';

const dir = tempDir('dogfs-servers-');
after(() => dir.remove());

function listenOnFreePort(): Promise<{ server: Server; port: number }> {
  return new Promise((resolve) => {
    const server = createServer();
    server.listen(0, '127.0.0.1', () => {
      const address = server.address();
      resolve({ server, port: typeof address === 'object' && address ? address.port : 0 });
    });
  });
}

for (const role of ['meta', 'chunk'] as const) {
  test(`dogfs ${role}: serves health, locks its directory, logs JSON, stops on SIGTERM`, async () => {
    const serverDir = join(dir.path, `${role}-a`);
    const server = startDogfs([role, '--dir', serverDir, '--id', `${role}-a`, '--log-level', 'debug']);
    const listening = await waitFor('listening log line', () => {
      const line = server.output.stderr.split('\n').find((l) => l.includes('"msg":"listening"'));
      return line === undefined
        ? undefined
        : (JSON.parse(line) as { addr: string; id: string; level: string });
    });
    assert.equal(listening.id, `${role}-a`);
    assert.equal(listening.level, 'info');

    const channel = new RpcChannel(listening.addr);
    const health = await channel.call(HealthService, 'Check', {}, { timeoutMs: 5000 });
    channel.close();
    assert.equal(health.role, role);
    assert.equal(health.id, `${role}-a`);

    const second = await runDogfs([role, '--dir', serverDir]);
    assert.equal(second.status, 1);
    assert.match(
      assertOneLineError(second.stderr),
      new RegExp(`^dogfs ${role}: .* is in use by another process \\(pid \\d+\\)`),
    );

    const otherId = await runDogfs([role, '--dir', join(dir.path, `${role}-b`), '--id', '../etc']);
    assert.equal(otherId.status, 1);
    assert.match(assertOneLineError(otherId.stderr), /invalid id '\.\.\/etc'/);

    server.child.kill('SIGTERM');
    assert.deepEqual(await server.exited, { code: 0, signal: null });

    // Same directory, different identity: refused, the directory keeps its owner.
    const wrongId = await runDogfs([role, '--dir', serverDir, '--id', 'someone-else']);
    assert.equal(wrongId.status, 1);
    assert.match(assertOneLineError(wrongId.stderr), /belongs to .* 'someone-else'|not 'someone-else'/);
  });
}

test('an occupied port gives one clear line and a non-zero exit', async () => {
  const { server, port } = await listenOnFreePort();
  try {
    const result = await runDogfs(['meta', '--dir', join(dir.path, 'port'), '--listen', `127.0.0.1:${port}`]);
    assert.equal(result.status, 1);
    assert.match(
      assertOneLineError(result.stderr),
      new RegExp(`cannot listen on 127\\.0\\.0\\.1:${port}: address already in use`),
    );
  } finally {
    server.close();
  }
});

test('usage errors: unknown command, unknown flag, bad address, bad log level', async () => {
  const cases: [string[], RegExp][] = [
    [['frobnicate'], /^dogfs: unknown command 'frobnicate'/],
    [['meta', '--dir', join(dir.path, 'u'), '--bogus'], /^dogfs meta: Unknown option '--bogus'/],
    [
      ['chunk', '--dir', join(dir.path, 'u'), '--listen', 'nonsense'],
      /^dogfs chunk: invalid --listen 'nonsense'/,
    ],
    [['meta', '--dir', join(dir.path, 'u'), '--log-level', 'loud'], /^dogfs meta: --log-level must be/],
    [['meta'], /^dogfs meta: missing --dir \(or \$DOGFS_DIR\)/],
  ];
  for (const [args, expected] of cases) {
    const result = await runDogfs(args);
    assert.equal(result.status, 2, `exit status of dogfs ${args.join(' ')}`);
    assert.match(assertOneLineError(result.stderr), expected);
  }
  // A source address that is not one stops a server at its start, not at its first connection.
  for (const role of ['meta', 'chunk']) {
    const result = await runDogfs([role, '--dir', join(dir.path, 'u')], {
      env: { ...process.env, DOGFS_SOURCE_ADDRESS: 'nowhere' },
    });
    assert.notEqual(result.status, 0);
    assert.match(assertOneLineError(result.stderr), /DOGFS_SOURCE_ADDRESS 'nowhere' is not an IP address/);
  }
});

test('flags fall back to environment variables', async () => {
  const serverDir = join(dir.path, 'env');
  const server = startDogfs(['chunk'], { ...process.env, DOGFS_DIR: serverDir, DOGFS_ID: 'from-env' });
  const line = await waitFor('listening', () =>
    server.output.stderr.split('\n').find((l) => l.includes('"listening"')),
  );
  assert.match(line, /"id":"from-env"/);
  server.child.kill('SIGINT');
  assert.equal((await server.exited).code, 0);
});

test('dogfs chunk --metrics-listen: Prometheus text at /metrics', async () => {
  const server = startDogfs(['chunk', '--dir', join(dir.path, 'metrics'), '--metrics-listen', '127.0.0.1:0']);
  try {
    const listening = await waitFor('listening log line', () => {
      const line = server.output.stderr.split('\n').find((l) => l.includes('"msg":"listening"'));
      return line === undefined ? undefined : (JSON.parse(line) as { metricsAddr?: string });
    });
    assert.ok(listening.metricsAddr, 'the ready line names the metrics address');
    const response = await fetch(`http://${listening.metricsAddr}/metrics`);
    assert.equal(response.status, 200);
    assert.match(response.headers.get('content-type') ?? '', /^text\/plain/);
    assert.match(await response.text(), /^# TYPE \S+ (counter|gauge)$/m);
  } finally {
    server.child.kill('SIGTERM');
    await server.exited;
  }
});

test('dogfs meta --metrics-listen: its own view of each Raft group, its log writes, and on the cluster leader repair', async () => {
  const server = startDogfs([
    'meta',
    '--dir',
    join(dir.path, 'meta-metrics'),
    '--metrics-listen',
    '127.0.0.1:0',
  ]);
  try {
    const listening = await waitFor('listening log line', () => {
      const line = server.output.stderr.split('\n').find((l) => l.includes('"msg":"listening"'));
      return line === undefined ? undefined : (JSON.parse(line) as { id: string; metricsAddr?: string });
    });
    assert.ok(listening.metricsAddr, 'the ready line names the metrics address');
    // A metadata server without peers is a group of one: it leads both groups once it has elected itself.
    const text = await waitFor('both groups led', async () => {
      const body = await (await fetch(`http://${listening.metricsAddr}/metrics`)).text();
      return (
        /dogfs_meta_raft_leader\{server="[^"]+",group="0"\} 1/.test(body) &&
        /dogfs_meta_raft_leader\{server="[^"]+",group="1"\} 1/.test(body) &&
        body
      );
    });
    const server_ = `server="${listening.id}"`;
    assert.match(text, /^# TYPE dogfs_meta_raft_term gauge$/m);
    assert.match(text, new RegExp(`^dogfs_meta_raft_term\\{${server_},group="1"\\} [1-9]\\d*$`, 'm'));
    assert.match(text, new RegExp(`^dogfs_meta_raft_log_writes_total\\{${server_}\\} [1-9]\\d*$`, 'm'));
    assert.match(text, new RegExp(`^dogfs_meta_chunk_servers\\{${server_},state="alive"\\} 0$`, 'm'));
    assert.match(text, new RegExp(`^dogfs_meta_damaged_files_tracked\\{${server_}\\} 0$`, 'm'));
    assert.match(text, /^dogfs_meta_resident_memory_bytes\{[^}]*\} [1-9]\d*$/m);
    assert.equal((await fetch(`http://${listening.metricsAddr}/other`)).status, 404);
  } finally {
    server.child.kill('SIGTERM');
    await server.exited;
  }
});

test('a server whose code throws where nothing catches it logs one JSON line and exits 70', async () => {
  // A server made with runDaemon, as meta and chunk are, whose setup leaves a bug behind: an exception
  // thrown later on the event loop, outside any handler.
  const script = join(dir.path, 'throws-later.mjs');
  const daemon = new URL('../../src/daemon/daemon.js', import.meta.url).href;
  writeFileSync(
    script,
    `import { runDaemon } from ${JSON.stringify(daemon)};
await runDaemon(
  { role: 'chunk', dir: ${JSON.stringify(join(dir.path, 'throws'))}, listen: { host: '127.0.0.1', port: 0 }, logLevel: 'info' },
  () => { setTimeout(() => { throw new Error('a bug (test)'); }, 50); },
);
`,
  );
  const child = spawnSync(process.execPath, [script], { encoding: 'utf8', timeout: 30_000 });
  assert.equal(child.status, 70, child.stderr);
  const fatal = child.stderr
    .split('\n')
    .filter((l) => l.includes('"msg":"fatal: an exception nothing caught"'));
  assert.equal(fatal.length, 1, child.stderr);
  assert.match(fatal[0]!, /a bug \(test\)/);
  assert.doesNotMatch(child.stderr, /^\s+at /m, 'no bare stack trace outside the JSON line');
});
