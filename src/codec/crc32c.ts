/**
 * codec/crc32c — CRC-32C (Castagnoli, the iSCSI/ext4 polynomial 0x1EDC6F41, reflected 0x82F63B78).
 *
 * Three implementations, the first that loads wins:
 *  - isal: ISA-L's crc32_iscsi through our addon (carry-less-multiply folding, ~45 GB/s here);
 *  - node-rs: the @node-rs/crc32 package (SSE4.2 / ARMv8 CRC instructions, ~6 GB/s);
 *  - js: a slicing-by-8 table implementation in TypeScript (~1 GB/s), always available.
 * `DOGFS_CRC32C=isal|node-rs|js` forces one (tests use it to prove they agree).
 *
 * Values are unsigned 32-bit numbers. `crc32c(b, crc32c(a))` equals `crc32c(a ++ b)`, so a CRC can be
 * computed incrementally over a stream.
 */

import { createRequire } from 'node:module';
import { loadNativeAddon } from './native.js';

export type Crc32cFunction = (data: Uint8Array, initial?: number) => number;

const CASTAGNOLI_REFLECTED = 0x82f63b78;

/** 8 tables of 256 entries: table[k][b] is the CRC of byte b followed by k zero bytes. */
const slicingTables: Uint32Array = buildSlicingTables();

function buildSlicingTables(): Uint32Array {
  const tables = new Uint32Array(8 * 256);
  for (let byte = 0; byte < 256; byte++) {
    let crc = byte;
    for (let bit = 0; bit < 8; bit++) crc = crc & 1 ? (crc >>> 1) ^ CASTAGNOLI_REFLECTED : crc >>> 1;
    tables[byte] = crc >>> 0;
  }
  for (let byte = 0; byte < 256; byte++) {
    let crc = tables[byte]!;
    for (let k = 1; k < 8; k++) {
      crc = (crc >>> 8) ^ tables[crc & 0xff]!;
      tables[k * 256 + byte] = crc >>> 0;
    }
  }
  return tables;
}

/** Pure TypeScript CRC-32C, slicing-by-8. Always available; the oracle for the native one. */
export function crc32cPortable(data: Uint8Array, initial = 0): number {
  const t = slicingTables;
  let crc = ~initial >>> 0;
  let i = 0;
  const n = data.length;
  const end8 = n - (n % 8);
  while (i < end8) {
    const lo = (crc ^ (data[i]! | (data[i + 1]! << 8) | (data[i + 2]! << 16) | (data[i + 3]! << 24))) >>> 0;
    crc =
      t[7 * 256 + (lo & 0xff)]! ^
      t[6 * 256 + ((lo >>> 8) & 0xff)]! ^
      t[5 * 256 + ((lo >>> 16) & 0xff)]! ^
      t[4 * 256 + (lo >>> 24)]! ^
      t[3 * 256 + data[i + 4]!]! ^
      t[2 * 256 + data[i + 5]!]! ^
      t[256 + data[i + 6]!]! ^
      t[data[i + 7]!]!;
    i += 8;
  }
  while (i < n) {
    crc = (crc >>> 8) ^ t[(crc ^ data[i]!) & 0xff]!;
    i++;
  }
  return ~crc >>> 0;
}

interface NodeRsCrc32 {
  crc32c(input: Uint8Array, initialState?: number | null): number;
}

export type Crc32cImplementation = 'isal' | 'node-rs' | 'js';

/** Accepts an implementation only if it gives the standard check value. */
function checked(crc: Crc32cFunction): Crc32cFunction | undefined {
  return crc(Buffer.from('123456789')) === 0xe3069283 ? crc : undefined;
}

const loaders: Record<Exclude<Crc32cImplementation, 'js'>, () => Crc32cFunction | undefined> = {
  isal: () => {
    const addon = loadNativeAddon();
    return addon.hasCrc32c ? checked((data, initial = 0) => addon.crc32c(data, initial)) : undefined;
  },
  'node-rs': () => {
    const mod = createRequire(import.meta.url)('@node-rs/crc32') as NodeRsCrc32;
    return checked((data, initial = 0) => mod.crc32c(data, initial) >>> 0);
  },
};

function choose(): [Crc32cImplementation, Crc32cFunction] {
  const forced = process.env['DOGFS_CRC32C'];
  for (const name of ['isal', 'node-rs'] as const) {
    if (forced && forced !== name) continue;
    try {
      const crc = loaders[name]();
      if (crc) return [name, crc];
    } catch {
      // Not available here: try the next one.
    }
  }
  return ['js', crc32cPortable];
}

const [implementation, chosen] = choose();

/** CRC-32C of `data`, continuing from `initial` (the CRC of the bytes before it; 0 to start). */
export const crc32c: Crc32cFunction = chosen;

/** Which implementation `crc32c` uses (for reports and benches). */
export function crc32cImplementation(): Crc32cImplementation {
  return implementation;
}
