/**
 * s3/listing — ListObjects over a file tree, in S3's order. S3 sorts keys by UTF-8 bytes, so a
 * directory `a` (whose keys are `a/...`) comes after its siblings `a-b` and `a.txt` ('-' and '.' sort
 * before '/'), though `a` comes first among names. The walk holds such directories back on a small stack
 * until the first sibling that sorts after `a/`, then descends: one directory page at a time, never a
 * whole directory in memory. A continuation key resumes the walk where it stopped, descending straight to
 * it rather than listing from the start.
 */
import { compareNames } from '../common/code-point-order.js';

/** One name in a directory, as the walk needs it. */
export interface TreeEntry {
  readonly name: string;
  readonly dir: boolean;
  readonly size: number;
  readonly mtimeMs: number;
  readonly id: number;
}

/** The file tree the walk reads (the gateway's is DogFS through its client). */
export interface TreeReader {
  /** The entry at `path`, or undefined when nothing is there (or the name cannot exist). */
  stat(path: string): Promise<TreeEntry | undefined>;
  /** The entries of directory `path` after `startAfter`, in code-point order; empty when it is gone. */
  list(path: string, startAfter: string): AsyncIterable<TreeEntry>;
}

export type ListedItem =
  | { readonly kind: 'object'; readonly key: string; readonly entry: TreeEntry }
  | { readonly kind: 'prefix'; readonly prefix: string };

export interface ListQuery {
  readonly bucketPath: string;
  readonly prefix: string;
  /** '' (every key) or '/' (one level, with common prefixes). */
  readonly delimiter: '' | '/';
  /** Only keys (and prefixes) after this ('' = from the start). */
  readonly startAfter: string;
}

const SLASH = 0x2f;

/** Whether a sibling named `next` sorts before the keys of directory `dir` (`dir/...`). */
function sortsBeforeSubtree(dir: string, next: string): boolean {
  return next.startsWith(dir) && next.length > dir.length && next.charCodeAt(dir.length) < SLASH;
}

/**
 * Every key (and, with a delimiter, every common prefix) of the query, in S3 order, after `startAfter`.
 * Without a delimiter, an empty directory lists as its marker key `dir/`.
 */
export async function* listKeys(tree: TreeReader, query: ListQuery): AsyncGenerator<ListedItem> {
  const slash = query.prefix.lastIndexOf('/');
  const dirKey = query.prefix.slice(0, slash + 1);
  const fragment = query.prefix.slice(slash + 1);
  // Keys with empty, '.' or '..' components cannot be stored (keys.ts), so no key has such a prefix;
  // looked up, `a//` or `a/./` would name `a/` and list its keys under the wrong names.
  if (
    dirKey
      .split('/')
      .slice(0, -1)
      .some((c) => c === '' || c === '.' || c === '..')
  )
    return;
  const dirPath = dirKey === '' ? query.bucketPath : `${query.bucketPath}/${dirKey.slice(0, -1)}`;
  let dir: TreeEntry | undefined;
  if (dirKey !== '') {
    dir = await tree.stat(dirPath);
    if (dir === undefined || !dir.dir) return;
  }
  let empty = true;
  for await (const item of walkLevel(tree, query, dirPath, dirKey, fragment)) {
    empty = false;
    yield item;
  }
  // The prefix names an empty directory exactly (`b/`): its marker, as a listing from above shows it
  // (with the delimiter too: nothing follows the prefix in `b/`, so it is a key, not a common prefix).
  if (empty && dir !== undefined && fragment === '' && after(dirKey, query.startAfter))
    yield { kind: 'object', key: dirKey, entry: dir };
}

function after(key: string, bound: string): boolean {
  return bound === '' || compareNames(key, bound) > 0;
}

async function* walkLevel(
  tree: TreeReader,
  query: ListQuery,
  dirPath: string,
  dirKey: string,
  fragment: string,
): AsyncGenerator<ListedItem> {
  const bound = query.startAfter;
  // Directories whose keys sort after the names that follow them, innermost on top.
  const held: TreeEntry[] = [];
  const emitDir = async function* (entry: TreeEntry): AsyncGenerator<ListedItem> {
    const key = `${dirKey}${entry.name}/`;
    if (query.delimiter === '/') {
      // Already given when the bound lies inside it (the previous page ended there).
      // A bound inside it sorts after the prefix: the page that ended there gave it already.
      if (after(key, bound)) yield { kind: 'prefix', prefix: key };
      return;
    }
    if (bound !== '' && !bound.startsWith(key) && !after(key, bound)) return;
    let empty = true;
    for await (const item of walkLevel(tree, query, `${dirPath}/${entry.name}`, key, '')) {
      empty = false;
      yield item;
    }
    // An empty directory has no key of its own in a file tree; S3 tools show it as a marker object.
    // (With the bound inside it, `empty` only means nothing after the bound, and the marker sorts before.)
    if (empty && after(key, bound)) yield { kind: 'object', key, entry };
  };
  for await (const entry of levelEntries(tree, dirPath, dirKey, fragment, bound)) {
    while (held.length > 0 && !sortsBeforeSubtree(held[held.length - 1]!.name, entry.name))
      yield* emitDir(held.pop()!);
    if (entry.dir) held.push(entry);
    else {
      const key = `${dirKey}${entry.name}`;
      if (after(key, bound)) yield { kind: 'object', key, entry };
    }
  }
  while (held.length > 0) yield* emitDir(held.pop()!);
}

/**
 * The entries of one directory that can hold keys after `bound` and start with `fragment`, in name
 * order. Resuming inside this directory (`bound` starts with `dirKey`), the walk starts at the bound's
 * own name `c`, plus the few shorter names that are prefixes of `c` followed by a character before '/'
 * (their subtrees sort after `c`): one stat each instead of listing everything before `c`.
 */
async function* levelEntries(
  tree: TreeReader,
  dirPath: string,
  dirKey: string,
  fragment: string,
  bound: string,
): AsyncGenerator<TreeEntry> {
  let start = fragment;
  if (bound.startsWith(dirKey) && bound.length > dirKey.length) {
    const rest = bound.slice(dirKey.length);
    const slash = rest.indexOf('/');
    const c = slash < 0 ? rest : rest.slice(0, slash);
    if (compareNames(c, fragment) > 0) start = c;
  } else if (bound !== '' && compareNames(bound, dirKey) > 0 && !bound.startsWith(dirKey)) {
    return; // every key here sorts before the bound
  }
  if (!start.startsWith(fragment)) return; // resuming past every name that starts with the fragment
  if (start !== '') {
    if (start !== fragment) {
      for (let i = fragment.length; i < start.length; i++) {
        if (i === 0 || start.charCodeAt(i) >= SLASH) continue;
        const shorter = await tree.stat(`${dirPath}/${start.slice(0, i)}`);
        if (shorter?.dir) yield shorter;
      }
    }
    const exact = await tree.stat(`${dirPath}/${start}`);
    if (exact !== undefined) yield exact;
  }
  for await (const entry of tree.list(dirPath, start)) {
    if (!entry.name.startsWith(fragment)) return;
    yield entry;
  }
}
