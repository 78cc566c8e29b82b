/**
 * codec/offthread — async coding for the backends that run JavaScript or WebAssembly (the native one
 * has the libuv pool): one worker thread, started on first use, runs the same wasm kernel or reference
 * code, so the event loop never waits on a large job.
 *
 * Shards travel through one SharedArrayBuffer staging area that only ever grows: the main thread copies
 * a job's inputs in, the worker codes them into the outputs region, the main thread copies the outputs
 * into the caller's buffers. Fresh buffers per job would cost more than the copies on machines where
 * first-touch page faults are slow. One job at a time uses the staging area; later ones wait their turn
 * (their inputs are read when their turn comes, so callers must leave them alone until the promise
 * settles — as with every async codec call).
 */

import { Worker } from 'node:worker_threads';
import type { PreparedMatrix } from './backend.js';

export type OffThreadBackend = 'wasm' | 'reference';

/** What the main thread posts to the worker: inputs at j·length, outputs at (cols + r)·length. */
export interface OffThreadJob {
  readonly id: number;
  readonly backend: OffThreadBackend;
  readonly prepared: PreparedMatrix;
  readonly length: number;
  /** Sent when the staging area was (re)allocated; the worker keeps the latest. */
  readonly staging?: SharedArrayBuffer;
}

/** What the worker posts back. */
export interface OffThreadResult {
  readonly id: number;
  readonly error?: string;
}

interface Job {
  readonly id: number;
  readonly backend: OffThreadBackend;
  readonly prepared: PreparedMatrix;
  readonly inputs: readonly Uint8Array[];
  readonly outputs: readonly Uint8Array[];
  readonly length: number;
  readonly resolve: () => void;
  readonly reject: (error: Error) => void;
}

let worker: Worker | undefined;
let staging: Uint8Array | undefined;
let stagingSent = false;
let nextId = 0;
let running: Job | undefined;
const queue: Job[] = [];

function startWorker(): Worker {
  const w = new Worker(new URL('./offthread-worker.js', import.meta.url));
  stagingSent = false;
  // An idle worker must not keep the process alive; it is ref'd only while a job runs.
  w.unref();
  w.on('message', (message: OffThreadResult) => {
    const job = running;
    if (!job || job.id !== message.id) return;
    running = undefined;
    if (message.error !== undefined) job.reject(new Error(`codec worker: ${message.error}`));
    else {
      const { cols } = job.prepared;
      job.outputs.forEach((out, r) => {
        const at = (cols + r) * job.length;
        out.set(staging!.subarray(at, at + job.length));
      });
      job.resolve();
    }
    startNext();
  });
  w.on('error', (error) => {
    worker = undefined;
    running?.reject(error);
    running = undefined;
    startNext();
  });
  return w;
}

function startNext(): void {
  // Bounded by the queue: each round takes one job off it.
  for (;;) {
    const job = queue.shift();
    if (!job) {
      worker?.unref();
      return;
    }
    try {
      start(job);
      return;
    } catch (error) {
      // Runs inside the worker's event handlers: an exception there would end the process and leave
      // this job's promise unsettled. The job fails; the next one gets its turn.
      running = undefined;
      job.reject(error instanceof Error ? error : new Error(String(error)));
    }
  }
}

function start(job: Job): void {
  worker ??= startWorker();
  const { cols, rows } = job.prepared;
  const needed = (cols + rows) * job.length;
  if (!staging || staging.length < needed) {
    // What this job needs (in whole MiB), not double the last: staging is never given back, and doubling
    // kept up to twice the largest job's memory for the life of the process.
    staging = new Uint8Array(new SharedArrayBuffer(Math.ceil(needed / 2 ** 20) * 2 ** 20));
    stagingSent = false;
  }
  job.inputs.forEach((input, j) => {
    staging!.set(input.subarray(0, job.length), j * job.length);
  });
  const message: OffThreadJob = {
    id: job.id,
    backend: job.backend,
    prepared: { rows, cols, matrix: job.prepared.matrix, tables: job.prepared.tables },
    length: job.length,
    ...(stagingSent ? {} : { staging: staging.buffer as SharedArrayBuffer }),
  };
  running = job;
  worker.ref();
  worker.postMessage(message);
  // Only once it is on its way: a failed post must send the memory with the next job.
  stagingSent = true;
}

export function runOffThread(
  backend: OffThreadBackend,
  prepared: PreparedMatrix,
  inputs: readonly Uint8Array[],
  outputs: readonly Uint8Array[],
  length: number,
): Promise<void> {
  return new Promise<void>((resolve, reject) => {
    queue.push({ id: nextId++, backend, prepared, inputs, outputs, length, resolve, reject });
    if (!running) startNext();
  });
}
