// Builds the codec's portable kernel: wasm/rs.ts (AssemblyScript) → wasm/rs.wasm. The .wasm is committed,
// so installing DogFS needs no compiler; this script rebuilds it after the source changes.
//   node scripts/build-wasm.mjs           rebuild wasm/rs.wasm
//   node scripts/build-wasm.mjs --check   build to a temporary file and fail if it differs from the
//                                         committed wasm/rs.wasm (the codec tests run this)
// The build is deterministic: same AssemblyScript version (pinned by package-lock.json), same bytes.
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { createRequire } from 'node:module';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = resolve(dirname(fileURLToPath(import.meta.url)), '..');
const source = join(root, 'wasm', 'rs.ts');
const committed = join(root, 'wasm', 'rs.wasm');
const check = process.argv.includes('--check');

let asc;
try {
  asc = join(dirname(createRequire(import.meta.url).resolve('assemblyscript/package.json')), 'bin', 'asc.js');
} catch {
  console.error('build-wasm: assemblyscript is not installed (npm install --include=dev)');
  process.exit(2);
}

const scratch = check ? mkdtempSync(join(tmpdir(), 'dogfs-wasm-')) : undefined;
const output = scratch ? join(scratch, 'rs.wasm') : committed;
const flags = ['-O3', '--runtime', 'stub', '--noAssert', '--enable', 'simd', '--outFile', output];
const result = spawnSync(process.execPath, [asc, source, ...flags], { cwd: root, encoding: 'utf8' });
if (result.status !== 0) {
  console.error(`build-wasm: asc failed\n${result.stdout}${result.stderr}`);
  process.exit(1);
}
if (scratch) {
  const same = Buffer.compare(readFileSync(output), readFileSync(committed)) === 0;
  rmSync(scratch, { recursive: true, force: true });
  if (!same) {
    console.error(
      'build-wasm: wasm/rs.wasm differs from a fresh build of wasm/rs.ts; run npm run build:wasm',
    );
    process.exit(1);
  }
}
