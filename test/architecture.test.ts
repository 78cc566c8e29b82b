/**
 * The layout is the architecture: each directory under src/ may import only the parts listed here
 * (DESIGN section 2; docs/ARCHITECTURE.md). The consensus core imports nothing with I/O at all.
 */
import assert from 'node:assert/strict';
import { readdirSync, readFileSync } from 'node:fs';
import { dirname, join, relative, resolve } from 'node:path';
import { test } from 'node:test';
import { fileURLToPath } from 'node:url';

const SRC = resolve(fileURLToPath(new URL('../../src', import.meta.url)));

const ALLOWED: Record<string, readonly string[]> = {
  common: [],
  consensus: ['common/assert.ts'],
  codec: ['common'],
  wire: ['common'],
  daemon: ['wire', 'common'],
  raftnode: ['consensus', 'wire', 'common'],
  chunk: ['codec', 'wire', 'daemon', 'common'],
  metadata: ['raftnode', 'consensus', 'codec', 'wire', 'daemon', 'common'],
  client: ['codec', 'wire', 'common'],
  cluster: ['daemon', 'wire', 'common'],
  s3: ['client', 'codec', 'daemon', 'wire', 'common'],
  cli: ['client', 'cluster', 'metadata', 'chunk', 's3', 'daemon', 'codec', 'wire', 'common'],
};

function sourceFiles(dir: string): string[] {
  return readdirSync(dir, { recursive: true })
    .map(String)
    .filter((f) => f.endsWith('.ts') && !f.endsWith('.d.ts'))
    .map((f) => join(dir, f));
}

function importsOf(file: string): string[] {
  const text = readFileSync(file, 'utf8');
  const specifiers: string[] = [];
  for (const match of text.matchAll(/^\s*(?:import|export)\s[^'"]*?from\s+['"]([^'"]+)['"]/gm))
    specifiers.push(match[1]!);
  for (const match of text.matchAll(/\bimport\(\s*['"]([^'"]+)['"]\s*\)/g)) specifiers.push(match[1]!);
  return specifiers;
}

test('every part imports only what its header allows', () => {
  const violations: string[] = [];
  const parts = readdirSync(SRC, { withFileTypes: true })
    .filter((d) => d.isDirectory())
    .map((d) => d.name);
  for (const part of parts) {
    const allowed = ALLOWED[part];
    if (allowed === undefined) {
      violations.push(
        `src/${part}: a new part needs an entry in test/architecture.test.ts and docs/ARCHITECTURE.md`,
      );
      continue;
    }
    for (const file of sourceFiles(join(SRC, part))) {
      for (const specifier of importsOf(file)) {
        if (!specifier.startsWith('.')) {
          if (part === 'consensus')
            violations.push(`${relative(SRC, file)}: consensus core imports '${specifier}'`);
          continue;
        }
        const target = relative(SRC, resolve(dirname(file), specifier)).replace(/\.js$/, '.ts');
        const targetPart = target.split('/')[0]!;
        if (targetPart === part) continue;
        const ok = allowed.some((a) => target === a || targetPart === a);
        if (!ok) violations.push(`${relative(SRC, file)} imports ${target}`);
      }
    }
  }
  assert.deepEqual(violations, []);
});

test('every part has a header comment saying what it owns and may import', () => {
  for (const part of Object.keys(ALLOWED)) {
    const files = sourceFiles(join(SRC, part));
    if (files.length === 0) continue;
    const index = files.find((f) => f.endsWith(`${part}/index.ts`) || f.endsWith(`${part}/main.ts`));
    assert.ok(index, `src/${part}/index.ts (or main.ts) exists`);
    const head = readFileSync(index, 'utf8').slice(0, 1500);
    assert.match(head, /May import:/, `src/${part}/index.ts header names what it may import`);
  }
});
