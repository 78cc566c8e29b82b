/**
 * chunk — the chunk server: stores erasure-coded shards on local disk, checksummed per chunk, serves
 * them over the data-transfer protocol (plain TCP) and control calls over gRPC, scrubs in the background,
 * and registers/heartbeats with the metadata cluster. Owns: the on-disk shard format.
 * May import: codec (checksums), wire, daemon, common.
 */
export * from './server.js';
