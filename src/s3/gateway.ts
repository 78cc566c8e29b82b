/**
 * s3/gateway — an S3-compatible HTTP front for DogFS, so existing tools (aws cli, boto3, rclone,
 * s3cmd) store and fetch files unchanged. Path-style addressing (`http://host:port/bucket/key`). Each
 * request becomes DogFS client calls: bodies stream straight into a DogFS write stream (which encodes and
 * spreads them over chunk servers with back-pressure) and reads stream out of a DogFS read stream, so
 * the gateway holds a few MiB per request whatever the object's size.
 *
 * What S3 means here: a bucket is a directory under `/`; a key is a path under it; an object appears
 * whole when its upload completes (a failed or cut-off upload never appears, and a declared digest that
 * does not match fails it); an overwrite replaces it atomically. ETags are opaque version tags (the
 * inode id and modification time), not MD5s: DogFS keeps CRC32C per shard and does not store one.
 */
import { randomBytes } from 'node:crypto';
import { once } from 'node:events';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { Readable } from 'node:stream';
import { finished, pipeline } from 'node:stream/promises';
import { baseName, type DogfsClient, type FileStatus } from '../client/index.js';
import { assert } from '../common/assert.js';
import type { Logger } from '../common/log.js';
import { listenOn } from '../daemon/listen.js';
import { DogfsError } from '../wire/errors.js';
import {
  AwsChunkedDecoder,
  BodyCheck,
  type BodyExpectations,
  CHECKSUM_ALGORITHMS,
  type ChecksumAlgorithm,
} from './body.js';
import { fromDogfsError, S3Error } from './errors.js';
import { bucketNameProblem, checkBucketName, keyPath, parentPath, pathKey } from './keys.js';
import { type ListedItem, listKeys, type TreeEntry, type TreeReader } from './listing.js';
import { type S3Credentials, type SigningContext, uriEncode, verifyRequest } from './sigv4.js';
import {
  childrenNamed,
  childText,
  el,
  errorElement,
  MAX_XML_BODY_BYTES,
  parseXml,
  XML_DECLARATION,
  type XmlElement,
  type XmlNode,
  xmlDocument,
  xmlRoot,
} from './xml.js';

export interface S3GatewayOptions {
  readonly client: DogfsClient;
  /** Require requests signed with this key; without, every request is accepted. */
  readonly credentials?: S3Credentials | undefined;
  /** What GetBucketLocation answers ('' = us-east-1, as S3 says it). */
  readonly region?: string | undefined;
  /**
   * A multipart upload with no part uploaded for this long is aborted (S3 needs a lifecycle rule for
   * that; the gateway has none). 0: never. Default 7 days.
   */
  readonly abortUploadsAfterMs?: number | undefined;
  /** How old a staged file must be for the sweep to remove it (default 10 minutes; tests shorten it). */
  readonly stagedMaxAgeMs?: number | undefined;
  /**
   * How long a completed upload's record answers a repeated CompleteMultipartUpload (default an hour;
   * tests shorten it).
   */
  readonly completedKeptMs?: number | undefined;
  readonly log: Logger;
}

export const DEFAULT_ABORT_UPLOADS_AFTER_MS = 7 * 86_400_000;

/** Where multipart uploads keep their parts until completed or aborted (not a valid bucket name). */
export const UPLOADS_DIR = '/.s3-uploads';
const MAX_KEYS = 1000;
const MAX_PARTS = 10_000;
const MAX_DELETE_KEYS = 1000;
const MAX_BUCKETS_LISTED = 10_000;
/**
 * A CompleteMultipartUpload or copy still running after this long answers 200, then sends a space this
 * often so clients do not time out.
 */
const KEEPALIVE_MS = 10_000;
const IDLE_TIMEOUT_MS = 120_000;
const MAX_CONNECTIONS = 256;
/** Attempts at a read whose file was replaced between its stat and its open. */
const READ_ATTEMPTS = 3;
/**
 * Where uploads are written before they are renamed onto their key: two PUTs of one key both complete
 * (the later rename wins, as in S3) instead of the second's create cancelling the first's write.
 */
const STAGING_DIR = `${UPLOADS_DIR}/tmp`;
/** Attempts at renaming a staged object into place while its directory is removed and made again. */
const PLACE_ATTEMPTS = 3;
/**
 * A staged file is complete for only the moment between its write and its rename: one older than this
 * was left by a gateway that died in between, and is removed.
 */
const STAGED_MAX_AGE_MS = 10 * 60_000;
/**
 * A completed upload keeps its directory with its key marker and a record, `completed-<object id in
 * hex>`, for this long: a client whose CompleteMultipartUpload answer was lost retries it, and S3 answers
 * the retry with the same result rather than NoSuchUpload (SDKs retry on a dropped connection).
 */
const COMPLETED_KEPT_MS = 60 * 60_000;
const COMPLETED_RECORD_PREFIX = 'completed-';
/** Entries an upload's own directory holds: `key`, `parts` and a completion record. */
const MAX_UPLOAD_DIR_ENTRIES = 8;
/** The most sweeps wait between them (shorter when uploads expire sooner). */
const MAX_SWEEP_INTERVAL_MS = 10 * 60_000;
/** Entries one sweep looks at in each directory: the next sweep goes on with the rest. */
const MAX_SWEPT_ENTRIES = 10_000;
/** Write options S3 has and the gateway cannot honour: refused, never ignored. */
const UNSUPPORTED_WRITE_HEADERS = [
  'x-amz-object-lock-mode',
  'x-amz-object-lock-retain-until-date',
  'x-amz-object-lock-legal-hold',
  'x-amz-tagging',
  'x-amz-tagging-directive',
  'x-amz-server-side-encryption',
  'x-amz-server-side-encryption-customer-algorithm',
  'x-amz-server-side-encryption-aws-kms-key-id',
  'x-amz-copy-source-server-side-encryption-customer-algorithm',
  'x-amz-website-redirect-location',
  'x-amz-grant-read',
  'x-amz-grant-read-acp',
  'x-amz-grant-write-acp',
  'x-amz-grant-full-control',
  // Conditions on a copy's source: not evaluated yet, so refused rather than copy a replaced source.
  'x-amz-copy-source-if-match',
  'x-amz-copy-source-if-none-match',
  'x-amz-copy-source-if-modified-since',
  'x-amz-copy-source-if-unmodified-since',
  'x-amz-bucket-object-lock-enabled',
];
const OBJECT_CONTENT_TYPE = 'binary/octet-stream';
/** Bucket subresources S3 has and the gateway does not (ACLs, policies, versioning, lifecycle, ...). */
const UNSUPPORTED_BUCKET_QUERIES = [
  'acl',
  'policy',
  'cors',
  'lifecycle',
  'tagging',
  'website',
  'logging',
  'replication',
  'encryption',
  'object-lock',
  'notification',
  'requestPayment',
  'accelerate',
  'analytics',
  'metrics',
  'inventory',
  'intelligent-tiering',
  'ownershipControls',
  'publicAccessBlock',
  'uploads',
  'versions',
];
/** Object subresources likewise (ACLs, tags, retention, restore, select). */
const UNSUPPORTED_OBJECT_QUERIES = [
  'acl',
  'tagging',
  'retention',
  'legal-hold',
  'torrent',
  'restore',
  'select',
  'attributes',
];

interface Request {
  readonly req: IncomingMessage;
  readonly res: ServerResponse;
  readonly id: string;
  readonly method: string;
  readonly rawPath: string;
  readonly query: URLSearchParams;
  readonly bucket: string;
  /** '' for bucket-level requests. */
  readonly key: string;
  readonly signing: SigningContext | undefined;
}

/**
 * Where a staged write goes: an object's key (its directories made as needed; with `noReplace` only if
 * the key is free), or a part of an upload (which may have been completed or aborted meanwhile).
 */
type Destination =
  | ({ readonly kind: 'object'; readonly bucket: string; readonly path: string } & WriteCondition)
  | { readonly kind: 'part'; readonly path: string };

/**
 * What a write asks of the key it replaces: `noReplace` (If-None-Match: *) only a free key; `ifId`
 * (If-Match) only the version it named, by its inode id, checked again by the namespace when the write
 * is put in place (a compare-and-replace: a version written meanwhile is not overwritten).
 */
interface WriteCondition {
  readonly noReplace: boolean;
  readonly ifId?: number | undefined;
}

interface Written {
  readonly id: number;
  readonly mtime: number;
}

/** An opaque version tag: changes whenever the object is replaced (new inode) or rewritten. */
export function etagOf(entry: { readonly id: number; readonly mtime: number }): string {
  return `"${entry.id.toString(16)}-${Math.floor(entry.mtime).toString(16)}"`;
}

function isoDate(ms: number): string {
  return new Date(ms).toISOString().replace(/\.\d{3}Z$/, '.000Z');
}

