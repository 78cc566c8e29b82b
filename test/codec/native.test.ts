import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { splitNibbleTables } from '../../src/codec/gf256.js';
import {
  backendReport,
  cauchyEncodeMatrix,
  createCodec,
  gfMul,
  invertMatrix,
} from '../../src/codec/index.js';
import { loadNativeAddon, nativeAddonPath } from '../../src/codec/native.js';
import { eventLoopTurnsDuring, seededBytes } from './helpers.js';

const isalInstalled = [
  '/usr/lib/x86_64-linux-gnu/libisal.so.2',
  '/usr/lib/aarch64-linux-gnu/libisal.so.2',
  '/usr/lib/libisal.so.2',
  '/usr/local/lib/libisal.so.2',
].some(existsSync);

test('the native backend loads wherever ISA-L is installed (CI installs libisal-dev)', () => {
  const native = backendReport().backends.find((b) => b.name === 'native')!;
  if (isalInstalled) {
    assert.equal(native.available, true, native.detail);
    assert.equal(backendReport().active, process.env['DOGFS_CODEC_BACKEND'] ?? 'native');
  } else {
    assert.equal(native.available, false);
    assert.match(native.detail, /ISA-L|addon/);
  }
});

if (isalInstalled) {
  const isal = loadNativeAddon();

  test('ISA-L and our GF(2^8) code agree: gf_mul, gf_gen_cauchy1_matrix, ec_init_tables, gf_invert_matrix', () => {
    for (let a = 0; a < 256; a += 3)
      for (let b = 0; b < 256; b += 5) assert.equal(isal.gfMul(a, b), gfMul(a, b));
    for (const [k, m] of [
      [3, 2],
      [4, 2],
      [6, 3],
      [10, 4],
      [20, 12],
    ] as const) {
      const matrix = cauchyEncodeMatrix(k, m);
      assert.deepEqual(new Uint8Array(isal.genCauchyMatrix(k, m)), matrix);
      const parityRows = matrix.subarray(k * k);
      assert.deepEqual(
        new Uint8Array(isal.initTables(k, m, parityRows)),
        splitNibbleTables(parityRows, m, k),
      );
      // Invert the rows of the last K shards (all parity first), as a decode would.
      const sub = matrix.slice(m * k);
      assert.deepEqual(new Uint8Array(isal.invertMatrix(sub, k)!), invertMatrix(sub, k));
    }
    assert.equal(isal.invertMatrix(new Uint8Array([1, 1, 1, 1]), 2), null);
  });

  test('ISA-L is bound with RTLD_DEEPBIND: node exports its own gf_mul, and small shards (which ISA-L codes with gf_mul) are right', () => {
    assert.equal(isal.deepBind, true);
    // Under 64 bytes ISA-L's ec_encode_data runs ec_encode_data_base, which calls gf_mul per byte.
    const codec = createCodec(3, 2, { backend: 'native' });
    const data = [Uint8Array.of(0x51), Uint8Array.of(0xe0), Uint8Array.of(0x7b)];
    const parity = [new Uint8Array(1), new Uint8Array(1)];
    codec.encode(data, parity);
    assert.deepEqual(parity, [Uint8Array.of(0xcf), Uint8Array.of(0x5b)]);
  });

  test('without RTLD_DEEPBIND the same call binds to node’s gf_mul and fails — the trap the addon avoids', (t) => {
    const script = `
      const isal = require(${JSON.stringify(nativeAddonPath())});
      const tables = isal.initTables(3, 2, isal.genCauchyMatrix(3, 2).subarray(9));
      const parity = [Buffer.alloc(1), Buffer.alloc(1)];
      isal.encode(tables, 3, 2, [Buffer.from([0x51]), Buffer.from([0xe0]), Buffer.from([0x7b])], parity, 1);
      process.stdout.write(JSON.stringify({ host: isal.hostExportsGfMul, parity: Buffer.concat(parity).toString('hex') }));`;
    const run = (bind: string) =>
      spawnSync(process.execPath, ['-e', script], {
        env: { ...process.env, DOGFS_ISAL_BIND: bind },
        encoding: 'utf8',
      });
    const deep = run('deep');
    assert.equal(deep.status, 0, deep.stderr);
    const deepResult = JSON.parse(deep.stdout) as { host: boolean; parity: string };
    assert.equal(deepResult.parity, 'cf5b');
    if (!deepResult.host) {
      t.diagnostic('this node exports no gf_mul: the trap cannot occur here');
      return;
    }
    const global = run('global');
    const globalResult = global.status === 0 ? (JSON.parse(global.stdout) as { parity: string }) : undefined;
    assert.ok(
      global.signal !== null || global.status !== 0 || globalResult?.parity !== 'cf5b',
      'expected a crash or wrong parity',
    );
  });

  test('native encodeAsync runs on the thread pool: the event loop keeps turning while it encodes', async () => {
    const codec = createCodec(6, 3, { backend: 'native' });
    const length = 8 << 20;
    const data = Array.from({ length: 6 }, (_, i) => seededBytes(length, i + 1));
    const parity = Array.from({ length: 3 }, () => new Uint8Array(length));
    const turns = await eventLoopTurnsDuring(() => codec.encodeAsync(data, parity));
    assert.ok(turns >= 3, `event loop turned only ${turns} times during a 48 MiB encode`);
    const check = Array.from({ length: 3 }, () => new Uint8Array(length));
    createCodec(6, 3, { backend: 'native' }).encode(data, check);
    assert.deepEqual(parity, check);
  });
}

