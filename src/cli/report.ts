// One reporter for all CLI output and one table of exit codes, so scripts can trust both.
import { ThinError } from '../errors.ts';
import { escapeControlCharacters } from '../util/log.ts';

export const exitCodes = {
  ok: 0,
  /** The command ran and failed: a missing pool, no space, a busy pool, problems found by check. */
  failure: 1,
  /** The command line was wrong: a bad size, name or option, or a destructive change not confirmed. Nothing was done. */
  usage: 2,
  /** Standard output was closed by its reader (`thinbd dump | head`): the shell's code for SIGPIPE. */
  brokenPipe: 141,
} as const;

/** What a command answers besides its output: an exit code other than 0 that is not a failure to run (check's problems). */
export interface CommandResult {
  exitCode: number;
}

export class UsageError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'UsageError';
  }
}

export interface Reporter {
  /** A line of normal output (stdout). */
  out(line: string): void;
  /** A JSON document on stdout. */
  json(value: unknown): void;
  /** A warning or progress note (stderr). */
  note(line: string): void;
  /** The one clear line that says why a command failed (stderr). */
  error(line: string): void;
  readonly isTerminal: boolean;
}

/**
 * The reporter on the process's stdout and stderr. process.stderr is made when first used (a
 * getter): when stderr is a pipe that is a socket, a few milliseconds of a short command that
 * never writes to it (`thinbd dump` as a script runs it), so nothing here touches it before a
 * line goes there.
 */
export function consoleReporter(): Reporter {
  return {
    out: (line) => process.stdout.write(`${line}\n`),
    json: (value) => process.stdout.write(`${JSON.stringify(value, null, 2)}\n`),
    note: (line) => process.stderr.write(`${line}\n`),
    error: (line) => process.stderr.write(`thinbd: ${line}\n`),
    get isTerminal() {
      return Boolean(process.stderr.isTTY);
    },
  };
}

/** Maps an error thrown by a command to its exit code and one line for stderr. */
export function describeFailure(error: unknown): { exitCode: number; message: string } {
  // A message may quote what it refused (a name with a newline or an escape sequence in it): it is
  // kept to one line. A bug's assertion alone keeps its stack.
  if (error instanceof UsageError) return { exitCode: exitCodes.usage, message: escapeControlCharacters(error.message) };
  if (error instanceof ThinError) {
    const exitCode = error.code === 'THIN_NEEDS_CONFIRMATION' ? exitCodes.usage : exitCodes.failure;
    return { exitCode, message: escapeControlCharacters(error.message) };
  }
  const code = (error as { code?: unknown } | null)?.code;
  if (typeof code === 'string' && error instanceof Error) {
    // Node system errors: keep the path and the code, drop the stack.
    return { exitCode: exitCodes.failure, message: escapeControlCharacters(error.message) };
  }
  if (error instanceof Error && error.name === 'AssertionError') {
    return { exitCode: exitCodes.failure, message: `${error.message}\n${error.stack ?? ''}` };
  }
  return { exitCode: exitCodes.failure, message: escapeControlCharacters(String(error instanceof Error ? error.message : error)) };
}

/**
 * An aligned text table; numeric-looking columns are right-aligned. A cell's control characters
 * are escaped: a cell may be a name someone else chose (a file or S3 key that `image stats`
 * lists), and a newline or an escape sequence in it would break the table or reach the terminal.
 */
export function formatTable(header: string[], cells: string[][]): string[] {
  const rows = cells.map((row) => row.map(escapeControlCharacters));
  const widths = header.map((title, column) =>
    Math.max(title.length, ...rows.map((row) => (row[column] ?? '').length)),
  );
  const rightAligned = header.map((_, column) =>
    rows.length > 0 && rows.every((row) => /^[\d.]+[BKMGTP]?$/.test(row[column] ?? '')),
  );
  const render = (cells: string[]): string =>
    cells
      .map((cell, column) => {
        const width = widths[column] ?? 0;
        return rightAligned[column] ? cell.padStart(width) : cell.padEnd(width);
      })
      .join('  ')
      .trimEnd();
  return [render(header), ...rows.map(render)];
}
