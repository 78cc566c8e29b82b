/**
 * An in-memory ShardTransport with fault injection, for tests of the client's write and read logic that
 * need precise failures (a server dying after N bytes, a read that hangs) without processes.
 */

import type {
  OpenReadOptions,
  OpenWriteOptions,
  ShardReadHandle,
  ShardTarget,
  ShardTransport,
  ShardWriteHandle,
  ShardWriteResult,
} from '../../src/client/transport.js';
import { crc32c } from '../../src/codec/crc32c.js';
import { DogfsError } from '../../src/wire/errors.js';

/** Reads deliver at most this much per `next()`, so a cell arrives in several pieces. */
const PIECE_BYTES = 16 << 10;

function key(target: ShardTarget): string {
  return `${target.addr}/${target.shard.blockGroupId}/${target.shard.index}`;
}

export class MemoryTransport implements ShardTransport {
  readonly shards = new Map<string, Buffer>();
  /** Addresses that refuse everything. */
  readonly dead = new Set<string>();
  /** Addresses whose reads are refused as a busy server's are (RESOURCE_EXHAUSTED). */
  readonly busy = new Set<string>();
  /** Address → the error reads there fail with (a chunk server's answer, or the transport's own finding). */
  readonly failReads = new Map<string, DogfsError>();
  /** Addresses whose reads never deliver. */
  readonly hung = new Set<string>();
  /** Addresses whose disks are full: every shard write there is refused NO_SPACE. */
  readonly full = new Set<string>();
  /**
   * Address → a gate: reads there deliver their bytes only once it opens, even after being closed (a slow
   * server whose data arrives after the reader gave up on it). `lateDeliveries` counts such deliveries.
   */
  readonly late = new Map<string, Promise<void>>();
  lateDeliveries = 0;
  /** Address → bytes after which writes fail (a server dying mid-write). */
  readonly dieAfter = new Map<string, number>();
  /**
   * Address → milliseconds each piece (PIECE_BYTES) takes there, reads and writes: a slow link whose
   * bytes keep coming. Writes report each piece through `onProgress`.
   */
  readonly slow = new Map<string, number>();
  /**
   * Address → bytes after which reads and writes there stop moving (neither delivering nor failing)
   * until closed or aborted: a server that stalls mid-transfer.
   */
  readonly stallAfter = new Map<string, number>();
  readonly reads: { addr: string; index: number; offset: number; length: number }[] = [];

  /** Shard writes opened and not yet finished or aborted. */
  openWrites = 0;

  openWrite(target: ShardTarget, options: Pick<OpenWriteOptions, 'length' | 'onProgress'>): ShardWriteHandle {
    const parts: Buffer[] = [];
    let written = 0;
    let aborted = false;
    let onAbort: (() => void) | undefined;
    const abortedPromise = new Promise<void>((resolve) => {
      onAbort = resolve;
    });
    let ended = false;
    this.openWrites++;
    const end = () => {
      if (!ended) this.openWrites--;
      ended = true;
    };
    const check = () => {
      if (aborted) throw new DogfsError('CANCELLED', 'aborted');
      if (this.dead.has(target.addr))
        throw new DogfsError('UNAVAILABLE', `${target.addr}: connection refused`);
      if (this.full.has(target.addr))
        throw new DogfsError('NO_SPACE', `${target.addr}: no space for the shard`);
      const limit = this.dieAfter.get(target.addr);
      if (limit !== undefined && written > limit) {
        this.dead.add(target.addr);
        throw new DogfsError('UNAVAILABLE', `${target.addr}: connection reset`);
      }
    };
    return {
      write: async (data: Uint8Array): Promise<void> => {
        check();
        for (let at = 0; at < data.length; ) {
          const stall = this.stallAfter.get(target.addr);
          if (stall !== undefined && written >= stall) {
            await abortedPromise;
            check();
          }
          const delay = this.slow.get(target.addr);
          if (delay !== undefined) await new Promise((resolve) => setTimeout(resolve, delay));
          check();
          const piece = data.subarray(at, Math.min(data.length, at + PIECE_BYTES));
          parts.push(Buffer.from(piece));
          written += piece.length;
          at += piece.length;
          options.onProgress?.();
        }
        check();
      },
      finish: async (): Promise<ShardWriteResult> => {
        end();
        check();
        const all = Buffer.concat(parts);
        if (all.length !== options.length) throw new DogfsError('INVALID_ARGUMENT', 'length mismatch');
        this.shards.set(key(target), all);
        return { length: all.length, crc32c: crc32c(all) >>> 0 };
      },
      abort: () => {
        end();
        aborted = true;
        onAbort?.();
      },
    };
  }

  openRead(
    target: ShardTarget,
    offset: number,
    length: number,
    options?: Pick<OpenReadOptions, 'transient' | 'shardLength'>,
  ): ShardReadHandle {
    this.reads.push({ addr: target.addr, index: target.shard.index, offset, length });
    let position = offset;
    let done = false;
    let closed: (() => void) | undefined;
    const closedPromise = new Promise<void>((resolve) => {
      closed = resolve;
    });
    // Transient reads get their pieces in one reused buffer, as the real transport's receive memory is:
    // a reader that keeps a piece past the next `next()` sees it overwritten.
    const scratch = options?.transient ? Buffer.alloc(PIECE_BYTES) : undefined;
    return {
      next: async () => {
        const gate = this.late.get(target.addr);
        if (gate !== undefined) await gate;
        else if (done) return null;
        if (this.dead.has(target.addr))
          throw new DogfsError('UNAVAILABLE', `${target.addr}: connection refused`);
        if (this.busy.has(target.addr))
          throw new DogfsError('RESOURCE_EXHAUSTED', `${target.addr}: chunk server busy`);
        const failure = this.failReads.get(target.addr);
        if (failure !== undefined) throw failure;
        const stall = this.stallAfter.get(target.addr);
        if (
          gate === undefined &&
          (this.hung.has(target.addr) || (stall !== undefined && position - offset >= stall))
        ) {
          await closedPromise;
          throw new DogfsError('CANCELLED', 'closed');
        }
        const delay = this.slow.get(target.addr);
        if (delay !== undefined) {
          await new Promise((resolve) => setTimeout(resolve, delay));
          if (done) throw new DogfsError('CANCELLED', 'closed');
        }
        const shard = this.shards.get(key(target));
        if (!shard) throw new DogfsError('NOT_FOUND', `${target.addr}: no such shard`);
        if (options?.shardLength !== undefined && shard.length !== options.shardLength)
          throw new DogfsError(
            'CORRUPT',
            `${target.addr}: holds ${shard.length} bytes, ${options.shardLength} expected`,
          );
        const end = offset + length;
        if (position >= end) return null;
        const piece = shard.subarray(position, Math.min(end, position + PIECE_BYTES));
        position += piece.length;
        if (gate !== undefined) this.lateDeliveries++;
        if (scratch === undefined) return piece;
        piece.copy(scratch);
        return scratch.subarray(0, piece.length);
      },
      close: () => {
        done = true;
        closed?.();
      },
    };
  }

  close(): void {}
}
