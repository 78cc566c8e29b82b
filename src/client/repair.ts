/**
 * client/repair — rebuilds the missing shards of a file (DESIGN §4 "Repair"; `dogfs admin repair`).
 *
 * The cluster leader says what is missing and where each rebuilt shard goes (PlanRepair); this side reads
 * K surviving shards of each damaged block group in windows, decodes the missing ones (Reed-Solomon is
 * byte-column-wise, so any row window of the shards is a set of codewords), streams them to their new
 * servers, and commits the new locations (CommitRepair, a compare-and-set on each shard's old holder).
 * Every source is checked end to end against the CRC32C recorded when it was written (besides the chunk
 * checksums the transport verifies), so a wrong decode is never written; the metadata service then checks
 * each rebuilt shard on its new server before committing it. A source that fails while being read is named as a suspect in the next
 * plan, which then rebuilds it too (bounded rounds). A target that already holds the shard (a copy left
 * by a repair whose commit was lost; nothing else deletes it) is read back and committed if it is
 * exactly the rebuilt bytes, else reported. Memory: one window per shard plus the transport's.
 *
 * A shard that moves while its copy is good (PlanRepair names it `readable`: on a server being drained,
 * or a rebalancing move's source) is copied from its holder instead: one read rather than K, no decode,
 * through the same windows, step timeouts and checks (the copy must be the recorded length and whole-
 * shard CRC32C before its last window is sent, and the target must report storing those bytes). A copy
 * that fails for any reason is not committed; the next round rebuilds that shard from the rest of its
 * group, as before copies existed.
 */
import { createCodec } from '../codec/backends.js';
import { crc32c } from '../codec/crc32c.js';
import { assert } from '../common/assert.js';
import { dataOperationMs } from '../wire/data-transfer.js';
import { DogfsError, toDogfsError } from '../wire/errors.js';
import type { BlockGroup, BlockGroupRepair, ShardId, ShardLocation } from '../wire/gen/types.js';
import type { MetaCallOptions, MetadataConnection } from './meta.js';
import type { ClientSession } from './session.js';
import { withStepTimeout } from './timeout.js';
import type { ShardReadHandle, ShardTransport, ShardWriteHandle } from './transport.js';

export interface RepairContext {
  readonly meta: MetadataConnection;
  readonly session: ClientSession;
  readonly transport: ShardTransport;
}

export interface RepairOptions extends MetaCallOptions {
  /** Shard bytes rebuilt per step (1 MiB): memory is about (K + missing) windows. */
  windowBytes?: number;
  /** Called after each window, with the shard bytes written so far. */
  onProgress?: (writtenBytes: number) => void;
  /**
   * Awaited after each window with the bytes it read and wrote (automatic repair holds itself to a rate
   * with it: client/repair-worker.ts). Time spent here does not count against the step timeout.
   */
  pace?: (bytes: number) => Promise<void>;
  /**
   * A window's read of a source, or write to a target, making no progress this long fails it (60 s):
   * the operation's deadline is hours for a large shard, and a peer gone silent must not hold it that
   * long. A source that stalls is read again in the next round, then taken for missing.
   */
  stepTimeoutMs?: number;
}

const DEFAULT_STEP_TIMEOUT_MS = 60_000;

export interface RepairOutcome {
  readonly path: string;
  /** Block groups found damaged, and those fully repaired. */
  readonly damagedBlockGroups: number;
  readonly repairedBlockGroups: number;
  /** Shards decoded from K others of their block group (or, replicated, read from another copy) and committed. */
  readonly shardsRebuilt: number;
  /**
   * Shards being moved (off a server being drained, or by rebalancing) copied from their current holder
   * and committed: one read each, no decode. A copy that failed was rebuilt instead, and counts there.
   */
  readonly shardsCopied: number;
  readonly bytesWritten: number;
  /** Shards that are still missing (no target could be placed, or their rebuild failed), with why. */
  readonly unrepaired: readonly string[];
}

const DEFAULT_WINDOW_BYTES = 1 << 20;
/** A commit refused by the service itself (not a call that got no answer). */
const ANSWERED_REFUSAL = (code: string): boolean =>
  !['UNAVAILABLE', 'DEADLINE_EXCEEDED', 'NO_QUORUM', 'CANCELLED', 'RESOURCE_EXHAUSTED'].includes(code);
