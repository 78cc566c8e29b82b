/**
 * common/dirlock — exclusive ownership of a data directory by one process, through a lock file that
 * holds the owner's pid. Node has no flock(2), so a lock whose pid is no longer alive is stale and is
 * taken over: a SIGKILLed process never leaves its directory locked for good. (A reused pid could make a
 * stale lock look held; the error then names the pid, so a person can check.)
 */
import { closeSync, linkSync, openSync, readFileSync, unlinkSync, writeSync } from 'node:fs';
import { join } from 'node:path';

export class DirLockedError extends Error {
  override name = 'DirLockedError';
  constructor(
    readonly dir: string,
    readonly holderPid: number,
  ) {
    super(`${dir} is in use by another process (pid ${holderPid})`);
  }
}

export interface DirLock {
  readonly path: string;
  release(): void;
}

export function isProcessAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (error) {
    return (error as NodeJS.ErrnoException).code === 'EPERM';
  }
}

function readHolder(path: string): number | undefined {
  try {
    const pid = Number.parseInt(readFileSync(path, 'utf8').trim(), 10);
    return Number.isSafeInteger(pid) && pid > 0 ? pid : undefined;
  } catch {
    return undefined;
  }
}

/**
 * Creates `path` holding this process's pid, or fails EEXIST, in one step: the pid goes into a file of
 * this process's own that is then linked into place. Created empty and written after, another process
 * reading it in between saw no holder, took the lock for stale, removed it, and both went on.
 */
function createWithPid(path: string): void {
  const own = `${path}.${process.pid}.tmp`;
  const fd = openSync(own, 'w');
  try {
    writeSync(fd, `${process.pid}\n`);
  } finally {
    closeSync(fd);
  }
  try {
    linkSync(own, path);
  } finally {
    unlinkSync(own);
  }
}

/** Takes DIR/<name>, or throws DirLockedError naming the live holder. */
export function lockDir(dir: string, name = 'LOCK'): DirLock {
  const path = join(dir, name);
  // Two rounds: the second follows the removal of a stale lock. Bounded, never a loop on input.
  for (let round = 0; round < 2; round++) {
    try {
      createWithPid(path);
      let released = false;
      return {
        path,
        release() {
          if (released) return;
          released = true;
          if (readHolder(path) === process.pid) unlinkSync(path);
        },
      };
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code !== 'EEXIST') throw error;
      const holder = readHolder(path);
      if (holder !== undefined && holder !== process.pid && isProcessAlive(holder)) {
        throw new DirLockedError(dir, holder);
      }
      // Stale (holder gone) or half-written: remove and try once more.
      try {
        unlinkSync(path);
      } catch (unlinkError) {
        if ((unlinkError as NodeJS.ErrnoException).code !== 'ENOENT') throw unlinkError;
      }
    }
  }
  const holder = readHolder(path);
  throw new DirLockedError(dir, holder ?? -1);
}

/** The live pid holding DIR/<name>, if any. */
export function lockHolder(dir: string, name = 'LOCK'): number | undefined {
  const pid = readHolder(join(dir, name));
  return pid !== undefined && isProcessAlive(pid) ? pid : undefined;
}
