// The server's log: one entry per event (a refused connection, an error, a change of state), never
// one per request at the default level. Layers emit entries (level, a stable event name, a sentence,
// and who: pool, volume, client); the command line decides how they are written:
//   - JSON lines for log collectors (journald, Loki, Elasticsearch): one object per line with
//     `time`, `level`, `event`, `message` and the fields, when stderr is not a terminal;
//   - human lines on a terminal: `thinbd serve: warning: sentence (client 127.0.0.1:51234)`.
// Written synchronously to stderr: a line is never lost in a buffer when the process dies, and at
// the rates this log sees (events, not requests) the cost does not show.

export const LOG_LEVELS = ['error', 'warn', 'info', 'debug'] as const;
export type LogLevel = (typeof LOG_LEVELS)[number];

export interface LogEntry {
  level: LogLevel;
  /** Stable, dotted name to filter on: `nbd.tls_failed`, `pool.low_water`, `serve.started`. */
  event: string;
  /** One sentence for a person. */
  message: string;
  pool?: string;
  volume?: string;
  /** The remote end: `host:port` for TCP, `unix` for a Unix socket, `uid N` for the control socket. */
  client?: string;
  [field: string]: unknown;
}

/** Where layers send entries; the command line's logger filters and writes them. */
export type LogSink = (entry: LogEntry) => void;

export type LogFormat = 'json' | 'human';

export interface LoggerOptions {
  level: LogLevel;
  format: LogFormat;
  /** Fields added to every entry (the pool). */
  fields?: Record<string, string>;
  /** Prefix of human lines (`thinbd serve`). */
  program?: string;
  /** Writes one line, newline included (default: synchronously to stderr). */
  write?: (line: string) => void;
  now?: () => Date;
}

const RANK: Record<LogLevel, number> = { error: 0, warn: 1, info: 2, debug: 3 };

export function isLogLevel(text: string): text is LogLevel {
  return (LOG_LEVELS as readonly string[]).includes(text);
}

export class Logger {
  readonly #rank: number;
  readonly #format: LogFormat;
  readonly #fields: Record<string, string>;
  readonly #program: string;
  readonly #write: (line: string) => void;
  readonly #now: () => Date;

  constructor(options: LoggerOptions) {
    this.#rank = RANK[options.level];
    this.#format = options.format;
    this.#fields = options.fields ?? {};
    this.#program = options.program ?? 'thinbd';
    this.#write = options.write ?? ((line) => process.stderr.write(line));
    this.#now = options.now ?? (() => new Date());
  }

  /** The sink layers are given. */
  readonly sink: LogSink = (entry) => this.log(entry);

  enabled(level: LogLevel): boolean {
    return RANK[level] <= this.#rank;
  }

  log(entry: LogEntry): void {
    if (!this.enabled(entry.level)) return;
    this.#write(this.#format === 'json' ? this.#json(entry) : this.#human(entry));
  }

  #json(entry: LogEntry): string {
    const { level, event, message, ...rest } = entry;
    const record: Record<string, unknown> = { time: this.#now().toISOString(), level, event, ...this.#fields, ...rest, message };
    return `${JSON.stringify(record, (_key, value: unknown) => (value instanceof Error ? value.message : value))}\n`;
  }

  #human(entry: LogEntry): string {
    const who = [entry.volume === undefined ? undefined : `volume ${entry.volume}`, entry.client === undefined ? undefined : `client ${entry.client}`]
      .filter((part) => part !== undefined)
      .join(', ');
    const level = entry.level === 'warn' ? 'warning: ' : entry.level === 'error' ? 'error: ' : entry.level === 'debug' ? 'debug: ' : '';
    return `${escapeControlCharacters(`${this.#program}: ${level}${entry.message}${who === '' ? '' : ` (${who})`}`)}\n`;
  }
}

/**
 * `text` with its control characters (C0, DEL, C1) written as escapes (`\n`, `\x1b`), so a line
 * stays one line and a name someone else chose (a volume or export name, a PSK identity, an
 * archive path) can neither forge a second line nor send a terminal escape sequence.
 */
export function escapeControlCharacters(text: string): string {
  return text.replace(/[\u0000-\u001f\u007f-\u009f]/g, (char) => {
    if (char === '\n') return '\\n';
    if (char === '\r') return '\\r';
    if (char === '\t') return '\\t';
    return `\\x${char.charCodeAt(0).toString(16).padStart(2, '0')}`;
  });
}
