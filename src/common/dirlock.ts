/**
 * common/dirlock — exclusive ownership of a data directory by one process, through a lock file that
 * holds the owner's pid and a nonce of its own. Node has no flock(2), so a lock whose pid is no longer
 * alive is stale and is taken over: a SIGKILLed process never leaves its directory locked for good. (A
 * reused pid could make a stale lock look held; the error then names the pid, so a person can check.)
 *
 * Taking over a stale lock is a compare-and-swap built from the filesystem's atomic steps. A lock is
 * never removed, only replaced (rename over it), so no one can create a lock of their own in a gap.
 * Removing it and creating a new one let two takers that had both seen it stale both proceed: the second
 * removed the first's fresh lock. The replacing is serialized by a claim: to replace a stale file seen
 * with key X (its nonce), a taker must first create `<LOCK>.takeover.X` exclusively (link), then check
 * that the file still is the one it saw stale before it renames its own over it. Only a holder of the
 * claim for a file's current key changes that file, so the check holds until the rename. A claim whose
 * maker died is stale in turn and is replaced the same way, through the claim for its own key.
 */
import { randomBytes } from 'node:crypto';
import {
  closeSync,
  fstatSync,
  linkSync,
  openSync,
  readFileSync,
  readSync,
  renameSync,
  statSync,
  unlinkSync,
  writeSync,
} from 'node:fs';
import { basename, dirname, join } from 'node:path';

export class DirLockedError extends Error {
  override name = 'DirLockedError';
  constructor(
    readonly dir: string,
    readonly holderPid: number,
    why = `is in use by another process (pid ${holderPid})`,
  ) {
    super(`${dir} ${why}`);
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

/** Lock and claim files are a line `PID NONCE`; a lock written before nonces is `PID` alone. */
function parsePid(text: string): number | undefined {
  const pid = Number.parseInt(text.trim().split(/\s+/)[0] ?? '', 10);
  return Number.isSafeInteger(pid) && pid > 0 ? pid : undefined;
}

function readHolder(path: string): number | undefined {
  try {
    return parsePid(readFileSync(path, 'utf8'));
  } catch {
    return undefined;
  }
}

/** A lock or claim file as one reader saw it: its inode and its whole text, read through one descriptor. */
interface Seen {
  readonly ino: number;
  readonly text: string;
  readonly pid: number | undefined;
  /** What names its takeover claim: the nonce, or for a file without one, its inode. */
  readonly key: string;
}

/** At most this much of a lock file is read: a pid and a nonce take a few dozen bytes. */
const MAX_LOCK_FILE_BYTES = 256;

function look(path: string): Seen | undefined {
  let fd: number;
  try {
    fd = openSync(path, 'r');
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw error;
  }
  try {
    const { ino } = fstatSync(fd);
    const buffer = Buffer.alloc(MAX_LOCK_FILE_BYTES);
    const text = buffer.subarray(0, readSync(fd, buffer, 0, buffer.length, 0)).toString('utf8');
    const nonce = text.trim().split(/\s+/)[1];
    const key = nonce !== undefined && /^[0-9a-f]{1,64}$/.test(nonce) ? nonce : `ino${ino}`;
    return { ino, text, pid: parsePid(text), key };
  } finally {
    closeSync(fd);
  }
}

function same(a: Seen | undefined, b: Seen): boolean {
  return a !== undefined && a.ino === b.ino && a.text === b.text;
}

/** A file of this process's own beside `path`, holding its pid and a fresh nonce: linked or renamed into place. */
function ownFile(path: string): { path: string; text: string } {
  const text = `${process.pid} ${randomBytes(12).toString('hex')}\n`;
  const own = `${path}.${process.pid}.${randomBytes(6).toString('hex')}.tmp`;
  const fd = openSync(own, 'wx');
  try {
    writeSync(fd, text);
  } finally {
    closeSync(fd);
  }
  return { path: own, text };
}

function unlinkIfThere(path: string): void {
  try {
    unlinkSync(path);
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code !== 'ENOENT') throw error;
  }
}

/** A stale lock or claim is replaced through claims at most this deep (each a taker that died mid-way). */
const MAX_CLAIM_DEPTH = 8;

/** Why a takeover did not happen: a live process holds the file or is taking it over, or it changed. */
type Takeover =
  | { readonly replaced: true }
  | { readonly replaced: false; readonly by: number | undefined; readonly claim?: string };

/**
 * A takeover claim lives from its link to its unlink, microseconds apart. One older than this was left
 * by a taker that died between the two, and the pid in it may since belong to another live process
 * (reused after a reboot, say): it is stale whatever that pid. (A taker paused this long between its
 * check and its rename could still collide with the next taker; a claim that locked the directory for
 * good was the worse failure.)
 */
const CLAIM_STALE_MS = 60_000;

function claimOutlived(claim: string): boolean {
  try {
    return Date.now() - statSync(claim).mtimeMs > CLAIM_STALE_MS;
  } catch {
    return false; // gone meanwhile: the caller looks again
  }
}

/** The live process (not this one) that a lock seen as `seen` names, if it names one. */
function liveHolder(seen: Seen | undefined): number | undefined {
  const pid = seen?.pid;
  return pid !== undefined && pid !== process.pid && isProcessAlive(pid) ? pid : undefined;
}

/** The live process (not this one) taking a file over through `claim`, seen as `seen`, if there is one. */
function claimant(claim: string, seen: Seen): number | undefined {
  const pid = liveHolder(seen);
  return pid !== undefined && !claimOutlived(claim) ? pid : undefined;
}

/**
 * Renames the file at `fresh` over `target`, which was seen stale as `seen`, if it still is that file and
 * no other process is taking it over. `lockPath` names the claims.
 */
function replaceStale(lockPath: string, target: string, seen: Seen, fresh: string, depth: number): Takeover {
  const claim = `${lockPath}.takeover.${seen.key}`;
  const mine = ownFile(claim);
  let held = false;
  try {
    try {
      linkSync(mine.path, claim);
      held = true;
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code !== 'EEXIST') throw error;
    }
    if (!held) {
      const other = look(claim);
      // Its maker finished (or gave up) meanwhile: the caller looks at the target again.
      if (other === undefined) return { replaced: false, by: undefined };
      const by = claimant(claim, other);
      if (by !== undefined) return { replaced: false, by, claim };
      if (depth + 1 >= MAX_CLAIM_DEPTH) {
        const why = `has too many stale takeover claims beside its lock; remove ${basename(lockPath)}.takeover.* by hand`;
        throw new DirLockedError(dirname(lockPath), -1, why);
      }
      const claimed = replaceStale(lockPath, claim, other, mine.path, depth + 1);
      if (!claimed.replaced) return claimed;
      held = true;
    }
    // Holding the claim for the target's key: nobody else changes the target while it has that key.
    if (!same(look(target), seen)) return { replaced: false, by: undefined };
    renameSync(fresh, target);
    return { replaced: true };
  } finally {
    unlinkIfThere(mine.path);
    // Ours while this process lives (replacing a claim needs its maker dead). Once the target has
    // changed, a late taker that makes the claim again finds the target changed and backs off.
    if (held && look(claim)?.text === mine.text) unlinkIfThere(claim);
  }
}

