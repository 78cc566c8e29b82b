/**
 * ListObjects over a file tree: the walk's output against a model built the S3 way (every key, sorted
 * by UTF-8 bytes, grouped at the delimiter), on random trees whose names hold the characters that sort
 * around '/' — and resumed after every item, as a paging client does.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { compareNames } from '../../src/common/code-point-order.js';
import { Prng } from '../../src/consensus/prng.js';
import { type ListedItem, listKeys, type TreeEntry, type TreeReader } from '../../src/s3/listing.js';

interface Node {
  readonly dir: boolean;
  readonly children: Map<string, Node>;
  readonly id: number;
}

class MemoryTree implements TreeReader {
  readonly root: Node = { dir: true, children: new Map(), id: 1 };
  listed = 0;
  private nextId = 2;

  add(path: string, dir: boolean): void {
    const parts = path.split('/').filter((p) => p !== '');
    let node = this.root;
    for (let i = 0; i < parts.length; i++) {
      const last = i === parts.length - 1;
      let child = node.children.get(parts[i]!);
      if (child === undefined) {
        child = { dir: !last || dir, children: new Map(), id: this.nextId++ };
        node.children.set(parts[i]!, child);
      }
      if (!child.dir) return; // a file holds the name: this path cannot exist
      node = child;
    }
  }

  private find(path: string): Node | undefined {
    let node: Node | undefined = this.root;
    for (const part of path.split('/').filter((p) => p !== '')) {
      node = node?.dir ? node.children.get(part) : undefined;
    }
    return node;
  }

  private entry(name: string, node: Node): TreeEntry {
    return { name, dir: node.dir, size: node.dir ? 0 : name.length, mtimeMs: 0, id: node.id };
  }

  async stat(path: string): Promise<TreeEntry | undefined> {
    const node = this.find(path);
    return node === undefined ? undefined : this.entry(path.slice(path.lastIndexOf('/') + 1), node);
  }

  async *list(path: string, startAfter: string): AsyncIterable<TreeEntry> {
    const node = this.find(path);
    if (node === undefined || !node.dir) return;
    const names = [...node.children.keys()].filter((n) => compareNames(n, startAfter) > 0).sort(compareNames);
    for (const name of names) {
      this.listed++;
      yield this.entry(name, node.children.get(name)!);
    }
  }

  /** Every file key, and a marker key for every directory (bucket excluded). */
  keys(): { files: string[]; dirs: string[]; emptyDirs: string[] } {
    const out = { files: [] as string[], dirs: [] as string[], emptyDirs: [] as string[] };
    const walk = (node: Node, prefix: string) => {
      for (const [name, child] of node.children) {
        if (!child.dir) out.files.push(prefix + name);
        else {
          out.dirs.push(`${prefix}${name}/`);
          if (child.children.size === 0) out.emptyDirs.push(`${prefix}${name}/`);
          walk(child, `${prefix}${name}/`);
        }
      }
    };
    walk(this.find('/bucket')!, '');
    return out;
  }
}

const byBytes = (a: string, b: string) => Buffer.compare(Buffer.from(a), Buffer.from(b));

function itemKey(item: ListedItem): string {
  return item.kind === 'object' ? item.key : item.prefix;
}

/** What S3 would list for these keys: in byte order, after `startAfter`, grouped at '/' if asked. */
function model(tree: MemoryTree, prefix: string, delimiter: '' | '/', startAfter: string): string[] {
  // The keys S3 would hold: every file, and a marker `dir/` for every empty directory.
  const { files, emptyDirs } = tree.keys();
  const keys = [...files, ...emptyDirs].filter((k) => k.startsWith(prefix));
  const items = new Set<string>();
  for (const key of keys) {
    const rest = key.slice(prefix.length);
    const slash = delimiter === '' ? -1 : rest.indexOf('/');
    items.add(slash >= 0 ? prefix + rest.slice(0, slash + 1) : key);
  }
  return [...items].filter((k) => startAfter === '' || byBytes(k, startAfter) > 0).sort(byBytes);
}

async function walk(
  tree: MemoryTree,
  prefix: string,
  delimiter: '' | '/',
  startAfter: string,
): Promise<string[]> {
  const out: string[] = [];
  for await (const item of listKeys(tree, { bucketPath: '/bucket', prefix, delimiter, startAfter }))
    out.push(itemKey(item));
  return out;
}

