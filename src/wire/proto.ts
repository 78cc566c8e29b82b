/**
 * wire/proto — encoding and decoding of the messages defined in proto/, through the schema that
 * scripts/gen-proto.mjs extracted (so nothing parses .proto files at run time).
 */
import protobuf from 'protobufjs/light.js';
import { descriptor } from './gen/descriptor.js';
import type { MessageTypes } from './gen/types.js';

// 64-bit integers decode as plain numbers rather than Long objects: every 64-bit value DogFS puts on
// the wire (ids, offsets, lengths, terms, indexes) is kept below 2^53 and checked where it is produced.
protobuf.util.Long = undefined as unknown as typeof protobuf.util.Long;
protobuf.configure();

const root = protobuf.Root.fromJSON(descriptor as protobuf.INamespace);
const typeCache = new Map<string, protobuf.Type>();

export type MessageName = keyof MessageTypes;

/** A message under construction: every field optional, nested messages too. */
export type Init<T> = T extends Uint8Array
  ? T
  : T extends (infer U)[]
    ? Init<U>[]
    : T extends object
      ? { [K in keyof T]?: Init<NonNullable<T[K]>> | null }
      : T;

function typeOf(name: MessageName): protobuf.Type {
  let type = typeCache.get(name);
  if (type === undefined) {
    type = root.lookupType(name);
    typeCache.set(name, type);
  }
  return type;
}

export function encodeMessage<N extends MessageName>(name: N, message: Init<MessageTypes[N]>): Uint8Array {
  return typeOf(name)
    .encode(message as Record<string, unknown>)
    .finish();
}

/** Throws protobufjs's error on malformed input; callers at a boundary turn it into INVALID_ARGUMENT. */
export function decodeMessage<N extends MessageName>(name: N, bytes: Uint8Array): MessageTypes[N] {
  return typeOf(name).decode(bytes) as unknown as MessageTypes[N];
}

export const MAX_SAFE_WIRE_INTEGER = Number.MAX_SAFE_INTEGER;
