/**
 * The durable log on a full disk, for real: a 2 MiB tmpfs in a mount namespace of the test's own
 * (`unshare --user --map-root-user --mount`; nothing outside it is touched). A rewrite that does not fit
 * must fail and leave the old log, with every synced record, in place — it once wrote a short copy,
 * renamed it over the log and lost votes and entries at the next start.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { tempDir } from '../helpers/index.js';

const CHILD = fileURLToPath(new URL('./full-disk-child.js', import.meta.url));

test('a log rewrite that runs out of disk fails and keeps every synced record', () => {
  const dir = tempDir('dogfs-wal-full-');
  try {
    const result = spawnSync(
      'unshare',
      [
        '--user',
        '--map-root-user',
        '--mount',
        'sh',
        '-c',
        'mount -t tmpfs -o size=2m tmpfs "$1" && exec "$0" "$2" "$1"',
        process.execPath,
        dir.path,
        CHILD,
      ],
      { encoding: 'utf8', timeout: 60_000 },
    );
    assert.equal(result.status, 0, `child failed: ${result.error?.message ?? ''}\n${result.stderr}`);
    const outcome = JSON.parse(result.stdout) as {
      syncError: string;
      entries: number;
      lastIndex: number;
      vote: { term: number; vote: number } | null;
      files: string[];
    };
    assert.equal(outcome.syncError, 'ENOSPC', 'the sync that set off the rewrite says the disk is full');
    assert.equal(outcome.entries, 481, 'every synced entry is back');
    assert.equal(outcome.lastIndex, 481);
    assert.deepEqual(outcome.vote, { term: 8, vote: 3 }, 'the latest vote is back');
    assert.deepEqual(outcome.files, ['raft.log'], 'no half-written copy is left');
  } finally {
    dir.remove();
  }
});
