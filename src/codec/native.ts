/**
 * codec/native — the two backends in our N-API addon (native/, built by scripts/build-native.mjs):
 *  - native: ISA-L's `ec_encode_data`. Loads only if the addon was built and ISA-L's shared library
 *    (Debian: libisal2) is present. The addon loads ISA-L with RTLD_DEEPBIND so ISA-L's own gf_mul,
 *    not node's, is what it calls.
 *  - simd: our own kernel (native/simd_kernel.c), chosen for the CPU at load: AVX-512+GFNI, AVX2+GFNI
 *    or AVX2. Needs no ISA-L; unavailable where only its scalar fallback would run (wasm is faster).
 * Each loader throws why when its backend cannot load.
 */

import { existsSync } from 'node:fs';
import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';
import type { CodingBackend } from './backend.js';

/** What the addon exports (see the header of native/dogfs_codec.c). */
type CodeFunction = (
  tables: Uint8Array,
  k: number,
  rows: number,
  inputs: readonly Uint8Array[],
  outputs: readonly Uint8Array[],
  length: number,
) => void;
type CodeAsyncFunction = (...args: Parameters<CodeFunction>) => Promise<void>;

export interface NativeAddon {
  readonly loadError: string | null;
  readonly simdKernel: string;
  readonly library: string;
  readonly deepBind: boolean;
  readonly hostExportsGfMul: boolean;
  readonly hasCrc32c: boolean;
  crc32c(data: Uint8Array, initial?: number): number;
  /** ISA-L: `tables` in ec_init_tables layout. */
  encode: CodeFunction;
  encodeAsync: CodeAsyncFunction;
  /** Our kernel: `tables` is the rows×k coefficient matrix. */
  simdEncode: CodeFunction;
  simdEncodeAsync: CodeAsyncFunction;
  genCauchyMatrix(k: number, m: number): Uint8Array;
  invertMatrix(matrix: Uint8Array, n: number): Uint8Array | null;
  initTables(k: number, rows: number, matrix: Uint8Array): Uint8Array;
  gfMul(a: number, b: number): number;
  benchEncode(tables: Uint8Array, k: number, rows: number, length: number, iterations: number): number;
  /** glibc mallopt(M_MMAP_THRESHOLD, M_TRIM_THRESHOLD); false without glibc. Absent in older builds. */
  retainFreedMemory?(mmapThreshold: number, trimThreshold: number): boolean;
  /** Zeroed memory at an address that is a multiple of `alignment`. Absent in older builds. */
  alignedBuffer?(bytes: number, alignment: number): Buffer;
}

/**
 * Where the build puts the addon: <package>/native/build/Release/dogfs_codec.node, unless
 * DOGFS_CODEC_ADDON names another file (tests point it nowhere to prove the fallback to wasm).
 */
export function nativeAddonPath(): string {
  const override = process.env['DOGFS_CODEC_ADDON'];
  if (override) return override;
  // This file runs as dist/src/codec/native.js; the package root is three levels up.
  return fileURLToPath(new URL('../../../native/build/Release/dogfs_codec.node', import.meta.url));
}

let addon: NativeAddon | Error | undefined;

/** The addon (whether or not ISA-L loaded), or throws why not. */
export function loadAddon(): NativeAddon {
  if (addon === undefined) {
    try {
      const path = nativeAddonPath();
      if (!existsSync(path))
        throw new Error(`addon not built (${path} missing; see scripts/build-native.mjs)`);
      addon = createRequire(import.meta.url)(path) as NativeAddon;
    } catch (error) {
      addon = error instanceof Error ? error : new Error(String(error));
    }
  }
  if (addon instanceof Error) throw addon;
  return addon;
}

/** The addon with ISA-L loaded, or throws why not. */
export function loadNativeAddon(): NativeAddon {
  const loaded = loadAddon();
  if (loaded.loadError !== null) throw new Error(`ISA-L not loadable: ${loaded.loadError}`);
  return loaded;
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

export function loadSimdBackend(): CodingBackend {
  const own = loadAddon();
  // An addon built before the kernel existed has neither: it must not pass for one with it.
  if (typeof own.simdEncode !== 'function' || typeof own.simdKernel !== 'string')
    throw new Error('the codec addon has no C kernel (built before it existed: npm run build:codec)');
  if (own.simdKernel === 'scalar')
    throw new Error('no AVX2 on this CPU: only the scalar kernel, slower than wasm');
  return {
    name: 'simd',
    detail: `DogFS C kernel, ${own.simdKernel}`,
    apply(prepared, inputs, outputs, length) {
      own.simdEncode(prepared.matrix, prepared.cols, prepared.rows, inputs, outputs, length);
    },
    applyAsync(prepared, inputs, outputs, length) {
      return own.simdEncodeAsync(prepared.matrix, prepared.cols, prepared.rows, inputs, outputs, length);
    },
  };
}

/** Blocks below this come from the heap (so freed ones are reused) rather than from their own mmap. */
export const RETAIN_MMAP_THRESHOLD_BYTES = 4 * 1024 * 1024;
/** Freed heap bytes kept mapped for reuse before any is given back to the kernel. */
export const RETAIN_TRIM_THRESHOLD_BYTES = 32 * 1024 * 1024;

let retaining: boolean | undefined;

/**
 * Tunes this process's allocator (glibc malloc) to keep freed memory for reuse, for processes that
 * stream bytes through buffers of about a MiB which they cannot reuse themselves (a Readable's consumer
 * owns what it was pushed; fs.ReadStream allocates each read). By default glibc gives such blocks back
 * to the kernel when they are freed (munmap, or trimming the heap past 2 MiB), and every new one then
 * faults in fresh pages — on this VM's kernel, which hands freed memory back to the hypervisor, a page
 * fault costs many times the copy into the page (1 GiB copied into fresh 1 MiB buffers: ~0.35 s, ~0.1 s
 * of it system time; with these thresholds ~0.07 s). The cost: up to RETAIN_TRIM_THRESHOLD_BYTES of
 * freed memory stays resident. Returns whether the allocator was tuned: false without the addon (the
 * WebAssembly fallback) or without glibc, where allocation simply stays as it was. Idempotent.
 */
export function retainFreedMemory(): boolean {
  if (retaining === undefined) {
    let own: NativeAddon | undefined;
    try {
      own = loadAddon();
    } catch {
      // No addon: the codec runs on WebAssembly, and allocation stays as glibc's defaults have it.
      own = undefined;
    }
    retaining = own?.retainFreedMemory?.(RETAIN_MMAP_THRESHOLD_BYTES, RETAIN_TRIM_THRESHOLD_BYTES) === true;
  }
  return retaining;
}

/**
 * An allocator of zeroed Buffers whose memory starts at a multiple of `alignment` (a power of two from
 * 512 B to 2 MiB, dividing `bytes`), as O_DIRECT file I/O requires; at 2 MiB the memory is advised to be
 * huge pages. Node's own allocations promise no such alignment (large ones come from malloc, 16-byte
 * aligned). Undefined without the addon (or with one built before it had this): the caller then does
 * without, e.g. the chunk store falls back to buffered writes.
 */
export function alignedAllocator(): ((bytes: number, alignment: number) => Buffer) | undefined {
  let own: NativeAddon;
  try {
    own = loadAddon();
  } catch {
    return undefined;
  }
  const allocate = own.alignedBuffer;
  return allocate === undefined ? undefined : (bytes, alignment) => allocate(bytes, alignment);
}
