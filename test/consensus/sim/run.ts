/**
 * test/consensus/sim/run — command-line simulator runner, for more seeds than CI runs:
 *   node dist/test/consensus/sim/run.js --seeds 2000 [--seed 17] [--steps 2000] [--bug vote|commit]
 * Runs seeds seed..seed+seeds-1, prints a summary, and on failure the failing seed and its replay command.
 */

import type { TestingBugs } from '../../../src/consensus/index.js';
import { replayCommand, runSimulation } from './sim.js';

function flag(name: string, fallback: number): number {
  const i = process.argv.indexOf(`--${name}`);
  const v = i >= 0 ? Number(process.argv[i + 1]) : fallback;
  if (!Number.isInteger(v) || v < 0) throw new RangeError(`--${name} must be a non-negative integer`);
  return v;
}

const first = flag('seed', 1);
const seeds = flag('seeds', 100);
const steps = flag('steps', 2000);
const bugArg = process.argv.includes('--bug') ? process.argv[process.argv.indexOf('--bug') + 1] : undefined;
const bugs: TestingBugs =
  bugArg === 'vote'
    ? { voteWithoutLogCheck: true }
    : bugArg === 'commit'
      ? { commitPreviousTermByCounting: true }
      : {};
const started = performance.now();
let failures = 0;
let events = 0;
let commits = 0;
for (let seed = first; seed < first + seeds; seed++) {
  const r = runSimulation({ seed, steps, bugs });
  events += r.stats.events;
  commits += r.stats.committed;
  if (!r.ok) {
    failures++;
    console.log(`FAIL seed ${seed}: ${r.failure}\n  replay: ${replayCommand(seed, steps)}`);
  }
}
const secs = (performance.now() - started) / 1000;
console.log(JSON.stringify({ seeds, steps, failures, events, commits, seconds: Number(secs.toFixed(2)) }));
process.exitCode = failures > 0 ? 1 : 0;
