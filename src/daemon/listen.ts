/**
 * daemon/listen — starts a server (a chunk server's data-transfer one, a metrics endpoint) listening, with a clear
 * UNAVAILABLE error naming what could not listen where.
 */
import type { Server } from 'node:net';
import { assert } from '../common/assert.js';
import { DogfsError } from '../wire/errors.js';

/** Listens on host:port (0: any free port); resolves with the port. `what` names the server in errors. */
export function listenOn(server: Server, host: string, port: number, what: string): Promise<number> {
  return new Promise((resolve, reject) => {
    const onError = (error: Error) => {
      const inUse = (error as NodeJS.ErrnoException).code === 'EADDRINUSE';
      reject(
        new DogfsError(
          'UNAVAILABLE',
          `cannot listen on ${host}:${port} (${what}): ${inUse ? 'address already in use' : error.message}`,
        ),
      );
    };
    server.once('error', onError);
    server.listen(port, host, () => {
      server.off('error', onError);
      const address = server.address();
      assert(typeof address === 'object' && address !== null);
      resolve(address.port);
    });
  });
}
