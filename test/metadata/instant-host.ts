/**
 * The seam MetadataNode is built on, replaced: a Raft host that applies each proposal at once, leads the
 * groups the test says, in a term the test sets, and counts proposals. The handlers and duties driven on
 * it are the service's own.
 */
import type { Logger } from '../../src/common/log.js';
import type { LogIndex } from '../../src/consensus/index.js';
import { MetadataNode, type MetadataNodeOptions } from '../../src/metadata/service.js';
import type { RaftHost, StateMachine } from '../../src/raftnode/host.js';
import { DogfsError } from '../../src/wire/errors.js';
import type { MetadataMethods } from '../../src/wire/gen/types.js';
import type { CallContext, RpcServer, ServiceHandlers } from '../../src/wire/rpc.js';

export class InstantHost {
  term = 1;
  /** Proposals made, by group. */
  readonly proposals = new Map<number, number>();
  private readonly machines = new Map<number, { machine: StateMachine; applied: number }>();
  constructor(private readonly leads: (group: number) => boolean) {}
  addGroup(group: number, machine: StateMachine): void {
    this.machines.set(group, { machine, applied: 0 });
  }
  groupIds(): number[] {
    return [...this.machines.keys()];
  }
  isLeader(group: number): boolean {
    return this.leads(group);
  }
  requireLeader(group: number): void {
    if (!this.leads(group)) throw new DogfsError('NOT_LEADER', `not the leader of group ${group}`);
  }
  async readBarrier(): Promise<void> {}
  async propose(group: number, command: Uint8Array): Promise<unknown> {
    this.proposals.set(group, (this.proposals.get(group) ?? 0) + 1);
    const g = this.machines.get(group)!;
    return g.machine.apply(++g.applied as LogIndex, command);
  }
  status(group: number) {
    const applied = this.machines.get(group)?.applied ?? 0;
    return {
      group,
      role: this.leads(group) ? 'leader' : 'follower',
      leader: 1,
      leaderAddr: '127.0.0.1:1',
      term: this.term,
      commit: applied,
      applied,
      members: [1],
    };
  }
}

const quiet: Logger = { debug() {}, info() {}, warn() {}, error() {} } as unknown as Logger;

/** A MetadataNode on an InstantHost, its handlers, and a call context with a 10 s deadline. */
export function instantNode(leads: (group: number) => boolean, options: MetadataNodeOptions) {
  const host = new InstantHost(leads);
  const node = new MetadataNode(host as unknown as RaftHost, quiet, 'test', options);
  let handlers: ServiceHandlers<MetadataMethods> | undefined;
  node.start({
    addService: (_descriptor: unknown, h: ServiceHandlers<MetadataMethods>) => {
      handlers = h;
    },
  } as unknown as RpcServer);
  const ctx: CallContext = {
    deadline: Date.now() + 10_000,
    signal: new AbortController().signal,
    peer: 'test',
  };
  return { host, node, h: handlers!, ctx };
}
