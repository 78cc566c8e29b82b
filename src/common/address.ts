/**
 * common/address — host:port parsing with clear errors, for flags and config files.
 */

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
