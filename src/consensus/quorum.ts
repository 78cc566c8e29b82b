/**
 * consensus/quorum — majority arithmetic over a set of voters: the highest index a majority has matched
 * (the commit candidate), election tallies and "is a majority active". Pure functions.
 */

import type { LogIndex, NodeId } from './types.js';
import { asIndex } from './types.js';

export function majority(voterCount: number): number {
  return Math.floor(voterCount / 2) + 1;
}

/** Largest index that at least a majority of `voters` have matched; 0 if there are no voters. */
export function quorumMatchIndex(voters: readonly NodeId[], matchOf: (id: NodeId) => LogIndex): LogIndex {
  if (voters.length === 0) return asIndex(0);
  const matches = voters.map(matchOf).sort((a, b) => b - a);
  return matches[majority(voters.length) - 1]!;
}

export type VoteOutcome = 'won' | 'lost' | 'pending';

export function tally(voters: readonly NodeId[], votes: ReadonlyMap<NodeId, boolean>): VoteOutcome {
  let granted = 0;
  let rejected = 0;
  for (const v of voters) {
    const vote = votes.get(v);
    if (vote === true) granted++;
    else if (vote === false) rejected++;
  }
  const need = majority(voters.length);
  if (granted >= need) return 'won';
  if (rejected > voters.length - need) return 'lost';
  return 'pending';
}

export function countAtLeast(voters: readonly NodeId[], pred: (id: NodeId) => boolean): boolean {
  let n = 0;
  for (const v of voters) if (pred(v)) n++;
  return n >= majority(voters.length);
}
