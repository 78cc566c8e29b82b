/**
 * Test helpers for the metadata state machines: a client that stamps sessions and time, and a full
 * write (create → allocate → commit → complete).
 */
import assert from 'node:assert/strict';
import type {
  InodeId,
  NamespaceCommand,
  NamespaceOp,
  NamespaceState,
  ResultOf,
  Success,
} from '../../src/metadata/state/index.js';

export interface WriteOptions {
  readonly overwrite?: boolean;
  readonly ec?: string;
  readonly leaseMs?: number;
}

type Body<C> = C extends NamespaceCommand ? Omit<C, 'timeMs' | 'session'> : never;

/** Opens a client session on `ns` (as Metadata.OpenSession does) and returns its id. */
export function openSession(ns: NamespaceState, timeMs: number): string {
  const opened = ns.apply({ op: 'openSession', timeMs, nonce: '' });
  if (!opened.ok || opened.op !== 'openSession') assert.fail(`openSession failed: ${JSON.stringify(opened)}`);
  return opened.clientId;
}

export class TestClient {
  seq = 0;
  /** The session the state machine opened for this client (at its first command); copy it to continue it. */
  sessionId: string | undefined;
  constructor(
    readonly ns: NamespaceState,
    readonly name = 'client-1',
    public timeMs = 1_000_000,
  ) {}

  /** Sends one command with the next seq; `time` advances by 1 ms per command. */
  send<C extends Body<NamespaceCommand>>(body: C): ResultOf<C['op']> {
    this.seq++;
    this.timeMs++;
    this.sessionId ??= openSession(this.ns, this.timeMs);
    const cmd = {
      ...body,
      timeMs: this.timeMs,
      session: { clientId: this.sessionId, seq: this.seq, ackedBelow: 0 },
    };
    return this.ns.apply(cmd as NamespaceCommand) as ResultOf<C['op']>;
  }

  /** Like send, asserting success. */
  ok<C extends Body<NamespaceCommand>>(body: C): Success<C['op']> {
    const result = this.send(body);
    if (!result.ok) assert.fail(`${body.op} failed: ${result.code} ${result.message}`);
    return result as Success<NamespaceOp> as Success<C['op']>;
  }

  mkdir(path: string, parents = false) {
    return this.send({ op: 'mkdir', path, parents, mode: 0o755, ec: '' });
  }

  create(path: string, options: WriteOptions = {}) {
    return this.send(this.createBody(path, options));
  }

  /** Starts a write, asserting success. */
  startWrite(path: string, options: WriteOptions = {}): Success<'create'> {
    return this.ok(this.createBody(path, options));
  }

  private createBody(path: string, options: WriteOptions) {
    return {
      op: 'create',
      path,
      overwrite: options.overwrite ?? false,
      mode: 0o644,
      ec: options.ec ?? '',
      defaultEc: 'rs-2-1',
      leaseMs: options.leaseMs ?? 60_000,
    } as const;
  }

  /** Allocates the next block group of a write, asserting success. */
  allocateOk(
    write: Success<'create'>,
    offset: number,
    servers: readonly string[] = ['s1', 's2', 's3'],
    maxBytes = 6 << 20,
  ): Success<'allocateBlockGroup'> {
    return this.ok({
      op: 'allocateBlockGroup',
      inodeId: write.inode.id,
      leaseId: write.leaseId,
      offset,
      stripeSize: 1 << 20,
      maxBytes,
      servers,
    });
  }

  allocate(inodeId: InodeId, leaseId: string, offset: number, servers = ['s1', 's2', 's3']) {
    return this.send({
      op: 'allocateBlockGroup',
      inodeId,
      leaseId,
      offset,
      stripeSize: 1 << 20,
      maxBytes: 6 << 20,
      servers,
    });
  }

  /** A whole successful write of `size` bytes (one block group per `6 MiB`), returning the inode id. */
  writeFile(path: string, size: number, options: WriteOptions = {}): InodeId {
    const created = this.startWrite(path, options);
    const { id } = created.inode;
    let offset = 0;
    while (offset < size) {
      const length = Math.min(size - offset, 6 << 20);
      const allocated = this.allocateOk(created, offset);
      const shardLength = Math.ceil(length / 2);
      this.ok({
        op: 'commitBlockGroup',
        inodeId: id,
        leaseId: created.leaseId,
        blockGroupId: allocated.blockGroup.id,
        length,
        shards: [0, 1, 2].map((index) => ({ index, length: shardLength, crc32c: 0xdeadbeef, durable: true })),
      });
      offset += length;
    }
    this.ok({ op: 'completeFile', inodeId: id, leaseId: created.leaseId, size });
    return id;
  }
}
