/**
 * The local file `dogfs get` writes (cli/local-file.ts): byte-exact at every size around its staging
 * buffers, with O_DIRECT and through the page cache, and an existing name refused without touching it.
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import {
  closeSync,
  constants,
  existsSync,
  mkdirSync,
  openSync,
  readdirSync,
  readFileSync,
  statSync,
  unlinkSync,
  writeFileSync,
} from 'node:fs';
import { open } from 'node:fs/promises';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { finished, pipeline } from 'node:stream/promises';
import { after, describe, test } from 'node:test';
import { LocalFileSink, STAGE_BYTES } from '../../src/cli/local-file.js';
import { tempDir } from '../helpers/index.js';

/** `bytes` in pieces of awkward sizes, so stage boundaries fall inside pieces. */
function pieces(bytes: Buffer): Readable {
  const parts: Buffer[] = [];
  for (let at = 0, i = 0; at < bytes.length; i++) {
    const size = [1, 4095, 700_001, 1 << 20][i % 4]!;
    parts.push(bytes.subarray(at, at + size));
    at += size;
  }
  return Readable.from(parts, { objectMode: false });
}

/** Whether the filesystem under `dir` takes O_DIRECT opens (tmpfs does not). */
function takesDirect(dir: string): boolean {
  const probe = join(dir, 'direct-probe');
  try {
    closeSync(openSync(probe, constants.O_WRONLY | constants.O_CREAT | constants.O_DIRECT));
    return true;
  } catch {
    return false;
  } finally {
    if (existsSync(probe)) unlinkSync(probe);
  }
}

describe('LocalFileSink', () => {
  const dir = tempDir('dogfs-local-file-');
  after(() => dir.remove());
  const data = randomBytes(2 * STAGE_BYTES + 12_345);
  const sizes = [0, 1, 4096, STAGE_BYTES - 1, STAGE_BYTES, STAGE_BYTES + 1, 2 * STAGE_BYTES + 12_345];

  for (const direct of [true, false]) {
    test(`byte-exact at every size around a stage (${direct ? 'O_DIRECT where possible' : 'page cache'})`, async () => {
      for (const size of sizes) {
        const path = join(dir.path, `out-${direct}-${size}`);
        const sink = await LocalFileSink.create(path, { mode: 0o600, direct });
        // Direct exactly where asked for and the filesystem takes it: a silent fallback fails here.
        assert.equal(sink.direct, direct && takesDirect(dir.path));
        await pipeline(pieces(data.subarray(0, size)), sink);
        const back = readFileSync(path);
        assert.equal(back.length, size, `size ${size}`);
        assert.ok(back.equals(data.subarray(0, size)), `bytes of size ${size}`);
        assert.equal(statSync(path).mode & 0o777, 0o600);
      }
    });
  }

  test('as a ReadSink: stripes reserved and committed in place, byte-exact, whatever the stripe size', async () => {
    // 1032192: rs-6-3 stripes of 1 MiB (6 cells of 168 KiB); 4096 * 3: small; 5 MiB: larger than a stage.
    for (const stripe of [1_032_192, 4096 * 3, 5 * 1024 * 1024, 1000]) {
      for (const direct of [true, false]) {
        const path = join(dir.path, `sink-${stripe}-${direct}`);
        const sink = await LocalFileSink.create(path, { direct });
        const size = data.length;
        for (let at = 0; at < size; at += stripe) {
          const length = Math.min(stripe, size - at);
          const memory = sink.reserve(length);
          assert.equal(memory.length, length);
          data.copy(memory, 0, at, at + length);
          await sink.commit();
        }
        await finished(sink.end());
        assert.ok(readFileSync(path).equals(data), `stripes of ${stripe}, direct ${direct}`);
      }
    }
  });

  test('an existing file is refused (EEXIST) and left as it was', async () => {
    const path = join(dir.path, 'exists');
    writeFileSync(path, 'keep');
    await assert.rejects(LocalFileSink.create(path), { code: 'EEXIST' });
    assert.equal(readFileSync(path, 'utf8'), 'keep');
  });

  test('where O_DIRECT is refused (EINVAL, after creating the file) the page cache takes over', async () => {
    // Linux creates the file before it checks O_DIRECT, so a refusing filesystem leaves it behind.
    const refusing: typeof open = async (path, flags, mode) => {
      if (typeof flags === 'number' && (flags & constants.O_DIRECT) !== 0) {
        await (await open(path, flags & ~constants.O_DIRECT, mode)).close();
        throw Object.assign(new Error('EINVAL: invalid argument, open'), { code: 'EINVAL' });
      }
      return open(path, flags, mode);
    };
    const sub = join(dir.path, 'refusing');
    mkdirSync(sub);
    const path = join(sub, 'out');
    const sink = await LocalFileSink.create(path, { direct: true, openFile: refusing });
    assert.equal(sink.direct, false);
    await pipeline(pieces(data), sink);
    assert.ok(readFileSync(path).equals(data));
    assert.deepEqual(readdirSync(sub), ['out']);
  });

  test('a missing directory is ENOENT and creates nothing', async () => {
    const path = join(dir.path, 'no-such-dir', 'out');
    await assert.rejects(LocalFileSink.create(path), { code: 'ENOENT' });
    assert.equal(existsSync(join(dir.path, 'no-such-dir')), false);
  });
});
