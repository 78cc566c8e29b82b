/**
 * metadata/state/sorted-names — the sorted index of one directory's names, so a page of a listing costs
 * O(log n + page) rather than sorting or copying the whole directory. It is a list of sorted chunks of at
 * most MAX_CHUNK names (the "sorted list of lists" shape): inserting moves at most MAX_CHUNK pointers,
 * and an empty chunk is dropped. Names are the same string objects as the directory map's keys, so the
 * index costs one pointer per entry plus a little per chunk.
 *
 * Order is Unicode code-point order, which is UTF-8 byte order: what clients in any language (and S3
 * listings) expect, unlike JavaScript's `<` on UTF-16 code units.
 */
import { assert } from '../../common/assert.js';
import { compareNames } from '../../common/code-point-order.js';

const MAX_CHUNK = 512;

export { compareNames } from '../../common/code-point-order.js';

export class SortedNames {
  private chunks: string[][] = [];
  private count = 0;

  get size(): number {
    return this.count;
  }

  /** Index of the first chunk whose last name is >= `name` (chunks.length when none). */
  private chunkFor(name: string): number {
    let lo = 0;
    let hi = this.chunks.length;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      const chunk = this.chunks[mid]!;
      if (compareNames(chunk[chunk.length - 1]!, name) < 0) lo = mid + 1;
      else hi = mid;
    }
    return lo;
  }

  /** Position of the first name in `chunk` that is > `name` (strictly after) or >= `name`. */
  private static position(chunk: readonly string[], name: string, strictlyAfter: boolean): number {
    let lo = 0;
    let hi = chunk.length;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      const c = compareNames(chunk[mid]!, name);
      if (c < 0 || (strictlyAfter && c === 0)) lo = mid + 1;
      else hi = mid;
    }
    return lo;
  }

  insert(name: string): void {
    if (this.chunks.length === 0) {
      this.chunks.push([name]);
      this.count = 1;
      return;
    }
    let ci = this.chunkFor(name);
    if (ci === this.chunks.length) ci--;
    const chunk = this.chunks[ci]!;
    const at = SortedNames.position(chunk, name, false);
    assert(chunk[at] !== name, 'sorted index: name inserted twice');
    chunk.splice(at, 0, name);
    this.count++;
    if (chunk.length > MAX_CHUNK) this.chunks.splice(ci + 1, 0, chunk.splice(MAX_CHUNK >>> 1));
  }

  remove(name: string): void {
    const ci = this.chunkFor(name);
    const chunk = this.chunks[ci];
    assert(chunk !== undefined, 'sorted index: removing a missing name');
    const at = SortedNames.position(chunk, name, false);
    assert(chunk[at] === name, 'sorted index: removing a missing name');
    chunk.splice(at, 1);
    this.count--;
    if (chunk.length === 0) this.chunks.splice(ci, 1);
  }

  /** Up to `limit` names strictly after `startAfter` ('' = from the first), in order. */
  page(startAfter: string, limit: number): string[] {
    const out: string[] = [];
    let ci = startAfter === '' ? 0 : this.chunkFor(startAfter);
    let at =
      ci < this.chunks.length && startAfter !== ''
        ? SortedNames.position(this.chunks[ci]!, startAfter, true)
        : 0;
    while (out.length < limit && ci < this.chunks.length) {
      const chunk = this.chunks[ci]!;
      while (out.length < limit && at < chunk.length) out.push(chunk[at++]!);
      ci++;
      at = 0;
    }
    return out;
  }

  /** True when some name sorts after `name`. */
  hasAfter(name: string): boolean {
    if (this.count === 0) return false;
    const last = this.chunks[this.chunks.length - 1]!;
    return compareNames(last[last.length - 1]!, name) > 0;
  }

  *[Symbol.iterator](): IterableIterator<string> {
    for (const chunk of this.chunks) yield* chunk;
  }
}
