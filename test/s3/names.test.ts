/**
 * The edges of the gateway: which S3 names a file tree can hold (and the clear refusal of the rest),
 * the XML it reads from requests, and byte ranges.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { S3Error } from '../../src/s3/errors.js';
import { parseRange } from '../../src/s3/gateway.js';
import { bucketNameProblem, keyPath } from '../../src/s3/keys.js';
import { childrenNamed, childText, el, parseXml, xmlDocument } from '../../src/s3/xml.js';

function refused(fn: () => unknown, code: string, message?: RegExp): void {
  assert.throws(
    fn,
    (error: unknown) =>
      error instanceof S3Error && error.code === code && (message?.test(error.message) ?? true),
  );
}

test('keys map to paths under their bucket; keys no file tree can hold are refused, not rewritten', () => {
  assert.deepEqual(keyPath('b', 'x/y.txt'), { path: '/b/x/y.txt', marker: false });
  assert.deepEqual(keyPath('b', 'x/'), { path: '/b/x', marker: true });
  assert.deepEqual(keyPath('b', 'ü name'), { path: '/b/ü name', marker: false });
  refused(() => keyPath('b', ''), 'InvalidArgument');
  refused(() => keyPath('b', '/'), 'InvalidArgument');
  refused(() => keyPath('b', 'a//b'), 'InvalidArgument', /empty component/);
  refused(() => keyPath('b', '/lead'), 'InvalidArgument', /empty component/);
  refused(() => keyPath('b', 'a/../b'), 'InvalidArgument', /'\.\.'/);
  refused(() => keyPath('b', './a'), 'InvalidArgument', /'\.'/);
  refused(() => keyPath('b', 'a\0b'), 'InvalidArgument', /NUL/);
  refused(() => keyPath('b', `${'n'.repeat(256)}/x`), 'KeyTooLongError', /256 bytes/);
  refused(() => keyPath('b', 'k/'.repeat(513)), 'KeyTooLongError', /1024/);
  assert.equal(keyPath('b', `${'n'.repeat(255)}/x`).marker, false);
});

test("bucket names follow S3's rules", () => {
  for (const good of ['abc', 'my-bucket.2', 'a'.repeat(63)])
    assert.equal(bucketNameProblem(good), undefined, good);
  for (const bad of [
    'ab',
    'a'.repeat(64),
    'Upper',
    '-lead',
    'trail-',
    'a..b',
    '192.168.1.1',
    'under_score',
    '.s3-uploads',
  ])
    assert.notEqual(bucketNameProblem(bad), undefined, bad);
});

test('request XML: elements, entities, CDATA and namespaces read; malformed or oversized refused', () => {
  const root = parseXml(
    '<?xml version="1.0"?><!-- c --><Delete xmlns="http://s3.amazonaws.com/doc/2006-03-01/"><Quiet>true</Quiet>' +
      '<Object><Key>a&amp;b &lt;&#x263A;&#65;&gt;</Key></Object><Object><Key><![CDATA[x<y]]></Key></Object></Delete>',
  );
  assert.equal(root.name, 'Delete');
  assert.equal(childText(root, 'Quiet'), 'true');
  assert.deepEqual(
    childrenNamed(root, 'Object').map((o) => childText(o, 'Key')),
    ['a&b <☺A>', 'x<y'],
  );
  for (const bad of [
    '<Delete><Object></Delete>',
    '<Delete>',
    '<a/><b/>',
    'text<a/>',
    '<a>&bogus;</a>',
    '<a>&#xD800;</a>',
    '<!DOCTYPE a [<!ENTITY x "y">]><a>&x;</a>',
    `${'<a>'.repeat(20)}${'</a>'.repeat(20)}`,
    `<a>${'<b/>'.repeat(20_001)}</a>`,
  ])
    refused(() => parseXml(bad), 'MalformedXML');
});

test('responses escape what they carry', () => {
  assert.equal(
    xmlDocument(el('R', el('Key', 'a<b>&"c\''), el('N', 3), [el('T', true), undefined])),
    '<?xml version="1.0" encoding="UTF-8"?>\n<R xmlns="http://s3.amazonaws.com/doc/2006-03-01/"><Key>a&lt;b&gt;&amp;&quot;c&apos;</Key><N>3</N><T>true</T></R>',
  );
});

test('byte ranges: first-last, open-ended, suffix; unsatisfiable refused; others mean the whole object', () => {
  assert.deepEqual(parseRange('bytes=0-9', 100), { start: 0, end: 9 });
  assert.deepEqual(parseRange('bytes=90-', 100), { start: 90, end: 99 });
  assert.deepEqual(parseRange('bytes=95-200', 100), { start: 95, end: 99 });
  assert.deepEqual(parseRange('bytes=-10', 100), { start: 90, end: 99 });
  assert.deepEqual(parseRange('bytes=-500', 100), { start: 0, end: 99 });
  assert.equal(parseRange(undefined, 100), undefined);
  assert.equal(parseRange('bytes=0-1,5-6', 100), undefined);
  assert.equal(parseRange('items=0-1', 100), undefined);
  refused(() => parseRange('bytes=100-', 100), 'InvalidRange');
  refused(() => parseRange('bytes=0-0', 0), 'InvalidRange');
  refused(() => parseRange('bytes=-0', 100), 'InvalidRange');
});
