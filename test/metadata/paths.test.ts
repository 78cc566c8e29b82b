import assert from 'node:assert/strict';
import { test } from 'node:test';
import fc from 'fast-check';
import {
  compareNames,
  MAX_NAME_BYTES,
  parsePath,
  SortedNames,
  utf8Length,
} from '../../src/metadata/state/index.js';

function refused(path: string, pattern: RegExp): void {
  const parsed = parsePath(path);
  assert.equal(parsed.ok, false, `${JSON.stringify(path)} should be refused`);
  if (!parsed.ok) {
    assert.equal(parsed.code, 'INVALID_ARGUMENT');
    assert.match(parsed.message, pattern);
  }
}

test('paths: canonical forms and components', () => {
  assert.deepEqual(parsePath('/'), { ok: true, path: '/', components: [] });
  assert.deepEqual(parsePath('/a/b'), { ok: true, path: '/a/b', components: ['a', 'b'] });
  assert.deepEqual(parsePath('/a/b/'), { ok: true, path: '/a/b', components: ['a', 'b'] });
  assert.deepEqual(parsePath('/.hidden/x..y'), {
    ok: true,
    path: '/.hidden/x..y',
    components: ['.hidden', 'x..y'],
  });
  assert.deepEqual(parsePath('/日本/😀'), { ok: true, path: '/日本/😀', components: ['日本', '😀'] });
});

test('paths: every bad form is refused with INVALID_ARGUMENT naming the problem', () => {
  refused('', /empty path/);
  refused('a/b', /not absolute/);
  refused('/a/../b', /'\.\.' component/);
  refused('/a/./b', /'\.' component/);
  refused('/..', /'\.\.' component/);
  refused('/a//b', /empty component/);
  refused('//', /empty component/);
  refused('/a/b//', /empty component/);
  refused('/a\0b', /NUL/);
  refused(`/${'x'.repeat(MAX_NAME_BYTES + 1)}`, /256 bytes; names are at most 255/);
  refused(`/${'é'.repeat(128)}`, /256 bytes/); // 128 chars, 256 UTF-8 bytes
  refused(`/${'a/'.repeat(2048)}b`, /paths are at most 4096/);
  refused('/a\ud800', /lone surrogate/);
  assert.equal(parsePath(`/${'x'.repeat(MAX_NAME_BYTES)}`).ok, true);
});

test('utf8Length agrees with Buffer.byteLength for well-formed strings (property)', () => {
  fc.assert(
    fc.property(fc.string({ unit: 'grapheme', maxLength: 40 }), (s) => {
      assert.equal(utf8Length(s), Buffer.byteLength(s, 'utf8'));
    }),
  );
});

test('compareNames is UTF-8 byte order (property)', () => {
  fc.assert(
    fc.property(fc.string({ unit: 'grapheme' }), fc.string({ unit: 'grapheme' }), (a, b) => {
      const expected = Math.sign(Buffer.compare(Buffer.from(a), Buffer.from(b)));
      assert.equal(Math.sign(compareNames(a, b)), expected);
    }),
  );
});

test('SortedNames keeps order under random inserts and removes, and pages exactly (property)', () => {
  fc.assert(
    fc.property(
      fc.array(
        fc.tuple(
          fc.boolean(),
          fc.string({
            minLength: 1,
            maxLength: 5,
            unit: fc.constantFrom('a', 'b', 'c', 'd', 'é', '😀', '\uffff'),
          }),
        ),
        { minLength: 1200, maxLength: 3000 },
      ),
      fc.integer({ min: 1, max: 700 }),
      (ops, pageSize) => {
        const index = new SortedNames();
        const set = new Set<string>();
        for (const [add, name] of ops) {
          if (add && !set.has(name)) {
            set.add(name);
            index.insert(name);
          } else if (!add && set.has(name)) {
            set.delete(name);
            index.remove(name);
          }
        }
        const expected = [...set].sort(compareNames);
        assert.deepEqual([...index], expected);
        assert.equal(index.size, expected.length);
        const paged: string[] = [];
        let after = '';
        for (;;) {
          const page = index.page(after, pageSize);
          paged.push(...page);
          if (page.length < pageSize) break;
          after = page[page.length - 1]!;
        }
        assert.deepEqual(paged, expected);
      },
    ),
    { numRuns: 30 },
  );
});
