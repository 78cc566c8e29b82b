/**
 * chunk — the chunk server: stores erasure-coded shards on local disk, checksummed per chunk, serves
 * them over the data-transfer protocol (plain TCP) and control calls over gRPC, scrubs in the background,
 * and registers/heartbeats with the metadata cluster. Owns: the on-disk shard format.
 * May import: codec (checksums; aligned memory for direct writes), wire, daemon, common.
 *
 *  - store.ts        shards on disk: fan-out directories, header + data + per-64 KiB CRC32C + footer,
 *                    tmp → fdatasync → rename → directory fsync; verified range reads; inventory rebuilt
 *                    from file names alone; capacity accounting (NO_SPACE)
 *  - shard-file.ts   how a shard file is written: O_DIRECT through aligned staging buffers where the
 *                    filesystem takes it, else through the page cache
 *  - data-server.ts  the data-transfer protocol's server side, with explicit limits (RESOURCE_EXHAUSTED)
 *                    and back-pressure both ways; the client side and the framing are wire/data-transfer.ts
 *  - scrubber.ts     background verification at a configured byte rate
 *  - reporter.ts     RegisterChunkServer, BlockReport (paged), Heartbeat — following NOT_LEADER hints
 *  - metrics.ts      counters answered by ChunkControl/Status, and the Prometheus endpoint (GET
 *                    /metrics on `ChunkServerOptions.metricsListen`: counters and gauges as text)
 *  - server.ts       the `dogfs chunk` process putting these together
 */
export * from './data-server.js';
export * from './metrics.js';
export * from './reporter.js';
export * from './scrubber.js';
export * from './server.js';
export * from './store.js';
