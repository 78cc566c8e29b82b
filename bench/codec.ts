/**
 * bench/codec — codec throughput, one JSON object per line:
 *   {"bench":"codec","metric":...,"value":...,"unit":...,...}
 * Encode and decode GB/s (single thread, so per core) for rs-6-3 and rs-4-2 at 64 KiB and 1 MiB shards on
 * every backend that loads, against ISA-L itself (ec_encode_data in a C loop inside the addon, no
 * JavaScript between calls) in the same run, with each backend's ratio to it; memcpy and CRC-32C too.
 * GB/s counts data bytes: K shards' worth per encode or decode.
 * Usage: npm run bench:codec [-- --seconds 0.3]
 */

import { randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
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
const SECONDS = secondsArg > 0 ? Number(process.argv[secondsArg + 1]) : 0.3;
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

/** Runs `op` repeatedly for about SECONDS (after a warm-up) and returns operations per second. */
function opsPerSecond(op: () => unknown): number {
  const warmUntil = performance.now() + SECONDS * 300;
  do op();
  while (performance.now() < warmUntil);
  let iterations = 0;
  const start = performance.now();
  let elapsed = 0;
  do {
    op();
    iterations++;
    elapsed = performance.now() - start;
  } while (elapsed < SECONDS * 1000 || iterations < 3);
  return (iterations * 1000) / elapsed;
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

for (const [k, m] of POLICIES) {
  for (const shardSize of SHARD_SIZES) {
    const policy = `rs-${k}-${m}`;
    const dataBytes = k * shardSize;
    const config = { policy, shardBytes: shardSize };
    const data = Array.from({ length: k }, () => randomBytes(shardSize));
    const parity = Array.from({ length: m }, () => new Uint8Array(shardSize));

    const reference: Record<'encode' | 'decode', number> = { encode: Number.NaN, decode: Number.NaN };
    if (isal) {
      const encodeTables = splitNibbleTables(cauchyEncodeMatrix(k, m).subarray(k * k), m, k);
      const decodeTables = splitNibbleTables(decodeRows(k, m), m, k);
      for (const [op, tables] of [
        ['encode', encodeTables],
        ['decode', decodeTables],
      ] as const) {
        const iterations = Math.max(3, Math.round((SECONDS * 8e9) / dataBytes));
        const seconds = isal.benchEncode(tables, k, m, shardSize, iterations);
        reference[op] = (iterations * dataBytes) / seconds / 1e9;
        emit(`${op}`, reference[op], 'GB/s', { ...config, backend: 'isal-reference' });
      }
    }

    for (const backend of backends) {
      const codec = createCodec(k, m, { backend });
      codec.encode(data, parity);
      const shards: Uint8Array[] = [...data.map((d) => Uint8Array.from(d)), ...parity];
      const lost = Array.from({ length: m }, (_, i) => i);
      const encode = (opsPerSecond(() => codec.encode(data, parity)) * dataBytes) / 1e9;
      const decode = (opsPerSecond(() => codec.reconstruct(shards, lost)) * dataBytes) / 1e9;
      for (const [op, value] of [
        ['encode', encode],
        ['decode', decode],
      ] as const) {
        const ratio = value / reference[op];
        emit(op, value, 'GB/s', {
          ...config,
          backend,
          ...(Number.isFinite(ratio) ? { ratioToIsal: Number(ratio.toFixed(3)) } : {}),
        });
      }
    }

    const target = new Uint8Array(dataBytes);
    const source = randomBytes(dataBytes);
    const memcpy = (opsPerSecond(() => target.set(source)) * dataBytes) / 1e9;
    emit('memcpy', memcpy, 'GB/s', { bytes: dataBytes });
  }
}

{
  const buffer = randomBytes(1024 * 1024);
  // Calls into native code, or with results the optimiser cannot prove unused: neither is dropped.
  const native = (opsPerSecond(() => crc32c(buffer)) * buffer.length) / 1e9;
  emit('crc32c', native, 'GB/s', { implementation: crc32cImplementation(), bytes: buffer.length });
  const portable = (opsPerSecond(() => crc32cPortable(buffer)) * buffer.length) / 1e9;
  emit('crc32c', portable, 'GB/s', { implementation: 'js', bytes: buffer.length });
}