/** Source failures that may pass (a server busy, restarting, slow). */
const TRANSIENT_CODES: ReadonlySet<string> = new Set([
  'UNAVAILABLE',
  'DEADLINE_EXCEEDED',
  'RESOURCE_EXHAUSTED',
]);
/** Plans per file: each further round follows a source that failed mid-read (at most M can). */
const MAX_ROUNDS = 8;

/** A source shard that failed while being read: the next plan treats it as missing. */
class SourceFailed extends Error {
  constructor(
    readonly shard: ShardId,
    readonly error: DogfsError,
  ) {
    super(error.message);
  }
}

/** Reads exactly `length` bytes from a range read, as one buffer. */
async function readExactly(handle: ShardReadHandle, carry: { rest: Uint8Array | null }, length: number) {
  const out = Buffer.allocUnsafe(length);
  let filled = 0;
  while (filled < length) {
    let piece = carry.rest;
    carry.rest = null;
    if (piece === null || piece.length === 0) {
      piece = await handle.next();
      if (piece === null) throw new DogfsError('CORRUPT', `shard ended ${length - filled} bytes early`);
    }
    const take = Math.min(piece.length, length - filled);
    out.set(piece.subarray(0, take), filled);
    filled += take;
    if (take < piece.length) carry.rest = piece.subarray(take);
  }
  return out;
}

function shardLengthOf(bg: BlockGroup): number {
  const durable = bg.shards.find((s) => s.durable);
  if (durable === undefined) throw new DogfsError('CORRUPT', `block group ${bg.id} has no durable shard`);
  return durable.length;
}

interface Rebuilt {
  readonly location: ShardLocation;
  readonly length: number;
  readonly crc32c: number;
}

/**
 * CRC32C of a shard as it is stored on `location` (every chunk verified in transit against the checksums
 * the server stored). Rejects with the transport's error (NOT_FOUND while another repair is still
 * writing it, CORRUPT, UNAVAILABLE, a short shard).
 */
async function readBackCrc(
  context: RepairContext,
  location: ShardLocation,
  blockGroupId: number,
  shardLength: number,
  deadline: number,
): Promise<number> {
  const handle = context.transport.openRead(
    { addr: location.addr, shard: { blockGroupId, index: location.index, generation: 0 } },
    0,
    shardLength,
    { deadline, transient: true },
  );
  try {
    let crc = 0;
    let length = 0;
    // Bounded by the shard's length: the transport ends the range there.
    for (let piece = await handle.next(); piece !== null; piece = await handle.next()) {
      crc = crc32c(piece, crc);
      length += piece.length;
    }
    if (length !== shardLength) throw new DogfsError('CORRUPT', `holds ${length} bytes of ${shardLength}`);
    return crc;
  } finally {
    handle.close();
  }
}

/**
 * The K shards (one, under a replicate policy) a rebuild reads: those that are not being rebuilt first,
 * then shards being moved off a server that is drained (rebuilt too, but still readable: sources when the
 * others are too few). Throws UNAVAILABLE when fewer exist.
 */
function rebuildSources(plan: BlockGroupRepair, bg: BlockGroup, replicate: boolean): ShardLocation[] {
  const k = bg.dataShards;
  const total = k + bg.parityShards;
  const missing = new Set(plan.missing);
  const readable = new Set(plan.readable.filter((i) => missing.has(i)));
  const usable = (s: ShardLocation) => s.durable && s.addr !== '';
  const sources = [
    ...bg.shards.filter((s) => !missing.has(s.index) && usable(s)).sort((a, b) => a.index - b.index),
    ...bg.shards.filter((s) => readable.has(s.index) && usable(s)).sort((a, b) => a.index - b.index),
  ].slice(0, replicate ? 1 : k);
  if (sources.length < (replicate ? 1 : k))
    throw new DogfsError(
      'UNAVAILABLE',
      `block group ${bg.id}: ${total - missing.size + readable.size} of ${total} shards survive, ${k} are needed to rebuild the rest`,
    );
  return sources;
}

/** How a suspect, or a shard whose copy failed, is named within one repair. */
function shardRef(blockGroupId: number, index: number): string {
  return `${blockGroupId}:${index}`;
}

