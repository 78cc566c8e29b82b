/**
 * codec — everything that turns file bytes into stored bytes and back, exactly and fast.
 *
 * Owns:
 *  - Reed-Solomon erasure coding over GF(2^8) (systematic; ISA-L's coding matrix, so parity is
 *    bit-identical to ISA-L's and shards written on one machine decode on another);
 *  - the backends behind one interface, chosen once at start-up and reported (`backendReport`,
 *    `activeBackendName`; `DOGFS_CODEC_BACKEND` forces one): native (ISA-L through our N-API addon),
 *    simd (our own AVX-512/AVX2 + GFNI C kernel in the same addon, for machines without ISA-L), wasm
 *    (WebAssembly SIMD, runs anywhere), reference (plain TypeScript, the tests' oracle);
 *  - the stripe layout of DESIGN §4 (stripes → K cells → M parity cells → shards; byte range → shard
 *    ranges);
 *  - CRC-32C and the chunked shard checksums used by chunk servers and clients.
 *
 * May import: only ../common/* and its own dependencies (@node-rs/crc32, its native addon in native/,
 * its wasm kernel in wasm/).
 *
 * Entry points: `createCodec(k, m)` → ReedSolomon (encode / reconstruct / verify, sync and async, into
 * caller buffers); `StripeLayout` (stripes, cells, range → shard pieces); `crc32c` and the chunk
 * checksum helpers (`computeChunkChecksums`, `verifyChunks`, `chunkAlignedRange`, `ChunkedChecksummer`).
 * Nothing here knows about the network, the cluster or the metadata.
 */

export type { BackendName, CodingBackend, PreparedMatrix } from './backend.js';
export type { BackendReport, CodecOptions } from './backends.js';
export {
  activeBackend,
  activeBackendName,
  BACKEND_PREFERENCE,
  backendByName,
  backendReport,
  createCodec,
  selectBackend,
} from './backends.js';
export type { ChunkAlignedRange, ChunkVerifyResult } from './checksum.js';
export {
  CHECKSUM_CHUNK_SIZE,
  ChunkedChecksummer,
  chunkAlignedRange,
  chunkCount,
  computeChunkChecksums,
  verifyChunks,
} from './checksum.js';
export type { Crc32cFunction, Crc32cImplementation } from './crc32c.js';
export { crc32c, crc32cImplementation, crc32cPortable } from './crc32c.js';
export type { CodecErrorCode } from './errors.js';
export { CodecError } from './errors.js';
export { cauchyEncodeMatrix, GF_POLYNOMIAL, gfInv, gfMul, invertMatrix } from './gf256.js';
export {
  RETAIN_MMAP_THRESHOLD_BYTES,
  RETAIN_TRIM_THRESHOLD_BYTES,
  retainFreedMemory,
} from './native.js';
export type { ShardList } from './rs.js';
export { MAX_TOTAL_SHARDS, ReedSolomon } from './rs.js';
export type { CellPiece, ShardSpan, StripeLayoutOptions } from './stripe.js';
export {
  DEFAULT_CELL_ALIGNMENT,
  DEFAULT_MAX_SHARD_BYTES,
  DEFAULT_STRIPE_SIZE,
  StripeLayout,
} from './stripe.js';
