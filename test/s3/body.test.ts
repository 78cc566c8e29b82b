/**
 * Upload bodies: the aws-chunked decoder (AWS's own chunked-upload example, byte for byte) and the
 * digest checks that keep a damaged or cut-off upload from ever becoming an object.
 */
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { test } from 'node:test';
import { crc32 } from 'node:zlib';
import { AwsChunkedDecoder, BodyCheck, type BodyExpectations } from '../../src/s3/body.js';
import { S3Error } from '../../src/s3/errors.js';
import { trailerSignature } from '../../src/s3/sigv4.js';
import { CHUNKED_EXAMPLE_SIGNATURES, chunkedExampleContext } from './aws-examples.js';

/** AWS's example body: 64 KiB and 1 KiB of 'a', then the final chunk, each with AWS's signature. */
function exampleBody(): Buffer {
  return Buffer.concat([
    Buffer.from(`10000;chunk-signature=${CHUNKED_EXAMPLE_SIGNATURES[0]}\r\n`),
    Buffer.alloc(65536, 'a'),
    Buffer.from(`\r\n400;chunk-signature=${CHUNKED_EXAMPLE_SIGNATURES[1]}\r\n`),
    Buffer.alloc(1024, 'a'),
    Buffer.from(`\r\n0;chunk-signature=${CHUNKED_EXAMPLE_SIGNATURES[2]}\r\n\r\n`),
  ]);
}

/** Feeds `body` in pieces of `piece` bytes (so lines and chunks split anywhere) and collects the output. */
async function decode(body: Buffer, decoder: AwsChunkedDecoder, piece: number): Promise<Buffer> {
  const pieces: Buffer[] = [];
  for (let at = 0; at < body.length; at += piece) pieces.push(body.subarray(at, at + piece));
  const out: Buffer[] = [];
  await pipeline(Readable.from(pieces), decoder, async (source: AsyncIterable<Buffer>) => {
    for await (const chunk of source) out.push(chunk);
  });
  return Buffer.concat(out);
}

async function rejectsWithCode(promise: Promise<unknown>, code: string): Promise<void> {
  await assert.rejects(promise, (error: unknown) => error instanceof S3Error && error.code === code);
}

test("AWS's signed chunked body decodes to its 66,560 bytes, however the network splits it", async () => {
  for (const piece of [1, 7, 100, 65536, 1 << 20]) {
    const bytes = await decode(exampleBody(), new AwsChunkedDecoder(66560, chunkedExampleContext()), piece);
    assert.ok(bytes.equals(Buffer.alloc(66560, 'a')), `pieces of ${piece}`);
  }
});

test('a changed byte, a reordered chunk, or a missing final chunk fails the signed body', async () => {
  const flipped = exampleBody();
  flipped[200] = flipped[200]! ^ 1;
  await rejectsWithCode(
    decode(flipped, new AwsChunkedDecoder(66560, chunkedExampleContext()), 4096),
    'SignatureDoesNotMatch',
  );
  const body = exampleBody();
  const cut = body.subarray(0, body.length - 90);
  await rejectsWithCode(
    decode(cut, new AwsChunkedDecoder(66560, chunkedExampleContext()), 4096),
    'IncompleteBody',
  );
  const unsignedChunk = Buffer.from('5\r\nhello\r\n0\r\n\r\n');
  await rejectsWithCode(
    decode(unsignedChunk, new AwsChunkedDecoder(5, chunkedExampleContext()), 3),
    'SignatureDoesNotMatch',
  );
});

test("a signed chunked body's trailers must be signed, and nothing may follow their signature", async () => {
  const lastChunk = CHUNKED_EXAMPLE_SIGNATURES[2]!;
  const trailer = 'x-amz-checksum-crc32:AAAAAA==';
  const signature = trailerSignature(chunkedExampleContext(), lastChunk, `${trailer}\n`);
  const withTrailers = (lines: string[]) => {
    const body = exampleBody();
    // The example ends with the final chunk's line and an empty line: the trailers go between them.
    return Buffer.concat([
      body.subarray(0, body.length - 2),
      Buffer.from(lines.map((l) => `${l}\r\n`).join('')),
      Buffer.from('\r\n'),
    ]);
  };
  const run = (lines: string[]) =>
    decode(withTrailers(lines), new AwsChunkedDecoder(66560, chunkedExampleContext()), 4096);
  assert.equal((await run([trailer, `x-amz-trailer-signature:${signature}`])).length, 66560);
  await rejectsWithCode(run([trailer]), 'SignatureDoesNotMatch');
  await rejectsWithCode(run([trailer, `x-amz-trailer-signature:${'0'.repeat(64)}`]), 'SignatureDoesNotMatch');
  await rejectsWithCode(
    run([trailer, `x-amz-trailer-signature:${signature}`, 'x-amz-checksum-crc32c:AAAAAA==']),
    'InvalidRequest',
  );
});