/**
 * The planned shards to copy rather than rebuild, each with the location its bytes are read from: a
 * shard being moved while its copy is still good (PlanRepair names it `readable`: on a server being
 * drained, or a rebalancing move's source) and placed on a target, whose copy is recorded durable with
 * the block group's shard length on a server that can be reached. One read instead of K, and no decode
 * (HDFS copies a decommissioning node's EC blocks the same way). A lost shard has no such copy, and one
 * whose copy already failed in this repair (`refused`, by shardRef) is rebuilt as before.
 */
export function copySources(
  plan: BlockGroupRepair,
  refused: ReadonlySet<string>,
): Map<number, ShardLocation> {
  const copies = new Map<number, ShardLocation>();
  const bg = plan.blockGroup;
  if (!bg) return copies;
  const placed = new Set(plan.targets.map((t) => t.index));
  const missing = new Set(plan.missing);
  const committedLength = bg.shards.find((s) => s.durable)?.length;
  for (const index of plan.readable) {
    if (!missing.has(index) || !placed.has(index) || refused.has(shardRef(bg.id, index))) continue;
    const source = bg.shards.find((s) => s.index === index);
    if (source === undefined || !source.durable || source.addr === '') continue;
    if (source.length !== committedLength) continue;
    copies.set(index, source);
  }
  return copies;
}

/** What one transfer of a block group's shards left on their targets. */
interface TransferResult {
  /** Shards now durable on their targets, with what they hold (a target that failed is left out). */
  readonly rebuilt: Rebuilt[];
  readonly failures: string[];
  /** Targets refused as already holding the shard, which then was not there to read: a write still ending. */
  readonly busyTargets: number;
}

/**
 * Writes shards of one block group to their targets from `sources`, read in windows: decoded from K of
 * them, or (`decode` false: a replicate policy's shard, or a copy) the first source's bytes as they are.
 * Every source is checked against its recorded whole-shard CRC32C before its last window is used, and
 * every target's stored CRC32C against the bytes sent. Resolves with the targets that now hold their
 * shard; rejects with SourceFailed when a source could not be read.
 */