function decodeKey(raw: string): string {
  try {
    return decodeURIComponent(raw);
  } catch {
    throw new S3Error('InvalidArgument', 'malformed percent-encoding in the request path');
  }
}

export class S3Gateway {
  private readonly client: DogfsClient;
  private readonly options: S3GatewayOptions;
  private readonly log: Logger;
  private readonly tree: TreeReader;
  private server: Server | undefined;
  private stagingDirMade = false;
  private sweepTimer: NodeJS.Timeout | undefined;
  private sweeping: Promise<void> | undefined;
  /**
   * Completions running in this gateway, by upload id: a second completion of one upload (a client
   * retrying one it gave up on) waits for the first, then finds its record. At most one per connection.
   */
  private readonly completing = new Map<string, Promise<void>>();

  constructor(options: S3GatewayOptions) {
    this.options = options;
    this.client = options.client;
    this.log = options.log;
    this.tree = dogfsTree(options.client);
  }

  /** Listens on host:port (0: any free port); resolves with the port. */
  async listen(host: string, port: number): Promise<number> {
    assert(this.server === undefined, 'listen once');
    const server = createServer(
      // No limit on a whole request (an upload of many GiB takes minutes); 60 s to send the headers.
      { requestTimeout: 0, headersTimeout: 60_000, keepAliveTimeout: 65_000 },
      (req, res) => this.handle(req, res),
    );
    server.on('checkContinue', (req: IncomingMessage, res: ServerResponse) => this.handle(req, res));
    // A connection silent this long either way is given up: a stalled client cannot hold a write lease
    // and its stripe buffers forever. Long answers send keepalive bytes well within it.
    server.setTimeout(IDLE_TIMEOUT_MS);
    // Each upload holds stripe buffers (a few MiB): bound how many can be open at once.
    server.maxConnections = MAX_CONNECTIONS;
    this.server = server;
    return listenOn(server, host, port, 'S3 gateway');
  }

  /**
   * Removes, now and then every few minutes, what no request will finish: staged files a dead gateway
   * left, and multipart uploads idle past `abortUploadsAfterMs`. Errors are logged and the next sweep
   * tries again.
   */
  startSweeping(): void {
    assert(this.sweepTimer === undefined, 'start sweeping once');
    const abortAfter = this.options.abortUploadsAfterMs ?? DEFAULT_ABORT_UPLOADS_AFTER_MS;
    const interval = Math.max(
      100,
      Math.min(MAX_SWEEP_INTERVAL_MS, abortAfter > 0 ? abortAfter / 2 : MAX_SWEEP_INTERVAL_MS),
    );
    const run = () => {
      if (this.sweeping !== undefined) return;
      this.sweeping = this.sweep(Date.now()).finally(() => {
        this.sweeping = undefined;
      });
    };
    this.sweepTimer = setInterval(run, interval);
    this.sweepTimer.unref();
    run();
  }

  /** One sweep (see startSweeping); resolves when done, never rejects. */
  async sweep(nowMs: number): Promise<void> {
    const abortAfter = this.options.abortUploadsAfterMs ?? DEFAULT_ABORT_UPLOADS_AFTER_MS;
    const stagedAge = this.options.stagedMaxAgeMs ?? STAGED_MAX_AGE_MS;
    const completedKept = this.options.completedKeptMs ?? COMPLETED_KEPT_MS;
    try {
      for await (const entry of this.entriesOf(STAGING_DIR)) {
        if (entry.type !== 'file' || nowMs - entry.mtime < stagedAge) continue;
        if (await this.removeSwept(entry.path, false))
          this.log.info('s3 removed a staged file left by a gateway that stopped', { path: entry.path });
      }
      for await (const upload of this.entriesOf(UPLOADS_DIR)) {
        if (upload.type !== 'dir' || !/^[0-9a-f]{32}$/.test(upload.name)) continue;
        // Completed records go whatever --abort-uploads-after says (off included).
        const completed = await this.completionRecord(upload.path);
        if (completed !== undefined) {
          if (nowMs - completed.mtime >= completedKept && (await this.removeSwept(upload.path, true)))
            this.log.info("s3 removed a completed upload's record", { uploadId: upload.name });
          continue;
        }
        if (abortAfter === 0) continue;
        // A directory's mtime is its making, so activity is the newest part's completion (or the start).
        let lastActivity = upload.mtime;
        for await (const part of this.entriesOf(`${upload.path}/parts`))
          lastActivity = Math.max(lastActivity, part.mtime);
        if (nowMs - lastActivity < abortAfter) continue;
        // Completed since it was first looked at (its parts gone with it): a record now, not idle.
        if ((await this.completionRecord(upload.path)) !== undefined) continue;
        if (await this.removeSwept(upload.path, true))
          this.log.info('s3 aborted a multipart upload idle too long', {
            uploadId: upload.name,
            idleMs: nowMs - lastActivity,
          });
      }
    } catch (error) {
      this.log.warn('s3 sweep failed; the next one tries again', { error });
    }
  }

  /**
   * Removes one swept entry: false if it was gone already (another gateway's sweep, an abort). Any
   * other failure is logged and left to the next sweep; the pass goes on.
   */
  private async removeSwept(path: string, recursive: boolean): Promise<boolean> {
    try {
      await this.client.delete(path, { recursive });
      return true;
    } catch (error) {
      if (!(error instanceof DogfsError && error.code === 'NOT_FOUND'))
        this.log.warn('s3 sweep could not remove an entry; the next one tries again', { path, error });
      return false;
    }
  }

  /** A directory's first entries (none if it is not there). */
  private async *entriesOf(path: string): AsyncGenerator<FileStatus> {
    let seen = 0;
    try {
      for await (const entry of this.client.list(path)) {
        if (++seen > MAX_SWEPT_ENTRIES) return;
        yield entry;
      }
    } catch (error) {
      if (error instanceof DogfsError && error.code === 'NOT_FOUND') return;
      throw error;
    }
  }

  /**
   * The records a completed upload leaves in its directory `dir`: the objects' inode ids (two gateways
   * that each completed it by copying leave two) and when the newest was written. Undefined while the
   * upload is open (or gone).
   */
  private async completionRecord(
    dir: string,
  ): Promise<{ objectIds: readonly number[]; mtime: number } | undefined> {
    const objectIds: number[] = [];
    let mtime = 0;
    let seen = 0;
    try {
      for await (const entry of this.client.list(dir, { pageSize: MAX_UPLOAD_DIR_ENTRIES })) {
        if (++seen > MAX_UPLOAD_DIR_ENTRIES) break;
        if (!entry.name.startsWith(COMPLETED_RECORD_PREFIX)) continue;
        const objectId = Number.parseInt(entry.name.slice(COMPLETED_RECORD_PREFIX.length), 16);
        if (!Number.isSafeInteger(objectId)) continue;
        objectIds.push(objectId);
        mtime = Math.max(mtime, entry.mtime);
      }
    } catch (error) {
      if (error instanceof DogfsError && error.code === 'NOT_FOUND') return undefined;
      throw error;
    }
    return objectIds.length === 0 ? undefined : { objectIds, mtime };
  }

  async close(): Promise<void> {
    if (this.sweepTimer !== undefined) clearInterval(this.sweepTimer);
    this.sweepTimer = undefined;
    await this.sweeping;
    const server = this.server;
    if (server === undefined) return;
    const closed = new Promise<void>((resolve) => server.close(() => resolve()));
    server.closeIdleConnections();
    server.closeAllConnections();
    await closed;
  }

  /** The HTTP request handler (usable with any node:http server). */
  handle(req: IncomingMessage, res: ServerResponse): void {
    const id = randomBytes(8).toString('hex').toUpperCase();
    res.setHeader('x-amz-request-id', id);
    res.setHeader('Server', 'DogFS');
    const url = req.url ?? '/';
    const q = url.indexOf('?');
    const rawPath = q < 0 ? url : url.slice(0, q);
    const rawQuery = q < 0 ? '' : url.slice(q + 1);
    let request: Request | undefined;
    try {
      if (!rawPath.startsWith('/')) throw new S3Error('InvalidRequest', 'request path must start with /');
      const slash = rawPath.indexOf('/', 1);
      const bucket = decodeKey(slash < 0 ? rawPath.slice(1) : rawPath.slice(1, slash));
      const key = slash < 0 ? '' : decodeKey(rawPath.slice(slash + 1));
      const method = req.method ?? 'GET';
      const signing = verifyRequest(
        { method, rawPath, rawQuery, headers: req.headersDistinct },
        this.options.credentials,
        Date.now(),
      );
      // Every request, not just CreateBucket: a name no bucket can have (`.s3-uploads`, `a%2Fb`) would
      // reach the gateway's own files or a directory below another bucket.
      if (bucket !== '') checkBucketName(bucket);
      // Only now is the client told to send its body (Node answers 100-continue itself otherwise).
      if (req.headers.expect?.toLowerCase() === '100-continue') res.writeContinue();
      request = { req, res, id, method, rawPath, query: new URLSearchParams(rawQuery), bucket, key, signing };
    } catch (error) {
      this.fail(req, res, id, rawPath, error);
      return;
    }
    const started = request;
    this.route(started).catch((error: unknown) => this.fail(req, res, id, rawPath, error));
  }

