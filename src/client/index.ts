/**
 * client — the DogFS client library: discovers metadata leaders from a seed list, follows NOT_LEADER
 * hints, and streams erasure-coded shards directly to and from chunk servers. Owns: the write and read
 * paths on the client side (stripes, parity, degraded reads), the client session (exactly-once metadata
 * calls). May import: codec, wire, common.
 */
export type { DogfsClientOptions, FileKind, FileStatus, ListOptions } from './client.js';
export { DogfsClient, toFileStatus } from './client.js';
export { DataTransferShardTransport } from './data-transport.js';
export type { MemberView, MetaCallOptions, MetadataConnectionOptions, MetadataMethod } from './meta.js';
export { MetadataConnection } from './meta.js';
export { baseName, joinPath, normalizePath } from './paths.js';
export type { BadShard, ReadOutcome, ReadSink, ReadStreamOptions } from './reader.js';
export { FileReadStream } from './reader.js';
export type { RepairOptions, RepairOutcome } from './repair.js';
export { repairFile } from './repair.js';
export type { RepairWorkerOptions } from './repair-worker.js';
export { RepairWorker } from './repair-worker.js';
export { ClientSession, type ClientSessionOptions } from './session.js';
export type {
  OpenReadOptions,
  OpenWriteOptions,
  ShardReadHandle,
  ShardTarget,
  ShardTransport,
  ShardWriteHandle,
  ShardWriteResult,
} from './transport.js';
export type { BlockGroupOutcome, PositionalSource, ShardOutcome, WriteStreamOptions } from './writer.js';
export { FileWriteStream, requiredDurable } from './writer.js';
