/**
 * common/log — structured logging: one JSON object per line on stderr, filtered by level.
 * May import: nothing outside node builtins.
 */

export const LOG_LEVELS = ['debug', 'info', 'warn', 'error'] as const;
export type LogLevel = (typeof LOG_LEVELS)[number];

export function isLogLevel(value: string): value is LogLevel {
  return (LOG_LEVELS as readonly string[]).includes(value);
}

export type LogFields = Record<string, unknown>;

export interface Logger {
  debug(msg: string, fields?: LogFields): void;
  info(msg: string, fields?: LogFields): void;
  warn(msg: string, fields?: LogFields): void;
  error(msg: string, fields?: LogFields): void;
  child(fields: LogFields): Logger;
}

export type LogSink = (line: string) => void;

const stderrSink: LogSink = (line) => {
  process.stderr.write(line);
};

function serializeError(value: unknown): unknown {
  if (value instanceof Error) {
    const code = (value as { code?: unknown }).code;
    return { name: value.name, message: value.message, ...(code === undefined ? {} : { code }) };
  }
  return value;
}

export function createLogger(level: LogLevel, base: LogFields = {}, sink: LogSink = stderrSink): Logger {
  const threshold = LOG_LEVELS.indexOf(level);
  const emit = (lvl: LogLevel, msg: string, fields?: LogFields) => {
    if (LOG_LEVELS.indexOf(lvl) < threshold) return;
    const record: LogFields = { ts: new Date().toISOString(), level: lvl, msg, ...base };
    if (fields) for (const [k, v] of Object.entries(fields)) record[k] = serializeError(v);
    sink(`${JSON.stringify(record)}\n`);
  };
  return {
    debug: (msg, fields) => emit('debug', msg, fields),
    info: (msg, fields) => emit('info', msg, fields),
    warn: (msg, fields) => emit('warn', msg, fields),
    error: (msg, fields) => emit('error', msg, fields),
    child: (fields) => createLogger(level, { ...base, ...fields }, sink),
  };
}

/** Warnings of one kind are logged at most this often: a flood of refusals is not a flood of lines. */
const THROTTLED_WARNING_INTERVAL_MS = 10_000;

/**
 * A warning that a flood (of connections, of failing disk calls) could repeat without end: logged at
 * most once per 10 s, each line saying how many went unlogged since the last (count them elsewhere).
 */
export class ThrottledWarning {
  private loggedMs = Number.NEGATIVE_INFINITY;
  private unlogged = 0;

  constructor(
    private readonly log: Logger,
    private readonly msg: string,
  ) {}

  warn(fields: LogFields): void {
    const now = Date.now();
    if (now - this.loggedMs < THROTTLED_WARNING_INTERVAL_MS) {
      this.unlogged++;
      return;
    }
    this.log.warn(this.msg, { ...fields, unloggedSinceLast: this.unlogged });
    this.loggedMs = now;
    this.unlogged = 0;
  }
}