  private fail(
    req: IncomingMessage,
    res: ServerResponse,
    id: string,
    resource: string,
    error: unknown,
  ): void {
    const s3 = fromDogfsError(error, 'key');
    if (res.destroyed || req.socket.destroyed) {
      // The client went away (a download it stopped reading, an upload it cut off): nothing to answer.
      this.log.debug('s3 client went away', {
        method: req.method,
        resource,
        code: s3.code,
        message: s3.message,
      });
      return;
    }
    if (s3.code === 'InternalError')
      this.log.error('s3 request failed', { method: req.method, resource, error });
    else
      this.log.debug('s3 request refused', {
        method: req.method,
        resource,
        code: s3.code,
        message: s3.message,
      });
    // Unread upload bytes: the connection cannot carry another request (and a client still sending a
    // large body would otherwise be read to its end for nothing).
    if (!req.complete) res.setHeader('Connection', 'close');
    if (res.headersSent) {
      // The body was on its way (a read that failed after M+1 lost shards): cut it, so the client sees a
      // short body rather than a complete-looking one.
      res.destroy();
      return;
    }
    res.statusCode = s3.status;
    if (req.method === 'HEAD') {
      res.setHeader('x-amz-error-code', s3.code);
      res.end();
      return;
    }
    res.setHeader('Content-Type', 'application/xml');
    res.end(XML_DECLARATION + errorElement(s3.code, s3.message, resource, id));
  }

  private async route(r: Request): Promise<void> {
    const { method, query } = r;
    if (r.bucket === '') {
      if (method === 'GET') return this.listBuckets(r);
      throw new S3Error('MethodNotAllowed', `${method} / is not an S3 operation`);
    }
    if (r.key === '') {
      const unsupported = UNSUPPORTED_BUCKET_QUERIES.find((sub) => query.has(sub));
      if (unsupported !== undefined)
        throw new S3Error('NotImplemented', `bucket ?${unsupported} is not supported by the DogFS gateway`);
      switch (method) {
        case 'PUT':
          return this.createBucket(r);
        case 'DELETE':
          return this.deleteBucket(r);
        case 'HEAD':
          return this.headBucket(r);
        case 'GET':
          if (query.has('location')) return this.bucketLocation(r);
          if (query.has('versioning')) return this.bucketVersioning(r);
          if (query.has('uploads'))
            throw new S3Error(
              'NotImplemented',
              'listing multipart uploads is not supported by the DogFS gateway',
            );
          return this.listObjects(r);
        case 'POST':
          if (query.has('delete')) return this.deleteObjects(r);
          throw new S3Error('NotImplemented', 'this bucket POST is not supported by the DogFS gateway');
        default:
          throw new S3Error('MethodNotAllowed', `${method} is not an S3 bucket operation`);
      }
    }
    const unsupported = UNSUPPORTED_OBJECT_QUERIES.find((sub) => query.has(sub));
    if (unsupported !== undefined)
      throw new S3Error('NotImplemented', `object ?${unsupported} is not supported by the DogFS gateway`);
    if (method === 'PUT' || method === 'POST') refuseUnsupportedWriteOptions(r.req);
    switch (method) {
      case 'PUT':
        if (query.has('uploadId')) return this.uploadPart(r);
        if (r.req.headers['x-amz-copy-source'] !== undefined) return this.copyObject(r);
        return this.putObject(r);
      case 'GET':
      case 'HEAD':
        if (query.has('uploadId'))
          throw new S3Error(
            'NotImplemented',
            'listing the parts of an upload is not supported by the DogFS gateway',
          );
        return this.getObject(r, method === 'HEAD');
      case 'DELETE':
        if (query.has('uploadId')) return this.abortUpload(r);
        return this.deleteObject(r);
      case 'POST':
        if (query.has('uploads')) return this.createUpload(r);
        if (query.has('uploadId')) return this.completeUpload(r);
        throw new S3Error('NotImplemented', 'this object POST is not supported by the DogFS gateway');
      default:
        throw new S3Error('MethodNotAllowed', `${method} is not an S3 object operation`);
    }
  }

  // ---- responses ----

  private sendXml(r: Request, root: XmlNode, status = 200): void {
    const body = xmlDocument(root);
    r.res.writeHead(status, { 'Content-Type': 'application/xml', 'Content-Length': Buffer.byteLength(body) });
    r.res.end(body);
  }

  private sendEmpty(r: Request, status: number, headers: Record<string, string> = {}): void {
    r.res.writeHead(status, { ...headers, 'Content-Length': '0' });
    r.res.end();
  }

  /**
   * Answers a request whose work may take minutes (a multipart completion, a copy): 200 and the XML
   * declaration at once, a space every 10 s, then the result — or an Error element, as S3 does, since the
   * status is already sent. Clients that speak S3 read both.
   */
  private async longRunning(r: Request, work: () => Promise<XmlNode>): Promise<void> {
    // The 200 goes out only when the work outlasts one keepalive interval: quicker work is answered
    // as any request is, errors with their own status.
    let started = false;
    const keepalive = setInterval(() => {
      if (!started) {
        started = true;
        r.res.writeHead(200, { 'Content-Type': 'application/xml' });
        r.res.write(XML_DECLARATION);
      }
      r.res.write(' ');
    }, KEEPALIVE_MS);
    try {
      const result = await work();
      if (started) r.res.end(xmlRoot(result));
      else this.sendXml(r, result);
    } catch (error) {
      if (!started) throw error;
      const s3 = fromDogfsError(error);
      if (s3.code === 'InternalError') this.log.error('s3 request failed', { resource: r.rawPath, error });
      r.res.end(errorElement(s3.code, s3.message, r.rawPath, r.id));
    } finally {
      clearInterval(keepalive);
    }
  }

  // ---- buckets ----

  private async listBuckets(r: Request): Promise<void> {
    const buckets: XmlNode[] = [];
    for await (const entry of this.client.list('/')) {
      if (entry.type !== 'dir' || bucketNameProblem(entry.name) !== undefined) continue;
      buckets.push(el('Bucket', el('Name', entry.name), el('CreationDate', isoDate(entry.inode.ctimeMs))));
      if (buckets.length >= MAX_BUCKETS_LISTED) break;
    }
    this.sendXml(
      r,
      el(
        'ListAllMyBucketsResult',
        el('Owner', el('ID', 'dogfs'), el('DisplayName', 'dogfs')),
        el('Buckets', buckets),
      ),
    );
  }

  /** The bucket's directory, or NoSuchBucket. */
  private async requireBucket(bucket: string): Promise<void> {
    const entry = await this.tree.stat(`/${bucket}`);
    if (entry === undefined || !entry.dir)
      throw new S3Error('NoSuchBucket', `bucket ${bucket} does not exist`);
  }

  private async createBucket(r: Request): Promise<void> {
    checkBucketName(r.bucket);
    refuseUnsupportedWriteOptions(r.req);
    await readSmallBody(r, MAX_XML_BODY_BYTES); // CreateBucketConfiguration: a region DogFS has no use for
    try {
      await this.client.mkdir(`/${r.bucket}`);
    } catch (error) {
      if (error instanceof DogfsError && error.code === 'ALREADY_EXISTS') {
        const existing = await this.tree.stat(`/${r.bucket}`);
        throw existing?.dir
          ? new S3Error('BucketAlreadyOwnedByYou', `bucket ${r.bucket} already exists`)
          : new S3Error('BucketAlreadyExists', `a file named /${r.bucket} holds that name`);
      }
      throw error;
    }
    this.sendEmpty(r, 200, { Location: `/${r.bucket}` });
  }

  private async deleteBucket(r: Request): Promise<void> {
    const entry = await this.tree.stat(`/${r.bucket}`);
    if (entry === undefined || !entry.dir)
      throw new S3Error('NoSuchBucket', `bucket ${r.bucket} does not exist`);
    try {
      await this.client.delete(`/${r.bucket}`);
    } catch (error) {
      if (error instanceof DogfsError && error.code === 'NOT_EMPTY')
        throw new S3Error('BucketNotEmpty', `bucket ${r.bucket} is not empty`);
      throw fromDogfsError(error, 'bucket');
    }
    this.sendEmpty(r, 204);
  }

  private async headBucket(r: Request): Promise<void> {
    await this.requireBucket(r.bucket);
    this.sendEmpty(r, 200, { 'x-amz-bucket-region': this.options.region || 'us-east-1' });
  }

