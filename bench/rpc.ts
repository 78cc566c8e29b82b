/**
 * npm run bench:rpc — CPU per unary call of DogFS's RPC layer, over its lean framing (wire/lean*.ts)
 * and over gRPC (wire/grpc-client.ts + wire/grpc-server.ts), against @grpc/grpc-js, the reference
 * implementation, in the same run.
 *
 * The server runs in a child process, the client here; 64 calls in flight, 300-byte requests echoed back.
 * Five pairings (client × server): dogfs-lean × dogfs, dogfs × dogfs, dogfs × grpc-js, grpc-js × dogfs,
 * grpc-js × grpc-js ("dogfs" as a client is its gRPC transport; the lean one reaches only DogFS).
 * Prints calls/s and µs of CPU per call on each side (from /proc/PID/stat and process.cpuUsage), one
 * JSON object per line. BENCH_SECONDS (default 4) sets each measurement's length.
 */
import { fork } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import * as grpc from '@grpc/grpc-js';
import { RaftKvService } from '../src/wire/gen/types.js';
import { RpcChannel, RpcServer } from '../src/wire/rpc.js';
import { closedLoop, emit, machine } from './lib.js';

const SECONDS = Number(process.env['BENCH_SECONDS'] ?? '4');
const CONCURRENCY = 64;
const PATH = `/${RaftKvService.name}/Propose`;
const raw = (b: Buffer): Buffer => b;

type Impl = 'dogfs' | 'dogfs-lean' | 'grpc-js';

async function serve(impl: Impl): Promise<number> {
  if (impl !== 'grpc-js') {
    const server = new RpcServer();
    server.addService(RaftKvService, {
      Propose: (request) => ({ result: request.command }),
      Read: () => ({ found: false, value: '' }),
    });
    return server.listen('127.0.0.1', 0);
  }
  const server = new grpc.Server();
  server.addService(
    {
      Propose: {
        path: PATH,
        requestStream: false,
        responseStream: false,
        requestSerialize: raw,
        requestDeserialize: raw,
        responseSerialize: raw,
        responseDeserialize: raw,
      },
    },
    {
      // The request and response messages have the same shape (one bytes field 1): echo the bytes.
      Propose: (call: grpc.ServerUnaryCall<Buffer, Buffer>, callback: grpc.sendUnaryData<Buffer>) =>
        callback(null, call.request),
    },
  );
  return new Promise((resolve, reject) =>
    server.bindAsync('127.0.0.1:0', grpc.ServerCredentials.createInsecure(), (e, port) =>
      e ? reject(e) : resolve(port),
    ),
  );
}

function caller(
  impl: Impl,
  address: string,
): { call: (request: Buffer) => Promise<unknown>; close: () => void } {
  if (impl !== 'grpc-js') {
    const channel = new RpcChannel(address, { transport: impl === 'dogfs' ? 'grpc' : 'lean' });
    return { call: (request) => channel.callRaw(PATH, request), close: () => channel.close() };
  }
  const client = new grpc.Client(address, grpc.credentials.createInsecure());
  return {
    call: (request) =>
      new Promise((resolve, reject) =>
        client.makeUnaryRequest(PATH, raw, raw, request, { deadline: Date.now() + 10_000 }, (e, r) =>
          e ? reject(e) : resolve(r),
        ),
      ),
    close: () => client.close(),
  };
}

function cpuSecondsOf(pid: number): number {
  const fields = readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1]!.split(' ');
  return (Number(fields[11]) + Number(fields[12])) / 100;
}

async function measure(clientImpl: Impl, serverImpl: Impl): Promise<void> {
  const child = fork(fileURLToPath(import.meta.url), ['serve', serverImpl], { stdio: 'inherit' });
  try {
    const port = await new Promise<number>((resolve) => child.once('message', (m) => resolve(Number(m))));
    const { call, close } = caller(clientImpl, `127.0.0.1:${port}`);
    // Field 1 (bytes) of 297 bytes: a valid KvProposeRequest for the DogFS server's decoder.
    const request = Buffer.concat([Buffer.from([0x0a, 0xa9, 0x02]), Buffer.alloc(297, 7)]);
    await closedLoop(CONCURRENCY, 1000, () => call(request).then(() => {}));
    const server0 = cpuSecondsOf(child.pid!);
    const client0 = process.cpuUsage();
    const r = await closedLoop(CONCURRENCY, SECONDS * 1000, () => call(request).then(() => {}));
    const clientCpu = process.cpuUsage(client0);
    const serverCpu = cpuSecondsOf(child.pid!) - server0;
    close();
    // closedLoop's own warm-up (1 s at most) and drain are inside the CPU window: count their calls too.
    const calls = r.opsPerSec * (r.seconds + Math.min(1, SECONDS / 5));
    const extra = { client: clientImpl, server: serverImpl, concurrency: CONCURRENCY, errors: r.errors };
    emit({ bench: 'rpc', metric: 'calls', value: Math.round(r.opsPerSec), unit: 'calls/s', ...extra });
    emit({
      bench: 'rpc',
      metric: 'client_cpu_per_call',
      value: Math.round(((clientCpu.user + clientCpu.system) / calls) * 10) / 10,
      unit: 'us',
      ...extra,
    });
    emit({
      bench: 'rpc',
      metric: 'server_cpu_per_call',
      value: Math.round((serverCpu * 1e6 * 10) / calls) / 10,
      unit: 'us',
      ...extra,
    });
  } finally {
    child.kill('SIGKILL');
  }
}

if (process.argv[2] === 'serve') {
  const port = await serve(process.argv[3] as Impl);
  process.send?.(port);
} else {
  emit({ bench: 'rpc', metric: 'machine', value: 0, unit: 'none', ...machine() });
  const all: [Impl, Impl][] = [
    ['dogfs-lean', 'dogfs'],
    ['dogfs', 'dogfs'],
    ['dogfs', 'grpc-js'],
    ['grpc-js', 'dogfs'],
    ['grpc-js', 'grpc-js'],
  ];
  // BENCH_PAIRS=dogfs-lean:dogfs (comma-separated client:server) measures only those pairings.
  const pairs = process.env['BENCH_PAIRS']?.split(',').map((p) => p.split(':') as [Impl, Impl]);
  for (const [client, server] of all)
    if (!pairs || pairs.some(([c, s]) => c === client && s === server)) await measure(client, server);
  process.exit(0);
}
