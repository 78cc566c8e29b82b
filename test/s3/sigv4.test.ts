/**
 * SigV4 as S3 checks it, against the worked examples of AWS's own documentation (Amazon S3 API
 * Reference, "Signature Calculations for the Authorization Header"): the signatures below are AWS's,
 * computed by AWS, not by this code.
 */
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { test } from 'node:test';
import { S3Error } from '../../src/s3/errors.js';
import { chunkSignature, verifyRequest } from '../../src/s3/sigv4.js';
import {
  AWS_EXAMPLE_CREDENTIALS,
  AWS_EXAMPLE_SCOPE,
  AWS_EXAMPLE_TIME,
  CHUNKED_EXAMPLE_SIGNATURES,
  chunkedExampleContext,
} from './aws-examples.js';

const CREDENTIALS = AWS_EXAMPLE_CREDENTIALS;
const SIGNED_AT = AWS_EXAMPLE_TIME;
const SCOPE = AWS_EXAMPLE_SCOPE;

/** AWS's "GET Object" example: a ranged GET of /test.txt. */
function getObjectExample(signature = 'f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41') {
  return {
    method: 'GET',
    rawPath: '/test.txt',
    rawQuery: '',
    headers: {
      host: 'examplebucket.s3.amazonaws.com',
      range: 'bytes=0-9',
      'x-amz-content-sha256': 'e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855',
      'x-amz-date': '20130524T000000Z',
      authorization: `AWS4-HMAC-SHA256 Credential=${SCOPE},SignedHeaders=host;range;x-amz-content-sha256;x-amz-date,Signature=${signature}`,
    },
  };
}

function refusedWith(fn: () => unknown, code: string): void {
  assert.throws(fn, (error: unknown) => error instanceof S3Error && error.code === code);
}

test("AWS's GET Object example verifies; a changed header, path or secret does not", () => {
  assert.notEqual(verifyRequest(getObjectExample(), CREDENTIALS, SIGNED_AT), undefined);
  const other = getObjectExample();
  other.headers.range = 'bytes=0-10';
  refusedWith(() => verifyRequest(other, CREDENTIALS, SIGNED_AT), 'SignatureDoesNotMatch');
  refusedWith(
    () => verifyRequest({ ...getObjectExample(), rawPath: '/test.txt2' }, CREDENTIALS, SIGNED_AT),
    'SignatureDoesNotMatch',
  );
  refusedWith(
    () => verifyRequest(getObjectExample(), { ...CREDENTIALS, secretKey: 'another' }, SIGNED_AT),
    'SignatureDoesNotMatch',
  );
  refusedWith(
    () => verifyRequest(getObjectExample(), { ...CREDENTIALS, accessKey: 'AKIDOTHER' }, SIGNED_AT),
    'InvalidAccessKeyId',
  );
});

test('a request dated more than 15 minutes from the clock is refused (replay window)', () => {
  assert.notEqual(verifyRequest(getObjectExample(), CREDENTIALS, SIGNED_AT + 14 * 60_000), undefined);
  refusedWith(
    () => verifyRequest(getObjectExample(), CREDENTIALS, SIGNED_AT + 16 * 60_000),
    'RequestTimeTooSkewed',
  );
});

test('without credentials every request passes; with them an unsigned or SigV2 one is refused', () => {
  assert.equal(verifyRequest(getObjectExample('0'.repeat(64)), undefined, Date.now()), undefined);
  const unsigned = { method: 'GET', rawPath: '/b/k', rawQuery: '', headers: { host: 'h' } };
  refusedWith(() => verifyRequest(unsigned, CREDENTIALS, Date.now()), 'AccessDenied');
  const v2 = { ...unsigned, rawQuery: 'AWSAccessKeyId=AKIAIOSFODNN7EXAMPLE&Signature=x&Expires=1' };
  assert.throws(() => verifyRequest(v2, CREDENTIALS, Date.now()), /Signature Version 4/);
  const v2Header = { ...unsigned, headers: { host: 'h', authorization: 'AWS AKIAIOSFODNN7EXAMPLE:sig' } };
  refusedWith(() => verifyRequest(v2Header, CREDENTIALS, Date.now()), 'AccessDenied');
});