  private async bucketLocation(r: Request): Promise<void> {
    await this.requireBucket(r.bucket);
    const region = this.options.region ?? '';
    this.sendXml(r, el('LocationConstraint', region === 'us-east-1' ? '' : region));
  }

  private async bucketVersioning(r: Request): Promise<void> {
    await this.requireBucket(r.bucket);
    this.sendXml(r, el('VersioningConfiguration'));
  }

  // ---- listing ----

  private async listObjects(r: Request): Promise<void> {
    const { query } = r;
    const v2 = query.get('list-type') === '2';
    const prefix = query.get('prefix') ?? '';
    const delimiterParam = query.get('delimiter') ?? '';
    if (delimiterParam !== '' && delimiterParam !== '/')
      throw new S3Error(
        'NotImplemented',
        `delimiter ${JSON.stringify(delimiterParam)}: the DogFS gateway lists with '/' or none`,
      );
    const delimiter = delimiterParam as '' | '/';
    const maxKeysParam = query.get('max-keys');
    const maxKeys = maxKeysParam === null ? MAX_KEYS : Number(maxKeysParam);
    if (!Number.isInteger(maxKeys) || maxKeys < 0)
      throw new S3Error('InvalidArgument', 'max-keys must be a non-negative integer');
    const encodeUrl = query.get('encoding-type') === 'url';
    if (query.has('encoding-type') && !encodeUrl)
      throw new S3Error('InvalidArgument', 'encoding-type must be url');
    const encode = (text: string) => (encodeUrl ? uriEncode(text, true) : text);
    let startAfter: string;
    const token = query.get('continuation-token');
    if (v2) {
      startAfter = query.get('start-after') ?? '';
      if (token !== null) {
        const decoded = Buffer.from(token, 'base64url').toString('utf8');
        if (!decoded.startsWith('k:'))
          throw new S3Error('InvalidArgument', 'the continuation token is not one this gateway gave');
        startAfter = decoded.slice(2);
      }
    } else startAfter = query.get('marker') ?? '';
    await this.requireBucket(r.bucket);
    const items: ListedItem[] = [];
    let truncated = false;
    const walk = listKeys(this.tree, { bucketPath: `/${r.bucket}`, prefix, delimiter, startAfter });
    // max-keys=0 asks for none and is not truncated (as S3 answers): no token to resume from.
    if (maxKeys > 0)
      try {
        for await (const item of walk) {
          if (items.length >= Math.min(maxKeys, MAX_KEYS)) {
            truncated = true;
            break;
          }
          items.push(item);
        }
      } finally {
        await walk.return(undefined);
      }
    const last = items[items.length - 1];
    const lastKey = last === undefined ? '' : last.kind === 'object' ? last.key : last.prefix;
    const contents = items.flatMap((item) =>
      item.kind === 'object'
        ? [
            el(
              'Contents',
              el('Key', encode(item.key)),
              el('LastModified', isoDate(item.entry.mtimeMs)),
              el('ETag', etagOf({ id: item.entry.id, mtime: item.entry.mtimeMs })),
              el('Size', item.entry.dir ? 0 : item.entry.size),
              el('StorageClass', 'STANDARD'),
            ),
          ]
        : [],
    );
    const prefixes = items.flatMap((item) =>
      item.kind === 'prefix' ? [el('CommonPrefixes', el('Prefix', encode(item.prefix)))] : [],
    );
    const common = [
      el('Name', r.bucket),
      el('Prefix', encode(prefix)),
      delimiter === '' ? undefined : el('Delimiter', encode(delimiter)),
      el('MaxKeys', maxKeys),
      encodeUrl ? el('EncodingType', 'url') : undefined,
      el('IsTruncated', truncated),
    ];
    if (v2) {
      this.sendXml(
        r,
        el(
          'ListBucketResult',
          common,
          el('KeyCount', items.length),
          token === null ? undefined : el('ContinuationToken', token),
          truncated
            ? el('NextContinuationToken', Buffer.from(`k:${lastKey}`).toString('base64url'))
            : undefined,
          query.has('start-after') ? el('StartAfter', encode(query.get('start-after') ?? '')) : undefined,
          contents,
          prefixes,
        ),
      );
    } else {
      this.sendXml(
        r,
        el(
          'ListBucketResult',
          common,
          el('Marker', encode(startAfter)),
          truncated ? el('NextMarker', encode(lastKey)) : undefined,
          contents,
          prefixes,
        ),
      );
    }
  }

  // ---- objects ----

  private async statKey(
    bucket: string,
    key: string,
  ): Promise<{ path: string; marker: boolean; entry: FileStatus }> {
    const { path, marker } = keyPath(bucket, key);
    let entry: FileStatus;
    try {
      entry = await this.client.stat(path);
    } catch (error) {
      if (
        error instanceof DogfsError &&
        ['NOT_FOUND', 'NOT_A_DIRECTORY', 'INVALID_ARGUMENT'].includes(error.code)
      ) {
        await this.requireBucket(bucket);
        throw new S3Error('NoSuchKey', `${key}: no such key`);
      }
      throw error;
    }
    if ((entry.type === 'dir') !== marker) {
      // `a/` asks for a directory and `a` for a file: the other kind under that name is not this key.
      throw new S3Error('NoSuchKey', `${key}: no such key`);
    }
    return { path, marker, entry };
  }

  private async getObject(r: Request, head: boolean): Promise<void> {
    for (let attempt = 1; ; attempt++) {
      const { path, marker, entry } = await this.statKey(r.bucket, r.key);
      const size = marker ? 0 : entry.size;
      const etag = etagOf(entry);
      const headers: Record<string, string> = {
        ETag: etag,
        'Last-Modified': new Date(entry.mtime).toUTCString(),
        'Accept-Ranges': 'bytes',
        'Content-Type': OBJECT_CONTENT_TYPE,
      };
      const notModified = checkConditions(r.req, etag, entry.mtime);
      if (notModified) {
        r.res.writeHead(304, { ETag: etag, 'Last-Modified': headers['Last-Modified']! });
        r.res.end();
        return;
      }
      const range = parseRange(r.req.headers.range, size);
      const status = range === undefined ? 200 : 206;
      const length = range === undefined ? size : range.end - range.start + 1;
      headers['Content-Length'] = String(length);
      if (range !== undefined) headers['Content-Range'] = `bytes ${range.start}-${range.end}/${size}`;
      if (head || length === 0) {
        r.res.writeHead(status, headers);
        r.res.end();
        return;
      }
      const stream = this.client.createReadStream(
        path,
        range === undefined ? {} : { start: range.start, end: range.end },
      );
      try {
        await once(stream, 'readable');
      } catch (error) {
        stream.destroy();
        if (error instanceof DogfsError && error.code === 'NOT_FOUND' && attempt < READ_ATTEMPTS) continue;
        throw error;
      }
      if (stream.inode?.id !== entry.id) {
        // Replaced between the stat and the open: the headers would describe another version.
        stream.destroy();
        if (attempt < READ_ATTEMPTS) continue;
        throw new S3Error('ServiceUnavailable', `${r.key} is being replaced; retry`);
      }
      r.res.writeHead(status, headers);
      stream.on('badshard', (bad: { chunkServerId: string; index: number }) =>
        this.log.warn('s3 read decoded around a bad shard', {
          path,
          server: bad.chunkServerId,
          index: bad.index,
        }),
      );
      await pipeline(stream, r.res);
      return;
    }
  }

  /** Makes the directories a key's path needs (S3 has none; a file tree does). */
  private async ensureParent(bucket: string, path: string): Promise<void> {
    const parent = parentPath(path);
    if (parent === `/${bucket}`) {
      await this.requireBucket(bucket);
      return;
    }
    const existing = await this.tree.stat(parent);
    if (existing?.dir) return;
    await this.requireBucket(bucket);
    try {
      await this.client.mkdir(parent, { parents: true });
    } catch (error) {
      if (
        error instanceof DogfsError &&
        (error.code === 'NOT_A_DIRECTORY' || error.code === 'ALREADY_EXISTS')
      )
        throw new S3Error(
          'InvalidRequest',
          `${pathKey(bucket, path, false)}: an object holds a name this key needs as a directory`,
        );
      throw error;
    }
  }

  private async putObject(r: Request): Promise<void> {
    const { path, marker } = keyPath(r.bucket, r.key);
    if (marker) {
      if (header(r.req, 'if-match') !== undefined || header(r.req, 'if-none-match') !== undefined)
        throw new S3Error('NotImplemented', `${r.key}: a key ending in '/' takes no write conditions`);
      const body = openBody(r, {
        maxBytes: 0,
        tooLarge: new S3Error(
          'InvalidArgument',
          `${r.key}: a key ending in '/' names a directory and holds no bytes`,
        ),
      });
      await drain(body.stream);
      await this.ensureParent(r.bucket, path);
      const dir = await this.client.mkdir(path, { parents: true }).catch((error: unknown) => {
        if (error instanceof DogfsError && error.code === 'NOT_A_DIRECTORY')
          throw new S3Error('InvalidRequest', `${r.key}: an object holds a name this directory needs`);
        throw error;
      });
      this.sendEmpty(r, 200, { ETag: etagOf(dir) });
      return;
    }
    const condition = await this.writeCondition(r, path);
    await this.ensureParent(r.bucket, path);
    const written = await this.writeObject({ kind: 'object', bucket: r.bucket, path, ...condition }, r);
    this.sendEmpty(r, 200, { ETag: etagOf(written) });
  }

