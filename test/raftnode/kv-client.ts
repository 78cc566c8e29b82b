/**
 * A RaftKv client for the real-process consensus test and bench: one client session (id + sequence), a
 * retried command keeps its sequence number (exactly-once), NOT_LEADER hints are followed, other errors
 * move on to the next node, all within the caller's deadline.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { DogfsError } from '../../src/wire/errors.js';
import { RaftKvService } from '../../src/wire/gen/types.js';
import { type RpcChannel, RpcChannelPool } from '../../src/wire/rpc.js';
import type { KvApplyResult, KvInput, KvOutput } from '../consensus/sim/kv.js';
import { groupOfKey } from './kv-node.js';

const encoder = new TextEncoder();
const decoder = new TextDecoder();
const MAX_ATTEMPTS = 500;

export class KvClient {
  /** This client's connections, or a pool shared with other clients (closed by whoever made it). */
  private readonly channels: RpcChannelPool;
  private readonly ownsChannels: boolean;
  /** Per group, the node this client believes leads it (updated from NOT_LEADER hints). */
  private readonly leaders = new Map<number, string>();
  /** Sessions live in each group's state machine, so sequence numbers are counted per group. */
  private readonly seqByGroup = new Map<number, number>();
  /** Per group, the sequence numbers sent whose outcome is not known yet. */
  private readonly outstanding = new Map<number, Set<number>>();

  constructor(
    private readonly addrs: readonly string[],
    readonly clientId: string,
    private readonly groups = 1,
    /**
     * Connections shared by several clients (sessions), one per node: bench:raft's eight sessions then
     * use three connections, as its etcd clients do, instead of one per session and node.
     */
    shared?: RpcChannelPool,
  ) {
    this.channels = shared ?? new RpcChannelPool();
    this.ownsChannels = shared === undefined;
  }

  /** The node believed to lead the group of `key` (group 1 by default). */
  leaderOf(key = ''): string {
    return this.leaders.get(groupOfKey(key, this.groups)) ?? this.addrs[0]!;
  }

  /** The node believed to lead `group`. */
  leaderOfGroup(group: number): string {
    return this.leaders.get(group) ?? this.addrs[0]!;
  }

  get leader(): string {
    return this.leaderOf();
  }

  private channel(addr: string): RpcChannel {
    return this.channels.get(addr);
  }

  private async attempt<T>(
    key: string,
    deadline: number,
    call: (channel: RpcChannel) => Promise<T>,
  ): Promise<T> {
    const group = groupOfKey(key, this.groups);
    for (let attempt = 0; ; attempt++) {
      const leader = this.leaders.get(group) ?? this.addrs[0]!;
      try {
        return await call(this.channel(leader));
      } catch (error) {
        const e = error instanceof DogfsError ? error : new DogfsError('INTERNAL', String(error));
        if (Date.now() >= deadline || attempt >= MAX_ATTEMPTS) throw e;
        if (e.code === 'NOT_LEADER' && e.leaderHint) {
          this.leaders.set(group, e.leaderHint);
        } else {
          this.leaders.set(group, this.addrs[(this.addrs.indexOf(leader) + 1) % this.addrs.length]!);
          await new Promise((r) => setTimeout(r, 20));
        }
      }
    }
  }

  /** put / cas through the log; get through ReadIndex. */
  async run(input: KvInput, deadline = Date.now() + 10_000): Promise<KvOutput> {
    if (input.op === 'get') {
      const r = await this.attempt(input.key, deadline, (c) =>
        c.call(RaftKvService, 'Read', { key: input.key }, { deadline }),
      );
      return r.found ? r.value : null;
    }
    const group = groupOfKey(input.key, this.groups);
    const seq = (this.seqByGroup.get(group) ?? 0) + 1;
    this.seqByGroup.set(group, seq);
    let outstanding = this.outstanding.get(group);
    if (outstanding === undefined) {
      outstanding = new Set();
      this.outstanding.set(group, outstanding);
    }
    outstanding.add(seq);
    // Only the calls answered may be forgotten by the server: concurrent calls of this client are below
    // `seq` and still unanswered (claiming `seq` here had the server refuse them when they came late).
    let ackedBelow = seq;
    for (const s of outstanding) if (s < ackedBelow) ackedBelow = s;
    const command = encoder.encode(
      JSON.stringify({ clientId: this.clientId, seq, ackedBelow, time: Date.now(), input }),
    );
    // Answered or given up on: never retried after this.
    const response = await this.attempt(input.key, deadline, (c) =>
      c.call(RaftKvService, 'Propose', { command }, { deadline }),
    ).finally(() => outstanding.delete(seq));
    const result = JSON.parse(decoder.decode(response.result)) as KvApplyResult;
    if (result.kind !== 'ok')
      throw new DogfsError('FAILED_PRECONDITION', `command refused: ${result.reason}`);
    return result.output;
  }

  close(): void {
    if (this.ownsChannels) this.channels.close();
  }
}

const KV_NODE = fileURLToPath(new URL('./kv-node.js', import.meta.url));

/**
 * Starts node i (0-based) of a kv-node cluster whose members listen on `addrs`, with its data in
 * DIR/n<i+1> (`nodeArgs` go to node itself, e.g. --cpu-prof); resolves with the process once it serves.
 */
export function spawnKvNode(
  addrs: readonly string[],
  i: number,
  dir: string,
  extraArgs: string[] = [],
  nodeArgs: string[] = [],
): Promise<ChildProcess> {
  const args = [
    ...nodeArgs,
    KV_NODE,
    '--id',
    String(i + 1),
    '--peers',
    addrs.join(','),
    '--dir',
    join(dir, `n${i + 1}`),
    ...extraArgs,
  ];
  const child = spawn(process.execPath, args, { stdio: ['ignore', 'pipe', 'inherit'] });
  return new Promise((resolve, reject) => {
    child.stdout!.setEncoding('utf8').on('data', (d: string) => {
      if (d.includes('ready')) resolve(child);
    });
    child.once('exit', (code, signal) =>
      reject(new Error(`kv-node ${i + 1} exited (${signal ?? code}) before ready`)),
    );
  });
}
