/**
 * A shard that moves while its copy is good (its server being drained) is copied from that server, not
 * rebuilt from K others (`dogfs up`, 1 metadata server, 7 chunk servers, rs-3-2; chunk servers take no
 * repair work and do not scrub, so each repair is the test's own and a flipped byte waits for it):
 * - an intact copy is read once, from its holder, and counted as copied;
 * - a copy that is not the committed shard (a byte flipped on disk; bytes whose chunk checksums pass but
 *   whose whole-shard CRC32C is not the one recorded), or whose holder goes silent, is not committed: the
 *   shard is rebuilt from the rest of its group instead, and the file reads back byte for byte.
 * Each case moves shard 0 (a data shard: a get reads it) of its own file and checks the new copy.
 */
import assert from 'node:assert/strict';
import { readFileSync, writeFileSync } from 'node:fs';
import { after, test } from 'node:test';
import {
  ClientSession,
  DataTransferShardTransport,
  MetadataConnection,
  type RepairOptions,
  repairFile,
  type ShardTransport,
} from '../../src/client/index.js';
import { crc32c } from '../../src/codec/crc32c.js';
import type { ShardLocation } from '../../src/wire/gen/types.js';
import { clusterCommands, putRandomFile, shardFile, startCluster } from '../helpers/index.js';

const up = startCluster(['--meta', '1', '--chunk', '7', '--ec', 'rs-3-2'], {
  ...process.env,
  DOGFS_CHUNK_REPAIRS: 'off',
  DOGFS_REPAIR_DELAY_MS: '600000', // on (a drain is refused without it), but no server takes the work
  DOGFS_SCRUB_RATE: '0',
  DOGFS_GC_GRACE_MS: '0',
});
after(() => up.stop());

/** What the repairer's transport is made to do to reads of the drained server's shard. */
type Fault = 'none' | 'flip-in-transit' | 'silent';

interface Moved {
  readonly outcome: Awaited<ReturnType<typeof repairFile>>;
  /** Every shard read the repair opened, in order, as `server/index`. */
  readonly reads: readonly string[];
  readonly victim: string;
}

/**
 * Puts `path`, drains the holder of its shard 0 (after `beforeDrain`), repairs the file through a
 * transport that logs reads and applies `fault` to the drained server's, and cancels the drain. Checks
 * that shard 0 left the drained server, that the new copy holds the CRC32C recorded at write, and that
 * the file reads back whole.
 */
async function moveShardZero(
  path: string,
  fault: Fault,
  options: RepairOptions = {},
  beforeDrain?: (victim: { dir: string }, blockGroupId: number) => void,
): Promise<Moved> {
  const cluster = await up.ready();
  const { dogfs, sameBytes } = clusterCommands(up);
  const { data } = await putRandomFile(up, path, 900_000);
  const meta = new MetadataConnection({ seeds: cluster.meta });
  const real = new DataTransferShardTransport();
  try {
    const groupOf = async () => (await meta.call('Stat', { path })).inode!.blockGroups[0]!;
    const shardZero = async (): Promise<ShardLocation> =>
      (await groupOf()).shards.find((s) => s.index === 0)!;
    const blockGroupId = (await groupOf()).id;
    const before = await shardZero();
    const victim = cluster.processes.find((p) => p.id === before.chunkServerId)!;
    beforeDrain?.(victim, blockGroupId);
    const drain = await dogfs(['admin', 'drain', victim.id]);
    assert.equal(drain.status, 0, drain.stderr);

    const reads: string[] = [];
    const transport: ShardTransport = {
      openWrite: (target, o) => real.openWrite(target, o),
      openRead: (target, offset, length, o) => {
        const from = target.addr === before.addr ? victim.id : target.addr;
        reads.push(`${from}/${target.shard.index}`);
        if (target.addr !== before.addr || fault === 'none') return real.openRead(target, offset, length, o);
        if (fault === 'silent') return { next: () => new Promise<never>(() => {}), close: () => {} };
        // Flipped after the transport checked the chunk checksums: only the whole-shard CRC32C can tell.
        const handle = real.openRead(target, offset, length, o);
        let flipped = false;
        return {
          next: async () => {
            const piece = await handle.next();
            if (piece === null || flipped) return piece;
            flipped = true;
            const changed = Buffer.from(piece);
            changed[0]! ^= 0x5a;
            return changed;
          },
          close: () => handle.close(),
        };
      },
      close: () => real.close(),
    };
    const outcome = await repairFile({ meta, session: new ClientSession(), transport }, path, options);
    const cancel = await dogfs(['admin', 'drain', '--cancel', victim.id]);
    assert.equal(cancel.status, 0, cancel.stderr);

    const moved = await shardZero();
    assert.notEqual(moved.chunkServerId, victim.id, `${path}: shard 0 moved off ${victim.id}`);
    assert.equal(moved.crc32c, before.crc32c, `${path}: the shard's recorded CRC32C is kept`);
    // The new copy is the committed shard, read from its new holder.
    let crc = 0;
    const back = real.openRead(
      { addr: moved.addr, shard: { blockGroupId, index: 0, generation: 0 } },
      0,
      moved.length,
      { deadline: Date.now() + 30_000 },
    );
    try {
      // Bounded by the shard's length: the transport ends the range there.
      for (let piece = await back.next(); piece !== null; piece = await back.next()) crc = crc32c(piece, crc);
    } finally {
      back.close();
    }
    assert.equal(crc, before.crc32c, `${path}: the new copy reads back with the recorded CRC32C`);
    await sameBytes(path, data, `${path} after the move`);
    return { outcome, reads, victim: victim.id };
  } finally {
    real.close();
    meta.close();
  }
}

