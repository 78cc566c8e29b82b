/**
 * codec/backend — the one interface every coding backend implements. Reed-Solomon encode, reconstruct
 * and verify all reduce to one operation, a GF(2^8) matrix times a vector of shards:
 *   outputs[r][i] = XOR over j of matrix[r][j] · inputs[j][i],   for i < length.
 * A backend only has to do that fast; matrices, inversion, caching and argument checks live in rs.ts.
 */

/**
 * native: ISA-L through our addon; simd: our own C kernel in the same addon (AVX-512/AVX2, GFNI where the
 * CPU has it), for machines without ISA-L; wasm: WebAssembly SIMD; reference: plain TypeScript.
 */
export type BackendName = 'native' | 'simd' | 'wasm' | 'reference';

/** A coefficient matrix made ready for one backend (built once per erasure pattern, then cached). */
export interface PreparedMatrix {
  readonly rows: number;
  readonly cols: number;
  /** rows×cols coefficients, row-major. */
  readonly matrix: Uint8Array;
  /** ISA-L `ec_init_tables` layout: 32 bytes per coefficient (see gf256.splitNibbleTables). */
  readonly tables: Uint8Array;
}

export interface CodingBackend {
  readonly name: BackendName;
  /** One line for reports: what the backend runs on (library, instruction set). */
  readonly detail: string;
  /**
   * outputs[r] = Σ_j matrix[r][j]·inputs[j] over the first `length` bytes. Arguments are already
   * checked: inputs.length = cols, outputs.length = rows, every buffer holds at least `length` bytes,
   * and no output aliases an input.
   */
  apply(
    prepared: PreparedMatrix,
    inputs: readonly Uint8Array[],
    outputs: readonly Uint8Array[],
    length: number,
  ): void;
  /** As `apply`, but off the JavaScript thread, so the event loop keeps running while it works. */
  applyAsync(
    prepared: PreparedMatrix,
    inputs: readonly Uint8Array[],
    outputs: readonly Uint8Array[],
    length: number,
  ): Promise<void>;
}
