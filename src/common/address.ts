/**
 * common/address — host:port parsing with clear errors, for flags and config files.
 * Also the source address of outgoing connections (DOGFS_SOURCE_ADDRESS).
 */

import { isIP } from 'node:net';

export interface HostPort {
  readonly host: string;
  readonly port: number;
}

export class AddressError extends Error {
  override name = 'AddressError';
}

const MAX_ADDRESS_LENGTH = 300;

export function parseHostPort(text: string, what = 'address'): HostPort {
  if (text.length === 0 || text.length > MAX_ADDRESS_LENGTH) {
    throw new AddressError(`invalid ${what} '${text.slice(0, 40)}': expected host:port`);
  }
  const colon = text.lastIndexOf(':');
  const host = colon > 0 ? text.slice(0, colon) : '';
  const portText = colon > 0 ? text.slice(colon + 1) : '';
  const port = /^\d{1,5}$/.test(portText) ? Number(portText) : Number.NaN;
  if (host === '' || !(port >= 0 && port <= 65535)) {
    throw new AddressError(`invalid ${what} '${text}': expected host:port with port 0-65535`);
  }
  return { host, port };
}

export function formatHostPort(address: HostPort): string {
  return `${address.host}:${address.port}`;
}

/** "a:1,b:2" → ["a:1","b:2"], each validated. */
export function parseAddressList(text: string, what = 'address list'): string[] {
  const parts = text
    .split(',')
    .map((s) => s.trim())
    .filter((s) => s !== '');
  if (parts.length === 0) throw new AddressError(`empty ${what}`);
  for (const part of parts) parseHostPort(part, what);
  return parts;
}

let source: { readonly address: string | undefined } | undefined;

/**
 * The local address this process's outgoing connections start from: `$DOGFS_SOURCE_ADDRESS` (an IP
 * literal), else the kernel's choice (127.0.0.1 on loopback). `dogfs up --distinct-hosts` gives each
 * member its own loopback address to listen on and to speak from, so the network between two members can
 * be cut by their addresses (ip rules in a network namespace: test/partition). Read once; a bad value is
 * an AddressError at the first connection (servers check it at start).
 */
export function sourceAddress(): string | undefined {
  if (source === undefined) {
    const text = process.env['DOGFS_SOURCE_ADDRESS'] ?? '';
    if (text !== '' && isIP(text) === 0)
      throw new AddressError(`DOGFS_SOURCE_ADDRESS '${text.slice(0, 60)}' is not an IP address`);
    source = { address: text === '' ? undefined : text };
  }
  return source.address;
}

/** `options` for net.connect, with the source address when one is set. */
export function fromSourceAddress<T extends object>(options: T): T & { localAddress?: string } {
  const address = sourceAddress();
  return address === undefined ? options : { ...options, localAddress: address };
}
