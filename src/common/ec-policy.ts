/**
 * common/ec-policy — erasure-coding policy names: `rs-K-M` (K data + M parity shards, Reed-Solomon) and
 * `replicate-N` (N full copies, for tiny clusters or hot small files). Parsing only; the coding itself
 * lives in codec/.
 */

export interface EcPolicy {
  readonly name: string;
  readonly kind: 'rs' | 'replicate';
  /** Shards needed to read: K for rs, 1 for replicate. */
  readonly dataShards: number;
  /** Shards that may be lost: M for rs, N-1 for replicate. */
  readonly parityShards: number;
}

export const DEFAULT_EC_POLICY = 'rs-6-3';
/** GF(2^8) Reed-Solomon allows up to 255 shards; DogFS bounds stripes far lower to keep fan-out sane. */
export const MAX_TOTAL_SHARDS = 32;
export const MAX_PARITY_SHARDS = 16;

export class EcPolicyError extends Error {
  override name = 'EcPolicyError';
}

export function parseEcPolicy(name: string): EcPolicy {
  const rs = /^rs-(\d{1,2})-(\d{1,2})$/.exec(name);
  if (rs) {
    const k = Number(rs[1]);
    const m = Number(rs[2]);
    if (k < 1 || m < 1 || m > MAX_PARITY_SHARDS || k + m > MAX_TOTAL_SHARDS) {
      throw new EcPolicyError(
        `unknown EC policy '${name}': rs-K-M needs K >= 1, 1 <= M <= ${MAX_PARITY_SHARDS}, K+M <= ${MAX_TOTAL_SHARDS}`,
      );
    }
    return { name, kind: 'rs', dataShards: k, parityShards: m };
  }
  const replicate = /^replicate-(\d{1,2})$/.exec(name);
  if (replicate) {
    const n = Number(replicate[1]);
    if (n < 1 || n > MAX_PARITY_SHARDS + 1) {
      throw new EcPolicyError(
        `unknown EC policy '${name}': replicate-N needs 1 <= N <= ${MAX_PARITY_SHARDS + 1}`,
      );
    }
    return { name, kind: 'replicate', dataShards: 1, parityShards: n - 1 };
  }
  throw new EcPolicyError(
    `unknown EC policy '${name.slice(0, 40)}': expected rs-K-M (e.g. rs-6-3) or replicate-N`,
  );
}

/**
 * `parseEcPolicy` for a name given from outside (a flag, a request): only the canonical spelling, so
 * one policy has one name (`rs-03-02` would be stored, shown and compared as another policy than
 * `rs-3-2`). The state machine keeps the lenient `parseEcPolicy`: entries already in a log must apply
 * as they did.
 */
export function parseNewEcPolicy(name: string): EcPolicy {
  const policy = parseEcPolicy(name);
  const canonical =
    policy.kind === 'rs'
      ? `rs-${policy.dataShards}-${policy.parityShards}`
      : `replicate-${policy.parityShards + 1}`;
  if (name !== canonical) throw new EcPolicyError(`EC policy '${name}' is written ${canonical}`);
  return policy;
}

export function totalShards(policy: EcPolicy): number {
  return policy.dataShards + policy.parityShards;
}
