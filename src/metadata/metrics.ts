/**
 * metadata/metrics — what a metadata server says of itself as Prometheus text (`dogfs meta
 * --metrics-listen HOST:PORT`, GET /metrics): each Raft group as this member sees it (role, term, commit
 * and applied index), the host's counters (proposals, applied entries, log writes and their time,
 * messages, dropped batches), the chunk servers by state as this replica's cluster group records them,
 * and, on group 0's leader only, what automatic repair tracks. Every value is read when scraped; nothing
 * is kept for it.
 */
import { labelValue } from '../daemon/metrics.js';

export interface MetadataMetrics {
  readonly groups: readonly {
    readonly group: number;
    readonly role: string;
    readonly term: number;
    readonly commitIndex: number;
    readonly appliedIndex: number;
  }[];
  /** The Raft host's counters (monotonic). */
  readonly raft: {
    readonly proposals: number;
    readonly applied: number;
    readonly syncs: number;
    readonly syncMs: number;
    readonly messagesSent: number;
    readonly messagesReceived: number;
    readonly batchesDropped: number;
  };
  readonly chunkServers: { readonly alive: number; readonly dead: number; readonly draining: number };
  /** Group 0's leader only (undefined elsewhere): files automatic repair tracks as damaged, and repairs assigned. */
  readonly damagedFilesTracked: number | undefined;
  readonly repairsInProgress: number | undefined;
  readonly residentBytes: number;
}

/** The text format: one `# TYPE` line per metric, then its samples. */
export function prometheusText(serverId: string, m: MetadataMetrics): string {
  const server = `server="${labelValue(serverId)}"`;
  const lines: string[] = [];
  const metric = (name: string, type: 'gauge' | 'counter', samples: [labels: string, value: number][]) => {
    lines.push(`# TYPE ${name} ${type}`);
    for (const [labels, value] of samples) lines.push(`${name}{${server}${labels}} ${value}`);
  };
  const perGroup = (pick: (g: MetadataMetrics['groups'][number]) => number): [string, number][] =>
    m.groups.map((g) => [`,group="${g.group}"`, pick(g)]);
  metric(
    'dogfs_meta_raft_leader',
    'gauge',
    perGroup((g) => (g.role === 'leader' ? 1 : 0)),
  );
  metric(
    'dogfs_meta_raft_term',
    'gauge',
    perGroup((g) => g.term),
  );
  metric(
    'dogfs_meta_raft_commit_index',
    'gauge',
    perGroup((g) => g.commitIndex),
  );
  metric(
    'dogfs_meta_raft_applied_index',
    'gauge',
    perGroup((g) => g.appliedIndex),
  );
  metric('dogfs_meta_raft_proposals_total', 'counter', [['', m.raft.proposals]]);
  metric('dogfs_meta_raft_applied_entries_total', 'counter', [['', m.raft.applied]]);
  metric('dogfs_meta_raft_log_writes_total', 'counter', [['', m.raft.syncs]]);
  metric('dogfs_meta_raft_log_write_seconds_total', 'counter', [['', m.raft.syncMs / 1000]]);
  metric('dogfs_meta_raft_messages_sent_total', 'counter', [['', m.raft.messagesSent]]);
  metric('dogfs_meta_raft_messages_received_total', 'counter', [['', m.raft.messagesReceived]]);
  metric('dogfs_meta_raft_batches_dropped_total', 'counter', [['', m.raft.batchesDropped]]);
  metric('dogfs_meta_chunk_servers', 'gauge', [
    [',state="alive"', m.chunkServers.alive],
    [',state="dead"', m.chunkServers.dead],
  ]);
  // Draining cuts across alive and dead (a server may die while draining): a gauge of its own.
  metric('dogfs_meta_chunk_servers_draining', 'gauge', [['', m.chunkServers.draining]]);
  if (m.damagedFilesTracked !== undefined)
    metric('dogfs_meta_damaged_files_tracked', 'gauge', [['', m.damagedFilesTracked]]);
  if (m.repairsInProgress !== undefined)
    metric('dogfs_meta_repairs_in_progress', 'gauge', [['', m.repairsInProgress]]);
  metric('dogfs_meta_resident_memory_bytes', 'gauge', [['', m.residentBytes]]);
  return `${lines.join('\n')}\n`;
}
