/** Shared by the codec tests: which backends load here, and seeded shard data. */
import type { BackendName } from '../../src/codec/index.js';
import { BACKEND_PREFERENCE, backendReport } from '../../src/codec/index.js';

/** Backends that load on this machine (the reference one always does). */
export function loadedBackends(): BackendName[] {
  const report = backendReport();
  return BACKEND_PREFERENCE.filter((name) => report.backends.find((b) => b.name === name)?.available);
}

/** Deterministic bytes (xorshift32), so a failure can be replayed. */
export function seededBytes(length: number, seed: number): Uint8Array {
  const out = new Uint8Array(length);
  let state = seed | 1;
  for (let i = 0; i < length; i++) {
    state ^= state << 13;
    state ^= state >>> 17;
    state ^= state << 5;
    out[i] = state >>> 24;
  }
  return out;
}

export function isCodecError(code: string): (e: unknown) => boolean {
  return (e: unknown) =>
    e instanceof Error && e.name === 'CodecError' && (e as { code?: string }).code === code;
}

/**
 * How many times the event loop turned (setImmediate callbacks ran) while `work` was pending: zero or
 * one if the work blocked the JavaScript thread, many if it ran elsewhere.
 */
export async function eventLoopTurnsDuring(work: () => Promise<void>): Promise<number> {
  let turns = 0;
  let done = false;
  const spin = () => {
    if (done) return;
    turns++;
    setImmediate(spin);
  };
  setImmediate(spin);
  try {
    await work();
  } finally {
    done = true;
  }
  return turns;
}
