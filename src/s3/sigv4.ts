/**
 * s3/sigv4 — AWS Signature Version 4, as S3 checks it: the Authorization header or a presigned URL's
 * query, and the per-chunk signatures of a streaming upload. With no key configured the gateway accepts
 * every request unsigned (a laptop's loopback gateway); with one, a request must be signed with it.
 * Comparisons run in constant time; a request dated more than 15 minutes from the gateway's clock is
 * refused, as S3 does, so a captured request cannot be replayed for long.
 */
import { createHash, createHmac, timingSafeEqual } from 'node:crypto';
import { S3Error } from './errors.js';

export interface S3Credentials {
  readonly accessKey: string;
  readonly secretKey: string;
}

/** What a verified request leaves for its body's chunk signatures. */
export interface SigningContext {
  readonly signingKey: Buffer;
  readonly amzDate: string;
  readonly scope: string;
  readonly seedSignature: string;
}

const ALGORITHM = 'AWS4-HMAC-SHA256';
const MAX_SKEW_MS = 15 * 60_000;
const MAX_PRESIGN_SECONDS = 7 * 24 * 3600;
export const EMPTY_SHA256 = createHash('sha256').update('').digest('hex');

export interface RequestToVerify {
  readonly method: string;
  /** The path as sent, before `?`. */
  readonly rawPath: string;
  /** The query as sent, without `?` ('' when none). */
  readonly rawQuery: string;
  /** Each header's values as sent (`req.headersDistinct`), or one value each. */
  readonly headers: Readonly<Record<string, string | readonly string[] | undefined>>;
}

/** RFC 3986 encoding as SigV4 wants it: everything but A-Z a-z 0-9 - . _ ~ (and `/` in paths). */
export function uriEncode(text: string, keepSlash: boolean): string {
  let out = '';
  for (const byte of Buffer.from(text, 'utf8')) {
    const c = String.fromCharCode(byte);
    if (/[A-Za-z0-9\-._~]/.test(c) || (keepSlash && c === '/')) out += c;
    else out += `%${byte.toString(16).toUpperCase().padStart(2, '0')}`;
  }
  return out;
}

function decode(component: string): string {
  try {
    return decodeURIComponent(component);
  } catch {
    throw new S3Error(
      'InvalidArgument',
      `malformed percent-encoding in ${JSON.stringify(component.slice(0, 80))}`,
    );
  }
}

function hmac(key: Buffer | string, data: string): Buffer {
  return createHmac('sha256', key).update(data, 'utf8').digest();
}

function sha256Hex(data: string): string {
  return createHash('sha256').update(data, 'utf8').digest('hex');
}

function signingKeyFor(secret: string, date: string, region: string, service: string): Buffer {
  return hmac(hmac(hmac(hmac(`AWS4${secret}`, date), region), service), 'aws4_request');
}

function sameSignature(expected: string, given: string): boolean {
  const a = Buffer.from(expected, 'utf8');
  const b = Buffer.from(given, 'utf8');
  return a.length === b.length && timingSafeEqual(a, b);
}

/** A header's value as SigV4 canonicalizes it: repeated headers joined with ','. */
function headerValue(headers: RequestToVerify['headers'], name: string): string | undefined {
  const value = headers[name];
  return typeof value === 'string' || value === undefined ? value : value.join(',');
}

/** `20261128T041200Z` → ms since the epoch, or NaN. */
function parseAmzDate(text: string): number {
  const m = /^(\d{4})(\d{2})(\d{2})T(\d{2})(\d{2})(\d{2})Z$/.exec(text);
  if (m === null) return Number.NaN;
  return Date.UTC(+m[1]!, +m[2]! - 1, +m[3]!, +m[4]!, +m[5]!, +m[6]!);
}

function canonicalQuery(rawQuery: string, without?: string): string {
  if (rawQuery === '') return '';
  const pairs: [string, string][] = [];
  for (const part of rawQuery.split('&')) {
    if (part === '') continue;
    const eq = part.indexOf('=');
    const key = decode(eq < 0 ? part : part.slice(0, eq));
    if (key === without) continue;
    const value = eq < 0 ? '' : decode(part.slice(eq + 1));
    pairs.push([uriEncode(key, false), uriEncode(value, false)]);
  }
  pairs.sort((x, y) => (x[0] < y[0] ? -1 : x[0] > y[0] ? 1 : x[1] < y[1] ? -1 : x[1] > y[1] ? 1 : 0));
  return pairs.map(([k, v]) => `${k}=${v}`).join('&');
}

