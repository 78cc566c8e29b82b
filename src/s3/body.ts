/**
 * s3/body — what stands between an upload's bytes and the file they become: the `aws-chunked` decoder
 * of streaming uploads (chunk signatures checked as each chunk ends, trailing checksum headers kept),
 * and the check of every digest the client declared (Content-MD5, x-amz-content-sha256,
 * x-amz-checksum-*). A check that fails fails the stream before it ends, so the DogFS write stream never
 * completes and the object never appears: S3's "a bad upload changes nothing". Both are Transforms that
 * pass the received Buffers on without copying them.
 */
import { createHash, type Hash } from 'node:crypto';
import { Transform, type TransformCallback } from 'node:stream';
import { crc32 } from 'node:zlib';
import { crc32c } from '../codec/crc32c.js';
import { S3Error } from './errors.js';
import {
  chunkSignature,
  EMPTY_SHA256,
  type SigningContext,
  signaturesMatch,
  trailerSignature,
} from './sigv4.js';

const MAX_LINE_BYTES = 4096;
const MAX_TRAILERS = 16;

type DecoderState = 'size' | 'data' | 'dataEnd' | 'trailer' | 'done';

/**
 * Decodes `Content-Encoding: aws-chunked` bodies: `hex-size[;chunk-signature=SIG]\r\n DATA \r\n` ...,
 * a zero-size chunk, then optional trailing headers and an empty line. With a signing context, each
 * chunk's signature is checked (chained from the request's seed signature) when its last byte arrives.
 */
export class AwsChunkedDecoder extends Transform {
  /** Trailing headers (lowercase names), known once the stream has ended. */
  readonly trailers = new Map<string, string>();
  private state: DecoderState = 'size';
  private line: Buffer[] = [];
  private lineBytes = 0;
  private remaining = 0;
  private decoded = 0;
  private chunkHash: Hash | undefined;
  private chunkSigned = '';
  private previousSignature: string;
  private trailerText = '';
  private trailerSignatureSeen = false;

  constructor(
    private readonly expectedLength: number,
    private readonly signing: SigningContext | undefined,
  ) {
    super();
    this.previousSignature = signing?.seedSignature ?? '';
  }

  override _transform(chunk: Buffer, _encoding: BufferEncoding, callback: TransformCallback): void {
    try {
      this.consume(chunk);
      callback();
    } catch (error) {
      callback(error as Error);
    }
  }

  override _flush(callback: TransformCallback): void {
    if (this.state !== 'done')
      callback(new S3Error('IncompleteBody', 'the aws-chunked body ended before its final chunk'));
    else callback();
  }

  private consume(chunk: Buffer): void {
    let at = 0;
    // Bounded by the chunk's length: every pass takes at least one byte, or ends the loop.
    while (at < chunk.length) {
      if (this.state === 'data') {
        const take = Math.min(this.remaining, chunk.length - at);
        const piece = chunk.subarray(at, at + take);
        this.chunkHash?.update(piece);
        this.push(piece);
        at += take;
        this.remaining -= take;
        if (this.remaining === 0) {
          this.checkChunkSignature();
          this.state = 'dataEnd';
        }
        continue;
      }
      if (this.state === 'done')
        throw new S3Error('InvalidRequest', 'bytes after the end of an aws-chunked body');
      const newline = chunk.indexOf(10, at);
      const end = newline < 0 ? chunk.length : newline + 1;
      this.lineBytes += end - at;
      if (this.lineBytes > MAX_LINE_BYTES)
        throw new S3Error('InvalidRequest', 'an aws-chunked line is too long');
      this.line.push(chunk.subarray(at, end));
      at = end;
      if (newline < 0) continue;
      const text = Buffer.concat(this.line).toString('latin1');
      this.line = [];
      this.lineBytes = 0;
      if (!text.endsWith('\r\n')) throw new S3Error('InvalidRequest', 'aws-chunked lines end with CRLF');
      this.onLine(text.slice(0, -2));
    }
  }

