// The systemd unit shipped in the package: systemd-analyze verify accepts it, and `thinbd serve`
// speaks Type=notify as it promises (READY=1 once clients can connect, STOPPING=1 on SIGTERM, then
// a clean exit). The notify socket is a Unix datagram socket bound by python3, as systemd binds
// /run/systemd/notify.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { readFileSync, writeFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { THINBD, thinbd } from '../cli/run-thinbd.ts';
import { requireTools, run, stopProcess, tempDir } from '../nbd/helpers.ts';

requireTools('systemd-analyze', 'python3', 'nbdinfo');
const root = resolve(import.meta.dirname, '..', '..');
const unitPath = join(root, 'systemd', 'thinbd@.service');
const dir = tempDir('systemd');
after(() => dir.remove());

test('the unit ships in the package and systemd-analyze verify accepts it without a warning', async () => {
  const pkg = JSON.parse(readFileSync(join(root, 'package.json'), 'utf8')) as { files: string[] };
  assert.ok(pkg.files.includes('systemd'), 'package.json files lists systemd/');
  const unit = readFileSync(unitPath, 'utf8');
  assert.match(unit, /^Type=notify$/m);
  assert.match(unit, /^Restart=on-failure$/m);
  assert.match(unit, /^KillSignal=SIGTERM$/m);
  assert.match(unit, /^TimeoutStopSec=\d+$/m);
  assert.match(unit, /^ExecStart=\/usr\/local\/bin\/thinbd serve --pool \/var\/lib\/thinbd\/%i \$THINBD_OPTIONS$/m);
  // verify checks that ExecStart is executable: point it at this checkout's thinbd.
  const instance = join(dir.path, 'thinbd@pool1.service');
  writeFileSync(instance, unit.replaceAll('/usr/local/bin/thinbd', resolve(root, 'bin', 'thinbd')));
  const verified = await run('systemd-analyze', ['verify', instance], { allowFailure: true });
  assert.equal(verified.code, 0, verified.stderr);
  assert.equal(verified.stderr.trim(), '', 'no warning about the unit');
});

const RECEIVER = `
import socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.bind(sys.argv[1])
print("BOUND", flush=True)
while True:
    data = s.recv(4096)
    print(data.decode().replace("\\n", "|"), flush=True)
`;

test('serve sends READY=1 once clients can connect and STOPPING=1 on SIGTERM, then exits 0', async () => {
  const pool = join(dir.path, 'pool');
  assert.equal(thinbd(['pool', 'create', '--pool', pool, '--data-size', '64M']).code, 0);
  assert.equal(thinbd(['create', '--pool', pool, 'vol', '--size', '4M']).code, 0);
  const socketPath = join(dir.path, 'notify.sock');
  const receiver = spawn('python3', ['-c', RECEIVER, socketPath], { stdio: ['ignore', 'pipe', 'pipe'] });
  let messages = '';
  receiver.stdout.setEncoding('utf8').on('data', (text: string) => (messages += text));
  const until = async (ready: () => boolean, what: string): Promise<void> => {
    for (let attempt = 0; attempt < 1000 && !ready(); attempt++) await new Promise((resolve) => setTimeout(resolve, 20));
    if (!ready()) throw new Error(`no ${what} in 20 s; notify messages: ${messages}`);
  };
  try {
    await until(() => messages.includes('BOUND'), 'receiver');
    const server = spawn(process.execPath, [THINBD, 'serve', '--pool', pool, '--listen', '127.0.0.1:0'], {
      stdio: ['ignore', 'pipe', 'pipe'],
      env: { ...process.env, NOTIFY_SOCKET: socketPath },
    });
    let stdout = '';
    server.stdout!.setEncoding('utf8').on('data', (text: string) => (stdout += text));
    const exited = new Promise<number | null>((resolve) => server.once('exit', (code) => resolve(code)));
    try {
      await until(() => messages.includes('READY=1'), 'READY=1');
      const ready = messages.split('\n').find((line) => line.includes('READY=1'))!;
      assert.match(ready, /STATUS=Serving 1 volume\(s\) of pool .* on nbd:\/\/127\.0\.0\.1:\d+\//);
      assert.match(ready, new RegExp(`MAINPID=${server.pid}`));
      const port = Number(/127\.0\.0\.1:(\d+)\//.exec(ready)![1]);
      // Ready means ready: a client connects at once.
      assert.equal((await run('nbdinfo', ['--size', `nbd://127.0.0.1:${port}/vol`])).stdout.trim(), String(4 * 1024 * 1024));
      assert.doesNotMatch(messages, /STOPPING=1/);
      server.kill('SIGTERM');
      assert.equal(await exited, 0);
      await until(() => messages.includes('STOPPING=1'), 'STOPPING=1');
      assert.match(stdout, /Serving 1 volume/);
    } finally {
      await stopProcess(server);
    }
  } finally {
    await stopProcess(receiver);
  }
});
