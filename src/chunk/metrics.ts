/**
 * chunk/metrics — counters the chunk server keeps (bytes and shards read and written, errors by code,
 * scrub progress), answered by ChunkControl/Status so the metadata server's dashboard can show them,
 * and served as Prometheus text by `MetricsEndpoint` (`dogfs chunk --metrics-listen HOST:PORT`, GET
 * /metrics). Counters only ever grow; gauges (used bytes, active transfers) are read from their owners
 * when asked.
 */
import {
  createServer as createHttpServer,
  type Server as HttpServer,
  type IncomingMessage,
  type ServerResponse,
} from 'node:http';
import type { ErrorCode } from '../wire/errors.js';
import { listenOn } from './listen.js';

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

/** A Prometheus label value, escaped as the text format asks (backslash, quote, newline). */
function labelValue(value: string): string {
  return value.replace(/\\/g, '\\\\').replace(/"/g, '\\"').replace(/\n/g, '\\n');
}

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

/** Scrapes answered at once; more are refused with 503 (a scraper never needs many). */
const MAX_CONCURRENT_SCRAPES = 8;

/**
 * The Prometheus endpoint: GET /metrics answers `render()` as text/plain (version 0.0.4); any other
 * path is 404 and any other method 405. Nothing here reads the request body, so a client cannot make
 * the server hold memory.
 */
export class MetricsEndpoint {
  private readonly server: HttpServer;
  private scrapes = 0;

  constructor(private readonly render: () => string) {
    this.server = createHttpServer((request, response) => this.answer(request, response));
    this.server.requestTimeout = 10_000;
    this.server.headersTimeout = 10_000;
    this.server.maxHeadersCount = 64;
  }

  private answer(request: IncomingMessage, response: ServerResponse): void {
    const path = (request.url ?? '').split('?')[0];
    const reply = (status: number, body: string, headers: Record<string, string> = {}) => {
      response.writeHead(status, { 'content-type': 'text/plain; charset=utf-8', ...headers });
      response.end(body);
    };
    if (path !== '/metrics') {
      reply(404, 'not found: the metrics are at /metrics\n');
      return;
    }
    if (request.method !== 'GET' && request.method !== 'HEAD') {
      reply(405, 'method not allowed\n', { allow: 'GET, HEAD' });
      return;
    }
    if (this.scrapes >= MAX_CONCURRENT_SCRAPES) {
      reply(503, 'too many scrapes at once\n');
      return;
    }
    this.scrapes++;
    response.once('close', () => this.scrapes--);
    let body: string;
    try {
      body = this.render();
    } catch (error) {
      reply(500, `metrics unavailable: ${(error as Error).message}\n`);
      return;
    }
    reply(200, body, { 'content-type': 'text/plain; version=0.0.4; charset=utf-8' });
  }

  /** Listens; resolves with the port (0 asks for any free one). */
  listen(host: string, port: number): Promise<number> {
    return listenOn(this.server, host, port, 'metrics');
  }

  close(): Promise<void> {
    this.server.closeAllConnections();
    return new Promise((resolve) => this.server.close(() => resolve()));
  }
}