  private onLine(text: string): void {
    switch (this.state) {
      case 'dataEnd':
        if (text !== '') throw new S3Error('InvalidRequest', 'aws-chunked data not followed by CRLF');
        this.state = 'size';
        return;
      case 'size': {
        const semicolon = text.indexOf(';');
        const hex = semicolon < 0 ? text : text.slice(0, semicolon);
        if (!/^[0-9a-fA-F]{1,12}$/.test(hex))
          throw new S3Error('InvalidRequest', 'malformed aws-chunked size');
        const size = Number.parseInt(hex, 16);
        this.decoded += size;
        if (this.decoded > this.expectedLength)
          throw new S3Error(
            'IncompleteBody',
            'the aws-chunked body holds more than x-amz-decoded-content-length',
          );
        const extension = semicolon < 0 ? '' : text.slice(semicolon + 1);
        if (this.signing !== undefined) {
          if (!extension.startsWith('chunk-signature='))
            throw new S3Error('SignatureDoesNotMatch', 'a signed streaming upload chunk lacks its signature');
          this.chunkSigned = extension.slice('chunk-signature='.length);
          this.chunkHash = createHash('sha256');
        }
        if (size === 0) {
          if (this.decoded !== this.expectedLength)
            throw new S3Error(
              'IncompleteBody',
              'the aws-chunked body is shorter than x-amz-decoded-content-length',
            );
          this.checkChunkSignature();
          this.state = 'trailer';
        } else {
          this.remaining = size;
          this.state = 'data';
        }
        return;
      }
      case 'trailer':
        this.onTrailer(text);
        return;
      default:
        throw new S3Error('InvalidRequest', 'malformed aws-chunked body');
    }
  }

  private onTrailer(text: string): void {
    if (text === '') {
      // A signed upload's trailers are signed too, or a checksum could be swapped for the bytes sent.
      if (this.signing !== undefined && this.trailers.size > 0 && !this.trailerSignatureSeen)
        throw new S3Error('SignatureDoesNotMatch', 'the upload trailers are not signed');
      this.state = 'done';
      return;
    }
    if (this.trailerSignatureSeen)
      throw new S3Error('InvalidRequest', 'an aws-chunked trailer after the trailer signature');
    const colon = text.indexOf(':');
    if (colon <= 0) throw new S3Error('InvalidRequest', 'malformed aws-chunked trailer');
    const name = text.slice(0, colon).trim().toLowerCase();
    const value = text.slice(colon + 1).trim();
    if (name === 'x-amz-trailer-signature') {
      this.trailerSignatureSeen = true;
      if (this.signing !== undefined) {
        const expected = trailerSignature(this.signing, this.previousSignature, this.trailerText);
        if (!signaturesMatch(expected, value))
          throw new S3Error('SignatureDoesNotMatch', 'the upload trailer signature does not match');
      }
      return;
    }
    if (this.trailers.size >= MAX_TRAILERS)
      throw new S3Error('InvalidRequest', 'too many aws-chunked trailers');
    this.trailers.set(name, value);
    this.trailerText += `${name}:${value}\n`;
  }

  private checkChunkSignature(): void {
    if (this.signing === undefined || this.chunkHash === undefined) return;
    const digest = this.chunkHash.digest('hex');
    this.chunkHash = undefined;
    const expected = chunkSignature(
      this.signing,
      this.previousSignature,
      digest === '' ? EMPTY_SHA256 : digest,
    );
    if (!signaturesMatch(expected, this.chunkSigned))
      throw new S3Error('SignatureDoesNotMatch', 'a streaming upload chunk signature does not match');
    this.previousSignature = this.chunkSigned;
  }
}

/** One declared digest of the body: where it came from, how to compute it, and its expected value. */
interface DeclaredDigest {
  readonly what: string;
  readonly code: 'BadDigest' | 'XAmzContentSHA256Mismatch';
  readonly update: (data: Buffer) => void;
  readonly value: () => string;
  /** The expected value, or a function reading it once the body ended (a trailer). */
  readonly expected: string | (() => string | undefined);
}

export type ChecksumAlgorithm = 'crc32' | 'crc32c' | 'sha1' | 'sha256';
export const CHECKSUM_ALGORITHMS: readonly ChecksumAlgorithm[] = ['crc32', 'crc32c', 'sha1', 'sha256'];

function uint32Base64(value: number): string {
  const bytes = Buffer.alloc(4);
  bytes.writeUInt32BE(value >>> 0);
  return bytes.toString('base64');
}

