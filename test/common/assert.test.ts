import assert from 'node:assert/strict';
import { test } from 'node:test';
import { AssertionError, assert as invariant } from '../../src/common/assert.js';

test('assert throws AssertionError with the message when the invariant is false', () => {
  assert.throws(
    () => invariant(false, 'term went backwards'),
    (e: unknown) => {
      return e instanceof AssertionError && e.message === 'term went backwards';
    },
  );
  assert.doesNotThrow(() => invariant(true));
});
