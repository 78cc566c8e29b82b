/**
 * s3 — the S3-compatible gateway (`dogfs s3`): an HTTP server that speaks enough of Amazon S3's REST
 * API (buckets, objects, ranges, listings, multipart uploads, copies, SigV4) for existing S3 tools to
 * use DogFS unchanged. Owns: mapping S3 names onto the file tree, S3's listing order, request signing
 * and body digests, S3's XML and errors. Holds no state of its own: every request becomes client-library
 * calls. May import: client, codec (CRC32C), daemon (listening), wire (error codes), common.
 */
export type { S3ErrorCode } from './errors.js';
export { fromDogfsError, S3Error } from './errors.js';
export {
  DEFAULT_ABORT_UPLOADS_AFTER_MS,
  etagOf,
  parseRange,
  S3Gateway,
  type S3GatewayOptions,
  UPLOADS_DIR,
} from './gateway.js';
export { bucketNameProblem, keyPath } from './keys.js';
export { type ListedItem, type ListQuery, listKeys, type TreeEntry, type TreeReader } from './listing.js';
export { type S3Credentials, uriEncode, verifyRequest } from './sigv4.js';
