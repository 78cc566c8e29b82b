/**
 * chunk/leader-fence — fencing tokens for the metadata leaders that verify and delete shards. A namespace
 * group's leader names its Raft term in StatShard (when a repair's copy is verified before its commit) and
 * DeleteShard; the server keeps, per group, the highest term it has seen (DIR/leader-terms.json, written
 * and fsynced before the call is answered) and refuses a call naming a lower one. So a deletion an old
 * leader sent before it stalled (SIGSTOP, a long pause) cannot land after a newer leader has verified that
 * very copy for a repair it then commits (Kleppmann's fencing tokens; Chubby's sequencers).
 * A call naming no term (0: older metadata servers, group 0's checks) is not fenced.
 * May import: common, daemon (its start error), wire (errors).
 */
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { writeFileDurably } from '../common/durable-file.js';
import { DaemonStartError } from '../daemon/daemon.js';
import { DogfsError } from '../wire/errors.js';

const FILE_NAME = 'leader-terms.json';
/** Namespace groups a server keeps terms for (group ids are below 2^13). */
const MAX_GROUPS = 8192;

export class LeaderFence {
  /** Writes of the terms, one after another (each writes the whole map as it is then). */
  private writing: Promise<void> = Promise.resolve();
  /** Per group, the highest term known to be on disk. */
  private readonly durable: Map<number, number>;

  private constructor(
    private readonly dir: string,
    private readonly terms: Map<number, number>,
  ) {
    this.durable = new Map(terms);
  }

  static async open(dir: string): Promise<LeaderFence> {
    const path = join(dir, FILE_NAME);
    let text: string;
    try {
      text = await readFile(path, 'utf8');
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code === 'ENOENT') return new LeaderFence(dir, new Map());
      throw new DaemonStartError(`${path} is unreadable: ${(error as Error).message}`);
    }
    const terms = new Map<number, number>();
    try {
      const parsed = JSON.parse(text) as unknown;
      if (parsed === null || typeof parsed !== 'object' || Array.isArray(parsed))
        throw new Error('not an object');
      for (const [group, term] of Object.entries(parsed)) {
        const g = Number(group);
        if (
          !Number.isSafeInteger(g) ||
          g < 0 ||
          g >= MAX_GROUPS ||
          !Number.isSafeInteger(term) ||
          (term as number) < 0
        )
          throw new Error(`bad entry ${group}`);
        terms.set(g, term as number);
      }
    } catch (error) {
      throw new DaemonStartError(
        `${path} does not hold leader terms (${(error as Error).message}); removing it starts the server without them (stale metadata leaders are then not fenced until the current ones call)`,
      );
    }
    return new LeaderFence(dir, terms);
  }

  /** The highest term seen of `group` (0: none). */
  term(group: number): number {
    return this.terms.get(group) ?? 0;
  }

  /**
   * Admits a call from `group`'s leader of `term`: FAILED_PRECONDITION when a later leader of the group
   * has been seen; the term is durable before this resolves (a failed write fails this call, and the next
   * call writes again). Term 0 is not fenced.
   */
  async admit(group: number, term: number): Promise<void> {
    if (term === 0) return;
    if (
      !Number.isSafeInteger(group) ||
      group < 0 ||
      group >= MAX_GROUPS ||
      !Number.isSafeInteger(term) ||
      term < 0
    )
      throw new DogfsError('INVALID_ARGUMENT', `leader term ${term} of group ${group} out of range`);
    const seen = this.term(group);
    if (term < seen)
      throw new DogfsError(
        'FAILED_PRECONDITION',
        `a call from group ${group}'s leader of term ${term}, after one of term ${seen}: a stale leader (if the metadata was restored or re-created, remove ${FILE_NAME} from this chunk server's directory)`,
      );
    if (term > seen) this.terms.set(group, term);
    if ((this.durable.get(group) ?? 0) >= term) return;
    const snapshot = new Map(this.terms);
    const write = this.writing
      .catch(() => {})
      .then(async () => {
        await writeFileDurably(
          join(this.dir, FILE_NAME),
          `${JSON.stringify(Object.fromEntries(snapshot))}\n`,
        );
        for (const [g, t] of snapshot) if ((this.durable.get(g) ?? 0) < t) this.durable.set(g, t);
      });
    this.writing = write;
    await write;
  }
}