/**
 * Attempts at linking or taking over the lock before lockDir gives up. Each attempt after the first
 * follows one that found the lock changed under it (another taker won, or was still at it), so a few
 * suffice; bounded, never a loop on what other processes do.
 */
export const MAX_TAKEOVER_ATTEMPTS = 4;

/** Takes DIR/<name>, or throws DirLockedError naming the live holder. */
export function lockDir(dir: string, name = 'LOCK'): DirLock {
  const path = join(dir, name);
  const mine = ownFile(path);
  let released = false;
  const lock: DirLock = {
    path,
    release() {
      if (released) return;
      released = true;
      if (readHolder(path) === process.pid) unlinkSync(path);
    },
  };
  try {
    for (let attempt = 0; attempt < MAX_TAKEOVER_ATTEMPTS; attempt++) {
      try {
        linkSync(mine.path, path);
        return lock;
      } catch (error) {
        if ((error as NodeJS.ErrnoException).code !== 'EEXIST') throw error;
      }
      const seen = look(path);
      if (seen === undefined) continue;
      const holder = liveHolder(seen);
      if (holder !== undefined) throw new DirLockedError(dir, holder);
      // Stale (its holder gone) or unreadable: replaced by ours, unless someone else is doing that.
      const takeover = replaceStale(path, path, seen, mine.path, 0);
      if (takeover.replaced) {
        // Read back: the lock in place is the one this process wrote.
        if (look(path)?.text !== mine.text) throw new DirLockedError(dir, readHolder(path) ?? -1);
        return lock;
      }
    }
    // What the last attempt saw is out of date: it ended because the lock or its claim changed, most
    // often as the taker that beat this one finished. A refusal named from it would name the dead
    // holder the winner has just replaced; the lock as it is now names the winner.
    const now = look(path);
    const holder = liveHolder(now);
    if (holder !== undefined) throw new DirLockedError(dir, holder);
    if (now !== undefined) {
      const claim = `${path}.takeover.${now.key}`;
      const claimSeen = look(claim);
      const by = claimSeen === undefined ? undefined : claimant(claim, claimSeen);
      if (by !== undefined)
        throw new DirLockedError(
          dir,
          by,
          `is being taken over by another process (pid ${by}, in ${basename(claim)}; if that process is not a dogfs, remove the file)`,
        );
      // A taker renames its lock into place before it removes its claim: a claim gone since the lock
      // was read may be one that has just finished, and the lock read again names its maker.
      const finished = liveHolder(look(path));
      if (finished !== undefined) throw new DirLockedError(dir, finished);
    }
    throw new DirLockedError(
      dir,
      -1,
      `is contended: its lock changed under each of ${MAX_TAKEOVER_ATTEMPTS} attempts to take it; try again`,
    );
  } finally {
    unlinkIfThere(mine.path);
  }
}

/** The live pid holding DIR/<name>, if any. */
export function lockHolder(dir: string, name = 'LOCK'): number | undefined {
  const pid = readHolder(join(dir, name));
  return pid !== undefined && isProcessAlive(pid) ? pid : undefined;
}
