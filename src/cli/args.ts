/**
 * cli/args — flag parsing for every subcommand on node:util's parseArgs (strict: unknown flags are
 * errors), with environment-variable fallbacks, turning every mistake into a one-line UsageError.
 */
import { parseArgs } from 'node:util';
import { AddressError, type HostPort, parseHostPort } from '../common/address.js';
import { isLogLevel, type LogLevel } from '../common/log.js';

/** A user error: printed as one line, exit status 2. */
export class UsageError extends Error {
  override name = 'UsageError';
}

export interface FlagSpec {
  type: 'string' | 'boolean';
  short?: string;
  /** Environment variable read when the flag is absent. */
  env?: string;
}

export type FlagSpecs = Record<string, FlagSpec>;
export type FlagValues<S extends FlagSpecs> = {
  [K in keyof S]: S[K]['type'] extends 'boolean' ? boolean : string | undefined;
};

export interface Parsed<S extends FlagSpecs> {
  flags: FlagValues<S>;
  positionals: string[];
}

export function parseFlags<S extends FlagSpecs>(
  argv: string[],
  specs: S,
  env: NodeJS.ProcessEnv = process.env,
): Parsed<S> {
  const options: Record<string, { type: 'string' | 'boolean'; short?: string }> = {};
  for (const [name, spec] of Object.entries(specs)) {
    options[name] = spec.short === undefined ? { type: spec.type } : { type: spec.type, short: spec.short };
  }
  let parsed: ReturnType<typeof parseArgs>;
  try {
    parsed = parseArgs({ args: argv, options, strict: true, allowPositionals: true });
  } catch (error) {
    const message = (error as Error).message.split('\n')[0] ?? 'invalid arguments';
    throw new UsageError(message.replace(/\. To specify a positional argument.*$/, ''));
  }
  const flags: Record<string, string | boolean | undefined> = {};
  for (const [name, spec] of Object.entries(specs)) {
    const value = parsed.values[name];
    if (spec.type === 'boolean') {
      flags[name] =
        value === true || (value === undefined && spec.env !== undefined && isTruthy(env[spec.env]));
    } else {
      const fromEnv = spec.env === undefined ? undefined : env[spec.env];
      flags[name] = typeof value === 'string' ? value : fromEnv === '' ? undefined : fromEnv;
    }
  }
  return { flags: flags as FlagValues<S>, positionals: parsed.positionals };
}

function isTruthy(value: string | undefined): boolean {
  return value !== undefined && /^(1|true|yes)$/i.test(value);
}

export function requireFlag(value: string | undefined, flag: string, env?: string): string {
  if (value === undefined || value === '') {
    throw new UsageError(`missing --${flag}${env === undefined ? '' : ` (or $${env})`}`);
  }
  return value;
}

export function parseIntFlag(
  value: string | undefined,
  flag: string,
  fallback: number,
  min: number,
  max: number,
): number {
  if (value === undefined) return fallback;
  if (!/^\d+$/.test(value)) throw new UsageError(`--${flag} must be a whole number, got '${value}'`);
  const n = Number(value);
  if (n < min || n > max) throw new UsageError(`--${flag} must be between ${min} and ${max}, got ${n}`);
  return n;
}

export function parseListenFlag(value: string | undefined, flag: string, fallback: string): HostPort {
  try {
    return parseHostPort(value ?? fallback, `--${flag}`);
  } catch (error) {
    if (error instanceof AddressError) throw new UsageError(error.message);
    throw error;
  }
}

export function parseLogLevel(value: string | undefined): LogLevel {
  const level = value ?? 'info';
  if (!isLogLevel(level))
    throw new UsageError(`--log-level must be debug, info, warn or error, got '${level}'`);
  return level;
}

export function noPositionals(positionals: string[]): void {
  if (positionals.length > 0) throw new UsageError(`unexpected argument '${positionals[0]}'`);
}
