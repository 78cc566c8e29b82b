/**
 * A minimal metadata client for tests of the metadata server itself: follows NOT_LEADER hints, moves to
 * another server on UNAVAILABLE, keeps one client session (a retry reuses its sequence number). The real
 * client library lives in src/client; this one stays small so server tests do not depend on it.
 */
import { DogfsError } from '../../src/wire/errors.js';
import { type MetadataMethods, MetadataService } from '../../src/wire/gen/types.js';
import type { Init } from '../../src/wire/proto.js';
import { type RequestOf, type ResponseOf, RpcChannel } from '../../src/wire/rpc.js';

const ATTEMPT_MS = 5000;

export class TestMetaClient {
  private readonly channels = new Map<string, RpcChannel>();
  private target: string;
  private seq = 0;
  /** Sequence numbers sent whose outcome is unknown (no answer, or a transport error). */
  private readonly outstanding = new Set<number>();
  /** The session Metadata.OpenSession gave this client, opened by its first call that carries a session. */
  private sessionId: Promise<string> | undefined;

  constructor(private readonly addrs: readonly string[]) {
    this.target = addrs[0]!;
  }

  private channel(addr: string): RpcChannel {
    let c = this.channels.get(addr);
    if (!c) {
      c = new RpcChannel(addr);
      this.channels.set(addr, c);
    }
    return c;
  }

  /**
   * A new sequence number (`call` fills in the session's id). `ackedBelow` is the lowest one whose outcome
   * is still unknown: the server may forget results below it.
   */
  nextSession(): { clientId: string; seq: number; ackedBelow: number } {
    const seq = ++this.seq;
    this.outstanding.add(seq);
    return { clientId: '', seq, ackedBelow: Math.min(...this.outstanding) };
  }

  /** Calls until success, a non-retryable error, or the deadline. */
  async call<K extends keyof MetadataMethods & string>(
    method: K,
    request: Init<RequestOf<MetadataMethods, K>>,
    timeoutMs = 10_000,
  ): Promise<ResponseOf<MetadataMethods, K>> {
    const deadline = Date.now() + timeoutMs;
    const session = (request as { session?: { clientId: string; seq: number; ackedBelow: number } | null })
      .session;
    const seq = session?.seq;
    if (session) {
      // One open shared by concurrent first calls (each would otherwise open, and overwrite, its own).
      this.sessionId ??= this.call('OpenSession', {}, timeoutMs).then((r) => r.clientId);
      const clientId = await this.sessionId.catch((error: unknown) => {
        this.sessionId = undefined;
        throw error;
      });
      request = { ...(request as object), session: { ...session, clientId } } as typeof request;
    }
    let last: DogfsError | undefined;
    // What a server said, rather than the deadline cutting the last attempt (NO_QUORUM, not "deadline").
    let lastAnswer: DogfsError | undefined;
    for (let attempt = 0; attempt < 1000 && Date.now() < deadline; attempt++) {
      try {
        // One server may not answer at all (paused, or cut off): try the next after ATTEMPT_MS, as the
        // client library does.
        const attemptDeadline = Math.min(deadline, Date.now() + ATTEMPT_MS);
        const response = await this.channel(this.target).call(MetadataService, method, request, {
          deadline: attemptDeadline,
        });
        if (seq !== undefined) this.outstanding.delete(seq);
        return response;
      } catch (error) {
        last = error as DogfsError;
        if (last.code !== 'DEADLINE_EXCEEDED') lastAnswer = last;
        if (last.code === 'NOT_LEADER' && last.leaderHint) {
          this.target = last.leaderHint;
          continue;
        }
        if (!['UNAVAILABLE', 'NOT_LEADER', 'DEADLINE_EXCEEDED', 'NO_QUORUM'].includes(last.code)) {
          // The state machine answered (or the server refused before proposing): the outcome is known.
          if (seq !== undefined) this.outstanding.delete(seq);
          throw last;
        }
        this.target = this.addrs[(this.addrs.indexOf(this.target) + 1) % this.addrs.length]!;
        await new Promise((r) => setTimeout(r, 25));
      }
    }
    throw lastAnswer ?? last ?? new DogfsError('DEADLINE_EXCEEDED', `${method}: deadline exceeded`);
  }

  close(): void {
    for (const c of this.channels.values()) c.close();
  }
}