interface Parsed {
  readonly accessKey: string;
  readonly date: string;
  readonly region: string;
  readonly service: string;
  readonly signedHeaders: string[];
  readonly signature: string;
  readonly amzDate: string;
  readonly payloadHash: string;
  readonly presigned: boolean;
}

function parseCredential(credential: string): {
  accessKey: string;
  date: string;
  region: string;
  service: string;
} {
  const parts = credential.split('/');
  if (parts.length !== 5 || parts[4] !== 'aws4_request')
    throw new S3Error(
      'AccessDenied',
      'malformed credential scope (expected KEY/DATE/REGION/s3/aws4_request)',
    );
  return { accessKey: parts[0]!, date: parts[1]!, region: parts[2]!, service: parts[3]! };
}

function parseAuthorization(request: RequestToVerify, nowMs: number): Parsed | undefined {
  const header = headerValue(request.headers, 'authorization');
  if (header !== undefined) {
    if (!header.startsWith(`${ALGORITHM} `))
      throw new S3Error('AccessDenied', 'only AWS Signature Version 4 (AWS4-HMAC-SHA256) is accepted');
    const fields = new Map<string, string>();
    for (const field of header.slice(ALGORITHM.length + 1).split(',')) {
      const eq = field.indexOf('=');
      if (eq > 0) fields.set(field.slice(0, eq).trim(), field.slice(eq + 1).trim());
    }
    const credential = fields.get('Credential');
    const signedHeaders = fields.get('SignedHeaders');
    const signature = fields.get('Signature');
    if (credential === undefined || signedHeaders === undefined || signature === undefined)
      throw new S3Error('AccessDenied', 'Authorization header lacks Credential, SignedHeaders or Signature');
    const amzDate = headerValue(request.headers, 'x-amz-date');
    if (amzDate === undefined)
      throw new S3Error('AccessDenied', 'a signed request needs an x-amz-date header');
    const payloadHash = headerValue(request.headers, 'x-amz-content-sha256');
    if (payloadHash === undefined)
      throw new S3Error('InvalidRequest', 'a signed request needs an x-amz-content-sha256 header');
    return {
      ...parseCredential(credential),
      signedHeaders: signedHeaders.split(';'),
      signature,
      amzDate,
      payloadHash,
      presigned: false,
    };
  }
  const query = new URLSearchParams(request.rawQuery);
  if (query.has('AWSAccessKeyId') || query.has('Signature'))
    throw new S3Error(
      'AccessDenied',
      'presigned URLs of Signature Version 2 are not accepted; presign with Signature Version 4 (s3v4)',
    );
  if (!query.has('X-Amz-Signature')) return undefined;
  if (query.get('X-Amz-Algorithm') !== ALGORITHM)
    throw new S3Error('AccessDenied', 'only AWS Signature Version 4 (AWS4-HMAC-SHA256) is accepted');
  const amzDate = query.get('X-Amz-Date') ?? '';
  const expires = Number(query.get('X-Amz-Expires') ?? '');
  if (!Number.isInteger(expires) || expires < 1 || expires > MAX_PRESIGN_SECONDS)
    throw new S3Error('AccessDenied', `X-Amz-Expires must be 1 to ${MAX_PRESIGN_SECONDS} seconds`);
  const signedAt = parseAmzDate(amzDate);
  if (Number.isNaN(signedAt)) throw new S3Error('AccessDenied', 'malformed X-Amz-Date');
  if (nowMs > signedAt + expires * 1000) throw new S3Error('AccessDenied', 'the presigned URL has expired');
  return {
    ...parseCredential(query.get('X-Amz-Credential') ?? ''),
    signedHeaders: (query.get('X-Amz-SignedHeaders') ?? '').split(';'),
    signature: query.get('X-Amz-Signature') ?? '',
    amzDate,
    payloadHash: 'UNSIGNED-PAYLOAD',
    presigned: true,
  };
}

/**
 * Checks a request's signature; resolves the context its body's chunk signatures need. Without
 * credentials configured, every request passes (undefined). Throws S3Error when it does not verify.
 */
