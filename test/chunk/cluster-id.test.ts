/**
 * chunk/cluster-id on its own: an id is recorded once and durably, another one is refused, a malformed one
 * too, a disk that refuses the file leaves the server without one (and it can try again), and a malformed
 * file stops start-up.
 */
import assert from 'node:assert/strict';
import { mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, test } from 'node:test';
import { ClusterMembership } from '../../src/chunk/cluster-id.js';
import { tempDir } from '../helpers/index.js';

const dir = tempDir('dogfs-cluster-id-');
after(() => dir.remove());
const ID = '6f1c2b7e-0d3a-4f5e-9a8b-112233445566';

test('cluster id: recorded once; another or a malformed one refused; a failed write leaves none', async () => {
  const root = join(dir.path, 'a');
  mkdirSync(root);
  const membership = await ClusterMembership.open(root);
  assert.equal(membership.clusterId, '');
  await assert.rejects(membership.adopt('Not An Id!'), { code: 'INVALID_ARGUMENT' });
  // The disk refuses the file (its temp name is taken by a directory): nothing recorded, and no id held.
  mkdirSync(join(root, 'cluster-id.tmp'));
  await assert.rejects(membership.adopt(ID));
  assert.equal(membership.clusterId, '');
  rmSync(join(root, 'cluster-id.tmp'), { recursive: true });
  await membership.adopt(ID);
  await membership.adopt(ID); // the same again: nothing to do
  assert.equal(readFileSync(join(root, 'cluster-id'), 'utf8'), `${ID}\n`);
  await assert.rejects(membership.adopt('aaaaaaaa-0000-4000-8000-000000000000'), {
    code: 'FAILED_PRECONDITION',
  });
  assert.equal((await ClusterMembership.open(root)).clusterId, ID);
});

test('cluster id: a malformed file stops start-up', async () => {
  const root = join(dir.path, 'b');
  mkdirSync(root);
  for (const text of ['', 'UPPER-CASE-ID', 'x'.repeat(65), 'short']) {
    writeFileSync(join(root, 'cluster-id'), text);
    await assert.rejects(ClusterMembership.open(root), /does not hold a cluster id/);
  }
});
