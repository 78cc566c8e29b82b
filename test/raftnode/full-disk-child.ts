/**
 * Run by durable-full-disk.test.ts inside a mount namespace of its own, with argv[2] a 2 MiB tmpfs: a log
 * of ~600 KB is synced, the filesystem is filled to within ~100 KB, and the next sync sets off a rewrite
 * that cannot fit. Prints one JSON line: whether that sync failed, what a reopen finds, and the files left.
 */
import { mkdirSync, readdirSync, rmSync, statfsSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { asIndex, asNodeId, asTerm, type Entry } from '../../src/consensus/index.js';
import { DurableStorage } from '../../src/raftnode/durable.js';

const dir = join(process.argv[2]!, 'raft');
const filler = join(process.argv[2]!, 'filler');
mkdirSync(dir);
const storage = await DurableStorage.open(dir, { rewriteThresholdBytes: 500_000 });
const bootstrap = {
  meta: { index: asIndex(0), term: asTerm(0), config: { voters: [asNodeId(1)], learners: [] } },
  data: new Uint8Array(0),
};
storage.group(0).saveSnapshot(bootstrap);
storage.group(1).saveSnapshot(bootstrap);
const entries: Entry[] = [];
for (let i = 1; i <= 480; i++)
  entries.push({ kind: 'normal', term: asTerm(1), index: asIndex(i), data: Buffer.alloc(1000, i & 255) });
storage.group(0).append(entries);
storage.group(0).setHardState({ term: asTerm(1), vote: asNodeId(1), commit: asIndex(480) });
storage.group(1).setHardState({ term: asTerm(7), vote: asNodeId(2), commit: asIndex(0) });
await storage.sync(); // ~480 KB: under the threshold
const free = () => {
  const s = statfsSync(process.argv[2]!);
  return s.bavail * s.bsize;
};
writeFileSync(filler, Buffer.alloc(Math.max(0, free() - 100_000)));
// A vote of a later term: small enough for the log, and it passes the threshold, so a rewrite follows.
storage.group(1).setHardState({ term: asTerm(8), vote: asNodeId(3), commit: asIndex(0) });
storage
  .group(0)
  .append([{ kind: 'normal', term: asTerm(1), index: asIndex(481), data: Buffer.alloc(30_000, 1) }]);
let syncError = '';
try {
  await storage.sync();
} catch (error) {
  syncError = (error as NodeJS.ErrnoException).code ?? (error as Error).message;
}
rmSync(filler);
const reopened = await DurableStorage.open(dir);
const g0 = reopened.group(0).load();
const g1 = reopened.group(1).load();
process.stdout.write(
  `${JSON.stringify({
    syncError,
    entries: g0?.entries.length ?? 0,
    lastIndex: g0?.entries.at(-1)?.index ?? 0,
    vote: g1 === undefined ? null : { term: g1.hardState.term, vote: g1.hardState.vote },
    files: readdirSync(dir).sort(),
  })}\n`,
);
