// Builds the codec's native backend (native/dogfs_codec.c → native/build/Release/dogfs_codec.node) with
// the node-gyp that npm bundles. The addon needs only a C compiler and node's headers: it dlopen()s
// ISA-L at run time, so it builds without libisal-dev and reports ISA-L missing when it runs.
// This step never fails the build: if the addon cannot be built, it says so once and the codec falls
// back to its WebAssembly backend. DOGFS_SKIP_NATIVE=1 skips it; --force rebuilds even if up to date;
// DOGFS_NATIVE_DIR builds a copy of native/ elsewhere (the tests use it to prove the fallback).
import { spawnSync } from 'node:child_process';
import { existsSync, statSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = resolve(dirname(fileURLToPath(import.meta.url)), '..');
const nativeDir = process.env.DOGFS_NATIVE_DIR || join(root, 'native');
const output = join(nativeDir, 'build', 'Release', 'dogfs_codec.node');
const sources = ['dogfs_codec.c', 'simd_kernel.c', 'simd_kernel.h', 'binding.gyp'].map((f) =>
  join(nativeDir, f),
);

function fallBack(reason) {
  console.warn(`dogfs codec: native backend not built (${reason}); the codec will use WebAssembly instead`);
  process.exit(0);
}

if (process.env.DOGFS_SKIP_NATIVE === '1') fallBack('DOGFS_SKIP_NATIVE=1');
if (process.platform === 'win32') fallBack('not supported on Windows');

const missing = sources.filter((f) => !existsSync(f));
if (missing.length > 0) fallBack(`sources missing: ${missing.join(', ')}`);
const newestSource = Math.max(...sources.map((f) => statSync(f).mtimeMs));
if (existsSync(output) && statSync(output).mtimeMs >= newestSource && process.argv[2] !== '--force') {
  process.exit(0);
}

// node-gyp: the one npm runs scripts with, else the one bundled beside this node's npm.
const candidates = [
  process.env.npm_config_node_gyp,
  join(
    dirname(process.execPath),
    '..',
    'lib',
    'node_modules',
    'npm',
    'node_modules',
    'node-gyp',
    'bin',
    'node-gyp.js',
  ),
].filter((p) => p && existsSync(p));
if (candidates.length === 0) fallBack('node-gyp not found');

// Use this node's own headers when installed beside it, so no download is needed.
const prefix = resolve(dirname(process.execPath), '..');
const args = [candidates[0], 'rebuild', `--directory=${nativeDir}`];
if (existsSync(join(prefix, 'include', 'node', 'node_api.h'))) args.push(`--nodedir=${prefix}`);

// Bounded, so a node-gyp stuck fetching headers cannot hang `npm ci`.
const result = spawnSync(process.execPath, args, {
  encoding: 'utf8',
  stdio: ['ignore', 'pipe', 'pipe'],
  timeout: 180_000,
});
if (result.status !== 0 || !existsSync(output)) {
  const lines = `${result.stderr ?? ''}${result.error ? String(result.error) : ''}`.trim().split('\n');
  const reason =
    lines.filter((l) => /error/i.test(l)).slice(-1)[0] ?? lines.slice(-1)[0] ?? 'node-gyp failed';
  fallBack(reason.trim());
}
