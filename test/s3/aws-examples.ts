/**
 * The worked examples of AWS's documentation (Amazon S3 API Reference, "Signature Calculations for the
 * Authorization Header"): credentials, time, and requests whose signatures AWS computed and published.
 * Tests check the gateway against them, so its signing rules are AWS's, not its own reading of them.
 */
import assert from 'node:assert/strict';
import { type SigningContext, verifyRequest } from '../../src/s3/sigv4.js';

export const AWS_EXAMPLE_CREDENTIALS = {
  accessKey: 'AKIAIOSFODNN7EXAMPLE',
  secretKey: 'wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY',
};
/** Every example is dated 20130524T000000Z. */
export const AWS_EXAMPLE_TIME = Date.UTC(2013, 4, 24);
export const AWS_EXAMPLE_SCOPE = 'AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request';

/** "Example: PUT Object" of the chunked upload: 66,560 bytes of 'a' in chunks of 64 KiB, 1 KiB, 0. */
export const CHUNKED_EXAMPLE_REQUEST = {
  method: 'PUT',
  rawPath: '/examplebucket/chunkObject.txt',
  rawQuery: '',
  headers: {
    'content-encoding': 'aws-chunked',
    'content-length': '66824',
    host: 's3.amazonaws.com',
    'x-amz-content-sha256': 'STREAMING-AWS4-HMAC-SHA256-PAYLOAD',
    'x-amz-date': '20130524T000000Z',
    'x-amz-decoded-content-length': '66560',
    'x-amz-storage-class': 'REDUCED_REDUNDANCY',
    authorization: `AWS4-HMAC-SHA256 Credential=${AWS_EXAMPLE_SCOPE},SignedHeaders=content-encoding;content-length;host;x-amz-content-sha256;x-amz-date;x-amz-decoded-content-length;x-amz-storage-class,Signature=4f232c4386841ef735655705268965c44a0e4690baa4adea153f7db9fa80a0a9`,
  },
};

/** AWS's published signatures of the chunked example's three chunks, in order. */
export const CHUNKED_EXAMPLE_SIGNATURES = [
  'ad80c730a21e5b8d04586a2213dd63b9a0e99e0e2307b0ade35a65485a288648',
  '0055627c9e194cb4542bae2aa5492e3c1575bbb81b612b7d234b86a503ef5497',
  'b6c6ea8a5354eaf15b3cb7646744f4275b71ea724fed81ceb9323e279d449df9',
] as const;

/** The chunked example's request, verified: the context its chunk signatures chain from. */
export function chunkedExampleContext(): SigningContext {
  const context = verifyRequest(CHUNKED_EXAMPLE_REQUEST, AWS_EXAMPLE_CREDENTIALS, AWS_EXAMPLE_TIME);
  assert.ok(context);
  return context;
}