  /** Streams a request body into `path` (replacing it); resolves with the completed file. */
  /** A fresh name to stage a write under (its directory made once per gateway, again if removed). */
  private async stagingPath(): Promise<string> {
    if (!this.stagingDirMade) {
      await this.client.mkdir(STAGING_DIR, { parents: true });
      this.stagingDirMade = true;
    }
    return `${STAGING_DIR}/${randomBytes(16).toString('hex')}`;
  }

  /**
   * Runs `write` against a staging name, then renames the result onto `to`: the object appears whole,
   * and concurrent writes of one key each complete. A failure removes what was staged.
   */
  private async staged(to: Destination, write: (staging: string) => Promise<Written>): Promise<Written> {
    const staging = await this.stagingPath();
    let written: Written;
    try {
      written = await write(staging);
    } catch (error) {
      // Perhaps the staging directory was removed from under the gateway: the next write makes it again.
      if (error instanceof DogfsError && error.code === 'NOT_FOUND') this.stagingDirMade = false;
      throw error;
    }
    try {
      await this.place(staging, to);
      return written;
    } catch (error) {
      await this.client
        .delete(staging)
        .catch((cleanup: unknown) =>
          this.log.warn('s3 could not remove a staged upload', { path: staging, error: cleanup }),
        );
      throw error;
    }
  }

  private async place(staging: string, to: Destination): Promise<void> {
    const noReplace = to.kind === 'object' && to.noReplace;
    const ifDstId = to.kind === 'object' ? to.ifId : undefined;
    for (let attempt = 1; ; attempt++) {
      try {
        await this.client.rename(staging, to.path, {
          noReplace,
          ...(ifDstId === undefined ? {} : { ifDstId }),
        });
        return;
      } catch (error) {
        if (!(error instanceof DogfsError)) throw error;
        if (error.code === 'NOT_FOUND') {
          if ((await this.tree.stat(staging)) === undefined)
            throw new S3Error(
              'ServiceUnavailable',
              `${staging} was removed before it was put in place; retry`,
            );
          if (to.kind === 'part')
            throw new S3Error('NoSuchUpload', 'the upload was completed or aborted meanwhile');
          // The key's directory was removed (its last other key deleted) while this one was written.
          if (attempt >= PLACE_ATTEMPTS)
            throw new S3Error('ServiceUnavailable', `${to.path}: its directory keeps being removed; retry`);
          await this.ensureParent(to.bucket, to.path);
          continue;
        }
        if (error.code === 'ALREADY_EXISTS' && noReplace)
          throw new S3Error('PreconditionFailed', 'If-None-Match: * and the key exists');
        if (error.code === 'FAILED_PRECONDITION' && ifDstId !== undefined) throw ifMatchLost(error);
        if (['IS_A_DIRECTORY', 'NOT_A_DIRECTORY', 'NOT_EMPTY'].includes(error.code))
          throw new S3Error(
            'InvalidRequest',
            `${to.path}: a directory holds that name (keys below it exist)`,
          );
        throw error;
      }
    }
  }

  /** Stores the request's body at `to`. */
  private async writeObject(to: Destination, r: Request): Promise<Written> {
    return this.staged(to, async (staging) => {
      // Opened only now, and piped at once: a body check that fails while nothing listens would be an
      // unhandled 'error' (and a small body can arrive whole during the awaits before).
      const body = openBody(r);
      this.log.debug('s3 upload', { path: to.path, bytes: body.length });
      const writer = this.client.createWriteStream(staging, { size: body.length });
      await pipeline(body.stream, writer).catch((error: unknown) => {
        if (error instanceof DogfsError && error.code === 'NOT_FOUND') {
          this.stagingDirMade = false; // the next write makes it again
          throw new S3Error('ServiceUnavailable', `${STAGING_DIR} was removed during the upload; retry`);
        }
        throw error;
      });
      const inode = writer.inode;
      assert(inode !== undefined, 'a finished write stream knows its inode');
      return { id: inode.id, mtime: inode.mtimeMs };
    });
  }

  private async deleteObject(r: Request): Promise<void> {
    await this.requireBucket(r.bucket);
    await this.removeKey(r.bucket, r.key);
    this.sendEmpty(r, 204);
  }

  /**
   * Deletes a key: the file, or for `a/` the directory if empty. A key that is not there is success (S3
   * semantics). Then removes directories left empty up to the bucket, as S3 shows no prefix once its
   * last key is gone; a directory with anything in it is refused by the service, so this never removes
   * what another request just put there.
   */
  private async removeKey(bucket: string, key: string): Promise<void> {
    const { path, marker } = keyPath(bucket, key);
    const entry = await this.tree.stat(path);
    if (entry === undefined || entry.dir !== marker) return;
    try {
      await this.client.delete(path);
    } catch (error) {
      if (!(error instanceof DogfsError) || !['NOT_FOUND', 'NOT_EMPTY'].includes(error.code)) throw error;
      if (error.code === 'NOT_EMPTY') return;
    }
    for (
      let dir = parentPath(path);
      dir !== `/${bucket}` && dir.length > bucket.length + 1;
      dir = parentPath(dir)
    ) {
      try {
        await this.client.delete(dir);
      } catch (error) {
        if (error instanceof DogfsError && ['NOT_EMPTY', 'NOT_FOUND', 'NOT_A_DIRECTORY'].includes(error.code))
          return;
        throw error;
      }
    }
  }

  private async deleteObjects(r: Request): Promise<void> {
    await this.requireBucket(r.bucket);
    const text = await readSmallBody(r, MAX_XML_BODY_BYTES);
    const root = parseXml(text);
    if (root.name !== 'Delete') throw new S3Error('MalformedXML', 'expected a <Delete> document');
    const quiet = childText(root, 'Quiet')?.trim() === 'true';
    const objects = childrenNamed(root, 'Object');
    if (objects.length > MAX_DELETE_KEYS)
      throw new S3Error('MalformedXML', `at most ${MAX_DELETE_KEYS} keys per DeleteObjects`);
    const results: XmlNode[] = [];
    for (const object of objects) {
      const key = childText(object, 'Key');
      if (key === undefined) throw new S3Error('MalformedXML', 'an <Object> without its <Key>');
      try {
        await this.removeKey(r.bucket, key);
        if (!quiet) results.push(el('Deleted', el('Key', key)));
      } catch (error) {
        const s3 = fromDogfsError(error);
        results.push(el('Error', el('Key', key), el('Code', s3.code), el('Message', s3.message)));
      }
    }
    this.sendXml(r, el('DeleteResult', results));
  }

  // ---- copies and multipart uploads ----

