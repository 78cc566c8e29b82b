/**
 * test/consensus/sim/kv — the small key-value state machine the simulator runs on the Raft core: put, get,
 * compare-and-set, with client sessions (exactly-once) from src/consensus/sessions. Commands are JSON in
 * normal entries; the snapshot is JSON of the map plus the session table.
 */

import { ClientSessions, type SessionLimits, type SessionsSnapshot } from '../../../src/consensus/index.js';

export type KvInput =
  | { readonly op: 'get'; readonly key: string }
  | { readonly op: 'put'; readonly key: string; readonly value: string }
  | { readonly op: 'cas'; readonly key: string; readonly expected: string | null; readonly value: string };

/** get -> value (null if absent); put -> null; cas -> whether it swapped. */
export type KvOutput = string | null | boolean;

export interface KvCommand {
  readonly clientId: string;
  readonly seq: number;
  readonly ackedBelow: number;
  readonly time: number;
  readonly input: KvInput;
}

export type KvApplyResult =
  | { readonly kind: 'ok'; readonly output: KvOutput; readonly duplicate: boolean }
  | { readonly kind: 'refused'; readonly reason: string };

const encoder = new TextEncoder();
const decoder = new TextDecoder();

export function encodeCommand(cmd: KvCommand): Uint8Array {
  return encoder.encode(JSON.stringify(cmd));
}

export function decodeCommand(data: Uint8Array): KvCommand {
  return JSON.parse(decoder.decode(data)) as KvCommand;
}

/** Pure model step, shared by the state machine and the linearizability checker's model. */
export function stepKv(value: string | null, input: KvInput): { next: string | null; output: KvOutput } {
  switch (input.op) {
    case 'get':
      return { next: value, output: value };
    case 'put':
      return { next: input.value, output: null };
    case 'cas':
      return value === input.expected ? { next: input.value, output: true } : { next: value, output: false };
  }
}

export const SIM_SESSION_LIMITS: SessionLimits = { ttl: 1e12, maxSessions: 1000, maxResultsPerClient: 4 };

interface KvSnapshot {
  readonly data: readonly (readonly [string, string])[];
  readonly sessions: SessionsSnapshot<KvOutput>;
}

export class KvStateMachine {
  private data = new Map<string, string>();
  private sessions: ClientSessions<KvOutput>;

  /** The simulator's limits are small to exercise forgetting; real processes pass room for their load. */
  constructor(limits: SessionLimits = SIM_SESSION_LIMITS) {
    this.sessions = new ClientSessions<KvOutput>(limits);
  }

  apply(cmd: KvCommand): KvApplyResult {
    // The simulated clients open their sessions by their first command (the older rule, see sessions.ts):
    // the simulator's commands are never evicted between an applied attempt and its retry.
    const outcome = this.sessions.apply({ ...cmd, mayOpen: true }, () => {
      const { next, output } = stepKv(this.data.get(cmd.input.key) ?? null, cmd.input);
      if (next === null) this.data.delete(cmd.input.key);
      else this.data.set(cmd.input.key, next);
      return output;
    });
    switch (outcome.kind) {
      case 'applied':
        return { kind: 'ok', output: outcome.result, duplicate: false };
      case 'duplicate':
        return { kind: 'ok', output: outcome.result, duplicate: true };
      default:
        return { kind: 'refused', reason: outcome.kind };
    }
  }

  get(key: string): string | null {
    return this.data.get(key) ?? null;
  }

  snapshot(): Uint8Array {
    const snap: KvSnapshot = { data: [...this.data], sessions: this.sessions.snapshot() };
    return encoder.encode(JSON.stringify(snap));
  }

  static restore(bytes: Uint8Array, limits: SessionLimits = SIM_SESSION_LIMITS): KvStateMachine {
    const sm = new KvStateMachine(limits);
    if (bytes.byteLength === 0) return sm;
    const snap = JSON.parse(decoder.decode(bytes)) as KvSnapshot;
    sm.data = new Map(snap.data);
    sm.sessions = ClientSessions.restore(limits, snap.sessions);
    return sm;
  }
}