test("AWS's chunked upload example: seed signature, then each chunk's chained signature", () => {
  const context = chunkedExampleContext();
  const sha = (bytes: Buffer) => createHash('sha256').update(bytes).digest('hex');
  const first = chunkSignature(context, context.seedSignature, sha(Buffer.alloc(65536, 'a')));
  assert.equal(first, CHUNKED_EXAMPLE_SIGNATURES[0]);
  const second = chunkSignature(context, first, sha(Buffer.alloc(1024, 'a')));
  assert.equal(second, CHUNKED_EXAMPLE_SIGNATURES[1]);
  const last = chunkSignature(context, second, sha(Buffer.alloc(0)));
  assert.equal(last, CHUNKED_EXAMPLE_SIGNATURES[2]);
});

test('a presigned URL verifies until it expires', () => {
  // Built by the same rules as a client would: the query carries everything, the payload is unsigned.
  const amzDate = '20130524T000000Z';
  const query = `X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=${encodeURIComponent(SCOPE)}&X-Amz-Date=${amzDate}&X-Amz-Expires=86400&X-Amz-SignedHeaders=host`;
  // AWS's presigned-URL example (GET /test.txt, 86400 s) and its signature.
  const signature = 'aeeed9bbccd4d02ee5c0109b86d86835f995330da4c265957d157751f604d404';
  const request = {
    method: 'GET',
    rawPath: '/test.txt',
    rawQuery: `${query}&X-Amz-Signature=${signature}`,
    headers: { host: 'examplebucket.s3.amazonaws.com' },
  };
  assert.notEqual(verifyRequest(request, CREDENTIALS, SIGNED_AT + 3600_000), undefined);
  assert.throws(() => verifyRequest(request, CREDENTIALS, SIGNED_AT + 86_401_000), /expired/);
  const tampered = { ...request, rawPath: '/other.txt' };
  refusedWith(() => verifyRequest(tampered, CREDENTIALS, SIGNED_AT + 3600_000), 'SignatureDoesNotMatch');
  // Dated ahead of the clock, it would outlive its X-Amz-Expires.
  assert.notEqual(verifyRequest(request, CREDENTIALS, SIGNED_AT - 14 * 60_000), undefined);
  assert.throws(
    () => verifyRequest(request, CREDENTIALS, SIGNED_AT - 16 * 60_000),
    /ahead of the gateway clock/,
  );
  // A header that changes what the request does, added to the signed URL: a PUT becomes a copy.
  const copying = { ...request, headers: { ...request.headers, 'x-amz-copy-source': '/secrets/key' } };
  assert.throws(
    () => verifyRequest(copying, CREDENTIALS, SIGNED_AT + 3600_000),
    /not signed: x-amz-copy-source/,
  );
});

test('every x-amz-* header of a signed request must be signed; repeated headers sign as one', () => {
  const added = getObjectExample();
  (added.headers as Record<string, string>)['x-amz-checksum-crc32'] = 'AAAAAA==';
  refusedWith(() => verifyRequest(added, CREDENTIALS, SIGNED_AT), 'AccessDenied');
  // As node:http's headersDistinct gives them: one array per header; SigV4 joins repeats with ','.
  const distinct = Object.fromEntries(Object.entries(getObjectExample().headers).map(([k, v]) => [k, [v]]));
  assert.notEqual(
    verifyRequest({ ...getObjectExample(), headers: distinct }, CREDENTIALS, SIGNED_AT),
    undefined,
  );
  refusedWith(
    () =>
      verifyRequest(
        { ...getObjectExample(), headers: { ...distinct, range: ['bytes=0-9', 'bytes=20-29'] } },
        CREDENTIALS,
        SIGNED_AT,
      ),
    'SignatureDoesNotMatch',
  );
});