/** A running digest of one algorithm, its value in the form S3 headers carry (base64 or hex). */
function digestOf(algorithm: ChecksumAlgorithm | 'md5' | 'sha256hex'): {
  update: (d: Buffer) => void;
  value: () => string;
} {
  if (algorithm === 'crc32' || algorithm === 'crc32c') {
    let crc = 0;
    const f = algorithm === 'crc32' ? crc32 : crc32c;
    return { update: (d) => (crc = f(d, crc)), value: () => uint32Base64(crc) };
  }
  const hash = createHash(algorithm === 'md5' ? 'md5' : algorithm === 'sha1' ? 'sha1' : 'sha256');
  return {
    update: (d) => hash.update(d),
    value: () => hash.digest(algorithm === 'sha256hex' ? 'hex' : 'base64'),
  };
}

export interface BodyExpectations {
  /** Exact number of body bytes. */
  readonly length: number;
  /** Content-MD5 (base64). */
  readonly md5?: string | undefined;
  /** x-amz-content-sha256 when it is a hash (hex), not UNSIGNED-PAYLOAD or STREAMING-... */
  readonly sha256Hex?: string | undefined;
  /** x-amz-checksum-ALG given as a header. */
  readonly checksum?: { readonly algorithm: ChecksumAlgorithm; readonly value: string } | undefined;
  /** x-amz-checksum-ALG promised as a trailer (x-amz-trailer), read from the decoder at the end. */
  readonly trailerChecksum?:
    | { readonly algorithm: ChecksumAlgorithm; readonly decoder: AwsChunkedDecoder }
    | undefined;
}

/**
 * Passes the body through, counting it and computing every digest the client declared; fails at the
 * end (before passing the end on) when a count or a digest differs. Fails early when bytes exceed the
 * declared length.
 */
export class BodyCheck extends Transform {
  private received = 0;
  private readonly digests: DeclaredDigest[] = [];

  constructor(private readonly expect: BodyExpectations) {
    super();
    if (expect.md5 !== undefined) {
      const d = digestOf('md5');
      this.digests.push({ what: 'Content-MD5', code: 'BadDigest', ...d, expected: expect.md5 });
    }
    if (expect.sha256Hex !== undefined) {
      const d = digestOf('sha256hex');
      this.digests.push({
        what: 'x-amz-content-sha256',
        code: 'XAmzContentSHA256Mismatch',
        ...d,
        expected: expect.sha256Hex.toLowerCase(),
      });
    }
    if (expect.checksum !== undefined) {
      const d = digestOf(expect.checksum.algorithm);
      this.digests.push({
        what: `x-amz-checksum-${expect.checksum.algorithm}`,
        code: 'BadDigest',
        ...d,
        expected: expect.checksum.value,
      });
    }
    const trailer = expect.trailerChecksum;
    if (trailer !== undefined) {
      const d = digestOf(trailer.algorithm);
      const name = `x-amz-checksum-${trailer.algorithm}`;
      this.digests.push({
        what: `${name} (trailer)`,
        code: 'BadDigest',
        ...d,
        expected: () => trailer.decoder.trailers.get(name),
      });
    }
  }

  get bytes(): number {
    return this.received;
  }

  override _transform(chunk: Buffer, _encoding: BufferEncoding, callback: TransformCallback): void {
    this.received += chunk.length;
    if (this.received > this.expect.length) {
      callback(
        new S3Error('IncompleteBody', `the body is longer than its declared ${this.expect.length} bytes`),
      );
      return;
    }
    for (const digest of this.digests) digest.update(chunk);
    callback(null, chunk);
  }

  override _flush(callback: TransformCallback): void {
    if (this.received !== this.expect.length) {
      callback(
        new S3Error(
          'IncompleteBody',
          `the body ended after ${this.received} of its declared ${this.expect.length} bytes`,
        ),
      );
      return;
    }
    for (const digest of this.digests) {
      const expected = typeof digest.expected === 'string' ? digest.expected : digest.expected();
      if (expected === undefined) {
        callback(new S3Error('InvalidRequest', `${digest.what} was promised but not sent`));
        return;
      }
      const actual = digest.value();
      if (actual !== expected) {
        callback(new S3Error(digest.code, `${digest.what} does not match the bytes received`));
        return;
      }
    }
    callback();
  }
}
