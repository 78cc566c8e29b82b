#!/usr/bin/env node
// Entry point of the `dogfs` command. The TypeScript sources are compiled to dist/ by `npm ci` (prepare).
import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';

const main = new URL('../dist/src/cli/main.js', import.meta.url);
if (!existsSync(fileURLToPath(main))) {
  process.stderr.write('dogfs: not built yet; run `npm ci` (or `npm run build`) in the checkout first\n');
  process.exit(1);
}
await import(main.href);