test('an unsigned chunked body with a trailing checksum: kept, and checked by BodyCheck', async () => {
  const data = Buffer.from('hello, trailer');
  const crc = Buffer.alloc(4);
  crc.writeUInt32BE(crc32(data));
  const body = (value: string) =>
    Buffer.from(
      `6\r\n${data.subarray(0, 6)}\r\n8\r\n${data.subarray(6)}\r\n0\r\nx-amz-checksum-crc32:${value}\r\n\r\n`,
    );
  const run = async (value: string) => {
    const decoder = new AwsChunkedDecoder(data.length, undefined);
    const check = new BodyCheck({ length: data.length, trailerChecksum: { algorithm: 'crc32', decoder } });
    const pieces = [body(value)];
    const out: Buffer[] = [];
    await pipeline(Readable.from(pieces), decoder, check, async (source: AsyncIterable<Buffer>) => {
      for await (const chunk of source) out.push(chunk);
    });
    return Buffer.concat(out);
  };
  assert.ok((await run(crc.toString('base64'))).equals(data));
  await rejectsWithCode(run('AAAAAA=='), 'BadDigest');
});

test('malformed chunked bodies are refused with a clear error, within bounds', async () => {
  const cases: [string, number][] = [
    ['zz\r\nhello\r\n0\r\n\r\n', 5], // not hex
    ['5\r\nhello0\r\n\r\n', 5], // data not followed by CRLF
    ['5\nhello\r\n0\r\n\r\n', 5], // bare LF
    ['6\r\nhello!\r\n0\r\n\r\n', 5], // more than the declared decoded length
    ['5\r\nhello\r\n0\r\n\r\nextra', 5], // bytes after the end
    [`${'f'.repeat(5000)}\r\n`, 5], // a line beyond the limit
  ];
  for (const [text, length] of cases) {
    await assert.rejects(
      decode(Buffer.from(text), new AwsChunkedDecoder(length, undefined), 2),
      S3Error,
      text.slice(0, 20),
    );
  }
});

async function check(expect: BodyExpectations, data: Buffer): Promise<Buffer> {
  const out: Buffer[] = [];
  await pipeline(Readable.from([data]), new BodyCheck(expect), async (source: AsyncIterable<Buffer>) => {
    for await (const chunk of source) out.push(chunk);
  });
  return Buffer.concat(out);
}

test('BodyCheck: declared length, Content-MD5, x-amz-content-sha256 and x-amz-checksum-* must all match', async () => {
  const data = Buffer.from('the bytes of an object');
  const md5 = createHash('md5').update(data).digest('base64');
  const sha256 = createHash('sha256').update(data).digest('hex');
  const sha1 = createHash('sha1').update(data).digest('base64');
  assert.ok(
    (
      await check(
        { length: data.length, md5, sha256Hex: sha256, checksum: { algorithm: 'sha1', value: sha1 } },
        data,
      )
    ).equals(data),
  );
  await rejectsWithCode(check({ length: data.length + 1 }, data), 'IncompleteBody');
  await rejectsWithCode(check({ length: data.length - 1 }, data), 'IncompleteBody');
  await rejectsWithCode(
    check({ length: data.length, md5: createHash('md5').update('x').digest('base64') }, data),
    'BadDigest',
  );
  await rejectsWithCode(
    check({ length: data.length, sha256Hex: '0'.repeat(64) }, data),
    'XAmzContentSHA256Mismatch',
  );
  await rejectsWithCode(
    check({ length: data.length, checksum: { algorithm: 'crc32c', value: 'AAAAAA==' } }, data),
    'BadDigest',
  );
});