const ALPHABET = ['a', 'b', '-', '.', ' ', '0', '~', 'é', '\uffff', '\u{1f600}'];

function randomTree(prng: Prng): MemoryTree {
  const tree = new MemoryTree();
  tree.add('/bucket', true);
  const name = () => {
    let n = '';
    const length = 1 + prng.int(0, 3 - 1);
    for (let i = 0; i < length; i++) n += ALPHABET[prng.int(0, ALPHABET.length - 1)];
    // '.' and '..' are no file's name (and no key's component): a DogFS tree cannot hold them.
    return n === '.' || n === '..' ? `${n}x` : n;
  };
  for (let i = 0; i < 40; i++) {
    const depth = 1 + prng.int(0, 3 - 1);
    const parts: string[] = [];
    for (let d = 0; d < depth; d++) parts.push(name());
    tree.add(`/bucket/${parts.join('/')}`, prng.int(0, 6 - 1) === 0);
  }
  return tree;
}

test('listings match the S3 model on random trees, from the start and resumed after every item', async () => {
  for (let seed = 1; seed <= 60; seed++) {
    const prng = new Prng(seed);
    const tree = randomTree(prng);
    const { files, emptyDirs } = tree.keys();
    const prefixes = [
      '',
      'a',
      'a-',
      `${files[0]!.slice(0, 2)}`,
      files[0]!.includes('/') ? files[0]!.slice(0, files[0]!.indexOf('/') + 1) : 'b/',
      emptyDirs[0] ?? 'a/',
    ];
    for (const prefix of prefixes) {
      for (const delimiter of ['', '/'] as const) {
        const all = await walk(tree, prefix, delimiter, '');
        assert.deepEqual(
          all,
          model(tree, prefix, delimiter, ''),
          `seed ${seed} prefix ${JSON.stringify(prefix)} delimiter '${delimiter}'`,
        );
        for (let i = 0; i < all.length; i++) {
          assert.deepEqual(
            await walk(tree, prefix, delimiter, all[i]!),
            all.slice(i + 1),
            `seed ${seed}: resumed after ${JSON.stringify(all[i])}`,
          );
        }
        // Cut by code points: a request's bound is decoded from UTF-8 and cannot hold half a surrogate pair.
        const bound = Array.from(files[prng.int(0, files.length - 1)]!)
          .slice(0, 1 + prng.int(0, 4 - 1))
          .join('');
        assert.deepEqual(
          await walk(tree, prefix, delimiter, bound),
          model(tree, prefix, delimiter, bound),
          `seed ${seed} prefix ${JSON.stringify(prefix)} delimiter ${delimiter} after ${JSON.stringify(bound)}`,
        );
      }
    }
  }
});

test('resuming deep in a large directory lists from the resume point, not from the start', async () => {
  const tree = new MemoryTree();
  tree.add('/bucket', true);
  for (let i = 0; i < 2000; i++) tree.add(`/bucket/d/f${String(i).padStart(5, '0')}`, false);
  tree.listed = 0;
  const rest = await walk(tree, '', '', 'd/f01500');
  assert.equal(rest.length, 499);
  assert.ok(tree.listed < 600, `listed ${tree.listed} entries to resume`);
});

test('a prefix through a file or a missing directory lists nothing', async () => {
  const tree = new MemoryTree();
  tree.add('/bucket/a/b', false);
  assert.deepEqual(await walk(tree, 'a/b/', '', ''), []);
  assert.deepEqual(await walk(tree, 'x/', '/', ''), []);
  assert.deepEqual(await walk(tree, 'a/', '/', ''), ['a/b']);
});

test("a prefix with an empty, '.' or '..' component lists nothing: no key can hold one", async () => {
  const tree = new MemoryTree();
  tree.add('/bucket/a/b', false);
  for (const prefix of ['a//', '/a/', 'a/./', './a/', 'a/../a/', '../', 'a//b'])
    for (const delimiter of ['', '/'] as const)
      assert.deepEqual(await walk(tree, prefix, delimiter, ''), [], `${prefix} '${delimiter}'`);
});
