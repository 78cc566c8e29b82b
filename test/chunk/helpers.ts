/**
 * Helpers for chunk-server tests: a real `dogfs chunk` process, its addresses, and a seeded PRNG.
 */
import { readdirSync } from 'node:fs';
import { join } from 'node:path';
import { crc32c } from '../../src/codec/index.js';
import { DataTransferClient } from '../../src/wire/data-transfer.js';
import { ChunkControlService } from '../../src/wire/gen/types.js';
import { RpcChannel } from '../../src/wire/rpc.js';
import { startDogfs, waitFor } from '../helpers/index.js';

export interface RunningChunk {
  dir: string;
  addr: string;
  dataAddr: string;
  /** How the store writes: 'direct' (O_DIRECT) or 'buffered' (from the ready line). */
  writeMode: string;
  control: RpcChannel;
  process: ReturnType<typeof startDogfs>;
  stop(): Promise<void>;
  kill(): Promise<void>;
}

export async function startChunk(
  dir: string,
  extraArgs: string[] = [],
  env: NodeJS.ProcessEnv = process.env,
): Promise<RunningChunk> {
  const child = startDogfs(['chunk', '--dir', dir, '--log-level', 'debug', ...extraArgs], env);
  let ready: { addr: string; dataAddr: string; writeMode: string };
  try {
    const outcome = await Promise.race([
      waitFor(
        'chunk server listening',
        () => {
          const line = child.output.stderr.split('\n').find((l) => l.includes('"msg":"listening"'));
          return line === undefined
            ? undefined
            : (JSON.parse(line) as { addr: string; dataAddr: string; writeMode: string });
        },
        30_000,
      ),
      child.exited,
    ]);
    if (!('addr' in outcome)) {
      throw new Error(
        `chunk server exited (${outcome.code ?? outcome.signal}) before listening: ${child.output.stderr}`,
      );
    }
    ready = outcome;
  } catch (error) {
    // Never leave a half-started server behind: it would keep the test process alive.
    child.child.kill('SIGKILL');
    throw error;
  }
  const control = new RpcChannel(ready.addr);
  return {
    dir,
    addr: ready.addr,
    dataAddr: ready.dataAddr,
    writeMode: ready.writeMode,
    control,
    process: child,
    async stop() {
      control.close();
      child.child.kill('SIGTERM');
      await child.exited;
    },
    async kill() {
      control.close();
      child.child.kill('SIGKILL');
      await child.exited;
    },
  };
}

export function newClient(): DataTransferClient {
  return new DataTransferClient({ crc32c });
}

export function status(chunk: RunningChunk) {
  return chunk.control.call(ChunkControlService, 'Status', {}, { timeoutMs: 5000 });
}

export function counter(response: { counters: { name: string; value: number }[] }, name: string): number {
  return response.counters.find((c) => c.name === name)?.value ?? 0;
}

/** Every file under DIR/shards (relative paths), to prove an operation touched nothing. */
export function shardFiles(dir: string): string[] {
  return readdirSync(join(dir, 'shards'), { recursive: true })
    .map(String)
    .filter((f) => f.endsWith('.shard') || f.endsWith('.tmp'))
    .sort();
}

/** Deterministic bytes (xorshift), so a failure replays. */
export function seededBytes(length: number, seed: number): Buffer {
  const out = Buffer.allocUnsafe(length);
  let x = seed | 1;
  for (let i = 0; i < length; i++) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    out[i] = x & 0xff;
  }
  return out;
}

export function seededRandom(seed: number): () => number {
  let x = seed | 1;
  return () => {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    return (x >>> 0) / 0x1_0000_0000;
  };
}
