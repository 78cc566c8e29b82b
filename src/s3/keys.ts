/**
 * s3/keys — how S3 names map onto DogFS paths. A bucket is a directory under `/`; a key is a path under
 * its bucket, `/` separating directories. A key ending in `/` is a directory marker (the directory
 * itself). S3 allows keys no file tree can hold (`a//b`, `./a`, `a/../b`, a component over 255 bytes):
 * those are refused with a message saying why, never rewritten into another name.
 */
import { S3Error } from './errors.js';

/** S3's limit on a key's UTF-8 length. */
export const MAX_KEY_BYTES = 1024;
/** DogFS's limit on one path component (metadata/state/paths.ts). */
const MAX_NAME_BYTES = 255;

/** Checks a bucket name against S3's rules for new buckets (3-63 of a-z 0-9 . -, no IP address). */
export function bucketNameProblem(name: string): string | undefined {
  if (name.length < 3 || name.length > 63) return 'bucket names are 3 to 63 characters long';
  if (!/^[a-z0-9][a-z0-9.-]*[a-z0-9]$/.test(name))
    return 'bucket names use lowercase letters, digits, dots and hyphens, and begin and end with a letter or digit';
  if (name.includes('..')) return 'bucket names do not contain two dots in a row';
  if (/^\d+\.\d+\.\d+\.\d+$/.test(name)) return 'bucket names are not IP addresses';
  return undefined;
}

export function checkBucketName(name: string): void {
  const problem = bucketNameProblem(name);
  if (problem !== undefined) throw new S3Error('InvalidBucketName', `${JSON.stringify(name)}: ${problem}`);
}

export interface KeyPath {
  /** The DogFS path of the object, or of the directory for a marker key. */
  readonly path: string;
  /** The key ends in `/`: it names a directory. */
  readonly marker: boolean;
}

/** The path a key names in `bucket`, or an S3Error saying why the key cannot be stored. */
export function keyPath(bucket: string, key: string): KeyPath {
  if (key.length === 0) throw new S3Error('InvalidArgument', 'empty key');
  const bytes = Buffer.byteLength(key);
  if (bytes > MAX_KEY_BYTES)
    throw new S3Error('KeyTooLongError', `key is ${bytes} bytes; keys are at most ${MAX_KEY_BYTES}`);
  const marker = key.endsWith('/');
  const body = marker ? key.slice(0, -1) : key;
  const shown = JSON.stringify(key.length > 80 ? `${key.slice(0, 80)}…` : key);
  if (body.length === 0) throw new S3Error('InvalidArgument', `key ${shown}: a key cannot be only '/'`);
  for (const name of body.split('/')) {
    if (name.length === 0)
      throw new S3Error(
        'InvalidArgument',
        `key ${shown}: empty component ('//' or a leading '/') cannot be stored in a file tree`,
      );
    if (name === '.' || name === '..')
      throw new S3Error(
        'InvalidArgument',
        `key ${shown}: a '${name}' component cannot be stored in a file tree`,
      );
    if (name.includes('\0')) throw new S3Error('InvalidArgument', `key ${shown} contains a NUL byte`);
    const nameBytes = Buffer.byteLength(name);
    if (nameBytes > MAX_NAME_BYTES)
      throw new S3Error(
        'KeyTooLongError',
        `key ${shown}: a component of ${nameBytes} bytes; each part between '/' is at most ${MAX_NAME_BYTES}`,
      );
  }
  return { path: `/${bucket}/${body}`, marker };
}

/** The key of a path below `/bucket` (`/b/x/y` → `x/y`); directories get a trailing `/`. */
export function pathKey(bucket: string, path: string, dir: boolean): string {
  const key = path.slice(bucket.length + 2);
  return dir ? `${key}/` : key;
}

/** The parent directory of a path (`/b/x/y` → `/b/x`). */
export function parentPath(path: string): string {
  return path.slice(0, path.lastIndexOf('/'));
}
