/**
 * common/ports — loopback port probing for supervisors and benchmarks that must choose ports before
 * starting processes which need to know each other's addresses.
 */
import { createServer } from 'node:net';

export function portIsFree(port: number, host = '127.0.0.1'): Promise<boolean> {
  return new Promise((resolve) => {
    const server = createServer();
    server.once('error', () => resolve(false));
    server.listen(port, host, () => server.close(() => resolve(true)));
  });
}

/**
 * A random loopback address other than 127.0.0.1, for a group of processes that must choose their ports
 * before they start. Outgoing connections on this machine take their ephemeral ports on 127.0.0.1 (the
 * loopback route's source address), so a port chosen on this address can only be taken by another
 * listener that chose the same address and port: the check-then-bind race that made a test's node find
 * its port in use is gone, and a node restarted after SIGKILL gets its port back.
 */
export function randomLoopbackHost(random: () => number = Math.random): string {
  const octet = (low: number, high: number): number => low + Math.floor(random() * (high - low + 1));
  return `127.${octet(1, 254)}.${octet(0, 255)}.${octet(1, 254)}`;
}

/** A port the kernel considers free right now (a later bind can still race with another process). */
export function freePort(host = '127.0.0.1'): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.once('error', reject);
    server.listen(0, host, () => {
      const address = server.address();
      const port = typeof address === 'object' && address !== null ? address.port : 0;
      server.close(() => resolve(port));
    });
  });
}
