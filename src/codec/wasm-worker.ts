/**
 * codec/wasm-worker — the worker thread behind the wasm backend's async calls: it owns its own
 * instance of the kernel and codes whatever the main thread posts (see wasm.ts, runInWorker).
 */

import { parentPort } from 'node:worker_threads';
import type { PreparedMatrix } from './backend.js';
import { compileWasmKernel, WasmCoder } from './wasm.js';

interface Job {
  readonly id: number;
  readonly prepared: PreparedMatrix;
  readonly inputs: Uint8Array[];
  readonly length: number;
}

const coder = new WasmCoder(compileWasmKernel());

parentPort?.on('message', (job: Job) => {
  try {
    const outputs = Array.from({ length: job.prepared.rows }, () => new Uint8Array(job.length));
    coder.apply(job.prepared, job.inputs, outputs, job.length);
    parentPort?.postMessage(
      { id: job.id, outputs },
      outputs.map((o) => o.buffer as ArrayBuffer),
    );
  } catch (error) {
    parentPort?.postMessage({ id: job.id, error: error instanceof Error ? error.message : String(error) });
  }
});
