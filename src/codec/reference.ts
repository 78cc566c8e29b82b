/**
 * codec/reference — the reference backend: the matrix product written out in plain TypeScript with the
 * full 64 KiB multiplication table. Slow (hundreds of MB/s) and obviously correct; the tests' oracle for
 * the fast backends, and the last fallback.
 */

import type { CodingBackend, PreparedMatrix } from './backend.js';
import { MUL_TABLE } from './gf256.js';
import { runOffThread } from './offthread.js';

export function applyReference(
  prepared: PreparedMatrix,
  inputs: readonly Uint8Array[],
  outputs: readonly Uint8Array[],
  length: number,
): void {
  const { rows, cols, matrix } = prepared;
  for (let r = 0; r < rows; r++) {
    const out = outputs[r]!;
    out.fill(0, 0, length);
    for (let j = 0; j < cols; j++) {
      const coefficient = matrix[r * cols + j]!;
      if (coefficient === 0) continue;
      const input = inputs[j]!;
      if (coefficient === 1) {
        for (let i = 0; i < length; i++) out[i] = out[i]! ^ input[i]!;
        continue;
      }
      const row = MUL_TABLE.subarray(coefficient * 256, coefficient * 256 + 256);
      for (let i = 0; i < length; i++) out[i] = out[i]! ^ row[input[i]!]!;
    }
  }
}

export const referenceBackend: CodingBackend = {
  name: 'reference',
  detail: 'plain TypeScript, table lookups',
  apply: applyReference,
  applyAsync: (prepared, inputs, outputs, length) =>
    runOffThread('reference', prepared, inputs, outputs, length),
};
