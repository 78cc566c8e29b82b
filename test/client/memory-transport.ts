/**
 * An in-memory ShardTransport with fault injection, for tests of the client's write and read logic that
 * need precise failures (a server dying after N bytes, a read that hangs) without processes.
 */

import type {
  ShardReadHandle,
  ShardTarget,
  ShardTransport,
  ShardWriteHandle,
  ShardWriteResult,
} from '../../src/client/transport.js';
import { crc32c } from '../../src/codec/crc32c.js';
import { DogfsError } from '../../src/wire/errors.js';

function key(target: ShardTarget): string {
  return `${target.addr}/${target.shard.blockGroupId}/${target.shard.index}`;
}

export class MemoryTransport implements ShardTransport {
  readonly shards = new Map<string, Buffer>();
  /** Addresses that refuse everything. */
  readonly dead = new Set<string>();
  /** Addresses whose reads never deliver. */
  readonly hung = new Set<string>();
  /** Address → bytes after which writes fail (a server dying mid-write). */
  readonly dieAfter = new Map<string, number>();
  readonly reads: { addr: string; index: number; offset: number; length: number }[] = [];

  openWrite(target: ShardTarget, options: { length: number }): ShardWriteHandle {
    const parts: Buffer[] = [];
    let written = 0;
    let aborted = false;
    const check = () => {
      if (aborted) throw new DogfsError('CANCELLED', 'aborted');
      if (this.dead.has(target.addr))
        throw new DogfsError('UNAVAILABLE', `${target.addr}: connection refused`);
      const limit = this.dieAfter.get(target.addr);
      if (limit !== undefined && written > limit) {
        this.dead.add(target.addr);
        throw new DogfsError('UNAVAILABLE', `${target.addr}: connection reset`);
      }
    };
    return {
      write: async (data: Uint8Array): Promise<void> => {
        check();
        parts.push(Buffer.from(data));
        written += data.length;
        check();
      },
      finish: async (): Promise<ShardWriteResult> => {
        check();
        const all = Buffer.concat(parts);
        if (all.length !== options.length) throw new DogfsError('INVALID_ARGUMENT', 'length mismatch');
        this.shards.set(key(target), all);
        return { length: all.length, crc32c: crc32c(all) >>> 0 };
      },
      abort: () => {
        aborted = true;
      },
    };
  }

  openRead(target: ShardTarget, offset: number, length: number): ShardReadHandle {
    this.reads.push({ addr: target.addr, index: target.shard.index, offset, length });
    let done = false;
    let closed: (() => void) | undefined;
    const closedPromise = new Promise<void>((resolve) => {
      closed = resolve;
    });
    return {
      next: async () => {
        if (done) return null;
        if (this.dead.has(target.addr))
          throw new DogfsError('UNAVAILABLE', `${target.addr}: connection refused`);
        if (this.hung.has(target.addr)) {
          await closedPromise;
          throw new DogfsError('CANCELLED', 'closed');
        }
        const shard = this.shards.get(key(target));
        if (!shard) throw new DogfsError('NOT_FOUND', `${target.addr}: no such shard`);
        done = true;
        return shard.subarray(offset, offset + length);
      },
      close: () => {
        done = true;
        closed?.();
      },
    };
  }

  close(): void {}
}
