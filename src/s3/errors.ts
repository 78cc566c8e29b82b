/**
 * s3/errors — S3's error codes and their HTTP statuses, and how DogFS's own error codes read to an S3
 * client. An S3 client acts on the code (retries 503 SlowDown and ServiceUnavailable, stops on 404
 * NoSuchKey), so each DogFS code maps to the S3 code whose handling fits.
 */
import { DogfsError, type ErrorCode, toDogfsError } from '../wire/errors.js';

const STATUS = {
  AccessDenied: 403,
  BadDigest: 400,
  BucketAlreadyExists: 409,
  BucketAlreadyOwnedByYou: 409,
  BucketNotEmpty: 409,
  EntityTooLarge: 400,
  IncompleteBody: 400,
  InsufficientStorage: 507,
  InternalError: 500,
  InvalidAccessKeyId: 403,
  InvalidArgument: 400,
  InvalidBucketName: 400,
  InvalidDigest: 400,
  InvalidPart: 400,
  InvalidPartOrder: 400,
  InvalidRange: 416,
  InvalidRequest: 400,
  KeyTooLongError: 400,
  MalformedXML: 400,
  MethodNotAllowed: 405,
  MissingContentLength: 411,
  NoSuchBucket: 404,
  NoSuchKey: 404,
  NoSuchUpload: 404,
  NotImplemented: 501,
  OperationAborted: 409,
  PreconditionFailed: 412,
  RequestTimeTooSkewed: 403,
  ServiceUnavailable: 503,
  SignatureDoesNotMatch: 403,
  SlowDown: 503,
  XAmzContentSHA256Mismatch: 400,
} as const;

export type S3ErrorCode = keyof typeof STATUS;

export class S3Error extends Error {
  readonly status: number;
  constructor(
    readonly code: S3ErrorCode,
    message: string,
  ) {
    super(message);
    this.status = STATUS[code];
  }
}

/** What an S3 client should read for a DogFS error met while serving `what` (an object, a bucket). */
export function fromDogfsError(error: unknown, what: 'key' | 'bucket' | 'upload' = 'key'): S3Error {
  if (error instanceof S3Error) return error;
  const e = error instanceof DogfsError ? error : toDogfsError(error);
  const code: S3ErrorCode = S3_CODE[e.code] ?? 'InternalError';
  if (e.code === 'NOT_FOUND')
    return new S3Error(
      what === 'bucket' ? 'NoSuchBucket' : what === 'upload' ? 'NoSuchUpload' : 'NoSuchKey',
      e.message,
    );
  return new S3Error(code, e.message);
}

const S3_CODE: Partial<Record<ErrorCode, S3ErrorCode>> = {
  INVALID_ARGUMENT: 'InvalidArgument',
  TOO_LARGE: 'EntityTooLarge',
  // A key whose directory is a file, or an object where a directory is: S3 has no such conflict, a file
  // tree does. The request was well formed; the tree refuses it.
  NOT_A_DIRECTORY: 'InvalidRequest',
  IS_A_DIRECTORY: 'InvalidRequest',
  ALREADY_EXISTS: 'OperationAborted',
  NOT_EMPTY: 'BucketNotEmpty',
  FAILED_PRECONDITION: 'OperationAborted',
  PERMISSION_DENIED: 'AccessDenied',
  // Retryable: S3 clients retry 503s with back-off, which is what a leader change or a lost quorum needs.
  NOT_LEADER: 'ServiceUnavailable',
  NO_QUORUM: 'ServiceUnavailable',
  UNAVAILABLE: 'ServiceUnavailable',
  DEADLINE_EXCEEDED: 'ServiceUnavailable',
  RESOURCE_EXHAUSTED: 'SlowDown',
  NO_SPACE: 'InsufficientStorage',
  UNIMPLEMENTED: 'NotImplemented',
};
