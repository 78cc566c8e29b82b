/**
 * chunk/metrics — counters the chunk server keeps (bytes and shards read and written, errors by code,
 * scrub progress), answered by ChunkControl/Status so the metadata server's dashboard can show them,
 * and served as Prometheus text by `MetricsEndpoint` (`dogfs chunk --metrics-listen HOST:PORT`, GET
 * /metrics). Counters only ever grow; gauges (used bytes, active transfers) are read from their owners
 * when asked.
 */
import { labelValue } from '../daemon/metrics.js';
import type { ErrorCode } from '../wire/errors.js';

/** Counter names are fixed identifiers, never built from wire input, so the map stays bounded. */
export type CounterName =
  | 'bytes_written'
  | 'bytes_read'
  | 'shards_written'
  | 'shards_read'
  | 'shards_deleted'
  | 'data_connections_accepted'
  | 'scrub_bytes'
  | 'scrub_shards'
  | 'scrub_passes'
  | 'scrub_errors'
  | 'corrupt_found';

export class ChunkMetrics {
  private readonly counters = new Map<string, number>();

  add(name: CounterName, by = 1): void {
    this.counters.set(name, (this.counters.get(name) ?? 0) + by);
  }

  error(code: ErrorCode): void {
    const name = `errors_${code}`;
    this.counters.set(name, (this.counters.get(name) ?? 0) + 1);
  }

  get(name: CounterName | `errors_${ErrorCode}`): number {
    return this.counters.get(name) ?? 0;
  }

  snapshot(): { name: string; value: number }[] {
    return [...this.counters.entries()]
      .sort(([a], [b]) => (a < b ? -1 : 1))
      .map(([name, value]) => ({ name, value }));
  }

  /** Prometheus text exposition of the counters, labelled with the server id. */
  prometheus(serverId: string): string {
    const server = labelValue(serverId);
    const lines: string[] = [];
    for (const { name, value } of this.snapshot()) {
      const error = /^errors_(.+)$/.exec(name);
      lines.push(
        error
          ? `dogfs_chunk_errors_total{server="${server}",code="${error[1]}"} ${value}`
          : `dogfs_chunk_${name}_total{server="${server}"} ${value}`,
      );
    }
    return `${lines.join('\n')}\n`;
  }
}

/** Gauges read from their owners when the endpoint is scraped. */
export interface ChunkGauges {
  capacityBytes: number;
  usedBytes: number;
  shards: number;
  corruptShards: number;
  activeWrites: number;
  activeReads: number;
  rssBytes: number;
}

/** Prometheus text of the gauges (# TYPE lines included), labelled with the server id. */
export function prometheusGauges(serverId: string, gauges: ChunkGauges): string {
  const names: Record<keyof ChunkGauges, string> = {
    capacityBytes: 'dogfs_chunk_capacity_bytes',
    usedBytes: 'dogfs_chunk_used_bytes',
    shards: 'dogfs_chunk_shards',
    corruptShards: 'dogfs_chunk_corrupt_shards',
    activeWrites: 'dogfs_chunk_active_writes',
    activeReads: 'dogfs_chunk_active_reads',
    rssBytes: 'dogfs_chunk_resident_memory_bytes',
  };
  const server = labelValue(serverId);
  const lines: string[] = [];
  for (const key of Object.keys(names) as (keyof ChunkGauges)[]) {
    lines.push(`# TYPE ${names[key]} gauge`, `${names[key]}{server="${server}"} ${gauges[key]}`);
  }
  return `${lines.join('\n')}\n`;
}
