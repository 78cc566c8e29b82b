/**
 * metadata/state/ids — identifiers allocated by a Raft group. An id is `group * 2^40 + counter`: the group
 * number lives in the high 13 bits, so ids are unique across groups without coordination and an id says
 * which group owns it (DESIGN §3). Every id stays below 2^53, because wire decodes 64-bit integers as JS
 * numbers. Inodes and block groups share one counter per group, so their ids never collide either.
 */
import { assert } from '../../common/assert.js';

export type InodeId = number & { readonly __brand: 'InodeId' };
export type BlockGroupId = number & { readonly __brand: 'BlockGroupId' };

export const GROUP_BITS = 13;
export const COUNTER_BITS = 40;
const COUNTER_SPAN = 2 ** COUNTER_BITS;
export const MAX_GROUP = 2 ** GROUP_BITS - 1;
export const MAX_COUNTER = COUNTER_SPAN - 1;

/** Group 0 is the cluster group; namespace groups are 1..MAX_GROUP. */
export const CLUSTER_GROUP = 0;
/** The namespace group that owns the root directory (by convention the first one). */
export const ROOT_GROUP = 1;
/** The root directory's inode id: counter 1 of group 1, reserved at creation of that group. */
export const ROOT_INODE_ID = composeId(ROOT_GROUP, 1) as InodeId;

export function composeId(group: number, counter: number): number {
  assert(Number.isInteger(group) && group >= 0 && group <= MAX_GROUP, `group ${group} out of range`);
  assert(
    Number.isInteger(counter) && counter >= 1 && counter <= MAX_COUNTER,
    `id counter ${counter} out of range`,
  );
  const id = group * COUNTER_SPAN + counter;
  assert(Number.isSafeInteger(id), 'ids stay below 2^53');
  return id;
}

export function groupOfId(id: number): number {
  return Math.floor(id / COUNTER_SPAN);
}

export function counterOfId(id: number): number {
  return id % COUNTER_SPAN;
}

/** True for a well-formed id (a safe integer with a non-zero counter); says nothing about existence. */
export function isValidId(id: number): boolean {
  return Number.isSafeInteger(id) && id > 0 && counterOfId(id) !== 0;
}
