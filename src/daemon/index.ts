/**
 * daemon — the lifecycle shared by every DogFS server process: data-directory lock and identity,
 * JSON logging, the gRPC server with Health, readiness reporting to a supervisor, clean shutdown.
 * Owns: nothing that is specific to a role. May import: wire, common.
 */
export * from './daemon.js';
export * from './listen.js';
export * from './metrics.js';
