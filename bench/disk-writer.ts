/**
 * bench/disk-writer — one writer of `rawDiskWriteShards` (bench/raw.ts), in a process of its own as
 * each chunk server is: `node disk-writer.js PATH BYTES`. It allocates and fills its staging buffers,
 * opens PATH (O_DIRECT, new), prints "ready", and on a line on stdin writes BYTES in 4 MiB writes, one in
 * flight while the next is filled (as the chunk server's direct writes go), fdatasyncs, closes, and
 * prints "done". Start-up stays outside the parent's timing.
 */
import { randomBytes } from 'node:crypto';
import { constants as fsConstants } from 'node:fs';
import { open } from 'node:fs/promises';
import { STAGING_BYTES } from '../src/chunk/shard-file.js';
import { alignedAllocator } from '../src/codec/native.js';

const [path, bytesArgument] = process.argv.slice(2);
const bytes = Number(bytesArgument);
if (path === undefined || !Number.isSafeInteger(bytes) || bytes <= 0) {
  throw new Error('usage: disk-writer PATH BYTES');
}
const allocate = alignedAllocator();
if (allocate === undefined) throw new Error('direct writes need the native addon');
const staging = [0, 1].map(() => allocate(STAGING_BYTES, 2 * 1024 * 1024));
for (const buffer of staging) randomBytes(STAGING_BYTES).copy(buffer);
const flags = fsConstants.O_WRONLY | fsConstants.O_CREAT | fsConstants.O_EXCL | fsConstants.O_DIRECT;
const handle = await open(path, flags);
process.stdout.write('ready\n');
await new Promise((resolve) => process.stdin.once('data', resolve));
let writing: Promise<unknown> | undefined;
for (let offset = 0, n = 0; offset < bytes; offset += STAGING_BYTES, n++) {
  await writing;
  // O_DIRECT wants whole blocks: the last write is rounded up, as the chunk server pads its last one.
  const length = Math.ceil(Math.min(STAGING_BYTES, bytes - offset) / 4096) * 4096;
  writing = handle.write(staging[n % 2]!, 0, length, offset);
}
await writing;
await handle.datasync();
await handle.close();
process.stdout.write('done\n');
process.stdin.destroy();
