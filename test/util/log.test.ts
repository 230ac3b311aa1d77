// The server's log lines stay lines: what a client or a user named (a PSK identity, an export or
// volume name) cannot forge a second entry or reach the terminal as an escape sequence.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Logger, escapeControlCharacters } from '../../src/util/log.ts';

test('control characters are written as escapes; other text, non-ASCII letters included, is kept', () => {
  assert.equal(escapeControlCharacters('a\nb\r\tc\u0000\u001b[2J\u007f\u009bé✓'), 'a\\nb\\r\\tc\\x00\\x1b[2J\\x7f\\x9bé✓');
});

test('a human log line with a newline or an escape sequence in a name is one line; a JSON line escapes it as JSON does', () => {
  for (const format of ['human', 'json'] as const) {
    const lines: string[] = [];
    const logger = new Logger({ level: 'debug', format, program: 'thinbd serve', write: (line) => lines.push(line), now: () => new Date(0) });
    logger.log({ level: 'info', event: 'nbd.connection_opened', message: 'TLS 1.3, PSK identity alice\nthinbd serve: forged\u001b]0;x\u0007', client: '127.0.0.1:1\n' });
    assert.equal(lines.length, 1);
    assert.equal(lines[0]!.indexOf('\n'), lines[0]!.length - 1, `one line: ${JSON.stringify(lines[0])}`);
    assert.doesNotMatch(lines[0]!, /[\u0000-\u0009\u000b-\u001f]/);
    if (format === 'human') assert.equal(lines[0], 'thinbd serve: TLS 1.3, PSK identity alice\\nthinbd serve: forged\\x1b]0;x\\x07 (client 127.0.0.1:1\\n)\n');
  }
});
