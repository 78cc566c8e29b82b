/**
 * common/cluster-id — what a cluster id looks like (group 0 creates one; chunk servers keep theirs): 8 to
 * 64 characters of 0-9, a-z and '-' (a UUID is one).
 */
export const MAX_CLUSTER_ID_CHARS = 64;
const CLUSTER_ID_PATTERN = /^[0-9a-z-]{8,64}$/;

export function isClusterId(value: string): boolean {
  return CLUSTER_ID_PATTERN.test(value);
}
