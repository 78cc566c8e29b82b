/**
 * wire — the protocol: messages and services generated from proto/ (the single source of truth), the
 * RPC layer (deadlines, error codes, size limits, retries of idempotent calls) and the error codes.
 * Owns: how bytes on the wire map to typed values. May import: common.
 */
export * from './errors.js';
export * from './gen/types.js';
export * from './proto.js';
export * from './rpc.js';
