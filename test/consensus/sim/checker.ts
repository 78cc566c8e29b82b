/**
 * test/consensus/sim/checker — Raft's safety properties (paper Figure 3), checked incrementally so they can
 * run after every simulation step:
 *   Election Safety      at most one leader per term;
 *   Log Matching         every (index, term) pair ever persisted names one entry, and one predecessor term
 *                        (by induction: two logs sharing an (index, term) agree on every earlier entry);
 *   Leader Completeness  a new leader's log holds every entry already committed;
 *   State Machine Safety no two replicas apply different entries at the same index, and each replica
 *                        applies indexes in order without gaps.
 * Violations throw SafetyViolation with a description.
 */

import type { Entry, LogIndex, NodeId, Raft, Term } from '../../../src/consensus/index.js';
import { asIndex } from '../../../src/consensus/index.js';

export class SafetyViolation extends Error {
  override name = 'SafetyViolation';
}

export function entryDigest(e: Entry): string {
  if (e.kind === 'config') return `c:${e.config.voters.join(',')}/${e.config.learners.join(',')}`;
  return `n:${Buffer.from(e.data.buffer, e.data.byteOffset, e.data.byteLength).toString('latin1')}`;
}

export class SafetyChecker {
  private leaders = new Map<Term, NodeId>();
  private logPairs = new Map<string, { digest: string; prevTerm: Term | undefined }>();
  private committed: ({ term: Term; digest: string } | undefined)[] = [];
  checks = 0;

  observeLeader(term: Term, id: NodeId, raft: Raft): void {
    const known = this.leaders.get(term);
    if (known === id) return;
    if (known !== undefined) {
      throw new SafetyViolation(`Election Safety: nodes ${known} and ${id} both leaders in term ${term}`);
    }
    this.leaders.set(term, id);
    this.checkLeaderCompleteness(id, raft);
  }

  private checkLeaderCompleteness(id: NodeId, raft: Raft): void {
    const snapIndex = raft.snapshotMeta().index;
    for (let i = snapIndex + 1; i < this.committed.length; i++) {
      const c = this.committed[i];
      if (c === undefined) continue;
      const e = raft.logEntry(asIndex(i));
      this.checks++;
      if (e === undefined || e.term !== c.term || entryDigest(e) !== c.digest) {
        throw new SafetyViolation(
          `Leader Completeness: leader ${id} (term ${raft.status().term}) lacks committed entry ${i} (term ${c.term}); has ${e === undefined ? 'nothing' : `term ${e.term}`}`,
        );
      }
    }
  }

  /** `entries` are about to be persisted by `id`, whose log has term `prevTerm` just before the first. */
  observePersist(id: NodeId, entries: readonly Entry[], prevTerm: Term | undefined): void {
    let before = prevTerm;
    for (const e of entries) {
      const key = `${e.index}:${e.term}`;
      const digest = entryDigest(e);
      const known = this.logPairs.get(key);
      this.checks++;
      if (known === undefined) {
        this.logPairs.set(key, { digest, prevTerm: before });
      } else {
        if (known.digest !== digest) {
          throw new SafetyViolation(
            `Log Matching: node ${id} has a different entry at (index ${e.index}, term ${e.term})`,
          );
        }
        if (before !== undefined && known.prevTerm !== undefined && known.prevTerm !== before) {
          throw new SafetyViolation(
            `Log Matching: node ${id} has entry (index ${e.index}, term ${e.term}) after term ${before}, elsewhere after ${known.prevTerm}`,
          );
        }
        if (known.prevTerm === undefined && before !== undefined) known.prevTerm = before;
      }
      before = e.term;
    }
  }

  /** `e` is committed as far as replica `id` knows (its commit index covers it). */
  observeCommitted(id: NodeId, e: Entry): void {
    this.recordCommitted(id, e, 'committed');
  }

  observeApply(id: NodeId, e: Entry, lastApplied: LogIndex): void {
    if (e.index !== lastApplied + 1) {
      throw new SafetyViolation(`State Machine Safety: node ${id} applied ${e.index} after ${lastApplied}`);
    }
    this.recordCommitted(id, e, 'applied');
  }

  private recordCommitted(id: NodeId, e: Entry, how: 'committed' | 'applied'): void {
    this.checks++;
    const digest = entryDigest(e);
    const known = this.committed[e.index];
    if (known === undefined) {
      this.committed[e.index] = { term: e.term, digest };
    } else if (known.term !== e.term || known.digest !== digest) {
      throw new SafetyViolation(
        `State Machine Safety: node ${id} ${how} (index ${e.index}, term ${e.term}) where term ${known.term} was committed`,
      );
    }
  }

  committedCount(): number {
    return this.committed.length;
  }
}
