/**
 * codec/backends — which backend does the coding on this machine, chosen once, on first use, and
 * reported. Preference: native (ISA-L through our N-API addon) → simd (our own C kernel, same addon) →
 * wasm (WebAssembly SIMD) → reference. `DOGFS_CODEC_BACKEND=native|simd|wasm|reference` (or `selectBackend`) forces one; forcing a backend that
 * cannot load is an error, not a silent fallback, so tests that force the fallback really test it.
 */

import { assert } from '../common/assert.js';
import type { BackendName, CodingBackend } from './backend.js';
import { CodecError } from './errors.js';
import { loadNativeBackend, loadSimdBackend } from './native.js';
import { referenceBackend } from './reference.js';
import { ReedSolomon } from './rs.js';
import { loadWasmBackend } from './wasm.js';

export const BACKEND_PREFERENCE: readonly BackendName[] = ['native', 'simd', 'wasm', 'reference'];

type Loader = () => CodingBackend;

/** Loaders for the optional backends; each throws (with the reason) when it cannot load. */
const loaders: Record<BackendName, Loader> = {
  native: loadNativeBackend,
  simd: loadSimdBackend,
  wasm: loadWasmBackend,
  reference: () => referenceBackend,
};

const loaded = new Map<BackendName, CodingBackend | Error>();

function tryLoad(name: BackendName): CodingBackend | Error {
  let result = loaded.get(name);
  if (result === undefined) {
    try {
      result = loaders[name]();
    } catch (error) {
      result = error instanceof Error ? error : new Error(String(error));
    }
    loaded.set(name, result);
  }
  return result;
}

/** The backend called `name`; throws BACKEND_UNAVAILABLE (with the reason) if it cannot load here. */
export function backendByName(name: BackendName): CodingBackend {
  if (!BACKEND_PREFERENCE.includes(name)) {
    throw new CodecError('INVALID_ARGUMENT', `unknown codec backend '${name}'`);
  }
  const result = tryLoad(name);
  if (result instanceof Error) {
    throw new CodecError('BACKEND_UNAVAILABLE', `codec backend '${name}' unavailable: ${result.message}`);
  }
  return result;
}

let active: CodingBackend | undefined;
let fallbackNoted = false;

function forcedBackendFromEnvironment(): BackendName | undefined {
  const forced = process.env['DOGFS_CODEC_BACKEND'];
  if (forced === undefined || forced === '' || forced === 'auto') return undefined;
  if (!(BACKEND_PREFERENCE as readonly string[]).includes(forced)) {
    throw new CodecError(
      'INVALID_ARGUMENT',
      `DOGFS_CODEC_BACKEND='${forced}' is not one of ${BACKEND_PREFERENCE}`,
    );
  }
  return forced as BackendName;
}

/** The backend new codecs use by default: chosen on first call, then fixed until `selectBackend`. */
export function activeBackend(): CodingBackend {
  if (active) return active;
  const forced = forcedBackendFromEnvironment();
  if (forced) {
    active = backendByName(forced);
    return active;
  }
  for (const name of BACKEND_PREFERENCE) {
    const result = tryLoad(name);
    if (result instanceof Error) continue;
    active = result;
    break;
  }
  assert(active !== undefined, 'the reference backend always loads');
  // The simd kernel codes as fast as ISA-L (bench:codec), so only a fall to the slower backends is worth a
  // warning: said once per process, so an operator knows why encoding is slower than it could be. A
  // missing ISA-L alone is a detail of `dogfs admin report`, not a line on every command's stderr.
  if (active.name !== 'native' && active.name !== 'simd' && !fallbackNoted) {
    fallbackNoted = true;
    const reason = tryLoad('native');
    process.emitWarning(
      `dogfs codec: native ISA-L backend unavailable (${reason instanceof Error ? reason.message : '?'}); using ${active.name}`,
      { code: 'DOGFS_CODEC_FALLBACK' },
    );
  }
  return active;
}

/** Name of the active backend, for `dogfs admin report` and benches. */
export function activeBackendName(): BackendName {
  return activeBackend().name;
}

/** Force the default backend (e.g. from a command-line flag). Throws if it cannot load. */
export function selectBackend(name: BackendName): CodingBackend {
  active = backendByName(name);
  return active;
}

export interface BackendReport {
  readonly active: BackendName;
  readonly backends: readonly { name: BackendName; available: boolean; detail: string }[];
}

/** Every backend, whether it loads here, and why not — for reports. */
export function backendReport(): BackendReport {
  return {
    active: activeBackend().name,
    backends: BACKEND_PREFERENCE.map((name) => {
      const result = tryLoad(name);
      return result instanceof Error
        ? { name, available: false, detail: result.message }
        : { name, available: true, detail: result.detail };
    }),
  };
}

export interface CodecOptions {
  /** Use this backend instead of the active one. */
  readonly backend?: BackendName;
}

/** A Reed-Solomon codec for rs-K-M on the active (or the given) backend. */
export function createCodec(k: number, m: number, options: CodecOptions = {}): ReedSolomon {
  const backend = options.backend ? backendByName(options.backend) : activeBackend();
  return new ReedSolomon(k, m, backend);
}
