/**
 * cli/stdout — what a one-shot command (help, version, the file commands) does when its stdout fails.
 * Its reader gone (`dogfs get big - | head -c 10`, EPIPE) it ends as a C program does on SIGPIPE: at once,
 * silently, killed by the signal (a shell shows 141; `set -o pipefail` sees the failure). Any other
 * failure of stdout (`> /dev/full`) is one line on stderr and status 1. Before, the first was an
 * unhandled 'error' event (a stack trace) or status 0, the second a stack trace.
 */
import type { Writable } from 'node:stream';

/** A shell's status for a process killed by SIGPIPE (128 + 13): what a command returns when it wrote into a closed pipe. */
export const BROKEN_PIPE_STATUS = 141;

/** The familiar texts of the errno codes a person meets with local files and streams. */
export const ERRNO_MESSAGES: Record<string, string> = {
  ENOENT: 'No such file or directory',
  EEXIST: 'File exists',
  ENOTDIR: 'Not a directory',
  EISDIR: 'Is a directory',
  EACCES: 'Permission denied',
  EPERM: 'Operation not permitted',
  ENOSPC: 'No space left on device',
  EROFS: 'Read-only file system',
  ENOTEMPTY: 'Directory not empty',
  EPIPE: 'Broken pipe',
  EIO: 'Input/output error',
  ELOOP: 'Too many levels of symbolic links',
  ENXIO: 'No such device or address',
};

/** An error's familiar errno text, else its message. */
export function errnoText(error: unknown): string {
  const code = (error as NodeJS.ErrnoException | undefined)?.code;
  const text = code !== undefined ? ERRNO_MESSAGES[code] : undefined;
  return text ?? (error instanceof Error ? error.message : String(error));
}

/** The line (without `dogfs: `) for a failure of stdout other than EPIPE. */
export function stdoutFailureLine(error: unknown): string {
  return `stdout: ${errnoText(error)}`;
}

/**
 * Lines a command has left open on the terminal (a progress bar: no newline until it is over), each with
 * what ends it. A process that ends without going back through the command (killed by SIGPIPE, an
 * interrupt's exit) would leave one unterminated: the shell's prompt, or the next line, drawn on it.
 */
const openLines = new Set<() => void>();
let endedAtExit = false;

/** Registers `end`, which ends an open line on stderr; returns the function that unregisters it. */
export function registerOpenLine(end: () => void): () => void {
  // Any other process.exit (after an interrupt's cleanups, say) ends the lines too: 'exit' listeners run
  // then, though not for a death by a signal, which dieOfBrokenPipe handles itself.
  if (!endedAtExit) {
    endedAtExit = true;
    process.on('exit', () => endOpenLines());
  }
  openLines.add(end);
  return () => {
    openLines.delete(end);
  };
}

/** Ends every open line (synchronously: a terminal's writes are); true if there was one. */
export function endOpenLines(): boolean {
  const ends = [...openLines];
  openLines.clear();
  for (const end of ends) end();
  return ends.length > 0;
}

/**
 * Ends the process as SIGPIPE ends a C program. Node starts with SIGPIPE ignored; a listener added and
 * removed again leaves the signal at its default action (libuv restores it), so raising it then kills
 * the process. Should the default not be restored, the status a shell would show instead.
 */
export function dieOfBrokenPipe(): never {
  // Silent, as a C program's death is, but not on the line of a progress bar drawn on stderr.
  endOpenLines();
  const ignore = (): void => {};
  process.on('SIGPIPE', ignore);
  process.off('SIGPIPE', ignore);
  process.kill(process.pid, 'SIGPIPE');
  process.exit(BROKEN_PIPE_STATUS);
}

/**
 * Watches a one-shot command's stdout for the whole life of the process (a write fails after the call
 * that made it returned, so the command may be over by then). Returns `finish(status)`, called with the
 * command's status: the status to exit with, which reports a failure of stdout the command did not see.
 */
export function watchStdout(
  stdout: Writable = process.stdout,
  stderr: Writable = process.stderr,
): (status: number) => number {
  let failure: Error | undefined;
  let finished: number | undefined;
  const report = (error: Error): void => {
    stderr.write(`dogfs: ${stdoutFailureLine(error)}\n`);
  };
  stdout.on('error', (error: NodeJS.ErrnoException) => {
    if (error.code === 'EPIPE') dieOfBrokenPipe();
    // After the command: a failure it has reported already (non-zero) is not told twice.
    if (finished === 0) {
      report(error);
      process.exit(1);
    }
    failure ??= error;
  });
  return (status) => {
    finished = status;
    if (status === BROKEN_PIPE_STATUS) dieOfBrokenPipe();
    if (failure !== undefined && status === 0) {
      report(failure);
      return 1;
    }
    return status;
  };
}
