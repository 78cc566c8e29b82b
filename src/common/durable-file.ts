/**
 * common/durable-file — replacing a small file so that a crash leaves the old or the new content, never a
 * torn one, and the new one survives once this resolves: a temp file written and fsynced, renamed over
 * the old, and the directory fsynced (the rename is only durable once its directory is).
 */
import { constants } from 'node:fs';
import { open, rename } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';

export async function writeFileDurably(path: string, data: string | Uint8Array): Promise<void> {
  const dir = dirname(path);
  const tmp = join(dir, `${basename(path)}.tmp`);
  const file = await open(tmp, 'w');
  try {
    await file.writeFile(data);
    await file.sync();
  } finally {
    await file.close();
  }
  await rename(tmp, path);
  await fsyncDir(dir);
}

/** Makes the entries of directory `path` (files created, renamed or removed in it) durable. */
export async function fsyncDir(path: string): Promise<void> {
  const handle = await open(path, constants.O_RDONLY | constants.O_DIRECTORY);
  try {
    await handle.sync();
  } finally {
    await handle.close();
  }
}
