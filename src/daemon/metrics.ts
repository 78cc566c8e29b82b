/**
 * daemon/metrics — the Prometheus endpoint every server may serve (`--metrics-listen HOST:PORT`, GET
 * /metrics, text format 0.0.4), and the text format's escaping. What is measured belongs to each role.
 */
import {
  createServer as createHttpServer,
  type Server as HttpServer,
  type IncomingMessage,
  type ServerResponse,
} from 'node:http';
import { listenOn } from './listen.js';

/** A Prometheus label value, escaped as the text format asks (backslash, quote, newline). */
export function labelValue(value: string): string {
  return value.replace(/\\/g, '\\\\').replace(/"/g, '\\"').replace(/\n/g, '\\n');
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
