import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { cpSync, existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { fileURLToPath } from 'node:url';
import fc from 'fast-check';
import { backendByName, CodecError, createCodec } from '../../src/codec/index.js';
import { eventLoopTurnsDuring, loadedBackends, seededBytes } from './helpers.js';

const root = fileURLToPath(new URL('../../../', import.meta.url));
const codecModule = new URL('../../src/codec/index.js', import.meta.url).href;

/** Runs a snippet in a fresh node with `env` added; the snippet sees the codec as `codec`. */
function runWithCodec(body: string, env: Record<string, string>) {
  const script = `import(${JSON.stringify(codecModule)}).then(async (codec) => { ${body} });`;
  return spawnSync(process.execPath, ['-e', script], { env: { ...process.env, ...env }, encoding: 'utf8' });
}

const encodeSnippet = `
  const c = codec.createCodec(3, 2);
  const parity = [new Uint8Array(1), new Uint8Array(1)];
  c.encode([Uint8Array.of(0x51), Uint8Array.of(0xe0), Uint8Array.of(0x7b)], parity);
  codec.createCodec(6, 3);
  process.stdout.write(JSON.stringify({ active: codec.activeBackendName(), parity: Buffer.concat(parity).toString('hex'),
    report: codec.backendReport() }));`;

test('all loaded backends give bit-identical parity (property, against the reference backend)', () => {
  const backends = loadedBackends();
  assert.ok(backends.includes('wasm') && backends.includes('reference'));
  fc.assert(
    fc.property(
      fc.integer({ min: 1, max: 16 }),
      fc.integer({ min: 1, max: 8 }),
      fc.integer({ min: 0, max: 40_000 }),
      fc.integer(),
      (k, mRaw, length, seed) => {
        const m = Math.min(mRaw, 24 - k);
        const data = Array.from({ length: k }, (_, i) => seededBytes(length, seed ^ (i * 7919)));
        const expected = Array.from({ length: m }, () => new Uint8Array(length));
        createCodec(k, m, { backend: 'reference' }).encode(data, expected);
        for (const backend of backends) {
          const parity = Array.from({ length: m }, () => new Uint8Array(length));
          createCodec(k, m, { backend }).encode(data, parity);
          assert.deepEqual(parity, expected, `${backend} rs-${k}-${m} length ${length}`);
        }
      },
    ),
    { numRuns: 40 },
  );
});

test('DOGFS_CODEC_BACKEND=wasm forces the portable backend, which gives ISA-L’s parity', () => {
  const child = runWithCodec(encodeSnippet, { DOGFS_CODEC_BACKEND: 'wasm' });
  assert.equal(child.status, 0, child.stderr);
  const result = JSON.parse(child.stdout);
  assert.equal(result.active, 'wasm');
  assert.equal(result.parity, 'cf5b');
  assert.doesNotMatch(child.stderr, /DOGFS_CODEC_FALLBACK/, 'a forced choice is not a fallback');
});

test('without ISA-L the codec falls back to the simd kernel quietly (to wasm with one warning), and reports why', () => {
  const child = runWithCodec(encodeSnippet, {
    DOGFS_ISAL_LIBRARY: '/nonexistent/libisal.so.2',
    DOGFS_CODEC_BACKEND: '',
  });
  assert.equal(child.status, 0, child.stderr);
  const result = JSON.parse(child.stdout);
  const simd = result.report.backends.find((b: { name: string }) => b.name === 'simd');
  assert.equal(result.active, simd.available ? 'simd' : 'wasm');
  assert.equal(result.parity, 'cf5b');
  assert.equal(
    child.stderr.match(/DOGFS_CODEC_FALLBACK/g)?.length ?? 0,
    simd.available ? 0 : 1,
    child.stderr,
  );
  const native = result.report.backends.find((b: { name: string }) => b.name === 'native');
  assert.equal(native.available, false);
  assert.match(native.detail, /nonexistent/);
});

test('without the native addon at all the codec falls back to wasm, says so once', () => {
  const child = runWithCodec(encodeSnippet, {
    DOGFS_CODEC_ADDON: '/nonexistent/dogfs_codec.node',
    DOGFS_CODEC_BACKEND: '',
  });
  assert.equal(child.status, 0, child.stderr);
  const result = JSON.parse(child.stdout);
  assert.equal(result.active, 'wasm');
  assert.equal(result.parity, 'cf5b');
  assert.equal(child.stderr.match(/DOGFS_CODEC_FALLBACK/g)?.length, 1, child.stderr);
  assert.match(child.stderr, /addon not built/);
});

test('forcing a backend that cannot load is BACKEND_UNAVAILABLE, not a silent fallback', () => {
  const child = runWithCodec(
    `try { codec.createCodec(3, 2); process.stdout.write('created'); } catch (e) { process.stdout.write(e.code); }`,
    { DOGFS_ISAL_LIBRARY: '/nonexistent/libisal.so.2', DOGFS_CODEC_BACKEND: 'native' },
  );
  assert.equal(child.stdout, 'BACKEND_UNAVAILABLE', child.stderr);
  assert.throws(
    () => backendByName('fpga' as 'native'),
    (e: unknown) => e instanceof CodecError && e.code === 'INVALID_ARGUMENT',
  );
});

test('the committed wasm/rs.wasm is exactly what wasm/rs.ts builds to', () => {
  const result = spawnSync(process.execPath, [join(root, 'scripts/build-wasm.mjs'), '--check'], {
    encoding: 'utf8',
  });
  assert.equal(result.status, 0, result.stderr);
});

test('a native build that cannot compile leaves the install working: one line, exit 0', () => {
  const scratch = mkdtempSync(join(tmpdir(), 'dogfs-native-'));
  try {
    for (const file of ['dogfs_codec.c', 'simd_kernel.c', 'simd_kernel.h', 'binding.gyp']) {
      cpSync(join(root, 'native', file), join(scratch, file));
    }
    const result = spawnSync(process.execPath, [join(root, 'scripts/build-native.mjs'), '--force'], {
      env: { ...process.env, DOGFS_NATIVE_DIR: scratch, CC: '/nonexistent/cc', CXX: '/nonexistent/c++' },
      encoding: 'utf8',
    });
    assert.equal(result.status, 0, result.stderr);
    assert.equal(result.stdout, '');
    assert.match(
      result.stderr,
      /^dogfs codec: native backend not built \(.+\); the codec will use WebAssembly instead\n$/,
    );
    assert.equal(existsSync(join(scratch, 'build/Release/dogfs_codec.node')), false);
  } finally {
    rmSync(scratch, { recursive: true, force: true });
  }
});

for (const [backend, length, where] of [
  ['simd', 8 << 20, 'the libuv thread pool'],
  ['wasm', 4 << 20, 'a worker thread'],
  ['reference', 256 << 10, 'a worker thread'],
] as const) {
  if (!loadedBackends().includes(backend)) continue;
  test(`${backend} encodeAsync runs on ${where}: the event loop keeps turning while it encodes`, async () => {
    const codec = createCodec(6, 3, { backend });
    const data = Array.from({ length: 6 }, (_, i) => seededBytes(length, i + 11));
    const parity = Array.from({ length: 3 }, () => new Uint8Array(length));
    const turns = await eventLoopTurnsDuring(() => codec.encodeAsync(data, parity));
    assert.ok(turns >= 3, `event loop turned only ${turns} times during an encode of 6 × ${length} bytes`);
    const check = Array.from({ length: 3 }, () => new Uint8Array(length));
    codec.encode(data, check);
    assert.deepEqual(parity, check);
  });
}

test('concurrent async jobs of different geometries on the worker all land in their own outputs', async () => {
  const jobs = [
    [6, 3, 70_000, 'wasm'],
    [4, 2, 5, 'reference'],
    [10, 4, 300_000, 'wasm'],
    [3, 2, 1, 'wasm'],
    [6, 3, 100_000, 'reference'],
  ] as const;
  const results = await Promise.all(
    jobs.map(async ([k, m, length, backend], n) => {
      const data = Array.from({ length: k }, (_, i) => seededBytes(length, n * 100 + i + 1));
      const parity = Array.from({ length: m }, () => new Uint8Array(length));
      await createCodec(k, m, { backend }).encodeAsync(data, parity);
      return { k, m, data, parity };
    }),
  );
  for (const { k, m, data, parity } of results) {
    const expected = Array.from({ length: m }, () => new Uint8Array(data[0]!.length));
    createCodec(k, m, { backend: 'reference' }).encode(data, expected);
    assert.deepEqual(parity, expected);
  }
});

test('every simd kernel tier this CPU supports gives the reference backend’s bytes', (t) => {
  const check = `
    const results = [];
    for (const [k, m, length] of [[6, 3, 1], [6, 3, 63], [4, 2, 64], [10, 4, 1000], [3, 2, 4097], [17, 8, 200], [1, 1, 33]]) {
      const data = Array.from({ length: k }, (_, i) => Uint8Array.from({ length }, (_, b) => (b * 131 + i * 71 + length) & 255));
      const outs = ['simd', 'reference'].map((backend) => {
        const parity = Array.from({ length: m }, () => new Uint8Array(length));
        codec.createCodec(k, m, { backend }).encode(data, parity);
        return Buffer.concat(parity).toString('hex');
      });
      results.push(outs[0] === outs[1]);
    }
    const simd = codec.backendReport().backends.find((b) => b.name === 'simd');
    process.stdout.write(JSON.stringify({ detail: simd.detail, results }));`;
  for (const tier of ['avx512+gfni', 'avx2+gfni', 'avx2']) {
    const child = runWithCodec(check, { DOGFS_SIMD_KERNEL: tier });
    if (child.status !== 0 && /unavailable/.test(child.stderr)) {
      t.diagnostic(`simd backend unavailable here: ${child.stderr.trim().split('\n')[0]}`);
      return;
    }
    assert.equal(child.status, 0, child.stderr);
    const { detail, results } = JSON.parse(child.stdout) as { detail: string; results: boolean[] };
    if (!detail.endsWith(tier)) {
      t.diagnostic(`CPU lacks ${tier} (got ${detail})`);
      continue;
    }
    assert.deepEqual(
      results,
      results.map(() => true),
      `${tier}: ${JSON.stringify(results)}`,
    );
  }
});
