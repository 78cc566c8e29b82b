/**
 * The S3 gateway end to end: `dogfs up` (3 metadata servers, 5 chunk servers, rs-3-2) and `dogfs s3`
 * requiring signatures, spoken to over HTTP by a small SigV4 client written here (independent of the
 * gateway's own verifier, which test/s3/sigv4.test.ts checks against AWS's published examples).
 */
import assert from 'node:assert/strict';
import { createHash, createHmac, randomBytes } from 'node:crypto';
import { writeFileSync } from 'node:fs';
import { mkdtemp } from 'node:fs/promises';
import { request } from 'node:http';
import { connect } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { crc32 } from 'node:zlib';
import type { ClusterJson } from '../../src/cluster/up.js';
import { chunkSignature, type SigningContext } from '../../src/s3/sigv4.js';
import {
  killChunkServers,
  listeningAddr,
  runDogfs,
  startCluster,
  startDogfs,
  waitFor,
} from '../helpers/index.js';

const ACCESS_KEY = 'AKIDDOGFSTEST';
const SECRET_KEY = 'dogfs-test-secret';
const REGION = 'us-east-1';

const up = startCluster(['--meta', '3', '--chunk', '5', '--ec', 'rs-3-2']);
let gateway: ReturnType<typeof startDogfs>;
let addr = '';
let cluster: ClusterJson;
const env = () => ({ ...process.env, DOGFS_CLUSTER: up.clusterPath });

before(async () => {
  cluster = await up.ready();
  gateway = startDogfs(
    ['s3', '--listen', '127.0.0.1:0', '--access-key', ACCESS_KEY, '--log-level', 'debug'],
    { ...env(), DOGFS_S3_SECRET_KEY: SECRET_KEY },
  );
  addr = await listeningAddr(gateway);
});
after(async () => {
  gateway?.child.kill('SIGTERM');
  await gateway?.exited;
  await up.stop();
});

interface Reply {
  readonly status: number;
  readonly headers: Record<string, string | string[] | undefined>;
  readonly body: Buffer;
  readonly text: string;
}