async function transferShards(
  context: RepairContext,
  bg: BlockGroup,
  sources: readonly ShardLocation[],
  targets: readonly ShardLocation[],
  decode: boolean,
  options: RepairOptions,
  progress: { written: number },
): Promise<TransferResult> {
  const k = bg.dataShards;
  const total = k + bg.parityShards;
  const shardLength = shardLengthOf(bg);
  const window = Math.max(1, Math.min(options.windowBytes ?? DEFAULT_WINDOW_BYTES, shardLength));
  const deadline = Date.now() + dataOperationMs(shardLength);
  const stepMs = options.stepTimeoutMs ?? DEFAULT_STEP_TIMEOUT_MS;
  const reads = sources.map((s) => ({
    location: s,
    handle: context.transport.openRead(
      { addr: s.addr, shard: { blockGroupId: bg.id, index: s.index, generation: s.generation } },
      0,
      shardLength,
      // readExactly copies every piece (and uses up a carried rest) before asking for the next.
      { deadline, transient: true },
    ),
    carry: { rest: null as Uint8Array | null },
    crc: 0,
  }));
  const writes = new Map<number, { location: ShardLocation; handle: ShardWriteHandle }>();
  for (const target of targets) {
    writes.set(target.index, {
      location: target,
      handle: context.transport.openWrite(
        { addr: target.addr, shard: { blockGroupId: bg.id, index: target.index, generation: 0 } },
        { length: shardLength, deadline },
      ),
    });
  }
  const failures: string[] = [];
  /**
   * Targets that already hold this shard (ALREADY_EXISTS): a copy left by an earlier repair whose commit
   * was lost, or one another repair is writing. Nothing is written to them; the rebuilt bytes' CRC32C is
   * kept, and at the end the copy is read back and taken only if it is those very bytes.
   */
  const held = new Map<number, ShardLocation>();
  /** CRC32C of the rebuilt bytes so far, per target. */
  const rebuiltCrc = new Map<number, number>();
  let busyTargets = 0;
  const dropTarget = (index: number, error: unknown) => {
    const write = writes.get(index);
    if (write === undefined) return;
    write.handle.abort(toDogfsError(error));
    writes.delete(index);
    if (toDogfsError(error).code === 'ALREADY_EXISTS') {
      held.set(index, write.location);
      return;
    }
    failures.push(
      `shard ${index} of block group ${bg.id} to ${write.location.chunkServerId}: ${toDogfsError(error).message}`,
    );
  };
  const codec = decode ? createCodec(k, bg.parityShards) : undefined;
  try {
    for (let offset = 0; offset < shardLength && writes.size + held.size > 0; offset += window) {
      const length = Math.min(window, shardLength - offset);
      const rows: (Uint8Array | null)[] = new Array<Uint8Array | null>(total).fill(null);
      await Promise.all(
        reads.map(async (read) => {
          try {
            const row = await withStepTimeout(
              readExactly(read.handle, read.carry, length),
              stepMs,
              `shard ${read.location.index} from ${read.location.chunkServerId}`,
              'DEADLINE_EXCEEDED',
            );
            read.crc = crc32c(row, read.crc);
            if (offset + length === shardLength && read.crc !== read.location.crc32c)
              throw new DogfsError(
                'CORRUPT',
                `shard ${read.location.index} reads back with crc32c ${read.crc}, recorded ${read.location.crc32c}`,
              );
            rows[read.location.index] = row;
          } catch (error) {
            throw new SourceFailed(
              { blockGroupId: bg.id, index: read.location.index, generation: read.location.generation },
              toDogfsError(error, 'UNAVAILABLE'),
            );
          }
        }),
      );
      const wanted = [...writes.keys(), ...held.keys()];
      if (codec === undefined) {
        for (const i of wanted) rows[i] = rows[reads[0]!.location.index]!;
      } else {
        const absent = rows.map((r, i) => (r === null ? i : -1)).filter((i) => i >= 0);
        for (const i of absent) rows[i] = Buffer.allocUnsafe(length);
        await codec.reconstructAsync(rows, absent);
      }
      for (const i of wanted) rebuiltCrc.set(i, crc32c(rows[i]!, rebuiltCrc.get(i) ?? 0));
      await Promise.all(
        wanted.map(async (i) => {
          try {
            const write = writes.get(i);
            if (write !== undefined)
              await withStepTimeout(
                write.handle.write(rows[i]!),
                stepMs,
                `shard ${i} to ${write.location.chunkServerId}`,
                'DEADLINE_EXCEEDED',
              );
          } catch (error) {
            dropTarget(i, error);
          }
        }),
      );
      progress.written += length * writes.size;
      options.onProgress?.(progress.written);
      // Charged what the window read and wrote: a repair under rs-10-4 reads ten windows for each it writes.
      await options.pace?.(length * (reads.length + writes.size));
    }
    const rebuilt: Rebuilt[] = [];
    await Promise.all(
      [...writes.entries()].map(async ([index, write]) => {
        try {
          const result = await withStepTimeout(
            write.handle.finish(),
            stepMs,
            `shard ${index} to ${write.location.chunkServerId}`,
            'DEADLINE_EXCEEDED',
          );
          if (result.length !== shardLength)
            throw new DogfsError('CORRUPT', `stored ${result.length} bytes of ${shardLength}`);
          // What the target stored must be what was rebuilt: for a shard never durable before, the
          // service has no other CRC to hold the copy to.
          if (result.crc32c !== rebuiltCrc.get(index))
            throw new DogfsError(
              'CORRUPT',
              `stored with crc32c ${result.crc32c}, rebuilt with ${rebuiltCrc.get(index) ?? 'none'}`,
            );
          rebuilt.push({ location: write.location, length: result.length, crc32c: result.crc32c });
        } catch (error) {
          dropTarget(index, error);
        }
      }),
    );
    await Promise.all(
      [...held.entries()].map(async ([index, location]) => {
        const expected = rebuiltCrc.get(index) ?? 0;
        const where = `shard ${index} of block group ${bg.id} to ${location.chunkServerId}`;
        try {
          const crc = await readBackCrc(context, location, bg.id, shardLength, deadline);
          if (crc !== expected)
            throw new DogfsError('ALREADY_EXISTS', `holds another copy (crc32c ${crc}, rebuilt ${expected})`);
          rebuilt.push({ location, length: shardLength, crc32c: crc });
        } catch (error) {
          // Refused as already there, yet not there to read: another write of it was in progress (an
          // earlier round's, aborted, or another repair's) and has ended since. A later round may write it.
          if (toDogfsError(error).code === 'NOT_FOUND') busyTargets++;
          else failures.push(`${where}: already there, and ${toDogfsError(error).message}`);
        }
      }),
    );
    return { rebuilt: rebuilt.sort((a, b) => a.location.index - b.location.index), failures, busyTargets };
  } catch (error) {
    for (const write of writes.values()) write.handle.abort(toDogfsError(error));
    throw error;
  } finally {
    for (const read of reads) read.handle.close();
  }
}

