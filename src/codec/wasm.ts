/**
 * codec/wasm — the portable backend: the WebAssembly SIMD kernel in wasm/rs.ts (AssemblyScript, built to
 * the committed wasm/rs.wasm by scripts/build-wasm.mjs). Runs wherever Node runs; used when the native
 * ISA-L backend is unavailable.
 *
 * WebAssembly cannot read the caller's Buffers, so shards are coded in blocks: each block of every
 * input is copied into linear memory, coded there (the block set stays in L2 cache), and the outputs
 * copied back out. Linear memory is sized once, for the largest geometry, and never grows after.
 */

import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import type { CodingBackend, PreparedMatrix } from './backend.js';
import { runOffThread } from './offthread.js';
import { MAX_TOTAL_SHARDS } from './rs.js';

/** Bytes of each shard coded per kernel call. */
const BLOCK = 16 * 1024;
/** The kernel steps 32 bytes at a time; blocks are padded up to this. */
const STEP = 32;
const TABLE_BYTES = MAX_TOTAL_SHARDS * MAX_TOTAL_SHARDS * 32;

// The WebAssembly global, typed here: this package's TypeScript lib (ES2023, no DOM) does not declare it.
interface WasmMemory {
  readonly buffer: ArrayBuffer;
  grow(pages: number): number;
}
/** A compiled module (opaque here). */
export interface WasmModule {
  readonly compiledWasmModule: unique symbol;
}
interface WasmApi {
  Module: new (bytes: Uint8Array) => WasmModule;
  Instance: new (module: WasmModule, imports: object) => { readonly exports: object };
}
const WebAssemblyApi = (globalThis as unknown as { WebAssembly: WasmApi }).WebAssembly;

interface KernelExports {
  readonly memory: WasmMemory;
  heapBase(): number;
  mulAdd(
    tables: number,
    cols: number,
    rows: number,
    input: number,
    output: number,
    stride: number,
    length: number,
  ): void;
}

export function wasmModulePath(): string {
  // This file runs as dist/src/codec/wasm.js; the package root is three levels up.
  return fileURLToPath(new URL('../../../wasm/rs.wasm', import.meta.url));
}

/** One instance of the kernel with its own linear memory; not shared between threads. */
export class WasmCoder {
  private readonly kernel: KernelExports;
  private readonly memory: Uint8Array;
  private readonly tablesAt: number;
  private readonly inputsAt: number;
  private readonly outputsAt: number;
  /** The tables currently in linear memory, so repeated calls with one matrix skip the copy. */
  private loadedTables: Uint8Array | undefined;

  constructor(module: WasmModule) {
    const instance = new WebAssemblyApi.Instance(module, {});
    this.kernel = instance.exports as unknown as KernelExports;
    const base = (this.kernel.heapBase() + 63) & ~63;
    this.tablesAt = base;
    this.inputsAt = base + TABLE_BYTES;
    this.outputsAt = this.inputsAt + MAX_TOTAL_SHARDS * BLOCK;
    const needed = this.outputsAt + MAX_TOTAL_SHARDS * BLOCK;
    const have = this.kernel.memory.buffer.byteLength;
    if (needed > have) this.kernel.memory.grow(Math.ceil((needed - have) / 65536));
    this.memory = new Uint8Array(this.kernel.memory.buffer);
  }

  apply(
    prepared: PreparedMatrix,
    inputs: readonly Uint8Array[],
    outputs: readonly Uint8Array[],
    length: number,
  ): void {
    const { rows, cols, tables } = prepared;
    const memory = this.memory;
    if (this.loadedTables !== tables) {
      memory.set(tables, this.tablesAt);
      this.loadedTables = tables;
    }
    for (let offset = 0; offset < length; offset += BLOCK) {
      const n = Math.min(BLOCK, length - offset);
      for (let j = 0; j < cols; j++)
        memory.set(inputs[j]!.subarray(offset, offset + n), this.inputsAt + j * BLOCK);
      const padded = Math.ceil(n / STEP) * STEP;
      this.kernel.mulAdd(this.tablesAt, cols, rows, this.inputsAt, this.outputsAt, BLOCK, padded);
      for (let r = 0; r < rows; r++) {
        const at = this.outputsAt + r * BLOCK;
        outputs[r]!.set(memory.subarray(at, at + n), offset);
      }
    }
  }
}

let compiled: WasmModule | undefined;

export function compileWasmKernel(): WasmModule {
  compiled ??= new WebAssemblyApi.Module(readFileSync(wasmModulePath()));
  return compiled;
}

export function loadWasmBackend(): CodingBackend {
  const coder = new WasmCoder(compileWasmKernel());
  return {
    name: 'wasm',
    detail: 'WebAssembly SIMD (i8x16.swizzle split-nibble tables)',
    apply: (prepared, inputs, outputs, length) => coder.apply(prepared, inputs, outputs, length),
    applyAsync: (prepared, inputs, outputs, length) =>
      runOffThread('wasm', prepared, inputs, outputs, length),
  };
}
