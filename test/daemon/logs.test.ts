// `thinbd serve`'s log: JSON lines on stderr when it is not a terminal (as under systemd), each
// with time, level, event and pool; a refused TLS client logged once with its address; nothing per
// request at the default level; --log-level and --log-format change what and how.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { THINBD, thinbd } from '../cli/run-thinbd.ts';
import { requireTools, run } from '../nbd/helpers.ts';
import { makePsk } from '../nbd/tls-credentials.ts';

requireTools('nbdinfo', 'qemu-io', 'psktool');
let work: string;
let pool: string;

before(() => {
  work = mkdtempSync(join(tmpdir(), 'thinbd-logs-'));
  pool = join(work, 'pool');
  assert.equal(thinbd(['pool', 'create', '--pool', pool, '--data-size', '64M']).code, 0);
  assert.equal(thinbd(['create', '--pool', pool, 'vol', '--size', '16M']).code, 0);
});
after(() => rmSync(work, { recursive: true, force: true }));

interface Served {
  child: ChildProcess;
  port: number;
  stderr(): string;
  /** Waits (bounded) until stderr has a line matching. */
  waitFor(pattern: RegExp): Promise<void>;
  stop(): Promise<number | null>;
}

async function serve(args: string[]): Promise<Served> {
  const child = spawn(process.execPath, [THINBD, 'serve', '--pool', pool, '--listen', '127.0.0.1:0', ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
  let stdout = '';
  let stderr = '';
  child.stdout!.setEncoding('utf8').on('data', (text: string) => (stdout += text));
  child.stderr!.setEncoding('utf8').on('data', (text: string) => (stderr += text));
  const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
  const until = async (ready: () => boolean, what: string): Promise<void> => {
    for (let attempt = 0; attempt < 1000 && !ready(); attempt++) {
      if (child.exitCode !== null) throw new Error(`thinbd serve exited ${child.exitCode} before ${what}: ${stderr}`);
      await new Promise((resolve) => setTimeout(resolve, 20));
    }
    if (!ready()) throw new Error(`thinbd serve: no ${what} in 20 s: ${stderr}`);
  };
  await until(() => /on nbds?:\/\/127\.0\.0\.1:\d+\//.test(stdout), 'ready line');
  const port = Number(/127\.0\.0\.1:(\d+)\//.exec(stdout)![1]);
  return {
    child,
    port,
    stderr: () => stderr,
    waitFor: (pattern) => until(() => stderr.split('\n').some((line) => pattern.test(line)), `line matching ${pattern}`),
    stop: async () => {
      if (child.exitCode === null) child.kill('SIGTERM');
      return exited;
    },
  };
}

function jsonLines(text: string): Array<Record<string, unknown>> {
  return text
    .split('\n')
    .filter((line) => line !== '')
    .map((line) => {
      try {
        return JSON.parse(line) as Record<string, unknown>;
      } catch {
        throw new Error(`not a JSON line: ${line}`);
      }
    });
}

test('stderr is JSON lines: started, one line per refused TLS client with its address, none per request, stopping and stopped', async () => {
  const psk = makePsk(join(work, 'keys.psk'), 'alice');
  const wrong = makePsk(join(work, 'wrong.psk'), 'alice');
  const served = await serve(['--tls', 'require', '--tls-psk', psk]);
  try {
    await served.waitFor(/"event":"serve\.started"/);
    const refused = await run('nbdinfo', ['--size', `nbds://alice@127.0.0.1:${served.port}/vol?tls-psk-file=${wrong}`], { allowFailure: true });
    assert.notEqual(refused.code, 0);
    await served.waitFor(/"event":"nbd\.tls_failed"/);
    const linesBefore = jsonLines(served.stderr()).length;
    // An authenticated client: one info line for its TLS, none for its requests.
    const uri = `nbds://alice@127.0.0.1:${served.port}/vol?tls-psk-file=${psk}`;
    assert.equal((await run('nbdinfo', ['--size', uri])).stdout.trim(), String(16 * 1024 * 1024));
    await served.waitFor(/"event":"nbd\.tls_established"/);
    assert.equal(await served.stop(), 0);
    const lines = jsonLines(served.stderr());
    for (const line of lines) {
      assert.equal(typeof line['time'], 'string');
      assert.ok(!Number.isNaN(Date.parse(line['time'] as string)), `time is ISO 8601: ${String(line['time'])}`);
      assert.ok(['error', 'warn', 'info', 'debug'].includes(line['level'] as string));
      assert.equal(typeof line['event'], 'string');
      assert.equal(typeof line['message'], 'string');
      assert.equal(line['pool'], pool);
    }
    const events = lines.map((line) => line['event']);
    assert.equal(events.filter((event) => event === 'serve.started').length, 1);
    const failed = lines.filter((line) => line['event'] === 'nbd.tls_failed');
    assert.equal(failed.length, 1, JSON.stringify(failed));
    assert.equal(failed[0]!['level'], 'warn');
    assert.match(failed[0]!['client'] as string, /^127\.0\.0\.1:\d+$/);
    const afterRefusal = lines.slice(linesBefore).map((line) => line['event']);
    assert.deepEqual(afterRefusal, ['nbd.tls_established', 'serve.stopping', 'serve.stopped']);
    assert.ok(!events.includes('nbd.connection_opened'), 'connections are debug events');
  } finally {
    await served.stop();
  }
});

test('--log-level debug adds each connection; --log-level warn drops the started line; --log-format human writes sentences', async () => {
  const debug = await serve(['--log-level', 'debug']);
  try {
    await run('qemu-io', ['-f', 'raw', `nbd://127.0.0.1:${debug.port}/vol`, '-c', 'write -P 7 0 64k', '-c', 'read -P 7 0 64k']);
    await debug.waitFor(/"event":"nbd\.connection_closed"/);
    const opened = jsonLines(debug.stderr()).filter((line) => line['event'] === 'nbd.connection_opened');
    assert.equal(opened.length, 1);
    assert.equal(opened[0]!['volume'], 'vol');
  } finally {
    await debug.stop();
  }

  const quiet = await serve(['--log-level', 'warn']);
  assert.equal(await quiet.stop(), 0);
  assert.equal(quiet.stderr(), '');

  const human = await serve(['--log-format', 'human']);
  await human.waitFor(/^thinbd serve: Serving 1 volume\(s\) of pool /);
  assert.equal(await human.stop(), 0);
  assert.match(human.stderr(), /^thinbd serve: SIGTERM: finishing in-flight requests, committing, closing$/m);
});