/**
 * Copies each planned shard that `copies` names from its current holder to its target, all at once: one
 * read per shard, checked end to end against the length and whole-shard CRC32C recorded at commit, and
 * the target's stored CRC32C against the bytes sent (transferShards). Never rejects: a copy that did not
 * leave its target holding the shard is named in `failures`, for the caller to rebuild it instead.
 */
async function copyShards(
  context: RepairContext,
  bg: BlockGroup,
  targets: readonly ShardLocation[],
  copies: ReadonlyMap<number, ShardLocation>,
  options: RepairOptions,
  progress: { written: number },
): Promise<{ copied: Rebuilt[]; failures: { index: number; reason: string }[] }> {
  const copied: Rebuilt[] = [];
  const failures: { index: number; reason: string }[] = [];
  await Promise.all(
    targets.map(async (target) => {
      const source = copies.get(target.index);
      if (source === undefined) return;
      const from = `from ${source.chunkServerId}`;
      try {
        const result = await transferShards(context, bg, [source], [target], false, options, progress);
        const done = result.rebuilt.find((r) => r.location.index === target.index);
        if (done !== undefined) copied.push(done);
        else
          failures.push({
            index: target.index,
            reason: `${from}: ${result.failures[0] ?? 'its target was still busy with an earlier write'}`,
          });
      } catch (error) {
        const e = error instanceof SourceFailed ? error.error : toDogfsError(error);
        failures.push({ index: target.index, reason: `${from}: ${e.message}` });
      }
    }),
  );
  return { copied, failures };
}

/**
 * Rebuilds every missing shard of the file at `path` that can be placed. Resolves with what was done;
 * shards that could not be repaired are listed in `unrepaired` (the caller decides whether that is an
 * error). Rejects when the file cannot be read at all (fewer than K shards of a block group survive).
 */
