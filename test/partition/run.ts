/**
 * test/partition/run — `npm run partition`: the network-partition scenario (scenario.ts) against a real
 * cluster, printed as it happens, in a private network namespace; the last line is the outcome as JSON.
 * Exit status 1 if anything acknowledged was lost, a read was stale, or a refusal hung.
 */
import { enterPrivateNetns } from './netns.js';
import { runPartitionScenario } from './scenario.js';

enterPrivateNetns();
const outcome = await runPartitionScenario((line) => console.log(line));
for (const problem of outcome.problems) console.log(`PROBLEM: ${problem}`);
console.log(JSON.stringify(outcome));
process.exitCode = outcome.ok ? 0 : 1;