const sha256 = (data: Buffer | string) => createHash('sha256').update(data).digest('hex');
const hmac = (key: Buffer | string, data: string) => createHmac('sha256', key).update(data).digest();
/** RFC 3986 with '/' kept, as SigV4 canonical paths want. */
const encodePath = (path: string) =>
  path
    .split('/')
    .map((s) =>
      encodeURIComponent(s).replace(/[!'()*]/g, (c) => `%${c.charCodeAt(0).toString(16).toUpperCase()}`),
    )
    .join('/');

interface Call {
  readonly query?: string;
  readonly headers?: Record<string, string>;
  readonly body?: Buffer;
  /** Sign (default), or send unsigned. */
  readonly sign?: boolean;
  /** x-amz-content-sha256 to sign instead of the body's hash. */
  readonly payloadHash?: string;
}

/** Builds the signed headers of a request; returns them and the signing context for chunk signatures. */
function signedHeaders(
  method: string,
  path: string,
  call: Call,
): { headers: Record<string, string>; context: SigningContext } {
  const now = new Date();
  const amzDate = now
    .toISOString()
    .replace(/[-:]/g, '')
    .replace(/\.\d{3}/, '');
  const date = amzDate.slice(0, 8);
  const headers: Record<string, string> = {
    ...call.headers,
    host: addr,
    'x-amz-date': amzDate,
    'x-amz-content-sha256': call.payloadHash ?? sha256(call.body ?? Buffer.alloc(0)),
  };
  const names = Object.keys(headers)
    .map((n) => n.toLowerCase())
    .sort();
  const lower = Object.fromEntries(Object.entries(headers).map(([k, v]) => [k.toLowerCase(), v]));
  const query = (call.query ?? '')
    .split('&')
    .filter((p) => p !== '')
    .map((p) => (p.includes('=') ? p : `${p}=`))
    .sort()
    .join('&');
  const canonical = [
    method,
    encodePath(path),
    query,
    names.map((n) => `${n}:${String(lower[n]).trim()}\n`).join(''),
    names.join(';'),
    headers['x-amz-content-sha256'],
  ].join('\n');
  const scope = `${date}/${REGION}/s3/aws4_request`;
  const key = hmac(hmac(hmac(hmac(`AWS4${SECRET_KEY}`, date), REGION), 's3'), 'aws4_request');
  const signature = hmac(key, ['AWS4-HMAC-SHA256', amzDate, scope, sha256(canonical)].join('\n')).toString(
    'hex',
  );
  headers.authorization = `AWS4-HMAC-SHA256 Credential=${ACCESS_KEY}/${scope}, SignedHeaders=${names.join(';')}, Signature=${signature}`;
  return { headers, context: { signingKey: key, amzDate, scope, seedSignature: signature } };
}

function s3(method: string, path: string, call: Call = {}): Promise<Reply> {
  const headers = call.sign === false ? { ...call.headers } : signedHeaders(method, path, call).headers;
  return send(method, path, call.query, headers, call.body);
}

function send(
  method: string,
  path: string,
  query: string | undefined,
  headers: Record<string, string>,
  body: Buffer | undefined,
): Promise<Reply> {
  const [host, port] = addr.split(':');
  return new Promise((resolve, reject) => {
    const req = request(
      {
        host,
        port: Number(port),
        method,
        path: `${encodePath(path)}${query ? `?${query}` : ''}`,
        headers: { ...headers, 'content-length': String(body?.length ?? 0) },
      },
      (res) => {
        const parts: Buffer[] = [];
        res.on('data', (d: Buffer) => parts.push(d));
        res.on('end', () => {
          const data = Buffer.concat(parts);
          resolve({
            status: res.statusCode ?? 0,
            headers: res.headers,
            body: data,
            text: data.toString('utf8'),
          });
        });
        res.on('error', reject);
      },
    );
    req.on('error', reject);
    req.end(body);
  });
}

/** The ids of the block groups of a DogFS file, in file order (`dogfs stat --json`). */
async function blockGroupIds(path: string): Promise<number[]> {
  const stat = await runDogfs(['stat', '--json', path], { env: env() });
  assert.equal(stat.status, 0, stat.stderr);
  return (JSON.parse(stat.stdout) as { blockGroups: { id: number }[] }).blockGroups.map((b) => b.id);
}

async function settings(args: string[]): Promise<void> {
  const set = await runDogfs(['admin', 'settings', ...args], { env: env() });
  assert.equal(set.status, 0, set.stderr);
}

/**
 * Sets the cluster's default EC policy and waits until files the gateway creates get it: the namespace
 * leader reads the setting from its own copy of the cluster group, which learns of the change within a
 * heartbeat.
 */
async function defaultEcForNewFiles(ec: string): Promise<void> {
  await settings(['--default-ec', ec]);
  await waitFor(`new files to be ${ec}`, async () => {
    assert.equal((await s3('PUT', '/photos/ec-probe', { body: Buffer.from('x') })).status, 200);
    const stat = await runDogfs(['stat', '--json', '/photos/ec-probe'], { env: env() });
    assert.equal(stat.status, 0, stat.stderr);
    return (JSON.parse(stat.stdout) as { ec: string }).ec === ec || undefined;
  });
  assert.equal((await s3('DELETE', '/photos/ec-probe')).status, 204);
}

/** The text of the first `<name>` element of an XML reply. */
function xmlField(text: string, name: string): string | undefined {
  const raw = new RegExp(`<${name}>([^<]*)</${name}>`).exec(text)?.[1];
  return raw?.replace(/&(quot|apos|lt|gt|amp);/g, (_, e: string) => XML_ENTITIES[e]!);
}

const XML_ENTITIES: Record<string, string> = { quot: '"', apos: "'", lt: '<', gt: '>', amp: '&' };

function xmlFields(text: string, name: string): string[] {
  return [...text.matchAll(new RegExp(`<${name}>([^<]*)</${name}>`, 'g'))].map((m) => m[1]!);
}

/** Starts a multipart upload of `key` (a path with its bucket); its upload id. */
async function startUpload(key: string): Promise<string> {
  const reply = await s3('POST', key, { query: 'uploads' });
  assert.equal(reply.status, 200, reply.text);
  return xmlField(reply.text, 'UploadId')!;
}

function assertError(reply: Reply, status: number, code: string): void {
  assert.equal(reply.status, status, reply.text);
  assert.equal(xmlField(reply.text, 'Code'), code, reply.text);
}

const objects = new Map<string, Buffer>();

test('signatures required; buckets and objects round-trip byte-exact; the tree shows them as files', async () => {
  assertError(await s3('GET', '/', { sign: false }), 403, 'AccessDenied');
  assert.equal((await s3('PUT', '/photos')).status, 200);
  assertError(await s3('PUT', '/photos'), 409, 'BucketAlreadyOwnedByYou');
  for (const [key, size] of [
    ['empty', 0],
    ['one', 1],
    ['2026/jan/big.bin', 3 * 1024 * 1024 + 7],
    ['a-b', 5],
    ['a.txt', 6],
  ] as const) {
    const data = randomBytes(size);
    const md5 = createHash('md5').update(data).digest('base64');
    const put = await s3('PUT', `/photos/${key}`, { body: data, headers: { 'content-md5': md5 } });
    assert.equal(put.status, 200, put.text);
    assert.match(String(put.headers.etag), /^"[0-9a-f]+-[0-9a-f]+"$/);
    objects.set(key, data);
  }
  for (const [key, data] of objects) {
    const got = await s3('GET', `/photos/${key}`);
    assert.equal(got.status, 200);
    assert.ok(got.body.equals(data), key);
  }
  const big = objects.get('2026/jan/big.bin')!;
  const range = await s3('GET', '/photos/2026/jan/big.bin', { headers: { range: 'bytes=1048570-1048590' } });
  assert.equal(range.status, 206);
  assert.equal(range.headers['content-range'], `bytes 1048570-1048590/${big.length}`);
  assert.ok(range.body.equals(big.subarray(1048570, 1048591)));
  const head = await s3('HEAD', '/photos/2026/jan/big.bin');
  assert.equal(head.headers['content-length'], String(big.length));
  assertError(
    await s3('GET', '/photos/2026/jan/big.bin', { headers: { 'if-match': '"other"' } }),
    412,
    'PreconditionFailed',
  );
  assert.equal(
    (await s3('GET', '/photos/2026/jan/big.bin', { headers: { 'if-none-match': String(head.headers.etag) } }))
      .status,
    304,
  );

  // S3 order: 'a-b' and 'a.txt' before the 'a...' that '2026/' is not; with '/', one level and prefixes.
  const all = await s3('GET', '/photos', { query: 'list-type=2' });
  assert.deepEqual(xmlFields(all.text, 'Key'), ['2026/jan/big.bin', 'a-b', 'a.txt', 'empty', 'one']);
  const level = await s3('GET', '/photos', { query: 'delimiter=%2F&list-type=2' });
  assert.deepEqual(xmlFields(level.text, 'Key'), ['a-b', 'a.txt', 'empty', 'one']);
  assert.deepEqual(xmlFields(level.text, 'Prefix').slice(1), ['2026/']);
  const paged: string[] = [];
  let token = '';
  for (let page = 0; page < 10; page++) {
    const reply = await s3('GET', '/photos', {
      query: `list-type=2&max-keys=2${token ? `&continuation-token=${encodeURIComponent(token)}` : ''}`,
    });
    paged.push(...xmlFields(reply.text, 'Key'));
    if (xmlField(reply.text, 'IsTruncated') !== 'true') break;
    token = xmlField(reply.text, 'NextContinuationToken')!;
  }
  assert.deepEqual(paged, xmlFields(all.text, 'Key'));

  const ls = await runDogfs(['ls', '-R', '/photos'], { env: env() });
  assert.equal(ls.status, 0, ls.stderr);
  assert.match(ls.stdout, /big\.bin/);
  const stat = await runDogfs(['stat', '--json', '/photos/2026/jan/big.bin'], { env: env() });
  assert.equal((JSON.parse(stat.stdout) as { size: number }).size, big.length);
});

test('a bad digest, a wrong payload hash or a cut-off upload changes nothing', async () => {
  const before = objects.get('one')!;
  const other = Buffer.from('replacement');
  const wrongMd5 = createHash('md5').update('something else').digest('base64');
  assertError(
    await s3('PUT', '/photos/one', { body: other, headers: { 'content-md5': wrongMd5 } }),
    400,
    'BadDigest',
  );
  assertError(
    await s3('PUT', '/photos/one', { body: other, payloadHash: sha256('x') }),
    400,
    'XAmzContentSHA256Mismatch',
  );
  assert.ok((await s3('GET', '/photos/one')).body.equals(before), 'the old version stays');

  // A client that goes away after 100 KiB of a declared 1 MiB: the object must not appear.
  const { headers } = signedHeaders('PUT', '/photos/cut', { payloadHash: 'UNSIGNED-PAYLOAD' });
  const [host, port] = addr.split(':');
  const socket = connect(Number(port), host!);
  await new Promise<void>((resolve) => socket.once('connect', () => resolve()));
  const head = Object.entries({ ...headers, 'content-length': String(1 << 20) })
    .map(([k, v]) => `${k}: ${v}\r\n`)
    .join('');
  socket.write(`PUT /photos/cut HTTP/1.1\r\n${head}\r\n`);
  socket.write(randomBytes(100 * 1024));
  await waitFor('the gateway to start storing the upload', () =>
    gateway.output.stderr.includes('"path":"/photos/cut"') ? true : undefined,
  );
  socket.destroy();
  await waitFor(
    'the cut-off upload to fail',
    () =>
      gateway.output.stderr
        .split('\n')
        .some((l) => l.includes('"resource":"/photos/cut"') && l.includes('IncompleteBody')) || undefined,
  );
  assertError(await s3('GET', '/photos/cut'), 404, 'NoSuchKey');
});

/** An aws-chunked body: `pieces` as chunks, signed in a chain from `context` when given, then trailers. */
function chunked(pieces: Buffer[], context: SigningContext | undefined, trailer = ''): Buffer {
  const parts: Buffer[] = [];
  let previous = context?.seedSignature ?? '';
  for (const piece of [...pieces, Buffer.alloc(0)]) {
    let ext = '';
    if (context !== undefined) {
      previous = chunkSignature(context, previous, sha256(piece));
      ext = `;chunk-signature=${previous}`;
    }
    parts.push(Buffer.from(`${piece.length.toString(16)}${ext}\r\n`), piece);
    if (piece.length > 0) parts.push(Buffer.from('\r\n'));
  }
  parts.push(Buffer.from(`${trailer}\r\n`));
  return Buffer.concat(parts);
}

test('streaming uploads: signed aws-chunked verified chunk by chunk; a trailing checksum checked', async () => {
  const data = randomBytes(200_000);
  const pieces = [data.subarray(0, 65536), data.subarray(65536, 131072), data.subarray(131072)];
  const streamingHeaders = {
    'content-encoding': 'aws-chunked',
    'x-amz-decoded-content-length': String(data.length),
  };
  const signed = signedHeaders('PUT', '/photos/streamed', {
    headers: streamingHeaders,
    payloadHash: 'STREAMING-AWS4-HMAC-SHA256-PAYLOAD',
  });
  const ok = await send(
    'PUT',
    '/photos/streamed',
    undefined,
    signed.headers,
    chunked(pieces, signed.context),
  );
  assert.equal(ok.status, 200, ok.text);
  assert.ok((await s3('GET', '/photos/streamed')).body.equals(data));

  const again = signedHeaders('PUT', '/photos/streamed-bad', {
    headers: streamingHeaders,
    payloadHash: 'STREAMING-AWS4-HMAC-SHA256-PAYLOAD',
  });
  // A byte of the last chunk's data changed in transit: its signature no longer matches.
  const spliced = chunked(pieces, again.context);
  spliced[spliced.length - 1000] = spliced[spliced.length - 1000]! ^ 0xff;
  assertError(
    await send('PUT', '/photos/streamed-bad', undefined, again.headers, spliced),
    403,
    'SignatureDoesNotMatch',
  );
  assertError(await s3('GET', '/photos/streamed-bad'), 404, 'NoSuchKey');

  const crc = Buffer.alloc(4);
  crc.writeUInt32BE(crc32(data));
  for (const [value, expected] of [
    [crc.toString('base64'), 200],
    ['AAAAAA==', 400],
  ] as const) {
    const unsigned = signedHeaders('PUT', '/photos/trailer', {
      headers: { ...streamingHeaders, 'x-amz-trailer': 'x-amz-checksum-crc32' },
      payloadHash: 'STREAMING-UNSIGNED-PAYLOAD-TRAILER',
    });
    const reply = await send(
      'PUT',
      '/photos/trailer',
      undefined,
      unsigned.headers,
      chunked(pieces, undefined, `x-amz-checksum-crc32:${value}\r\n`),
    );
    assert.equal(reply.status, expected, reply.text);
  }
  assert.ok(
    (await s3('GET', '/photos/trailer')).body.equals(data),
    'the upload with the good checksum stays',
  );
});

test('multipart uploads complete in part order; wrong ETags refused; aborts leave nothing; copies', async () => {
  const created = await s3('POST', '/photos/mp/object.bin', { query: 'uploads' });
  assert.equal(created.status, 200, created.text);
  const uploadId = xmlField(created.text, 'UploadId')!;
  const parts = [randomBytes(5 * 1024 * 1024), randomBytes(12_345)];
  const etags: string[] = [];
  for (const [i, part] of parts.entries()) {
    const reply = await s3('PUT', '/photos/mp/object.bin', {
      query: `partNumber=${i + 1}&uploadId=${uploadId}`,
      body: part,
    });
    assert.equal(reply.status, 200, reply.text);
    etags.push(String(reply.headers.etag));
  }
  const completion = (tags: string[]) =>
    Buffer.from(
      `<CompleteMultipartUpload>${tags.map((t, i) => `<Part><PartNumber>${i + 1}</PartNumber><ETag>${t}</ETag></Part>`).join('')}</CompleteMultipartUpload>`,
    );
  const wrong = await s3('POST', '/photos/mp/object.bin', {
    query: `uploadId=${uploadId}`,
    body: completion(['"1-1"', etags[1]!]),
  });
  assertError(wrong, 400, 'InvalidPart');
  const partGroups = async (n: number) => blockGroupIds(`/.s3-uploads/${uploadId}/parts/0000${n}`);
  const expectedGroups = [...(await partGroups(1)), ...(await partGroups(2))];
  const done = await s3('POST', '/photos/mp/object.bin', {
    query: `uploadId=${uploadId}`,
    body: completion(etags),
  });
  assert.equal(done.status, 200, done.text);
  assert.ok(xmlField(done.text, 'ETag'), done.text);
  assert.ok((await s3('GET', '/photos/mp/object.bin')).body.equals(Buffer.concat(parts)));
  assert.deepEqual(
    await blockGroupIds('/photos/mp/object.bin'),
    expectedGroups,
    "completion joined the parts' block groups: no byte copied",
  );
  // A client whose answer was lost completes again (twice at once here): the same result, as S3 gives,
  // and the object untouched. A part sent to the completed upload finds no upload.
  const repeated = await Promise.all(
    [1, 2].map(() =>
      s3('POST', '/photos/mp/object.bin', { query: `uploadId=${uploadId}`, body: completion(etags) }),
    ),
  );
  for (const again of repeated) {
    assert.equal(again.status, 200, again.text);
    assert.equal(xmlField(again.text, 'ETag'), xmlField(done.text, 'ETag'), 'the same object, the same ETag');
  }
  assert.deepEqual(await blockGroupIds('/photos/mp/object.bin'), expectedGroups);
  assertError(
    await s3('PUT', '/photos/mp/object.bin', { query: `partNumber=3&uploadId=${uploadId}`, body: parts[1]! }),
    404,
    'NoSuchUpload',
  );

  // Parts of two EC policies (the default changed mid-upload) cannot be joined: they are copied.
  const mixedId = await startUpload('/photos/mp/mixed.bin');
  const mixed = [randomBytes(100_000), randomBytes(50_000)];
  const mixedTags: string[] = [];
  for (const [i, part] of mixed.entries()) {
    if (i === 1) await defaultEcForNewFiles('rs-2-1');
    const reply = await s3('PUT', '/photos/mp/mixed.bin', {
      query: `partNumber=${i + 1}&uploadId=${mixedId}`,
      body: part,
    });
    mixedTags.push(String(reply.headers.etag));
  }
  await defaultEcForNewFiles('rs-3-2');
  const mixedDone = await s3('POST', '/photos/mp/mixed.bin', {
    query: `uploadId=${mixedId}`,
    body: completion(mixedTags),
  });
  assert.equal(mixedDone.status, 200, mixedDone.text);
  assert.equal(xmlField(mixedDone.text, 'Code'), undefined, mixedDone.text);
  assert.ok((await s3('GET', '/photos/mp/mixed.bin')).body.equals(Buffer.concat(mixed)));
  assert.match(gateway.output.stderr, /parts have different EC policies: copying them/);
  assertError(
    await s3('DELETE', '/photos/mp/object.bin', { query: `uploadId=${uploadId}` }),
    404,
    'NoSuchUpload',
  );

  const aborted = await startUpload('/photos/mp/gone.bin');
  await s3('PUT', '/photos/mp/gone.bin', {
    query: `partNumber=1&uploadId=${aborted}`,
    body: randomBytes(1000),
  });
  assert.equal((await s3('DELETE', '/photos/mp/gone.bin', { query: `uploadId=${aborted}` })).status, 204);
  assertError(await s3('GET', '/photos/mp/gone.bin'), 404, 'NoSuchKey');
  const uploads = await runDogfs(['ls', '/.s3-uploads'], { env: env() });
  assert.deepEqual(
    uploads.stdout
      .trim()
      .split('\n')
      .map((line) => line.split(/\s+/).at(-1))
      .sort(),
    [`${mixedId}/`, `${uploadId}/`, 'tmp/'].sort(),
    'the aborted upload left nothing; the completed ones their records',
  );
  const record = await runDogfs(['ls', `/.s3-uploads/${uploadId}`], { env: env() });
  assert.match(record.stdout, /completed-[0-9a-f]+\n/, record.stdout);
  assert.doesNotMatch(record.stdout, /parts/, "a completed upload's parts are gone");
  const staged = await runDogfs(['ls', '/.s3-uploads/tmp'], { env: env() });
  assert.equal(staged.stdout.trim(), '', 'nothing left staged');

  // Once the object is replaced, a repeated completion no longer names it: the upload is gone.
  assert.equal((await s3('PUT', '/photos/mp/object.bin', { body: parts[1]! })).status, 200);
  assertError(
    await s3('POST', '/photos/mp/object.bin', { query: `uploadId=${uploadId}`, body: completion(etags) }),
    404,
    'NoSuchUpload',
  );

  // Two completions of one upload at once (a retry sent while the first still runs): the second waits
  // for the first and answers the same. Once the object is deleted, a completion finds no upload.
  const twiceId = await startUpload('/photos/mp/twice.bin');
  const twicePart = await s3('PUT', '/photos/mp/twice.bin', {
    query: `partNumber=1&uploadId=${twiceId}`,
    body: parts[0]!,
  });
  const twice = await Promise.all(
    [1, 2].map(() =>
      s3('POST', '/photos/mp/twice.bin', {
        query: `uploadId=${twiceId}`,
        body: completion([String(twicePart.headers.etag)]),
      }),
    ),
  );
  for (const reply of twice) assert.equal(reply.status, 200, reply.text);
  assert.equal(xmlField(twice[0]!.text, 'ETag'), xmlField(twice[1]!.text, 'ETag'));
  assert.equal((await s3('DELETE', '/photos/mp/twice.bin')).status, 204);
  assertError(
    await s3('POST', '/photos/mp/twice.bin', {
      query: `uploadId=${twiceId}`,
      body: completion([String(twicePart.headers.etag)]),
    }),
    404,
    'NoSuchUpload',
  );

  const copied = await s3('PUT', '/photos/copy.bin', {
    headers: { 'x-amz-copy-source': '/photos/2026/jan/big.bin' },
  });
  assert.equal(copied.status, 200, copied.text);
  assert.ok(xmlField(copied.text, 'ETag'), copied.text);
  assert.ok((await s3('GET', '/photos/copy.bin')).body.equals(objects.get('2026/jan/big.bin')!));
});

test('bad names and requests get S3 errors that say why, and change nothing', async () => {
  assertError(await s3('PUT', '/Bad_Bucket'), 400, 'InvalidBucketName');
  const dotdot = await s3('PUT', '/photos/a/../escape', { body: Buffer.from('x') });
  assertError(dotdot, 400, 'InvalidArgument');
  assert.match(xmlField(dotdot.text, 'Message')!, /'\.\.' component/);
  assertError(await s3('PUT', '/photos/one/below', { body: Buffer.from('x') }), 400, 'InvalidRequest');
  assertError(await s3('GET', '/photos', { query: 'delimiter=%2C' }), 501, 'NotImplemented');
  assertError(await s3('PUT', '/nobucket/key', { body: Buffer.from('x') }), 404, 'NoSuchBucket');
  assertError(await s3('DELETE', '/photos'), 409, 'BucketNotEmpty');
  const root = await runDogfs(['ls', '/'], { env: env() });
  assert.doesNotMatch(root.stdout, /escape|Bad_Bucket|nobucket/);
});

test('concurrent PUTs of one key both complete; If-None-Match: * and If-Match are atomic; options it cannot honour are refused', async () => {
  const bodies = [randomBytes(3 << 20), randomBytes(3 << 20)];
  const puts = await Promise.all(bodies.map((body) => s3('PUT', '/photos/race.bin', { body })));
  for (const put of puts) assert.equal(put.status, 200, put.text);
  const raced = await s3('GET', '/photos/race.bin');
  assert.ok(
    bodies.some((b) => b.equals(raced.body)),
    'one of the two, whole',
  );
  assert.ok(puts.some((p) => p.headers.etag === raced.headers.etag));

  const create = (body: string) =>
    s3('PUT', '/photos/once.txt', { body: Buffer.from(body), headers: { 'if-none-match': '*' } });
  assert.equal((await create('first')).status, 200);
  assertError(await create('second'), 412, 'PreconditionFailed');
  assert.equal((await s3('GET', '/photos/once.txt')).text, 'first');
  const both = await Promise.all(
    [1, 2, 3].map(() =>
      s3('PUT', '/photos/once-race.txt', {
        body: Buffer.from('x'),
        headers: { 'if-none-match': '*' },
      }),
    ),
  );
  assert.deepEqual(both.map((r) => r.status).sort(), [200, 412, 412], 'exactly one creates it');
  // If-Match on a write: only the version named is replaced, checked atomically with the replacement.
  const ifMatch = (etag: string, body: string) =>
    s3('PUT', '/photos/once.txt', { body: Buffer.from(body), headers: { 'if-match': etag } });
  assertError(await ifMatch('"abc"', 'x'), 412, 'PreconditionFailed');
  assertError(
    await s3('PUT', '/photos/no-such.txt', { body: Buffer.from('x'), headers: { 'if-match': '"abc"' } }),
    404,
    'NoSuchKey',
  );
  assert.equal((await s3('GET', '/photos/no-such.txt')).status, 404, 'If-Match never creates');
  assertError(
    await s3('PUT', '/photos/once.txt', {
      body: Buffer.from('x'),
      headers: { 'if-match': '*', 'if-none-match': '*' },
    }),
    400,
    'InvalidArgument',
  );
  const firstTag = String((await s3('HEAD', '/photos/once.txt')).headers.etag);
  const racers = await Promise.all(['a', 'b', 'c'].map((body) => ifMatch(firstTag, body.repeat(1 << 20))));
  assert.deepEqual(
    racers.map((r) => r.status).sort(),
    [200, 412, 412],
    'three writes naming one version: exactly one replaces it',
  );
  const winner = racers.find((r) => r.status === 200)!;
  const now = await s3('GET', '/photos/once.txt');
  assert.equal(now.headers.etag, winner.headers.etag);
  assert.equal(now.body.length, 1 << 20);
  assertError(await ifMatch(firstTag, 'stale'), 412, 'PreconditionFailed');
  assertError(
    await s3('PUT', '/photos/once.txt', {
      headers: { 'x-amz-copy-source': '/photos/race.bin', 'if-match': firstTag },
    }),
    412,
    'PreconditionFailed',
  );
  // A multipart completion with If-Match: refused for a stale version (the upload stays), done for the
  // current one.
  const upload = await startUpload('/photos/once.txt');
  const part = await s3('PUT', '/photos/once.txt', {
    query: `partNumber=1&uploadId=${upload}`,
    body: Buffer.from('joined'),
  });
  const complete = (etag: string) =>
    s3('POST', '/photos/once.txt', {
      query: `uploadId=${upload}`,
      headers: { 'if-match': etag },
      body: Buffer.from(
        `<CompleteMultipartUpload><Part><PartNumber>1</PartNumber><ETag>${part.headers.etag}</ETag></Part></CompleteMultipartUpload>`,
      ),
    });
  assertError(await complete(firstTag), 412, 'PreconditionFailed');
  assert.equal((await complete(String(winner.headers.etag))).status, 200);
  assert.equal((await s3('GET', '/photos/once.txt')).text, 'joined');
  for (const headers of <Record<string, string>[]>[
    { 'x-amz-tagging': 'a=b' },
    { 'x-amz-acl': 'public-read' },
    { 'x-amz-storage-class': 'GLACIER' },
    { 'x-amz-server-side-encryption': 'AES256' },
    { 'x-amz-object-lock-mode': 'GOVERNANCE' },
  ])
    assertError(
      await s3('PUT', '/photos/opt.txt', { body: Buffer.from('x'), headers }),
      501,
      'NotImplemented',
    );
  assert.equal((await s3('GET', '/photos/opt.txt')).status, 404, 'none of them stored it');
  assertError(
    await s3('PUT', '/photos/opt.txt', {
      headers: { 'x-amz-copy-source': '/photos/one', 'x-amz-copy-source-if-match': '"x"' },
    }),
    501,
    'NotImplemented',
  );
  assertError(
    await s3('PUT', '/locked', { headers: { 'x-amz-bucket-object-lock-enabled': 'true' } }),
    501,
    'NotImplemented',
  );
  assertError(await s3('GET', '/locked'), 404, 'NoSuchBucket');
  assert.equal(
    (await s3('PUT', '/photos/opt.txt', { body: Buffer.from('x'), headers: { 'x-amz-acl': 'private' } }))
      .status,
    200,
  );
});

test("the gateway's own files are no bucket; unsigned headers, early bodies and odd listings are refused or answered as S3 does", async () => {
  assertError(await s3('GET', '/.s3-uploads/tmp'), 400, 'InvalidBucketName');
  assertError(
    await s3('PUT', '/photos/stolen', { headers: { 'x-amz-copy-source': '/.s3-uploads/tmp/x' } }),
    400,
    'InvalidBucketName',
  );
  // A header added after signing: a signed GET cannot be turned into something else.
  const signed = signedHeaders('PUT', '/photos/added', { body: Buffer.from('x') }).headers;
  const added = await send(
    'PUT',
    '/photos/added',
    undefined,
    { ...signed, 'x-amz-copy-source': '/photos/one' },
    Buffer.from('x'),
  );
  assertError(added, 403, 'AccessDenied');
  assert.match(xmlField(added.text, 'Message')!, /not signed: x-amz-copy-source/);

  // Refused before its body is read (an unsupported checksum), an aws-chunked body that is malformed
  // too must not take the gateway down.
  const malformed = await s3('PUT', '/photos/malformed', {
    body: Buffer.from('zz\r\nhello\r\n0\r\n\r\n'),
    payloadHash: 'STREAMING-UNSIGNED-PAYLOAD-TRAILER',
    headers: {
      'content-encoding': 'aws-chunked',
      'x-amz-decoded-content-length': '5',
      'x-amz-checksum-md4': 'AAAA',
    },
  });
  assertError(malformed, 400, 'InvalidRequest');
  assert.equal((await s3('GET', '/photos/one')).status, 200, 'the gateway still serves');
  assert.equal(gateway.child.exitCode, null);

  // An unsigned upload that asks to continue is refused without being told to send its body.
  const [host, port] = addr.split(':');
  let continued = false;
  const refused = await new Promise<number>((resolve, reject) => {
    const req = request({
      host,
      port: Number(port),
      method: 'PUT',
      path: '/photos/unsigned',
      headers: { expect: '100-continue', 'content-length': '1000' },
    });
    req.on('continue', () => {
      continued = true;
      req.end(Buffer.alloc(1000));
    });
    req.on('response', (res) => {
      res.resume();
      resolve(res.statusCode ?? 0);
      req.destroy();
    });
    req.on('error', reject);
    req.flushHeaders();
  });
  assert.equal(refused, 403);
  assert.equal(continued, false, 'no 100 Continue before the signature was checked');

  const none = await s3('GET', '/photos', { query: 'list-type=2&max-keys=0' });
  assert.equal(xmlField(none.text, 'IsTruncated'), 'false', none.text);
  assert.equal(xmlField(none.text, 'KeyCount'), '0', none.text);
  assert.equal((await s3('PUT', '/photos/emptydir/')).status, 200);
  const marker = await s3('GET', '/photos', { query: 'delimiter=%2F&list-type=2&prefix=emptydir%2F' });
  assert.deepEqual(xmlFields(marker.text, 'Key'), ['emptydir/'], marker.text);
  assert.equal((await s3('DELETE', '/photos/emptydir/')).status, 204);
  const doubled = await s3('GET', '/photos', { query: 'list-type=2&prefix=2026%2F%2F' });
  assert.deepEqual(xmlFields(doubled.text, 'Key'), [], 'no key holds an empty component');
});

test('a gateway aborts multipart uploads no part reached for --abort-uploads-after, keeps busy ones, and removes staged files left behind', async () => {
  const part = async (key: string, id: string, n: number) =>
    assert.equal(
      (await s3('PUT', key, { query: `partNumber=${n}&uploadId=${id}`, body: randomBytes(1000) })).status,
      200,
    );
  // Started first, and kept busy: older than the idle one, but a part arrives every few hundred ms.
  const busy = await startUpload('/photos/busy.bin');
  await part('/photos/busy.bin', busy, 1);
  const idle = await startUpload('/photos/idle.bin');
  await part('/photos/idle.bin', idle, 1);
  // What a gateway that died between writing an object and renaming it into place leaves.
  const local = join(await mkdtemp(join(tmpdir(), 'dogfs-s3-')), 'orphan');
  writeFileSync(local, randomBytes(1000));
  const put = await runDogfs(['put', local, '/.s3-uploads/tmp/orphan'], { env: env() });
  assert.equal(put.status, 0, put.stderr);
  const exists = async (path: string) => (await runDogfs(['stat', path], { env: env() })).status === 0;
  assert.ok(await exists(`/.s3-uploads/${idle}`));
  // A completed upload keeps a record (for repeated completions) until the sweep's time for it.
  const completed = await startUpload('/photos/completed.bin');
  await part('/photos/completed.bin', completed, 1);
  const completion = await s3('POST', '/photos/completed.bin', {
    query: `uploadId=${completed}`,
    body: Buffer.from(
      '<CompleteMultipartUpload><Part><PartNumber>1</PartNumber></Part></CompleteMultipartUpload>',
    ),
  });
  assert.equal(completion.status, 200, completion.text);
  assert.ok(await exists(`/.s3-uploads/${completed}`));

  const sweeper = startDogfs(
    ['s3', '--listen', '127.0.0.1:0', '--abort-uploads-after', '1500', '--log-level', 'info'],
    {
      ...env(),
      DOGFS_S3_STAGED_MAX_AGE_MS: '1000',
      DOGFS_S3_COMPLETED_KEPT_MS: '1000',
    },
  );
  try {
    let n = 2;
    await waitFor(
      'the idle upload, the staged file and the completed record to be removed',
      async () => {
        await part('/photos/busy.bin', busy, n++);
        return (
          (!(await exists(`/.s3-uploads/${idle}`)) &&
            !(await exists('/.s3-uploads/tmp/orphan')) &&
            !(await exists(`/.s3-uploads/${completed}`))) ||
          undefined
        );
      },
      30_000,
      200,
    );
    assert.ok(await exists(`/.s3-uploads/${busy}`), 'an upload receiving parts is not idle, however old');
    assert.match(sweeper.output.stderr, new RegExp(`aborted a multipart upload idle too long.*${idle}`));
    assert.match(sweeper.output.stderr, /removed a staged file left by a gateway that stopped/);
    assert.match(sweeper.output.stderr, new RegExp(`removed a completed upload's record.*${completed}`));
    assert.equal((await s3('HEAD', '/photos/completed.bin')).status, 200, 'the object stays');
  } finally {
    sweeper.child.kill('SIGTERM');
    await sweeper.exited;
  }
  assertError(
    await s3('POST', '/photos/idle.bin', { query: `uploadId=${idle}`, body: Buffer.from('<x/>') }),
    404,
    'NoSuchUpload',
  );
  assert.equal((await s3('DELETE', '/photos/busy.bin', { query: `uploadId=${busy}` })).status, 204);
});

test('deleting keys removes directories left empty; reads survive M killed chunk servers', async () => {
  assert.equal((await s3('DELETE', '/photos/a-b')).status, 204);
  assert.equal((await s3('DELETE', '/photos/a-b')).status, 204, 'deleting a missing key succeeds, as in S3');
  const multi = await s3('POST', '/photos', {
    query: 'delete',
    body: Buffer.from(
      '<Delete><Object><Key>mp/object.bin</Key></Object><Object><Key>mp/mixed.bin</Key></Object><Object><Key>streamed</Key></Object></Delete>',
    ),
  });
  assert.deepEqual(xmlFields(multi.text, 'Key'), ['mp/object.bin', 'mp/mixed.bin', 'streamed']);
  const mp = await runDogfs(['stat', '/photos/mp'], { env: env() });
  assert.notEqual(mp.status, 0, 'the emptied directory went with its last key');

  const victims = cluster.processes.filter((p) => p.role === 'chunk').slice(0, 2);
  await killChunkServers(victims, async () => {
    const report = await runDogfs(['admin', 'report', '--json'], { env: env() });
    return JSON.parse(report.stdout) as { chunkServers: { id: string; state: string }[] };
  });
  const got = await s3('GET', '/photos/2026/jan/big.bin');
  assert.equal(got.status, 200);
  assert.ok(got.body.equals(objects.get('2026/jan/big.bin')!), 'decoded around the lost shards');
});