export async function repairFile(
  context: RepairContext,
  path: string,
  options: RepairOptions = {},
): Promise<RepairOutcome> {
  const suspects = new Map<string, ShardId>();
  /** Sources that failed once for a reason that may pass, and were given another round. */
  const retried = new Set<string>();
  const progress = { written: 0 };
  let damaged = -1;
  let shardsRebuilt = 0;
  let shardsCopied = 0;
  /** Moved shards whose copy failed in an earlier round: rebuilt from now on (by shardRef). */
  const copyFailed = new Set<string>();
  const repairedGroups = new Set<number>();
  let unrepaired: string[] = [];
  for (let round = 0; round < MAX_ROUNDS; round++) {
    const plan = await context.meta.call('PlanRepair', { path, suspects: [...suspects.values()] }, options);
    if (damaged < 0) damaged = plan.blockGroups.length;
    if (plan.blockGroups.length === 0 || !plan.inode) {
      unrepaired = [];
      break;
    }
    const replicate = plan.inode.ec.startsWith('replicate-');
    unrepaired = [];
    let replan = false;
    let backOff = false;
    for (const group of plan.blockGroups) {
      const bg = group.blockGroup;
      assert(bg !== null && bg !== undefined, 'a repair plan names its block group');
      const placed = new Set(group.targets.map((t) => t.index));
      for (const index of group.missing)
        if (!placed.has(index))
          unrepaired.push(
            `shard ${index} of block group ${bg.id}: no live chunk server outside the block group's holders to put it on`,
          );
      if (group.targets.length === 0) continue;
      const copies = copySources(group, copyFailed);
      const rebuildTargets = group.targets.filter((t) => !copies.has(t.index));
      let result: TransferResult = { rebuilt: [], failures: [], busyTargets: 0 };
      try {
        if (rebuildTargets.length > 0)
          result = await transferShards(
            context,
            bg,
            rebuildSources(group, bg, replicate),
            rebuildTargets,
            !replicate,
            options,
            progress,
          );
      } catch (error) {
        if (error instanceof SourceFailed) {
          const key = shardRef(error.shard.blockGroupId, error.shard.index);
          // A source busy or briefly unreachable is read again before it is named a suspect: a suspect
          // counts as missing, and with exactly K survivors one blip made the group unrepairable.
          // So is one whose bytes were damaged on their way here (its stored copy checked out on its
          // server): naming it a suspect rebuilt an intact copy and deleted the original.
          if ((TRANSIENT_CODES.has(error.error.code) || error.error.inTransit) && !retried.has(key)) {
            retried.add(key);
            replan = true;
            backOff = true;
            break;
          }
          if (!suspects.has(key)) {
            suspects.set(key, error.shard);
            replan = true;
            break;
          }
        }
        // These shards cannot be rebuilt now (too few survivors, ...): the copies, and the other block
        // groups, still can be done.
        const e = error instanceof SourceFailed ? error.error : toDogfsError(error);
        unrepaired.push(`block group ${bg.id}: ${e.message}`);
      }
      const copied = await copyShards(context, bg, group.targets, copies, options, progress);
      for (const failure of copied.failures) {
        // Rebuilt from the rest of its group next round, as a lost shard is: a copy that fails for any
        // reason (a dead or slow source, bytes that are not the committed shard, a target that refused)
        // never fails the move, and is never committed.
        copyFailed.add(shardRef(bg.id, failure.index));
        replan = true;
        // Its aborted write may still be ending on the target the next plan names again.
        backOff = true;
        unrepaired.push(
          `shard ${failure.index} of block group ${bg.id}: not copied (${failure.reason}); to be rebuilt`,
        );
      }
      const copiedIndexes = new Set(copied.copied.map((c) => c.location.index));
      const done = [...result.rebuilt, ...copied.copied].sort((x, y) => x.location.index - y.location.index);
      unrepaired.push(...result.failures);
      if (result.busyTargets > 0) {
        // This round's aborted writes (a source failed) may still be ending on their servers.
        replan = true;
        backOff = true;
        unrepaired.push(
          `block group ${bg.id}: ${result.busyTargets} target(s) still busy with an earlier write`,
        );
      }
      if (done.length === 0) continue;
      const inodeId = plan.inode.id;
      const commit = (rebuilt: readonly Rebuilt[]) =>
        context.meta.mutate(
          context.session,
          'CommitRepair',
          {
            path,
            inodeId,
            blockGroupId: bg.id,
            shards: rebuilt.map((r) => ({
              index: r.location.index,
              chunkServerId: r.location.chunkServerId,
              replaces: bg.shards.find((s) => s.index === r.location.index)?.chunkServerId ?? '',
              length: r.length,
              crc32c: r.crc32c,
            })),
          },
          options,
        );
      const committed: Rebuilt[] = [];
      try {
        await commit(done);
        committed.push(...done);
      } catch (error) {
        const refusal = toDogfsError(error).message;
        // Unanswered (no quorum, a deadline, an unknown outcome): one by one would only wait longer.
        if (done.length === 1 || !ANSWERED_REFUSAL(toDogfsError(error).code)) {
          // Lost a race (another repair, an overwrite) or the service refused: the rebuilt copy stays as
          // an orphan on its server; this block group is reported as not repaired.
          unrepaired.push(`block group ${bg.id}: commit refused: ${refusal}`);
          continue;
        }
        // The service checks every copy and refuses all for one bad one (its server died since, say):
        // the others are committed one by one, each its own compare-and-set, at most K + M calls.
        for (const one of done) {
          try {
            await commit([one]);
            committed.push(one);
          } catch (each) {
            unrepaired.push(
              `shard ${one.location.index} of block group ${bg.id}: commit refused: ${toDogfsError(each).message}`,
            );
          }
        }
      }
      for (const one of committed) {
        if (copiedIndexes.has(one.location.index)) shardsCopied++;
        else shardsRebuilt++;
      }
      if (committed.length === group.missing.length) repairedGroups.add(bg.id);
    }
    if (!replan) break;
    if (round === MAX_ROUNDS - 1) {
      unrepaired.push(`${path}: sources kept failing after ${MAX_ROUNDS} plans`);
      break;
    }
    // Retrying what failed for a passing reason: give it a moment (0.1, 0.2, 0.4 ... 2 s).
    if (backOff) await new Promise((resolve) => setTimeout(resolve, Math.min(2000, 100 * 2 ** round)));
  }
  return {
    path,
    damagedBlockGroups: Math.max(0, damaged),
    repairedBlockGroups: repairedGroups.size,
    shardsRebuilt,
    shardsCopied,
    bytesWritten: progress.written,
    unrepaired,
  };
}