const glibc =
  (process.report.getReport() as { header?: { glibcVersionRuntime?: string } }).header
    ?.glibcVersionRuntime !== undefined;

test('retainFreedMemory: freed MiB buffers are reused instead of faulting in fresh pages (glibc)', () => {
  // In a child (the tuning is process-wide): allocate, touch and free 1 MiB buffers, collecting the
  // garbage every 8 MiB, and count the page faults that cost. Untuned glibc maps and unmaps each one.
  const snippet = `
    const { readFileSync } = await import('node:fs');
    const { retainFreedMemory } = await import(${JSON.stringify(new URL('../../src/codec/native.js', import.meta.url).href)});
    const tuned = retainFreedMemory();
    const faults = () => Number(readFileSync('/proc/self/stat', 'utf8').split(') ')[1].split(' ')[7]);
    const round = () => { for (let i = 0; i < 8; i++) Buffer.allocUnsafeSlow(1 << 20).fill(i); globalThis.gc(); };
    for (let i = 0; i < 4; i++) round();
    const before = faults();
    for (let i = 0; i < 32; i++) round();
    process.stdout.write(JSON.stringify({ tuned, again: retainFreedMemory(), faults: faults() - before }));
  `;
  const child = spawnSync(process.execPath, ['--expose-gc', '--input-type=module', '-e', snippet], {
    encoding: 'utf8',
  });
  assert.equal(child.status, 0, child.stderr);
  const result = JSON.parse(child.stdout) as { tuned: boolean; again: boolean; faults: number };
  const addonBuilt = existsSync(nativeAddonPath());
  assert.equal(result.tuned, addonBuilt && glibc, 'tuned exactly where the addon and glibc are');
  assert.equal(result.again, result.tuned, 'idempotent');
  if (!result.tuned) return;
  const pagesTouched = (32 * 8 * (1 << 20)) / 4096;
  assert.ok(
    result.faults < pagesTouched / 8,
    `${result.faults} page faults for ${pagesTouched} pages touched in reused memory`,
  );
});

test('retainFreedMemory without the addon is false and changes nothing', () => {
  const snippet = `
    const { retainFreedMemory } = await import(${JSON.stringify(new URL('../../src/codec/native.js', import.meta.url).href)});
    process.stdout.write(String(retainFreedMemory()));
  `;
  const child = spawnSync(process.execPath, ['--input-type=module', '-e', snippet], {
    encoding: 'utf8',
    env: { ...process.env, DOGFS_CODEC_ADDON: '/nonexistent/dogfs_codec.node' },
  });
  assert.equal(child.status, 0, child.stderr);
  assert.equal(child.stdout, 'false');
});

test('a library with CRC32C but no erasure-code symbols is refused whole: crc32c throws rather than jump into it', () => {
  const dir = mkdtempSync(join(tmpdir(), 'dogfs-stub-isal-'));
  try {
    writeFileSync(
      join(dir, 'stub.c'),
      'unsigned int crc32_iscsi(unsigned char *b, int n, unsigned int c) { (void)b; (void)n; return c; }\n',
    );
    const cc = spawnSync('cc', ['-shared', '-fPIC', '-o', join(dir, 'stub.so'), join(dir, 'stub.c')], {
      encoding: 'utf8',
    });
    assert.equal(cc.status, 0, `cc: ${cc.error?.message ?? cc.stderr}`);
    const child = spawnSync(
      process.execPath,
      [
        '-e',
        `const a = require(${JSON.stringify(nativeAddonPath())});
         try { a.crc32c(Buffer.from('x')); process.stdout.write('returned'); }
         catch (e) { process.stdout.write('threw: ' + e.message); }`,
      ],
      { encoding: 'utf8', env: { ...process.env, DOGFS_ISAL_LIBRARY: join(dir, 'stub.so') } },
    );
    assert.equal(child.signal, null, `the process died of ${child.signal}`);
    assert.match(child.stdout, /^threw: .*crc32_iscsi is not loaded/);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
