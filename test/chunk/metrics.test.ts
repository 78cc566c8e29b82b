/**
 * The chunk server's Prometheus endpoint: GET /metrics answers the counters and gauges as text after
 * real writes and reads through a data server; other paths and methods are refused; label values are
 * escaped.
 */
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { after, test } from 'node:test';
import { DataServer } from '../../src/chunk/data-server.js';
import { ChunkMetrics, prometheusGauges } from '../../src/chunk/metrics.js';
import { ShardStore } from '../../src/chunk/store.js';
import { MetricsEndpoint } from '../../src/daemon/metrics.js';
import { tempDir } from '../helpers/index.js';
import { newClient, seededBytes } from './helpers.js';

const dir = tempDir('dogfs-chunk-metrics-');
const client = newClient();
after(() => {
  client.close();
  dir.remove();
});

test('GET /metrics: counters and gauges as Prometheus text after real transfers; 404, 405 otherwise', async () => {
  const store = await ShardStore.open({ dir: join(dir.path, 'store') });
  const metrics = new ChunkMetrics();
  const server = new DataServer(store, metrics, undefined);
  const dataPort = await server.listen('127.0.0.1', 0);
  const addr = `127.0.0.1:${dataPort}`;
  const endpoint = new MetricsEndpoint(
    () =>
      metrics.prometheus('c1') +
      prometheusGauges('c1', {
        capacityBytes: store.capacityBytes,
        usedBytes: store.usedBytes,
        shards: store.shardCount,
        corruptShards: store.corruptList().length,
        activeWrites: server.activeWrites,
        activeReads: server.activeReads,
        rssBytes: process.memoryUsage.rss(),
      }),
  );
  const port = await endpoint.listen('127.0.0.1', 0);
  const url = `http://127.0.0.1:${port}`;
  try {
    const shard = { blockGroupId: 3, index: 1, generation: 1 };
    await client.writeShard(addr, shard, seededBytes(100_000, 3));
    await client.readShardBytes(addr, shard);

    const response = await fetch(`${url}/metrics`);
    assert.equal(response.status, 200);
    assert.match(response.headers.get('content-type') ?? '', /^text\/plain; version=0\.0\.4/);
    const text = await response.text();
    const value = (line: string) => {
      const found = text.split('\n').find((l) => l.startsWith(`${line} `));
      assert.ok(found !== undefined, `no ${line} in:\n${text}`);
      return Number(found.slice(line.length + 1));
    };
    assert.equal(value('dogfs_chunk_bytes_written_total{server="c1"}'), 100_000);
    assert.equal(value('dogfs_chunk_shards_written_total{server="c1"}'), 1);
    assert.equal(value('dogfs_chunk_shards_read_total{server="c1"}'), 1);
    assert.equal(value('dogfs_chunk_shards{server="c1"}'), 1);
    assert.equal(value('dogfs_chunk_used_bytes{server="c1"}'), store.usedBytes);
    assert.ok(value('dogfs_chunk_resident_memory_bytes{server="c1"}') > 0);
    assert.match(text, /^# TYPE dogfs_chunk_used_bytes gauge$/m);
    // Every line is a comment or `name{labels} number`: what a Prometheus scraper accepts.
    for (const line of text.trimEnd().split('\n')) {
      assert.match(line, /^(# TYPE [a-z_]+ gauge|[a-z_]+\{[^}]*\} \d+)$/, line);
    }

    const missing = await fetch(`${url}/other`);
    assert.equal(missing.status, 404);
    await missing.text();
    const post = await fetch(`${url}/metrics`, { method: 'POST', body: 'x' });
    assert.equal(post.status, 405);
    assert.equal(post.headers.get('allow'), 'GET, HEAD');
    await post.text();
  } finally {
    await endpoint.close();
    await server.close();
  }
});

test('label values are escaped: a quote, backslash or newline in a server id cannot break a line', () => {
  const metrics = new ChunkMetrics();
  metrics.add('bytes_read', 5);
  metrics.error('CORRUPT');
  const text = metrics.prometheus('a"b\\c\nd');
  assert.equal(
    text,
    'dogfs_chunk_bytes_read_total{server="a\\"b\\\\c\\nd"} 5\n' +
      'dogfs_chunk_errors_total{server="a\\"b\\\\c\\nd",code="CORRUPT"} 1\n',
  );
  assert.equal(text.trimEnd().split('\n').length, 2);
});
