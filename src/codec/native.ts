/**
 * codec/native — the native backend: ISA-L's `ec_encode_data` through our N-API addon
 * (native/dogfs_codec.c, built by scripts/build-native.mjs). Loads only if the addon was built and
 * ISA-L's shared library (Debian: libisal2) is present; otherwise `loadNativeBackend` throws why.
 * The addon loads ISA-L with RTLD_DEEPBIND so ISA-L's own gf_mul, not node's, is what it calls.
 */

import { existsSync } from 'node:fs';
import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';
import type { CodingBackend } from './backend.js';

/** What the addon exports (see the header of native/dogfs_codec.c). */
export interface NativeAddon {
  readonly loadError: string | null;
  readonly library: string;
  readonly deepBind: boolean;
  readonly hostExportsGfMul: boolean;
  encode(
    tables: Uint8Array,
    k: number,
    rows: number,
    inputs: readonly Uint8Array[],
    outputs: readonly Uint8Array[],
    length: number,
  ): void;
  encodeAsync(
    tables: Uint8Array,
    k: number,
    rows: number,
    inputs: readonly Uint8Array[],
    outputs: readonly Uint8Array[],
    length: number,
  ): Promise<void>;
  genCauchyMatrix(k: number, m: number): Uint8Array;
  invertMatrix(matrix: Uint8Array, n: number): Uint8Array | null;
  initTables(k: number, rows: number, matrix: Uint8Array): Uint8Array;
  gfMul(a: number, b: number): number;
  benchEncode(tables: Uint8Array, k: number, rows: number, length: number, iterations: number): number;
}

/** Where the build puts the addon: <package>/native/build/Release/dogfs_codec.node. */
export function nativeAddonPath(): string {
  // This file runs as dist/src/codec/native.js; the package root is three levels up.
  return fileURLToPath(new URL('../../../native/build/Release/dogfs_codec.node', import.meta.url));
}

let addon: NativeAddon | Error | undefined;

/** The addon with ISA-L loaded, or throws why not. */
export function loadNativeAddon(): NativeAddon {
  if (addon === undefined) {
    try {
      const path = nativeAddonPath();
      if (!existsSync(path))
        throw new Error(`addon not built (${path} missing; see scripts/build-native.mjs)`);
      const loaded = createRequire(import.meta.url)(path) as NativeAddon;
      if (loaded.loadError !== null) throw new Error(`ISA-L not loadable: ${loaded.loadError}`);
      addon = loaded;
    } catch (error) {
      addon = error instanceof Error ? error : new Error(String(error));
    }
  }
  if (addon instanceof Error) throw addon;
  return addon;
}

export function loadNativeBackend(): CodingBackend {
  const isal = loadNativeAddon();
  return {
    name: 'native',
    detail: `ISA-L ec_encode_data via N-API (${isal.library}${isal.deepBind ? ', RTLD_DEEPBIND' : ''})`,
    apply(prepared, inputs, outputs, length) {
      isal.encode(prepared.tables, prepared.cols, prepared.rows, inputs, outputs, length);
    },
    applyAsync(prepared, inputs, outputs, length) {
      return isal.encodeAsync(prepared.tables, prepared.cols, prepared.rows, inputs, outputs, length);
    },
  };
}
