/**
 * bench/codec — codec throughput, one JSON object per line:
 *   {"bench":"codec","metric":...,"value":...,"unit":...,...}
 * Encode and decode GB/s (single thread, so per core) for rs-6-3 and rs-4-2 at 64 KiB and 1 MiB shards on
 * every backend that loads, against ISA-L itself (ec_encode_data in a C loop inside the addon, no
 * JavaScript between calls) in the same run, with each backend's ratio to it; memcpy and CRC-32C too.
 * GB/s counts data bytes: K shards' worth per encode or decode.
 * Rates are per CPU-second of the measuring thread (so per core, and not skewed by other processes on a
 * shared machine); each figure is the best of three interleaved rounds.
 * Usage: npm run bench:codec [-- --seconds 0.2]
 */

import { randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { cpus } from 'node:os';
import { splitNibbleTables } from '../src/codec/gf256.js';
import {
  type BackendName,
  backendReport,
  cauchyEncodeMatrix,
  crc32c,
  crc32cImplementation,
  crc32cPortable,
  createCodec,
  invertMatrix,
} from '../src/codec/index.js';
import { loadNativeAddon, type NativeAddon } from '../src/codec/native.js';

const secondsArg = process.argv.indexOf('--seconds');
const SECONDS = secondsArg > 0 ? Number(process.argv[secondsArg + 1]) : 0.2;
/** Measurements per contender; the best is reported. */
const ROUNDS = 3;
const POLICIES = [
  [6, 3],
  [4, 2],
] as const;
const SHARD_SIZES = [64 * 1024, 1024 * 1024];

function emit(metric: string, value: number, unit: string, extra: Record<string, unknown> = {}): void {
  const rounded = Number(value.toPrecision(4));
  process.stdout.write(`${JSON.stringify({ bench: 'codec', metric, value: rounded, unit, ...extra })}\n`);
}

function cpuModel(): string {
  try {
    const line = readFileSync('/proc/cpuinfo', 'utf8')
      .split('\n')
      .find((l) => l.startsWith('model name'));
    if (line) return line.split(':')[1]!.trim();
  } catch {
    // Not Linux: fall through to what Node knows.
  }
  return cpus()[0]?.model ?? 'unknown';
}

/** CPU seconds used by this process so far (user + system). */
function cpuSeconds(): number {
  const usage = process.cpuUsage();
  return (usage.user + usage.system) / 1e6;
}

/**
 * Runs `op` repeatedly for about SECONDS of CPU time (after a warm-up) and returns operations per CPU
 * second: per-core throughput, which other processes on a shared machine do not distort the way they
 * distort wall-clock rates. (ISA-L's reference loop is timed the same way, with the thread's CPU clock.)
 */
function opsPerSecond(op: () => unknown): number {
  const warmUntil = performance.now() + SECONDS * 300;
  do op();
  while (performance.now() < warmUntil);
  let iterations = 0;
  const start = cpuSeconds();
  let elapsed = 0;
  do {
    op();
    iterations++;
    elapsed = cpuSeconds() - start;
  } while (elapsed < SECONDS || iterations < 3);
  return iterations / elapsed;
}

/** The matrix a decode of data shards 0..M-1 from the K shards after them uses (as rs.ts builds it). */
function decodeRows(k: number, m: number): Uint8Array {
  const encode = cauchyEncodeMatrix(k, m);
  const sub = encode.slice(m * k, (m + k) * k);
  const inverse = invertMatrix(sub, k)!;
  return inverse.slice(0, m * k);
}

const report = backendReport();
emit('machine', cpus().length, 'cores', {
  clock: 'thread CPU time',
  cpu: cpuModel(),
  node: process.version,
  activeBackend: report.active,
  backends: Object.fromEntries(
    report.backends.map((b) => [b.name, b.available ? b.detail : `unavailable: ${b.detail}`]),
  ),
});

let isal: NativeAddon | undefined;
try {
  isal = loadNativeAddon();
} catch (error) {
  emit('isal-reference', 0, 'GB/s', { error: error instanceof Error ? error.message : String(error) });
}

const backends = report.backends.filter((b) => b.available).map((b) => b.name as BackendName);
/** Best ratio to ISA-L per op for the target configuration (rs-6-3, 1 MiB shards), for the summary. */
const TARGET_POLICY = 'rs-6-3';
const TARGET_SHARD = 1024 * 1024;
const best: Record<'encode' | 'decode', { backend: string; ratio: number }> = {
  encode: { backend: 'none', ratio: 0 },
  decode: { backend: 'none', ratio: 0 },
};

type Op = 'encode' | 'decode';

for (const [k, m] of POLICIES) {
  for (const shardSize of SHARD_SIZES) {
    const policy = `rs-${k}-${m}`;
    const dataBytes = k * shardSize;
    const config = { policy, shardBytes: shardSize };
    const data = Array.from({ length: k }, () => randomBytes(shardSize));
    const parity = Array.from({ length: m }, () => new Uint8Array(shardSize));
    const shards: Uint8Array[] = [...data.map((d) => Uint8Array.from(d)), ...parity];
    const lost = Array.from({ length: m }, (_, i) => i);

    // Every contender measured once per round, rounds interleaved, best round kept: on a shared machine
    // a neighbour's burst then hurts one sample of each, not every sample of one contender.
    const contenders: { name: string; op: Op; run: () => number }[] = [];
    if (isal) {
      const nativeIsal = isal;
      const tables: Record<Op, Uint8Array> = {
        encode: splitNibbleTables(cauchyEncodeMatrix(k, m).subarray(k * k), m, k),
        decode: splitNibbleTables(decodeRows(k, m), m, k),
      };
      for (const op of ['encode', 'decode'] as const) {
        contenders.push({
          name: 'isal-reference',
          op,
          run: () => {
            const iterations = Math.max(3, Math.round((SECONDS * 8e9) / dataBytes));
            return (
              (iterations * dataBytes) / nativeIsal.benchEncode(tables[op], k, m, shardSize, iterations) / 1e9
            );
          },
        });
      }
    }
    for (const backend of backends) {
      const codec = createCodec(k, m, { backend });
      codec.encode(data, parity);
      // The reference backend is ~100x slower; one round of it says all there is to say.
      const rounds = backend === 'reference' ? 1 : ROUNDS;
      let done = 0;
      for (const op of ['encode', 'decode'] as const) {
        const work =
          op === 'encode' ? () => codec.encode(data, parity) : () => codec.reconstruct(shards, lost);
        contenders.push({
          name: backend,
          op,
          run: () => (done++ < 2 * rounds ? (opsPerSecond(work) * dataBytes) / 1e9 : 0),
        });
      }
    }
    const target = new Uint8Array(dataBytes);
    const source = randomBytes(dataBytes);
    const bestRate = new Map<(typeof contenders)[number], number>();
    let bestMemcpy = 0;
    for (let round = 0; round < ROUNDS; round++) {
      for (const contender of contenders)
        bestRate.set(contender, Math.max(bestRate.get(contender) ?? 0, contender.run()));
      bestMemcpy = Math.max(bestMemcpy, (opsPerSecond(() => target.set(source)) * dataBytes) / 1e9);
    }

    const reference: Record<Op, number> = { encode: Number.NaN, decode: Number.NaN };
    for (const [contender, value] of bestRate) {
      if (contender.name === 'isal-reference') reference[contender.op] = value;
    }
    for (const [contender, value] of bestRate) {
      const { name: backend, op } = contender;
      if (backend === 'isal-reference') {
        emit(op, value, 'GB/s', { ...config, backend });
        continue;
      }
      const ratio = value / reference[op];
      if (policy === TARGET_POLICY && shardSize === TARGET_SHARD && ratio > best[op].ratio) {
        best[op] = { backend, ratio };
      }
      emit(op, value, 'GB/s', {
        ...config,
        backend,
        ...(Number.isFinite(ratio) ? { ratioToIsal: Number(ratio.toFixed(3)) } : {}),
      });
    }
    emit('memcpy', bestMemcpy, 'GB/s', { bytes: dataBytes });
  }
}

for (const op of ['encode', 'decode'] as const) {
  emit(`fastest-${op}-ratio-to-isal`, best[op].ratio, 'x', {
    policy: TARGET_POLICY,
    shardBytes: TARGET_SHARD,
    backend: best[op].backend,
  });
}

{
  const buffer = randomBytes(1024 * 1024);
  // Calls into native code, or with results the optimiser cannot prove unused: neither is dropped.
  let native = 0;
  for (let round = 0; round < ROUNDS; round++) {
    native = Math.max(native, (opsPerSecond(() => crc32c(buffer)) * buffer.length) / 1e9);
  }
  emit('crc32c', native, 'GB/s', {
    implementation: crc32cImplementation(),
    active: true,
    bytes: buffer.length,
  });
  if (crc32cImplementation() !== 'node-rs') {
    const nodeRs = createRequire(import.meta.url)('@node-rs/crc32') as { crc32c(data: Uint8Array): number };
    const rate = (opsPerSecond(() => nodeRs.crc32c(buffer)) * buffer.length) / 1e9;
    emit('crc32c', rate, 'GB/s', { implementation: 'node-rs', bytes: buffer.length });
  }
  const portable = (opsPerSecond(() => crc32cPortable(buffer)) * buffer.length) / 1e9;
  emit('crc32c', portable, 'GB/s', { implementation: 'js', bytes: buffer.length });
}
