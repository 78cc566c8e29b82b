/**
 * A RaftKv client for the real-process consensus test and bench: one client session (id + sequence), a
 * retried command keeps its sequence number (exactly-once), NOT_LEADER hints are followed, other errors
 * move on to the next node, all within the caller's deadline.
 */
import { DogfsError } from '../../src/wire/errors.js';
import { RaftKvService } from '../../src/wire/gen/types.js';
import { RpcChannel } from '../../src/wire/rpc.js';
import type { KvApplyResult, KvInput, KvOutput } from '../consensus/sim/kv.js';

const encoder = new TextEncoder();
const decoder = new TextDecoder();
const MAX_ATTEMPTS = 500;

export class KvClient {
  private readonly channels = new Map<string, RpcChannel>();
  /** The node this client believes leads (updated from NOT_LEADER hints). */
  leader: string;
  private seq = 0;

  constructor(
    private readonly addrs: readonly string[],
    readonly clientId: string,
  ) {
    this.leader = addrs[0]!;
  }

  private channel(addr: string): RpcChannel {
    let c = this.channels.get(addr);
    if (!c) {
      c = new RpcChannel(addr);
      this.channels.set(addr, c);
    }
    return c;
  }

  private async attempt<T>(deadline: number, call: (channel: RpcChannel) => Promise<T>): Promise<T> {
    for (let attempt = 0; ; attempt++) {
      try {
        return await call(this.channel(this.leader));
      } catch (error) {
        const e = error instanceof DogfsError ? error : new DogfsError('INTERNAL', String(error));
        if (Date.now() >= deadline || attempt >= MAX_ATTEMPTS) throw e;
        if (e.code === 'NOT_LEADER' && e.leaderHint) {
          this.leader = e.leaderHint;
        } else {
          this.leader = this.addrs[(this.addrs.indexOf(this.leader) + 1) % this.addrs.length]!;
          await new Promise((r) => setTimeout(r, 20));
        }
      }
    }
  }

  /** put / cas through the log; get through ReadIndex. */
  async run(input: KvInput, deadline = Date.now() + 10_000): Promise<KvOutput> {
    if (input.op === 'get') {
      const r = await this.attempt(deadline, (c) =>
        c.call(RaftKvService, 'Read', { key: input.key }, { deadline }),
      );
      return r.found ? r.value : null;
    }
    const seq = ++this.seq;
    const command = encoder.encode(
      JSON.stringify({ clientId: this.clientId, seq, ackedBelow: seq, time: Date.now(), input }),
    );
    const response = await this.attempt(deadline, (c) =>
      c.call(RaftKvService, 'Propose', { command }, { deadline }),
    );
    const result = JSON.parse(decoder.decode(response.result)) as KvApplyResult;
    if (result.kind !== 'ok')
      throw new DogfsError('FAILED_PRECONDITION', `command refused: ${result.reason}`);
    return result.output;
  }

  close(): void {
    for (const c of this.channels.values()) c.close();
  }
}
