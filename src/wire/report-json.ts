/**
 * wire/report-json — a ClusterReport as a plain object: every field, numbers as numbers (a protobuf
 * message's own toJSON leaves out defaults, an empty list or a zero, and writes 64-bit numbers as
 * strings). What `dogfs admin report --json` prints and what `dogfs up`'s dashboard serves.
 */
import type { ClusterReportResponse } from './gen/types.js';

export function clusterReportJson(report: ClusterReportResponse) {
  return {
    groups: report.groups.map((g) => ({
      group: g.group,
      leader: g.leader,
      term: g.term,
      commitIndex: g.commitIndex,
      members: [...g.members],
    })),
    chunkServers: report.chunkServers.map((c) => ({
      id: c.id,
      addr: c.addr,
      state: c.state,
      failureDomain: c.failureDomain,
      capacityBytes: c.capacityBytes,
      usedBytes: c.usedBytes,
      shardCount: c.shardCount,
      lastHeartbeatMs: c.lastHeartbeatMs,
      draining: c.draining,
    })),
    filesOnDrainingServers: report.filesOnDrainingServers,
    filesWithMissingShards: [...report.filesWithMissingShards],
    filesWithMissingShardsCount: report.filesWithMissingShardsCount,
    codecBackend: report.codecBackend,
    clusterId: report.clusterId,
    autoRepair: report.autoRepair,
    autoRepairDelayMs: report.autoRepairDelayMs,
    repairs: report.repairs.map((r) => ({
      path: r.path,
      chunkServerId: r.chunkServerId,
      sinceMs: r.sinceMs,
    })),
    rebalancing: report.rebalancing.map((r) => ({
      id: r.id,
      usedFraction: r.usedFraction,
      clusterFraction: r.clusterFraction,
    })),
    unfinishedRepairs: report.unfinishedRepairs.map((u) => ({
      path: u.path,
      chunkServerId: u.chunkServerId,
      reason: u.reason,
    })),
  };
}

export type ClusterReportJson = ReturnType<typeof clusterReportJson>;
