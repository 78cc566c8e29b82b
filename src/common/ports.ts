/**
 * common/ports — loopback port probing for supervisors and benchmarks that must choose ports before
 * starting processes which need to know each other's addresses.
 */
import { readFileSync } from 'node:fs';
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
 * listener on it: one that chose the same port, or one that listens on port 0 — which freePort's
 * choice below the ephemeral range rules out. A node restarted after SIGKILL gets its port back.
 */
export function randomLoopbackHost(random: () => number = Math.random): string {
  const octet = (low: number, high: number): number => low + Math.floor(random() * (high - low + 1));
  return `127.${octet(1, 254)}.${octet(0, 255)}.${octet(1, 254)}`;
}

/** Ports handed out by freePort in this process, so two calls never return the same one (bounded). */
const handedOut = new Set<number>();
const MAX_REMEMBERED_PORTS = 4096;
/** Where freePort looks: above the well-known and registered services most machines run. */
const CHOSEN_PORTS_FROM = 20_000;
const FREE_PORT_ATTEMPTS = 64;

/** The first port of the kernel's ephemeral range (what `listen(0)` and outgoing connections take). */
export function ephemeralRangeStart(): number {
  try {
    const first = Number(
      readFileSync('/proc/sys/net/ipv4/ip_local_port_range', 'utf8').trim().split(/\s+/)[0],
    );
    if (Number.isInteger(first) && first > 1024 && first <= 65535) return first;
  } catch {
    // Not Linux, or no /proc: the usual default.
  }
  return 32_768;
}

/**
 * A port free on `host` right now, for a process that will bind it later (its peers must know it
 * first). Chosen below the kernel's ephemeral range: a process that listens on port 0 (a Raft frame
 * server, a test's server) or makes an outgoing connection gets its port from that range, so between
 * this check and the bind only another process choosing ports the same way can take it — and in this
 * process no port is handed out twice. Falls back to an ephemeral port if none below is free.
 */
export async function freePort(host = '127.0.0.1'): Promise<number> {
  // Ports handed out that long ago are bound by now, or were given up.
  if (handedOut.size >= MAX_REMEMBERED_PORTS) handedOut.clear();
  const below = ephemeralRangeStart();
  if (below - CHOSEN_PORTS_FROM >= FREE_PORT_ATTEMPTS) {
    for (let attempt = 0; attempt < FREE_PORT_ATTEMPTS; attempt++) {
      const port = CHOSEN_PORTS_FROM + Math.floor(Math.random() * (below - CHOSEN_PORTS_FROM));
      if (handedOut.has(port)) continue;
      if (await portIsFree(port, host)) {
        handedOut.add(port);
        return port;
      }
    }
  }
  const port = await ephemeralPort(host);
  handedOut.add(port);
  return port;
}

function ephemeralPort(host: string): Promise<number> {
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
