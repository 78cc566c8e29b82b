/**
 * test/chaos/run — `npm run chaos [-- --seconds 60 --seed 7 --writers 2 --snapshot-every 200
 * --partitions]`: faults against a real cluster, printed as they happen, then the verdict
 * (test/chaos/chaos.ts). `--partitions` runs it in a private network namespace and adds network cuts to
 * the faults (test/partition/netns.ts). Exit status 1 if
 * anything acknowledged was lost or a get returned wrong bytes, or if the run itself failed (the cluster
 * did not heal); the cluster's directory (members' logs, shard files) is then kept and its path printed.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { enterPrivateNetns, Partitions } from '../partition/netns.js';
import { runChaos } from './chaos.js';

const partitions = process.argv.includes('--partitions');
if (partitions) enterPrivateNetns();

function flag(name: string, fallback: number): number {
  const i = process.argv.indexOf(`--${name}`);
  const v = i >= 0 ? Number(process.argv[i + 1]) : fallback;
  if (!Number.isInteger(v) || v < 0) throw new RangeError(`--${name} must be a non-negative integer`);
  return v;
}

const dir = mkdtempSync(join(tmpdir(), 'dogfs-chaos-'));
let keep = false;
try {
  const outcome = await runChaos({
    dir,
    seconds: flag('seconds', 60),
    seed: flag('seed', Date.now() % 1_000_000),
    writers: flag('writers', 2),
    snapshotEvery: flag('snapshot-every', 200),
    partitions: partitions ? new Partitions() : undefined,
    log: (line) => console.log(line),
  });
  console.log(JSON.stringify({ ...outcome, problems: outcome.problems.length }, null, 2));
  for (const problem of outcome.problems) console.log(`PROBLEM: ${problem}`);
  process.exitCode = outcome.ok ? 0 : 1;
  keep = !outcome.ok;
  if (keep) console.log(`kept the cluster's directory for a post-mortem: ${dir}`);
} catch (error) {
  keep = true;
  console.log(`kept the cluster's directory for a post-mortem: ${dir}`);
  throw error;
} finally {
  if (!keep) rmSync(dir, { recursive: true, force: true });
}
