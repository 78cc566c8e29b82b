/** The server-wide count of running handlers (src/wire/handler-slots.ts) on its own. */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { AssertionError } from '../../src/common/assert.js';
import { DogfsError } from '../../src/wire/errors.js';
import { HandlerSlot, HandlerSlots } from '../../src/wire/handler-slots.js';

function taken(result: HandlerSlot | DogfsError): HandlerSlot {
  assert.ok(result instanceof HandlerSlot, result instanceof DogfsError ? result.message : 'no slot');
  return result;
}

test('slots are refused at the limit, given back once each, and a second release is a bug', () => {
  const slots = new HandlerSlots(2);
  const a = taken(slots.take('/a'));
  const b = taken(slots.take('/b'));
  const refused = slots.take('/c');
  assert.ok(refused instanceof DogfsError);
  assert.equal(refused.code, 'RESOURCE_EXHAUSTED');
  assert.match(refused.message, /^\/c: server busy: 2 handlers already running/);
  a.release();
  assert.equal(slots.count, 1);
  assert.throws(() => a.release(), AssertionError, 'released twice');
  assert.equal(slots.count, 1, 'a second release does not give back a slot it does not hold');
  b.release();
  assert.equal(slots.count, 0);
  taken(slots.take('/d')).release();
  assert.throws(() => new HandlerSlots(0), AssertionError);
});

test('idle() waits for the last running handler; once closed, every take is UNAVAILABLE', async () => {
  const slots = new HandlerSlots(4);
  await slots.idle(); // none running: at once
  const a = taken(slots.take('/a'));
  const b = taken(slots.take('/b'));
  let idle = false;
  const waiting = slots.idle().then(() => {
    idle = true;
  });
  slots.close();
  const refused = slots.take('/late');
  assert.ok(refused instanceof DogfsError);
  assert.equal(refused.code, 'UNAVAILABLE');
  assert.match(refused.message, /shutting down/);
  a.release();
  await Promise.resolve();
  assert.equal(idle, false, 'one handler still runs');
  b.release();
  await waiting;
  assert.equal(idle, true);
});