export function verifyRequest(
  request: RequestToVerify,
  credentials: S3Credentials | undefined,
  nowMs: number,
): SigningContext | undefined {
  if (credentials === undefined) return undefined;
  const parsed = parseAuthorization(request, nowMs);
  if (parsed === undefined) throw new S3Error('AccessDenied', 'this gateway requires signed requests');
  if (parsed.accessKey !== credentials.accessKey)
    throw new S3Error('InvalidAccessKeyId', 'the access key is not known to this gateway');
  if (parsed.service !== 's3')
    throw new S3Error('AccessDenied', `credential scope names service ${parsed.service}, not s3`);
  const signedAt = parseAmzDate(parsed.amzDate);
  if (Number.isNaN(signedAt)) throw new S3Error('AccessDenied', 'malformed x-amz-date');
  if (!parsed.amzDate.startsWith(parsed.date))
    throw new S3Error('AccessDenied', 'the credential scope date is not the request date');
  if (!parsed.presigned && Math.abs(nowMs - signedAt) > MAX_SKEW_MS)
    throw new S3Error(
      'RequestTimeTooSkewed',
      'the request time differs from the gateway clock by more than 15 minutes',
    );
  // A URL dated ahead would stay valid longer than its X-Amz-Expires says.
  if (parsed.presigned && signedAt - nowMs > MAX_SKEW_MS)
    throw new S3Error(
      'AccessDenied',
      'the presigned URL is dated more than 15 minutes ahead of the gateway clock',
    );
  if (!parsed.signedHeaders.includes('host'))
    throw new S3Error('AccessDenied', 'the host header must be signed');
  // S3's rule: an x-amz-* header changes what the request does (a copy's source, a checksum), so one
  // added to a signed request (a presigned PUT turned into a copy of any object) is refused.
  const signed = new Set(parsed.signedHeaders);
  const unsigned = Object.keys(request.headers).filter(
    (name) => name.startsWith('x-amz-') && !signed.has(name) && request.headers[name] !== undefined,
  );
  if (unsigned.length > 0)
    throw new S3Error(
      'AccessDenied',
      `headers present in the request were not signed: ${unsigned.join(', ')}`,
    );
  const canonicalUri = request.rawPath
    .split('/')
    .map((segment) => uriEncode(decode(segment), false))
    .join('/');
  const canonicalHeaders = parsed.signedHeaders
    .map((name) => `${name}:${(headerValue(request.headers, name) ?? '').trim().replace(/\s+/g, ' ')}\n`)
    .join('');
  const canonicalRequest = [
    request.method,
    canonicalUri,
    canonicalQuery(request.rawQuery, parsed.presigned ? 'X-Amz-Signature' : undefined),
    canonicalHeaders,
    parsed.signedHeaders.join(';'),
    parsed.payloadHash,
  ].join('\n');
  const scope = `${parsed.date}/${parsed.region}/${parsed.service}/aws4_request`;
  const stringToSign = [ALGORITHM, parsed.amzDate, scope, sha256Hex(canonicalRequest)].join('\n');
  const signingKey = signingKeyFor(credentials.secretKey, parsed.date, parsed.region, parsed.service);
  const expected = hmac(signingKey, stringToSign).toString('hex');
  if (!sameSignature(expected, parsed.signature))
    throw new S3Error(
      'SignatureDoesNotMatch',
      'the request signature does not match the one computed with the secret key (check the key and the endpoint URL)',
    );
  return { signingKey, amzDate: parsed.amzDate, scope, seedSignature: parsed.signature };
}

/** The signature a streaming upload's next chunk must carry (its data's SHA-256 given in hex). */
export function chunkSignature(context: SigningContext, previous: string, dataSha256Hex: string): string {
  const stringToSign = [
    'AWS4-HMAC-SHA256-PAYLOAD',
    context.amzDate,
    context.scope,
    previous,
    EMPTY_SHA256,
    dataSha256Hex,
  ].join('\n');
  return hmac(context.signingKey, stringToSign).toString('hex');
}

/** The signature of a signed upload's trailing headers (`name:value\n` each, as sent). */
export function trailerSignature(context: SigningContext, previous: string, trailerText: string): string {
  const stringToSign = [
    'AWS4-HMAC-SHA256-TRAILER',
    context.amzDate,
    context.scope,
    previous,
    sha256Hex(trailerText),
  ].join('\n');
  return hmac(context.signingKey, stringToSign).toString('hex');
}

export function signaturesMatch(expected: string, given: string): boolean {
  return sameSignature(expected, given);
}
