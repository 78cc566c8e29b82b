/**
 * metadata/state/paths — validating and splitting path names. A path is absolute, UTF-8, at most
 * MAX_PATH_BYTES bytes; each component is 1..MAX_NAME_BYTES bytes, never `.` or `..`, never containing
 * NUL or `/`. A trailing slash is accepted and dropped (`/a/b/` is `/a/b`); `/` alone is the root.
 * Anything else is refused with INVALID_ARGUMENT and a message naming the problem — never silently
 * "fixed", because two spellings of one path must not both be valid names for different things.
 */
import { type Failure, fail } from './result.js';

export const MAX_PATH_BYTES = 4096;
export const MAX_NAME_BYTES = 255;

export interface ParsedPath {
  readonly ok: true;
  /** The path in canonical form: no trailing slash except for the root. */
  readonly path: string;
  /** Its components, root first omitted: `/a/b` → ['a', 'b']; `/` → []. */
  readonly components: readonly string[];
}

/** UTF-8 byte length of `s`, or -1 when `s` holds a lone surrogate (it has no UTF-8 form). */
export function utf8Length(s: string): number {
  let bytes = 0;
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i);
    if (c < 0x80) bytes += 1;
    else if (c < 0x800) bytes += 2;
    else if (c >= 0xd800 && c <= 0xdbff) {
      const next = i + 1 < s.length ? s.charCodeAt(i + 1) : 0;
      if (next < 0xdc00 || next > 0xdfff) return -1;
      bytes += 4;
      i++;
    } else if (c >= 0xdc00 && c <= 0xdfff) return -1;
    else bytes += 3;
  }
  return bytes;
}

function show(path: string): string {
  return JSON.stringify(path.length > 80 ? `${path.slice(0, 80)}…` : path);
}

/** Checks one name (a single path component). */
export function checkName(name: string): Failure | undefined {
  if (name.length === 0) return fail('INVALID_ARGUMENT', 'empty name');
  if (name === '.' || name === '..') return fail('INVALID_ARGUMENT', `name ${show(name)} is not allowed`);
  if (name.includes('\0')) return fail('INVALID_ARGUMENT', `name ${show(name)} contains a NUL byte`);
  if (name.includes('/')) return fail('INVALID_ARGUMENT', `name ${show(name)} contains '/'`);
  const bytes = utf8Length(name);
  if (bytes < 0) return fail('INVALID_ARGUMENT', `name ${show(name)} is not valid Unicode (lone surrogate)`);
  if (bytes > MAX_NAME_BYTES)
    return fail(
      'INVALID_ARGUMENT',
      `name ${show(name)} is ${bytes} bytes; names are at most ${MAX_NAME_BYTES}`,
    );
  return undefined;
}

export function parsePath(path: string): ParsedPath | Failure {
  if (path.length === 0) return fail('INVALID_ARGUMENT', 'empty path');
  if (path[0] !== '/') return fail('INVALID_ARGUMENT', `path ${show(path)} is not absolute`);
  if (path.includes('\0')) return fail('INVALID_ARGUMENT', `path ${show(path)} contains a NUL byte`);
  const bytes = utf8Length(path);
  if (bytes < 0) return fail('INVALID_ARGUMENT', `path ${show(path)} is not valid Unicode (lone surrogate)`);
  if (bytes > MAX_PATH_BYTES)
    return fail('INVALID_ARGUMENT', `path is ${bytes} bytes; paths are at most ${MAX_PATH_BYTES}`);
  if (path === '/') return { ok: true, path: '/', components: [] };
  const canonical = path.endsWith('/') ? path.slice(0, -1) : path;
  const components = canonical.slice(1).split('/');
  for (const name of components) {
    if (name.length === 0)
      return fail('INVALID_ARGUMENT', `path ${show(path)} has an empty component ('//')`);
    if (name === '.' || name === '..')
      return fail('INVALID_ARGUMENT', `path ${show(path)} has a '${name}' component; use a canonical path`);
    const bytes = utf8Length(name);
    if (bytes > MAX_NAME_BYTES)
      return fail(
        'INVALID_ARGUMENT',
        `path ${show(path)} has a component of ${bytes} bytes; names are at most ${MAX_NAME_BYTES}`,
      );
  }
  return { ok: true, path: canonical, components };
}

/** Joins a canonical directory path and a name. */
export function joinPath(dir: string, name: string): string {
  return dir === '/' ? `/${name}` : `${dir}/${name}`;
}

/** True when `inner` is `outer` or lies below it (both canonical). */
export function isSameOrBelow(inner: string, outer: string): boolean {
  if (outer === '/') return true;
  return inner === outer || inner.startsWith(`${outer}/`);
}