test('a drained shard whose copy is good is copied: one read, from its holder, no rebuild', async () => {
  const { outcome, reads, victim } = await moveShardZero('/intact', 'none');
  assert.deepEqual(outcome.unrepaired, []);
  assert.equal(outcome.shardsCopied, 1);
  assert.equal(outcome.shardsRebuilt, 0);
  assert.deepEqual(reads, [`${victim}/0`], 'one read, of the shard itself');
});

/** The copy of shard 0 was tried first and failed; the shard was rebuilt from three others instead. */
function assertRebuiltInstead({ outcome, reads, victim }: Moved): void {
  assert.deepEqual(outcome.unrepaired, []);
  assert.equal(outcome.shardsCopied, 0);
  assert.equal(outcome.shardsRebuilt, 1);
  assert.equal(reads[0], `${victim}/0`, 'the copy was tried first');
  assert.equal(reads.length, 4, `then three others read to rebuild: ${reads.join(', ')}`);
  assert.ok(
    reads.slice(1).every((r) => !r.startsWith(`${victim}/`)),
    reads.join(', '),
  );
}

test('a drained copy with a byte flipped on disk is not copied: the shard is rebuilt from the others', async () => {
  assertRebuiltInstead(
    await moveShardZero('/flipped', 'none', {}, (holder, blockGroupId) => {
      const file = shardFile(holder.dir, blockGroupId, 0);
      assert.ok(file !== undefined, 'the shard file on the drained server');
      const bytes = readFileSync(file);
      bytes[64 + 1000]! ^= 0x5a; // past the 64-byte header: shard data
      writeFileSync(file, bytes);
    }),
  );
});

test('bytes that pass their chunk checksums but not the recorded whole-shard CRC32C are never committed', async () => {
  // Windows of 64 KiB: most of the shard has gone to the target before the mismatch shows at its end.
  assertRebuiltInstead(await moveShardZero('/foreign', 'flip-in-transit', { windowBytes: 64 * 1024 }));
});

test('a drained server that goes silent: the shard is rebuilt once the step timeout passes', async () => {
  assertRebuiltInstead(await moveShardZero('/silent', 'silent', { stepTimeoutMs: 500 }));
});

test('admin repair says what it copied, as JSON and as text', async () => {
  const cluster = await up.ready();
  const { dogfs, sameBytes } = clusterCommands(up);
  const drainedRepair = async (path: string, json: boolean) => {
    const { data } = await putRandomFile(up, path, 600_000);
    const stat = await dogfs(['stat', '--json', path]);
    const holder = (JSON.parse(stat.stdout) as { blockGroups: { shards: { chunkServer: string }[] }[] })
      .blockGroups[0]!.shards[0]!.chunkServer;
    assert.ok(cluster.processes.some((p) => p.id === holder));
    assert.equal((await dogfs(['admin', 'drain', holder])).status, 0);
    const repair = await dogfs(['admin', 'repair', ...(json ? ['--json'] : []), path]);
    assert.equal(repair.status, 0, repair.stderr);
    assert.equal((await dogfs(['admin', 'drain', '--cancel', holder])).status, 0);
    await sameBytes(path, data, `${path} after the move`);
    return repair.stdout;
  };
  const [outcome] = JSON.parse(await drainedRepair('/json', true)) as {
    shardsCopied: number;
    shardsRebuilt: number;
  }[];
  assert.deepEqual(
    { copied: outcome!.shardsCopied, rebuilt: outcome!.shardsRebuilt },
    { copied: 1, rebuilt: 0 },
  );
  assert.match(
    await drainedRepair('/text', false),
    /^\/text: rebuilt 0 shard\(s\), copied 1 in 1 of 1 damaged block group\(s\)/,
  );
});
