/**
 * client/paths — the light client-side view of DogFS paths. The metadata service is the judge of what is
 * valid (`..`, empty components, NUL, over-long names); the client only makes a path absolute, drops one
 * trailing slash, and refuses what can never be sent.
 */
import { DogfsError } from '../wire/errors.js';

/** Longest path the client sends (the service limits components to 255 bytes). */
export const MAX_PATH_BYTES = 4096;

/** "a/b" → "/a/b", "/a/b/" → "/a/b", "/" stays "/". */
export function normalizePath(path: string): string {
  if (path === '') throw new DogfsError('INVALID_ARGUMENT', 'empty path');
  let p = path.startsWith('/') ? path : `/${path}`;
  if (p.length > 1 && p.endsWith('/')) p = p.slice(0, -1);
  if (Buffer.byteLength(p) > MAX_PATH_BYTES) {
    throw new DogfsError(
      'INVALID_ARGUMENT',
      `${p.slice(0, 60)}...: path longer than ${MAX_PATH_BYTES} bytes`,
    );
  }
  return p;
}

/** The child path `name` under directory `dir`. */
export function joinPath(dir: string, name: string): string {
  return dir === '/' ? `/${name}` : `${dir}/${name}`;
}

/** The last component of a path ("/" for the root). */
export function baseName(path: string): string {
  if (path === '/') return '/';
  const i = path.lastIndexOf('/');
  return path.slice(i + 1);
}
