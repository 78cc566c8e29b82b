/**
 * codec/offthread-worker — the worker thread behind offthread.ts: codes each job in the shared staging
 * area with the wasm kernel (its own instance) or the reference code, then says it is done.
 */

import { parentPort } from 'node:worker_threads';
import type { OffThreadJob, OffThreadResult } from './offthread.js';
import { applyReference } from './reference.js';
import { compileWasmKernel, WasmCoder } from './wasm.js';

let wasm: WasmCoder | undefined;
let staging: Uint8Array | undefined;

parentPort?.on('message', (job: OffThreadJob) => {
  let result: OffThreadResult = { id: job.id };
  try {
    if (job.staging) staging = new Uint8Array(job.staging);
    if (!staging) throw new Error('no staging area');
    const { cols, rows } = job.prepared;
    const view = (index: number) => staging!.subarray(index * job.length, (index + 1) * job.length);
    const inputs = Array.from({ length: cols }, (_, j) => view(j));
    const outputs = Array.from({ length: rows }, (_, r) => view(cols + r));
    if (job.backend === 'wasm') {
      wasm ??= new WasmCoder(compileWasmKernel());
      wasm.apply(job.prepared, inputs, outputs, job.length);
    } else {
      applyReference(job.prepared, inputs, outputs, job.length);
    }
  } catch (error) {
    result = { id: job.id, error: error instanceof Error ? error.message : String(error) };
  }
  parentPort?.postMessage(result);
});
