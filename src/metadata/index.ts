/**
 * metadata — the metadata server: hosts Raft groups (group 0 "cluster": chunk-server registry, shard map,
 * settings, liveness; namespace groups: the file tree and file → block-group mapping) and serves the
 * Metadata service. Owns: the namespace data model and its state machines.
 * May import: raftnode, consensus, codec (policies), wire, daemon, common.
 */
export * from './server.js';
