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

test("a crowd filling the slots does not shut out the cluster's control calls: they have a reserve", () => {
  const slots = new HandlerSlots(2);
  const crowd = [
    taken(slots.take('/dogfs.v1.Metadata/Stat')),
    taken(slots.take('/dogfs.v1.Metadata/Create')),
  ];
  assert.ok(slots.take('/dogfs.v1.Metadata/Stat') instanceof DogfsError, 'a client call is refused');
  // The reserve is at least 16 control calls past the limit, then they are refused too.
  const control = Array.from({ length: 16 }, () => taken(slots.take('/dogfs.v1.Metadata/Heartbeat')));
  const over = slots.take('/dogfs.v1.Metadata/Heartbeat');
  assert.ok(over instanceof DogfsError && over.code === 'RESOURCE_EXHAUSTED');
  for (const slot of [...crowd, ...control]) slot.release();
  assert.equal(slots.count, 0);
});