  /** `x-amz-copy-source` (`/bucket/key` or `bucket/key`, URL-encoded) → bucket and key. */
  private copySource(r: Request): { bucket: string; key: string } {
    const raw = String(r.req.headers['x-amz-copy-source'] ?? '');
    const q = raw.indexOf('?');
    if (q >= 0 && raw.slice(q + 1).startsWith('versionId=') && raw.slice(q + 11) !== 'null')
      throw new S3Error('NotImplemented', 'DogFS keeps one version of each object');
    const source = decodeKey(q < 0 ? raw : raw.slice(0, q)).replace(/^\//, '');
    const slash = source.indexOf('/');
    if (slash <= 0 || slash === source.length - 1)
      throw new S3Error('InvalidArgument', 'x-amz-copy-source must be BUCKET/KEY');
    const bucket = source.slice(0, slash);
    checkBucketName(bucket);
    return { bucket, key: source.slice(slash + 1) };
  }

  /** The file at `path`; undefined when there is none (nothing, a directory, or a path through a file). */
  private async fileAt(path: string): Promise<FileStatus | undefined> {
    const entry = await this.client.stat(path).catch((error: unknown) => {
      if (error instanceof DogfsError && ['NOT_FOUND', 'NOT_A_DIRECTORY'].includes(error.code))
        return undefined;
      throw error;
    });
    return entry?.type === 'file' ? entry : undefined;
  }

  /**
   * The conditions of a write of `path`: `If-None-Match: *` (only a free key), or `If-Match` (only the
   * version named: NoSuchKey when there is no object, PreconditionFailed for another one; checked here,
   * before any byte is taken, and again atomically when the write is put in place).
   */
  private async writeCondition(r: Request, path: string): Promise<WriteCondition> {
    const ifMatch = header(r.req, 'if-match');
    const ifNoneMatch = header(r.req, 'if-none-match');
    if (ifMatch !== undefined && ifNoneMatch !== undefined)
      throw new S3Error('InvalidArgument', 'a write takes If-Match or If-None-Match, not both');
    if (ifNoneMatch !== undefined) {
      if (ifNoneMatch.trim() !== '*')
        throw new S3Error('NotImplemented', 'a write takes only If-None-Match: * (create if absent)');
      return { noReplace: true };
    }
    if (ifMatch === undefined) return { noReplace: false };
    const current = await this.fileAt(path);
    if (current === undefined)
      throw new S3Error('NoSuchKey', `${r.key}: no such key (If-Match names a version of it)`);
    if (!etagListMatches(ifMatch, etagOf(current)))
      throw new S3Error('PreconditionFailed', 'If-Match does not match the object');
    return { noReplace: false, ifId: current.id };
  }

  private async copyObject(r: Request): Promise<void> {
    const source = this.copySource(r);
    const { path: target, marker } = keyPath(r.bucket, r.key);
    if (marker) throw new S3Error('InvalidArgument', `${r.key}: cannot copy onto a directory key`);
    const condition = await this.writeCondition(r, target);
    const { path, marker: sourceMarker, entry } = await this.statKey(source.bucket, source.key);
    if (sourceMarker) throw new S3Error('InvalidArgument', `${source.key}: cannot copy a directory key`);
    await drain(openBody(r).stream);
    await this.ensureParent(r.bucket, target);
    await this.longRunning(r, async () => {
      const copied = await this.copyInto(
        { kind: 'object', bucket: r.bucket, path: target, ...condition },
        [{ path, id: entry.id, start: 0, end: entry.size - 1 }],
        entry.size,
      );
      return el('CopyObjectResult', el('LastModified', isoDate(copied.mtime)), el('ETag', etagOf(copied)));
    });
  }

  /**
   * Writes the concatenation of byte ranges of existing files to `target`, streaming (the gateway holds
   * a read and a write stream's buffers, not the bytes). Each source must still be the version that was
   * checked (`id`): a file replaced meanwhile fails the copy rather than mixing versions.
   */
  private async copyInto(
    to: Destination,
    sources: readonly { path: string; id: number; start: number; end: number }[],
    size: number,
  ): Promise<Written> {
    return this.staged(to, async (staging) => {
      const writer = this.client.createWriteStream(staging, { size });
      const failed = finished(writer).then(
        () => undefined,
        (error: unknown) => error,
      );
      try {
        for (const source of sources) {
          if (source.end < source.start) continue;
          const reader = this.client.createReadStream(source.path, { start: source.start, end: source.end });
          try {
            for await (const chunk of reader) {
              if (reader.inode?.id !== source.id)
                throw new S3Error('OperationAborted', `${source.path} was replaced during the copy; retry`);
              if (!writer.write(chunk)) await Promise.race([once(writer, 'drain'), failed]);
              if (writer.destroyed) throw (await failed) ?? new DogfsError('CANCELLED', 'copy target closed');
            }
          } finally {
            reader.destroy();
          }
        }
        writer.end();
        const error = await failed;
        if (error !== undefined) throw error;
      } catch (error) {
        writer.destroy(error as Error);
        throw error;
      }
      const inode = writer.inode;
      assert(inode !== undefined, 'a finished write stream knows its inode');
      return { id: inode.id, mtime: inode.mtimeMs };
    });
  }

  private uploadDir(r: Request): string {
    const uploadId = r.query.get('uploadId') ?? '';
    if (!/^[0-9a-f]{32}$/.test(uploadId)) throw new S3Error('NoSuchUpload', 'no such upload');
    return `${UPLOADS_DIR}/${uploadId}`;
  }

  /**
   * The upload's directory, after checking it exists and belongs to this bucket and key. An upload
   * records its key as an empty file at `key/BUCKET/KEY` inside its directory: one stat to check, with
   * no data-plane read (a key is a valid path; keyPath checked it when the upload began).
   */
  private async requireUpload(r: Request): Promise<string> {
    const dir = this.uploadDir(r);
    const owner = await this.tree.stat(`${dir}/key${keyPath(r.bucket, r.key).path}`);
    if (owner === undefined || owner.dir)
      throw new S3Error('NoSuchUpload', `no upload ${r.query.get('uploadId')} of this key`);
    return dir;
  }

  /**
   * requireUpload, and not completed: a part or an abort of a completed upload is refused before any
   * byte of it is read (its record stays for repeated completions).
   */
  private async requireOpenUpload(r: Request): Promise<string> {
    const dir = await this.requireUpload(r);
    if ((await this.completionRecord(dir)) !== undefined)
      throw new S3Error('NoSuchUpload', `upload ${r.query.get('uploadId')} was completed`);
    return dir;
  }

  private async createUpload(r: Request): Promise<void> {
    const { path, marker } = keyPath(r.bucket, r.key);
    if (marker)
      throw new S3Error('InvalidArgument', `${r.key}: a key ending in '/' cannot take a multipart upload`);
    await this.requireBucket(r.bucket);
    await drain(openBody(r).stream);
    const uploadId = randomBytes(16).toString('hex');
    const dir = `${UPLOADS_DIR}/${uploadId}`;
    const owner = `${dir}/key${path}`;
    await this.client.mkdir(parentPath(owner), { parents: true });
    await this.client.mkdir(`${dir}/parts`);
    await this.client.touch(owner);
    this.sendXml(
      r,
      el('InitiateMultipartUploadResult', el('Bucket', r.bucket), el('Key', r.key), el('UploadId', uploadId)),
    );
  }

  private partNumber(r: Request): number {
    const n = Number(r.query.get('partNumber'));
    if (!Number.isInteger(n) || n < 1 || n > MAX_PARTS)
      throw new S3Error('InvalidArgument', `partNumber must be an integer from 1 to ${MAX_PARTS}`);
    return n;
  }

  private async uploadPart(r: Request): Promise<void> {
    const part = this.partNumber(r);
    const dir = await this.requireOpenUpload(r);
    const partPath = partFile(dir, part);
    if (r.req.headers['x-amz-copy-source'] !== undefined) {
      const source = this.copySource(r);
      const { path, marker, entry } = await this.statKey(source.bucket, source.key);
      if (marker) throw new S3Error('InvalidArgument', `${source.key}: cannot copy a directory key`);
      const range = parseCopyRange(r.req.headers['x-amz-copy-source-range'], entry.size);
      await drain(openBody(r).stream);
      await this.longRunning(r, async () => {
        const copied = await this.copyInto(
          { kind: 'part', path: partPath },
          [{ path, id: entry.id, ...range }],
          range.end - range.start + 1,
        );
        return el('CopyPartResult', el('LastModified', isoDate(copied.mtime)), el('ETag', etagOf(copied)));
      });
      return;
    }
    const written = await this.writeObject({ kind: 'part', path: partPath }, r);
    this.sendEmpty(r, 200, { ETag: etagOf(written) });
  }

  private async completeUpload(r: Request): Promise<void> {
    const dir = await this.requireUpload(r);
    const root = parseXml(await readSmallBody(r, MAX_XML_BODY_BYTES));
    const uploadId = baseName(dir);
    const before = this.completing.get(uploadId);
    const work = (async () => {
      await before;
      return this.completeOnce(r, dir, root);
    })();
    const settled = work.then(
      () => {},
      () => {},
    );
    this.completing.set(uploadId, settled);
    try {
      // A retry waiting for a long copy is kept alive meanwhile, as the copy's own request is.
      await this.longRunning(r, () => work);
    } finally {
      if (this.completing.get(uploadId) === settled) this.completing.delete(uploadId);
    }
  }

  /** A repeated completion of an upload completed already: the object it made, if it is still there. */
  private async repeatCompletion(r: Request, objectIds: readonly number[]): Promise<XmlNode> {
    const object = await this.fileAt(keyPath(r.bucket, r.key).path);
    if (object === undefined || !objectIds.includes(object.id))
      throw new S3Error(
        'NoSuchUpload',
        `upload ${r.query.get('uploadId')} was completed, and its object has been replaced or deleted since`,
      );
    return completionResult(r, object);
  }

  /**
   * What is left of an upload once its object is there: its parts' directory goes, and a record of the
   * completion stays for a repeated completion to find (the sweep removes it after `completedKeptMs`).
   * Failures are logged, not answered: the object is there.
   */
  private async retireUpload(dir: string, objectId: number): Promise<void> {
    const recorded = await this.client
      .touch(`${dir}/${COMPLETED_RECORD_PREFIX}${objectId.toString(16)}`)
      .then(
        () => true,
        (error: unknown) => {
          this.log.warn('s3 could not record a completed upload; a repeated completion will be refused', {
            path: dir,
            error,
          });
          return false;
        },
      );
    await this.client
      .delete(recorded ? `${dir}/parts` : dir, { recursive: true })
      .catch((error: unknown) =>
        this.log.warn('s3 could not remove a completed upload', { path: dir, error }),
      );
  }

  /** One completion of the upload in `dir` (the caller answers with the result or the error). */
  private async completeOnce(r: Request, dir: string, root: XmlElement): Promise<XmlNode> {
    const completed = await this.completionRecord(dir);
    if (completed !== undefined) return this.repeatCompletion(r, completed.objectIds);
    if (root.name !== 'CompleteMultipartUpload')
      throw new S3Error('MalformedXML', 'expected a <CompleteMultipartUpload> document');
    const parts = childrenNamed(root, 'Part');
    if (parts.length === 0 || parts.length > MAX_PARTS)
      throw new S3Error('MalformedXML', `a completion lists 1 to ${MAX_PARTS} parts`);
    // One listing, not a stat per part: a completion may name 10,000 of them.
    const uploaded = new Map<string, FileStatus>();
    try {
      for await (const entry of this.client.list(`${dir}/parts`)) {
        if (uploaded.size >= MAX_PARTS) break;
        uploaded.set(entry.name, entry);
      }
    } catch (error) {
      // Aborted, swept, or completed by another gateway while this one waited.
      if (error instanceof DogfsError && error.code === 'NOT_FOUND')
        throw new S3Error('NoSuchUpload', `upload ${r.query.get('uploadId')} is no longer open`);
      throw error;
    }
    const sources: { path: string; id: number; start: number; end: number }[] = [];
    const policies = new Set<string>();
    let size = 0;
    let previous = 0;
    for (const part of parts) {
      const n = Number(childText(part, 'PartNumber'));
      if (!Number.isInteger(n) || n < 1 || n > MAX_PARTS)
        throw new S3Error('InvalidPart', 'a part number is out of range');
      if (n <= previous)
        throw new S3Error('InvalidPartOrder', 'parts must be listed in ascending order, once each');
      previous = n;
      const partPath = partFile(dir, n);
      const entry = uploaded.get(baseName(partPath));
      if (entry === undefined || entry.type !== 'file')
        throw new S3Error('InvalidPart', `part ${n} was not uploaded`);
      const given = (childText(part, 'ETag') ?? '').trim().replace(/^"|"$/g, '');
      if (given !== '' && `"${given}"` !== etagOf(entry))
        throw new S3Error('InvalidPart', `part ${n}'s ETag is not the one uploaded last`);
      sources.push({ path: partPath, id: entry.id, start: 0, end: entry.size - 1 });
      policies.add(entry.ec);
      size += entry.size;
    }
    const { path } = keyPath(r.bucket, r.key);
    await this.ensureParent(r.bucket, path);
    const condition = await this.writeCondition(r, path);
    if (policies.size === 1) {
      const joined = await this.joinParts(r, dir, path, sources, condition);
      await this.retireUpload(dir, joined.id);
      return completionResult(r, joined);
    }
    // A file has one EC policy, and the default changed during the upload: the parts are copied.
    this.log.info('s3 multipart parts have different EC policies: copying them into the object', {
      path,
      policies: [...policies],
    });
    const written = await this.copyInto(
      { kind: 'object', bucket: r.bucket, path, ...condition },
      sources,
      size,
    );
    await this.retireUpload(dir, written.id);
    return completionResult(r, written);
  }

  /**
   * One metadata command joins the parts' block groups into the object: no byte is copied. It joins the
   * parts whose ETags were checked: one replaced since is refused, as the copy would be.
   */
  private async joinParts(
    r: Request,
    dir: string,
    path: string,
    sources: readonly { path: string; id: number }[],
    condition: WriteCondition,
  ): Promise<FileStatus> {
    const names = sources.map((s) => baseName(s.path));
    const sourceIds = sources.map((s) => s.id);
    const { noReplace, ifId } = condition;
    for (let attempt = 1; ; attempt++) {
      try {
        return await this.client.compose(path, `${dir}/parts`, names, {
          overwrite: !noReplace,
          sourceIds,
          ...(ifId === undefined ? {} : { ifDstId: ifId }),
        });
      } catch (error) {
        if (!(error instanceof DogfsError)) throw error;
        // Only the refusal of a part replaced since its ETag was checked: other preconditions (a full
        // directory, an answer lost with its session) are not the parts' fault.
        if (error.code === 'FAILED_PRECONDITION' && error.message.includes('replaced since it was checked'))
          throw new S3Error('InvalidPart', `a part was replaced during the completion: ${error.message}`);
        if (error.code === 'ALREADY_EXISTS' && noReplace)
          throw new S3Error('PreconditionFailed', 'If-None-Match: * and the key exists');
        // Any other refusal with a version to replace is that version's: the key changed.
        if (error.code === 'FAILED_PRECONDITION' && ifId !== undefined) throw ifMatchLost(error);
        if (error.code === 'IS_A_DIRECTORY')
          throw new S3Error('InvalidRequest', `${r.key}: a directory holds that name (keys below it exist)`);
        if (error.code !== 'NOT_FOUND') throw error;
        // The upload aborted meanwhile (NoSuchUpload), or the key's directory removed: made again.
        await this.requireUpload(r);
        if (attempt >= PLACE_ATTEMPTS)
          throw new S3Error('ServiceUnavailable', `${path}: its directory keeps being removed; retry`);
        await this.ensureParent(r.bucket, path);
      }
    }
  }

  private async abortUpload(r: Request): Promise<void> {
    // As S3: an upload completed is no longer there to abort (its record stays for repeated completions).
    const dir = await this.requireOpenUpload(r);
    await this.client.delete(dir, { recursive: true });
    this.sendEmpty(r, 204);
  }
}

function completionResult(r: Request, object: { id: number; mtime: number }): XmlNode {
  return el(
    'CompleteMultipartUploadResult',
    el('Location', `/${r.bucket}/${r.key}`),
    el('Bucket', r.bucket),
    el('Key', r.key),
    el('ETag', etagOf(object)),
  );
}

/** Where part `n` of the upload in `dir` is kept (zero-padded: the directory lists in part order). */
function partFile(dir: string, n: number): string {
  return `${dir}/parts/${String(n).padStart(5, '0')}`;
}

// ---- request bodies ----

interface OpenedBody {
  /** The bytes of the body (decoded from aws-chunked), checked against every declared digest. */
  readonly stream: Readable;
  readonly length: number;
}

function header(req: IncomingMessage, name: string): string | undefined {
  const value = req.headers[name];
  return Array.isArray(value) ? value[0] : value;
}

/**
 * The request body as bytes of a known length, decoded and checked as its headers declare. Its consumer
 * must attach at once (pipeline, for await): a failed check emits 'error' on the returned stream.
 */
/**
 * The request's body, checked against every digest it declares. `maxBytes`: the most it may declare,
 * refused with `tooLarge` before anything is piped.
 */
function openBody(r: Request, bound?: { maxBytes: number; tooLarge: S3Error }): OpenedBody {
  const { req } = r;
  const contentSha256 = header(req, 'x-amz-content-sha256');
  const streaming = contentSha256?.startsWith('STREAMING-') ?? false;
  const lengthHeader = streaming
    ? header(req, 'x-amz-decoded-content-length')
    : header(req, 'content-length');
  if (lengthHeader === undefined) {
    if (req.headers['transfer-encoding'] === undefined && !streaming) return { stream: req, length: 0 }; // no body at all
    throw new S3Error('MissingContentLength', 'an upload must declare its length (Content-Length)');
  }
  const length = Number(lengthHeader);
  if (!Number.isSafeInteger(length) || length < 0)
    throw new S3Error('InvalidArgument', 'malformed content length');
  // Every header is checked before a stream is piped: a refusal thrown after the pipe would leave a
  // stream nobody listens to, whose next error ends the process.
  let signedChunks = false;
  if (streaming) {
    signedChunks =
      contentSha256 === 'STREAMING-AWS4-HMAC-SHA256-PAYLOAD' ||
      contentSha256 === 'STREAMING-AWS4-HMAC-SHA256-PAYLOAD-TRAILER';
    if (!signedChunks && contentSha256 !== 'STREAMING-UNSIGNED-PAYLOAD-TRAILER')
      throw new S3Error('NotImplemented', `x-amz-content-sha256 ${contentSha256} is not supported`);
  }
  const expectations: {
    length: number;
    md5?: string;
    sha256Hex?: string;
    checksum?: { algorithm: ChecksumAlgorithm; value: string };
    trailerChecksum?: { algorithm: ChecksumAlgorithm; decoder: AwsChunkedDecoder };
  } = { length };
  const md5 = header(req, 'content-md5');
  if (md5 !== undefined) expectations.md5 = md5;
  if (contentSha256 !== undefined && /^[0-9a-fA-F]{64}$/.test(contentSha256))
    expectations.sha256Hex = contentSha256;
  for (const name of Object.keys(req.headers)) {
    if (
      !name.startsWith('x-amz-checksum-') ||
      name === 'x-amz-checksum-type' ||
      name === 'x-amz-checksum-algorithm'
    )
      continue;
    const algorithm = name.slice('x-amz-checksum-'.length) as ChecksumAlgorithm;
    if (!CHECKSUM_ALGORITHMS.includes(algorithm))
      throw new S3Error('InvalidRequest', `${name} is not supported (use CRC32, CRC32C, SHA1 or SHA256)`);
    expectations.checksum = { algorithm, value: header(req, name) ?? '' };
  }
  const trailer = header(req, 'x-amz-trailer')?.trim().toLowerCase();
  let trailerAlgorithm: ChecksumAlgorithm | undefined;
  if (trailer !== undefined && trailer !== '') {
    const algorithm = trailer.slice('x-amz-checksum-'.length) as ChecksumAlgorithm;
    if (!trailer.startsWith('x-amz-checksum-') || !CHECKSUM_ALGORITHMS.includes(algorithm))
      throw new S3Error(
        'InvalidRequest',
        `trailer ${trailer} is not supported (use a CRC32, CRC32C, SHA1 or SHA256 checksum)`,
      );
    if (!streaming) throw new S3Error('InvalidRequest', 'x-amz-trailer needs an aws-chunked body');
    trailerAlgorithm = algorithm;
  }
  if (bound !== undefined && length > bound.maxBytes) throw bound.tooLarge;
  let source: Readable = req;
  if (streaming) {
    const decoder = new AwsChunkedDecoder(length, signedChunks ? r.signing : undefined);
    if (trailerAlgorithm !== undefined)
      expectations.trailerChecksum = { algorithm: trailerAlgorithm, decoder };
    cutOffWith(req, decoder);
    source = req.pipe(decoder);
  }
  const check = new BodyCheck(expectations as BodyExpectations);
  if (source === req) cutOffWith(req, check);
  else source.on('error', (error) => check.destroy(error));
  source.pipe(check);
  return { stream: check, length };
}

/**
 * `pipe` passes neither errors nor an early close on: a client that goes away mid-upload must fail the
 * stream the DogFS write reads from (so the file never appears), not leave it waiting.
 */
function cutOffWith(req: IncomingMessage, next: Readable): void {
  req.on('error', (error) =>
    next.destroy(
      new S3Error('IncompleteBody', `the client's connection failed mid-upload (${error.message})`),
    ),
  );
  req.on('close', () => {
    if (!req.complete)
      next.destroy(new S3Error('IncompleteBody', 'the client closed the connection mid-upload'));
  });
}

async function drain(stream: Readable): Promise<void> {
  for await (const _ of stream) {
    // A body the operation has no use for (a copy's, a marker's): read so the connection can go on.
  }
}

/** A small body (XML) read whole, bounded. */
async function readSmallBody(r: Request, limit: number): Promise<string> {
  const body = openBody(r, {
    maxBytes: limit,
    tooLarge: new S3Error('MalformedXML', `request body over ${limit} bytes`),
  });
  const parts: Buffer[] = [];
  for await (const chunk of body.stream) parts.push(chunk as Buffer);
  return Buffer.concat(parts).toString('utf8');
}

// ---- conditions and ranges ----

/** An If-Match that no longer held when the write was put in place: the key changed meanwhile. */
function ifMatchLost(error: DogfsError): S3Error {
  return new S3Error(
    'PreconditionFailed',
    `If-Match: the object changed during the write (${error.message})`,
  );
}

/** Whether an If-Match / If-None-Match list (ETags, quoted or not, or `*`) names `etag`. */
function etagListMatches(list: string, etag: string): boolean {
  return list.split(',').some((tag) => {
    const t = tag.trim();
    return t === '*' || t === etag || t === etag.slice(1, -1);
  });
}

/** Refuses the write options the gateway cannot honour (object lock, tags, encryption, ACL grants). */
function refuseUnsupportedWriteOptions(req: IncomingMessage): void {
  const unsupported = UNSUPPORTED_WRITE_HEADERS.find((name) => req.headers[name] !== undefined);
  if (unsupported !== undefined)
    throw new S3Error('NotImplemented', `${unsupported} is not supported by the DogFS gateway`);
  const acl = header(req, 'x-amz-acl');
  if (acl !== undefined && acl !== 'private')
    throw new S3Error('NotImplemented', `x-amz-acl ${acl}: the DogFS gateway keeps every object private`);
  const storageClass = header(req, 'x-amz-storage-class');
  if (storageClass !== undefined && storageClass !== 'STANDARD')
    throw new S3Error(
      'NotImplemented',
      `x-amz-storage-class ${storageClass}: DogFS has one storage class (its EC policy is set per directory)`,
    );
}

/** Evaluates If-Match / If-None-Match / If-(Un)Modified-Since: throws 412, or returns true for a 304. */
function checkConditions(req: IncomingMessage, etag: string, mtimeMs: number): boolean {
  const matches = (list: string) => etagListMatches(list, etag);
  const ifMatch = header(req, 'if-match');
  if (ifMatch !== undefined && !matches(ifMatch))
    throw new S3Error('PreconditionFailed', 'If-Match does not match the object');
  const seconds = Math.floor(mtimeMs / 1000) * 1000;
  const ifUnmodified = header(req, 'if-unmodified-since');
  if (ifMatch === undefined && ifUnmodified !== undefined) {
    const since = Date.parse(ifUnmodified);
    if (!Number.isNaN(since) && seconds > since)
      throw new S3Error('PreconditionFailed', 'the object was modified after If-Unmodified-Since');
  }
  const ifNoneMatch = header(req, 'if-none-match');
  if (ifNoneMatch !== undefined) return matches(ifNoneMatch);
  const ifModified = header(req, 'if-modified-since');
  if (ifModified !== undefined) {
    const since = Date.parse(ifModified);
    if (!Number.isNaN(since) && seconds <= since) return true;
  }
  return false;
}

/** A single `bytes=` range against `size`; undefined for the whole object (no or an ignorable header). */
export function parseRange(
  value: string | undefined,
  size: number,
): { start: number; end: number } | undefined {
  if (value === undefined) return undefined;
  const m = /^bytes=(\d*)-(\d*)$/.exec(value.trim());
  if (m === null) return undefined; // several ranges, or another unit: S3 answers the whole object
  const [, first, last] = m;
  let start: number;
  let end: number;
  if (first === '') {
    if (last === '') return undefined;
    const suffix = Number(last);
    if (suffix === 0) throw new S3Error('InvalidRange', `the range ${value} is empty`);
    start = Math.max(0, size - suffix);
    end = size - 1;
  } else {
    start = Number(first);
    end = last === '' ? size - 1 : Math.min(Number(last), size - 1);
    if (last !== '' && Number(last) < start) return undefined;
  }
  if (start >= size || !Number.isSafeInteger(start) || !Number.isSafeInteger(end))
    throw new S3Error('InvalidRange', `the range ${value} is not satisfiable for ${size} bytes`);
  return { start, end };
}

function parseCopyRange(value: string | string[] | undefined, size: number): { start: number; end: number } {
  if (value === undefined) return { start: 0, end: size - 1 };
  const m = /^bytes=(\d+)-(\d+)$/.exec(String(value).trim());
  if (m === null) throw new S3Error('InvalidArgument', 'x-amz-copy-source-range must be bytes=FIRST-LAST');
  const start = Number(m[1]);
  const end = Number(m[2]);
  if (end < start || end >= size)
    throw new S3Error(
      'InvalidRange',
      `the copy range ${String(value)} is outside the source's ${size} bytes`,
    );
  return { start, end };
}

// ---- the tree, read through the client ----

function toEntry(status: FileStatus): TreeEntry {
  return {
    name: status.name,
    dir: status.type === 'dir',
    size: status.size,
    mtimeMs: status.mtime,
    id: status.id,
  };
}

/** Codes that mean "nothing is at this path" to the listing walk. */
const ABSENT = new Set(['NOT_FOUND', 'NOT_A_DIRECTORY', 'INVALID_ARGUMENT']);

function dogfsTree(client: DogfsClient): TreeReader {
  return {
    async stat(path) {
      try {
        return toEntry(await client.stat(path));
      } catch (error) {
        if (error instanceof DogfsError && ABSENT.has(error.code)) return undefined;
        throw error;
      }
    },
    async *list(path, startAfter) {
      try {
        for await (const status of client.list(path, { startAfter })) yield toEntry(status);
      } catch (error) {
        if (error instanceof DogfsError && ABSENT.has(error.code)) return;
        throw error;
      }
    },
  };
}
