/**
 * codec/gf256 — arithmetic in GF(2^8) with ISA-L's field polynomial x^8+x^4+x^3+x^2+1 (0x11d) and
 * generator 2, and the matrices Reed-Solomon needs. Every backend multiplies with these same matrices,
 * so what they compute is defined here, once.
 *
 * Coding matrix: ISA-L's `gf_gen_cauchy1_matrix`. Rows 0..K-1 are the identity (the code is
 * systematic: data shards are stored as they are); parity row i (K ≤ i < K+M) has entries
 * 1 / (i XOR j) for column j. Every square submatrix of a Cauchy matrix is invertible, so any K of the
 * K+M shards recover the data, for every K+M ≤ 256. (ISA-L's other construction, `gf_gen_rs_matrix`, is
 * a Vandermonde-like matrix that is not guaranteed invertible for all erasure patterns, which is why
 * we do not use it.)
 */

import { CodecError } from './errors.js';

export const GF_POLYNOMIAL = 0x11d;

/** exp[i] = 2^i for i in [0, 510), doubled so that exp[log a + log b] needs no modulo. */
const EXP = new Uint8Array(512);
/** log[a] for a ≠ 0; log[0] is unused. */
const LOG = new Uint8Array(256);
{
  let x = 1;
  for (let i = 0; i < 255; i++) {
    EXP[i] = x;
    LOG[x] = i;
    x <<= 1;
    if (x & 0x100) x ^= GF_POLYNOMIAL;
  }
  for (let i = 255; i < 512; i++) EXP[i] = EXP[i - 255]!;
}

export function gfMul(a: number, b: number): number {
  if (a === 0 || b === 0) return 0;
  return EXP[LOG[a]! + LOG[b]!]!;
}

export function gfInv(a: number): number {
  if (a === 0) throw new CodecError('INVALID_ARGUMENT', 'zero has no inverse in GF(2^8)');
  return EXP[255 - LOG[a]!]!;
}

/**
 * The full multiplication table: MUL_TABLE[c * 256 + x] = c·x. 64 KiB; the reference backend reads one
 * 256-byte row per coefficient.
 */
export const MUL_TABLE: Uint8Array = (() => {
  const table = new Uint8Array(256 * 256);
  for (let c = 0; c < 256; c++) for (let x = 0; x < 256; x++) table[c * 256 + x] = gfMul(c, x);
  return table;
})();

/**
 * ISA-L `gf_gen_cauchy1_matrix(a, K+M, K)`: a (K+M)×K row-major matrix, identity on top, Cauchy below.
 */
export function cauchyEncodeMatrix(k: number, m: number): Uint8Array {
  const rows = k + m;
  const matrix = new Uint8Array(rows * k);
  for (let i = 0; i < k; i++) matrix[i * k + i] = 1;
  for (let i = k; i < rows; i++) for (let j = 0; j < k; j++) matrix[i * k + j] = gfInv(i ^ j);
  return matrix;
}

/**
 * Inverse of the n×n row-major matrix `input` by Gauss-Jordan elimination (as ISA-L's
 * `gf_invert_matrix`; the inverse is unique, so any correct method gives the same bytes).
 * Returns undefined if the matrix is singular. Does not modify `input`.
 */
export function invertMatrix(input: Uint8Array, n: number): Uint8Array | undefined {
  const a = Uint8Array.from(input);
  const inv = new Uint8Array(n * n);
  for (let i = 0; i < n; i++) inv[i * n + i] = 1;
  for (let col = 0; col < n; col++) {
    // Find a row with a non-zero pivot and swap it into place.
    let pivot = col;
    while (pivot < n && a[pivot * n + col] === 0) pivot++;
    if (pivot === n) return undefined;
    if (pivot !== col) {
      for (let j = 0; j < n; j++) {
        const ta = a[col * n + j]!;
        a[col * n + j] = a[pivot * n + j]!;
        a[pivot * n + j] = ta;
        const ti = inv[col * n + j]!;
        inv[col * n + j] = inv[pivot * n + j]!;
        inv[pivot * n + j] = ti;
      }
    }
    // Scale the pivot row so the pivot is 1.
    const scale = gfInv(a[col * n + col]!);
    for (let j = 0; j < n; j++) {
      a[col * n + j] = gfMul(a[col * n + j]!, scale);
      inv[col * n + j] = gfMul(inv[col * n + j]!, scale);
    }
    // Eliminate the column from every other row.
    for (let row = 0; row < n; row++) {
      if (row === col) continue;
      const factor = a[row * n + col]!;
      if (factor === 0) continue;
      for (let j = 0; j < n; j++) {
        a[row * n + j] = a[row * n + j]! ^ gfMul(factor, a[col * n + j]!);
        inv[row * n + j] = inv[row * n + j]! ^ gfMul(factor, inv[col * n + j]!);
      }
    }
  }
  return inv;
}

/**
 * Split-nibble multiplication tables in ISA-L's `ec_init_tables` layout: for each output row r and input
 * column j, 32 bytes at ((r·cols) + j)·32: c·x for x = 0..15 (low nibble), then c·(x<<4) for x = 0..15
 * (high nibble), where c = matrix[r][j]. Since multiplication distributes over XOR,
 * c·b = low[b & 15] ^ high[b >> 4]: two 16-entry lookups, which is what a byte shuffle does.
 */
export function splitNibbleTables(matrix: Uint8Array, rows: number, cols: number): Uint8Array {
  const tables = new Uint8Array(rows * cols * 32);
  for (let r = 0; r < rows; r++) {
    for (let j = 0; j < cols; j++) {
      const c = matrix[r * cols + j]!;
      const base = (r * cols + j) * 32;
      for (let x = 0; x < 16; x++) {
        tables[base + x] = gfMul(c, x);
        tables[base + 16 + x] = gfMul(c, x << 4);
      }
    }
  }
  return tables;
}
