/**
 * common — small things every part uses: assertions, structured logging, addresses, data-directory
 * locks, durable small files, cluster ids, EC policy names, the version. Owns nothing with state. May import: nothing but node builtins.
 */
export * from './address.js';
export * from './assert.js';
export * from './cluster-id.js';
export * from './code-point-order.js';
export * from './dirlock.js';
export * from './durable-file.js';
export * from './ec-policy.js';
export * from './log.js';
export * from './ports.js';
export * from './version.js';
