/**
 * chunk/metrics — counters the chunk server keeps (bytes and shards read and written, errors by code,
 * scrub progress), answered by ChunkControl/Status so the metadata server's dashboard and Prometheus
 * endpoint can show them. Counters only ever grow; gauges (used bytes, active transfers) are read from
 * their owners when asked.
 */
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
    const lines: string[] = [];
    for (const { name, value } of this.snapshot()) {
      const error = /^errors_(.+)$/.exec(name);
      lines.push(
        error
          ? `dogfs_chunk_errors_total{server="${serverId}",code="${error[1]}"} ${value}`
          : `dogfs_chunk_${name}_total{server="${serverId}"} ${value}`,
      );
    }
    return `${lines.join('\n')}\n`;
  }
}
