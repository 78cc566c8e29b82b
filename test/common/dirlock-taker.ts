/**
 * A process that takes directory locks when told to (the dirlock race test): for each IPC message
 * `{ dir, at }` it spins until the wall-clock time `at` (so two takers start together, within
 * microseconds), calls lockDir(dir) and answers whether it got the lock. Locks are kept until the
 * process exits, so a loser cannot take a lock its winner has given back.
 */
import { performance } from 'node:perf_hooks';
import { type DirLock, DirLockedError, lockDir } from '../../src/common/dirlock.js';

const held: DirLock[] = [];

process.on('message', (message: { dir: string; at: number }) => {
  // A busy wait, not a timer: a timer fires a millisecond or more late, the race is in microseconds.
  while (performance.timeOrigin + performance.now() < message.at);
  try {
    held.push(lockDir(message.dir));
    process.send?.({ won: true });
  } catch (error) {
    if (!(error instanceof DirLockedError)) throw error;
    process.send?.({ won: false, holder: error.holderPid });
  }
});
process.on('disconnect', () => process.exit(0));
process.send?.({ ready: true });
