/**
 * A real process hosting the Raft library with the small KV state machine (test/consensus/sim/kv.ts) on
 * group 1, serving RaftKv over gRPC. Used by the real-process consensus test and by `npm run bench:raft`.
 *
 *   node dist/test/raftnode/kv-node.js --id N --peers HOST:PORT,... --dir DIR [--groups G] [--snapshot-every N]
 *     [--prefer-leader N]
 *
 * Node N listens on the N-th address of --peers. With --groups G it hosts groups 1..G (the bench's
 * multi-group runs) and a key's hash picks its group, so every group gets load.
 */
import { mkdirSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { createLogger } from '../../src/common/log.js';
import { asNodeId, type LogIndex } from '../../src/consensus/index.js';
import { openHostStorage } from '../../src/raftnode/durable.js';
import { RaftHost, type StateMachine } from '../../src/raftnode/host.js';
import { RaftKvService } from '../../src/wire/gen/types.js';
import { RpcServer } from '../../src/wire/rpc.js';
import { decodeCommand, KvStateMachine } from '../consensus/sim/kv.js';

const encoder = new TextEncoder();
/**
 * Room for bench:raft's load: up to 256 workers share 8 client sessions, so a session has ~32 calls in
 * flight. With the simulator's 4 kept results, a late call of such a session finds its seq below the floor
 * and is refused (the c=256 errors).
 */
const SESSION_LIMITS = { ttl: 1e12, maxSessions: 1000, maxResultsPerClient: 1024 };

class KvMachineAdapter implements StateMachine {
  machine = new KvStateMachine(SESSION_LIMITS);
  /** The result stays an object: only the proposer (on the leader) encodes it, followers never need it. */
  apply(_index: LogIndex, command: Uint8Array): unknown {
    return this.machine.apply(decodeCommand(command));
  }
  snapshot(): Uint8Array {
    return this.machine.snapshot();
  }
  restore(data: Uint8Array): void {
    this.machine = KvStateMachine.restore(data, SESSION_LIMITS);
  }
}

/** Which group serves a key: spreads load over every hosted group. */
export function groupOfKey(key: string, groups: number): number {
  let h = 2166136261;
  for (let i = 0; i < key.length; i++) h = Math.imul(h ^ key.charCodeAt(i), 16777619);
  return 1 + ((h >>> 0) % groups);
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      id: { type: 'string' },
      peers: { type: 'string' },
      dir: { type: 'string' },
      groups: { type: 'string' },
      'snapshot-every': { type: 'string' },
      'prefer-leader': { type: 'string' },
    },
    strict: true,
  });
  const id = Number(values.id);
  const addrs = (values.peers ?? '').split(',');
  const groups = Number(values.groups ?? '1');
  const dir = values.dir ?? '';
  const myAddr = addrs[id - 1];
  if (!myAddr || !dir || !(groups >= 1))
    throw new Error('usage: kv-node --id N --peers A,B,C --dir DIR [--groups G]');
  mkdirSync(dir, { recursive: true });
  const log = createLogger('warn', { node: id });
  const storage = await openHostStorage(dir);
  const host = new RaftHost({
    nodeId: asNodeId(id),
    peers: addrs.map((addr, i) => ({ nodeId: asNodeId(i + 1), addr })),
    storage,
    log,
    snapshotEvery: Number(values['snapshot-every'] ?? '10000'),
    // Several groups per process: spread their leaders (else one process does every group's leader
    // work), or with --prefer-leader N gather them all on node N (bench:raft measures both).
    balanceLeaders: groups > 1,
    ...(values['prefer-leader'] === undefined
      ? {}
      : { preferredLeader: asNodeId(Number(values['prefer-leader'])) }),
  });
  const machines = new Map<number, KvMachineAdapter>();
  for (let g = 1; g <= groups; g++) {
    const machine = new KvMachineAdapter();
    machines.set(g, machine);
    host.addGroup(g, machine);
  }
  const server = new RpcServer();
  host.start(server);
  server.addService(RaftKvService, {
    Propose: async (request, context) => {
      // With one group there is no key to route by: the command is decoded once, when applied.
      const group = groups === 1 ? 1 : groupOfKey(decodeCommand(request.command).input.key, groups);
      const result = await host.propose(group, request.command, context.deadline);
      return { result: encoder.encode(JSON.stringify(result)) };
    },
    Read: async (request, context) => {
      const group = groupOfKey(request.key, groups);
      await host.readBarrier(group, context.deadline);
      const value = machines.get(group)!.machine.get(request.key);
      return { found: value !== null, value: value ?? '' };
    },
  });
  const [host_, port] = [
    myAddr.slice(0, myAddr.lastIndexOf(':')),
    Number(myAddr.slice(myAddr.lastIndexOf(':') + 1)),
  ];
  await server.listen(host_, port);
  process.stdout.write(`ready ${myAddr}\n`);
  if (process.env['KV_NODE_STATS']) {
    setInterval(() => process.stderr.write(`stats ${id} ${JSON.stringify(host.counters)}\n`), 1000).unref();
  }
  const stop = () => {
    void host
      .close()
      .then(() => server.close(500))
      .then(() => process.exit(0));
  };
  process.once('SIGTERM', stop);
  process.once('SIGINT', stop);
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  main().catch((error: unknown) => {
    process.stderr.write(`kv-node: ${error instanceof Error ? error.message : String(error)}\n`);
    process.exit(1);
  });
}
