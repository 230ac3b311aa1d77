// A pool's data is private to its owner (issue 20), shown with other uids through setpriv: the
// test runs as root (npm test installs packages as root) and runs thinbd as an owner and as a
// stranger, neither of which needs an entry in /etc/passwd.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { chmodSync, chownSync, lchownSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { THINBD } from './run-thinbd.ts';

const OWNER = 41001;
const STRANGER = 41002;

let work: string;
before(() => {
  assert.equal(process.getuid?.(), 0, 'these tests switch users with setpriv and must run as root (npm test does)');
  const setpriv = spawnSync('setpriv', ['--version'], { encoding: 'utf8' });
  assert.equal(setpriv.status, 0, 'setpriv (util-linux) is needed: apt-get install util-linux');
  work = mkdtempSync(join(tmpdir(), 'thinbd-security-'));
  chmodSync(work, 0o755); // others may pass through the work directory: the pool's own modes must protect it
});
after(() => {
  rmSync(work, { recursive: true, force: true });
});

interface Run {
  code: number | null;
  stdout: string;
  stderr: string;
}

/** Runs a command as `uid` (root when undefined) with a umask, from the work directory. */
function runAs(uid: number | undefined, command: string[], umask = '022'): Run {
  const shell = `umask ${umask} && exec "$@"`;
  const argv = uid === undefined ? ['bash', '-c', shell, 'bash', ...command] : ['setpriv', `--reuid=${uid}`, `--regid=${uid}`, '--clear-groups', 'bash', '-c', shell, 'bash', ...command];
  const result = spawnSync(argv[0]!, argv.slice(1), { encoding: 'utf8', cwd: work, env: { ...process.env, HOME: tmpdir() }, timeout: 120_000 });
  return { code: result.status, stdout: result.stdout, stderr: result.stderr };
}

function thinbdAs(uid: number | undefined, args: string[], umask?: string): Run {
  return runAs(uid, [process.execPath, THINBD, ...args], umask);
}

function okAs(uid: number | undefined, args: string[], umask?: string): string {
  const result = thinbdAs(uid, args, umask);
  assert.equal(result.code, 0, `thinbd ${args.join(' ')} as ${uid ?? 'root'}: ${result.stderr}`);
  return result.stdout;
}

/** A pool the owner made in a home directory of theirs that others may pass through. */
function ownersPool(name: string): { home: string; dir: string } {
  const home = join(work, name);
  mkdirSync(home);
  chownSync(home, OWNER, OWNER);
  chmodSync(home, 0o755);
  const dir = join(home, 'pool');
  okAs(OWNER, ['pool', 'create', '--pool', dir, '--data-size', '64M']);
  return { home, dir };
}

function mode(path: string): string {
  return (statSync(path).mode & 0o777).toString(8).padStart(4, '0');
}

test('every file and directory thinbd makes is 0600 / 0700 whatever the umask', () => {
  const dir = join(work, 'modes');
  okAs(undefined, ['pool', 'create', '--pool', dir, '--data-size', '64M'], '000');
  assert.deepEqual([mode(dir), mode(join(dir, 'metadata')), mode(join(dir, 'data')), mode(join(dir, 'lock'))], ['0700', '0600', '0600', '0600']);
  okAs(undefined, ['create', '--pool', dir, 'v', '--size', '1M'], '000');

  const exported = join(work, 'v.raw');
  okAs(undefined, ['export', '--pool', dir, 'v', exported], '000');
  const xml = join(work, 'v.xml');
  okAs(undefined, ['dump', '--pool', dir, '-o', xml], '000');
  const packed = join(work, 'v.pack');
  okAs(undefined, ['metadata', 'pack', '--pool', dir, '-o', packed], '000');
  assert.deepEqual([mode(exported), mode(xml), mode(packed)], ['0600', '0600', '0600']);

  const restored = join(work, 'restored');
  okAs(undefined, ['restore', '--pool', restored, '-i', xml, '--data-size', '64M'], '000');
  const repaired = join(work, 'repaired');
  okAs(undefined, ['repair', '--pool', dir, '-o', repaired], '000');
  const unpacked = join(work, 'unpacked');
  okAs(undefined, ['metadata', 'unpack', '-i', packed, '--pool', unpacked], '000');
  for (const made of [restored, repaired, unpacked]) {
    assert.equal(mode(made), '0700', `${made} is 0700`);
    for (const name of readdirSync(made)) {
      if (statSync(join(made, name)).isFile()) assert.equal(mode(join(made, name)), '0600', `${made}/${name} is 0600`);
    }
  }
});

test('a stranger cannot read the files, take the lock or use the pool; the owner and root can', () => {
  const { dir } = ownersPool('owner-home');
  okAs(OWNER, ['create', '--pool', dir, 'secret', '--size', '1M']);
  assert.equal(statSync(join(dir, 'data')).uid, OWNER);

  // Even with the directory opened up by hand, the files stay the owner's.
  chmodSync(dir, 0o755);
  for (const name of ['data', 'metadata']) {
    const read = runAs(STRANGER, ['cat', join(dir, name)]);
    assert.notEqual(read.code, 0);
    assert.match(read.stderr, /Permission denied/);
  }
  const list = thinbdAs(STRANGER, ['list', '--pool', dir]);
  assert.equal(list.code, 1);
  assert.match(list.stderr, /Cannot lock pool .*EACCES/);
  assert.equal(list.stderr.trim().split('\n').length, 1);
  // The owner and root can; neither is warned (the files are 0600).
  assert.match(okAs(OWNER, ['list', '--pool', dir]), /secret/);
  assert.match(okAs(undefined, ['list', '--pool', dir]), /secret/);
  assert.equal(thinbdAs(OWNER, ['pool', 'status', '--pool', dir]).stderr, '');
});

test('pool status and serve warn once about a pool others can read', async () => {
  const dir = join(work, 'loose');
  okAs(undefined, ['pool', 'create', '--pool', dir, '--data-size', '64M']);
  chmodSync(dir, 0o755);
  chmodSync(join(dir, 'data'), 0o644);
  const status = thinbdAs(undefined, ['pool', 'status', '--pool', dir]);
  assert.equal(status.code, 0, status.stderr);
  assert.deepEqual(status.stderr.trim().split('\n'), [`thinbd: warning: pool ${dir}: ${join(dir, 'data')} is readable by other users (mode 0644); chmod 600 it, or 700 its directory`]);

  const server = await startServer(undefined, dir, ['--listen', '0.0.0.0:0', '--log-format', 'human']);
  try {
    await server.waitForStderr(/without TLS/);
    const warnings = server.stderr().split('\n').filter((line) => line.includes('warning'));
    assert.equal(warnings.length, 2, server.stderr());
    assert.match(warnings[0]!, /data is readable by other users/);
    assert.match(warnings[1]!, /serving on nbd:\/\/0\.0\.0\.0:\d+\/ without TLS: anyone who can reach that address can read and write every exported volume/);
  } finally {
    await server.stop();
  }
});

test("pool status and serve warn about a pool directory others could put links in: writable by them, or another user's", async () => {
  const dir = join(work, 'open-dir');
  okAs(undefined, ['pool', 'create', '--pool', dir, '--data-size', '64M']);
  chmodSync(dir, 0o777);
  const status = thinbdAs(undefined, ['pool', 'status', '--pool', dir]);
  assert.equal(status.code, 0, status.stderr);
  assert.deepEqual(status.stderr.trim().split('\n'), [`thinbd: warning: pool ${dir}: ${dir} is writable by other users (mode 0777), who could put links in place of its files; chmod 700 it`]);
  chmodSync(dir, 0o775);
  assert.equal(thinbdAs(undefined, ['pool', 'status', '--pool', dir]).stderr, '', "group write for the caller's own group (umask 002): no warning");
  chownSync(dir, 0, STRANGER);
  assert.match(thinbdAs(undefined, ['pool', 'status', '--pool', dir]).stderr, /is writable by other users \(mode 0775\)/, "group write for another group's members");
  chownSync(dir, 0, 0);
  chmodSync(dir, 0o700);
  assert.equal(thinbdAs(undefined, ['pool', 'status', '--pool', dir]).stderr, '', 'a private directory of root\'s own: no warning');

  // Root working on a pool another user owns: that user could swap `data` for a link to a disk.
  const { dir: owned } = ownersPool('owned-by-other');
  const rootStatus = thinbdAs(undefined, ['pool', 'status', '--pool', owned]);
  assert.equal(rootStatus.code, 0, rootStatus.stderr);
  assert.match(rootStatus.stderr, new RegExp(`thinbd: warning: pool ${owned}: ${owned} belongs to uid ${OWNER}, who could put links in place of its files`));
  assert.equal(thinbdAs(OWNER, ['pool', 'status', '--pool', owned]).stderr, '', 'its owner hears nothing');
  const server = await startServer(undefined, owned, ['--log-format', 'human']);
  try {
    await server.waitForStderr(/belongs to uid/);
  } finally {
    await server.stop();
  }
});

test('the control socket is 0600 and refuses a stranger even when its mode is loosened; the owner and root use it', async () => {
  const { home, dir } = ownersPool('served-home');
  const server = await startServer(OWNER, dir, ['--socket', join(home, 'nbd.sock')]);
  try {
    const socket = join(dir, 'control.sock');
    assert.equal(mode(socket), '0600');
    chmodSync(dir, 0o755);
    chmodSync(socket, 0o777);

    const refused = thinbdAs(STRANGER, ['create', '--pool', dir, 'intruder', '--size', '1M']);
    assert.equal(refused.code, 1, refused.stderr);
    assert.match(refused.stderr, /closed the control connection/);
    await server.waitForStderr(/control socket: refused a connection from uid 41002 \(pid \d+\): only uid 41001 and root may use it/);

    okAs(OWNER, ['create', '--pool', dir, 'mine', '--size', '1M']);
    okAs(undefined, ['create', '--pool', dir, 'roots', '--size', '1M']);
    const names = okAs(OWNER, ['list', '--pool', dir]);
    assert.match(names, /mine/);
    assert.match(names, /roots/);
    assert.doesNotMatch(names, /intruder/);
  } finally {
    await server.stop();
  }
});

interface RunningServer {
  stderr(): string;
  waitForStderr(pattern: RegExp): Promise<void>;
  stop(): Promise<void>;
}

/** Starts `thinbd serve` as `uid` and waits for it to announce itself. */
async function startServer(uid: number | undefined, dir: string, args: string[]): Promise<RunningServer> {
  const command = [process.execPath, THINBD, 'serve', '--pool', dir, ...args];
  const child: ChildProcess =
    uid === undefined
      ? spawn(command[0]!, command.slice(1), { stdio: ['ignore', 'pipe', 'pipe'] })
      : spawn('setpriv', [`--reuid=${uid}`, `--regid=${uid}`, '--clear-groups', ...command], { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, HOME: tmpdir() } });
  let stdout = '';
  let stderr = '';
  const waiters: Array<() => void> = [];
  const wake = (): void => {
    for (const waiter of waiters.splice(0)) waiter();
  };
  child.stdout!.setEncoding('utf8').on('data', (text: string) => {
    stdout += text;
    wake();
  });
  child.stderr!.setEncoding('utf8').on('data', (text: string) => {
    stderr += text;
    wake();
  });
  const exited = new Promise<number | null>((resolve) => child.on('exit', (code) => {
    wake();
    resolve(code);
  }));
  const waitFor = async (ready: () => boolean, what: string): Promise<void> => {
    while (!ready()) {
      if (child.exitCode !== null) throw new Error(`thinbd serve exited ${child.exitCode} before ${what}: ${stderr}`);
      await new Promise<void>((resolve) => waiters.push(resolve));
    }
  };
  await waitFor(() => /Serving/.test(stdout), 'serving');
  return {
    stderr: () => stderr,
    waitForStderr: (pattern) => waitFor(() => pattern.test(stderr), `stderr matched ${pattern}`),
    stop: async () => {
      if (child.exitCode === null) child.kill('SIGTERM');
      assert.equal(await exited, 0, stderr);
    },
  };
}

test("another user's store, readable but not writable: verify and unpack refuse with the way on, and --no-lock reads it", () => {
  const { dir } = ownersPool('reader');
  const store = join(work, 'shared-store');
  const image = join(work, 'shared.img');
  okAs(undefined, ['pool', 'create', '--pool', join(work, 'packer'), '--data-size', '64M']);
  runAs(undefined, ['sh', '-c', `head -c 3145728 /dev/urandom > '${image}'`]);
  okAs(undefined, ['import', '--pool', join(work, 'packer'), 'v', image]);
  okAs(undefined, ['snapshot', '--pool', join(work, 'packer'), 'v', 'v.0', '--read-only']);
  okAs(undefined, ['archive', 'init', '--store', store]);
  okAs(undefined, ['archive', 'pack', '--pool', join(work, 'packer'), 'v.0', '--store', store, '--name', 's0']);
  // Published read-only to others, as on read-only media.
  runAs(undefined, ['chmod', '-R', 'a+rX', store]);
  const before = runAs(undefined, ['sh', '-c', `cd '${store}' && find . -exec stat -c '%n %s %Y' {} + | sort`]).stdout;

  for (const args of [['archive', 'verify', '--store', store], ['archive', 'unpack', '--store', store, 's0', '--pool', dir, 'v']]) {
    const refused = thinbdAs(OWNER, args);
    assert.equal(refused.code, 1, refused.stderr);
    assert.match(refused.stderr, /Cannot write .*locks\/.*EACCES.* writes a lock into the store first; '--no-lock' reads a store that cannot be written without one\)/);
  }
  assert.match(okAs(OWNER, ['archive', 'verify', '--store', store, '--no-lock']), /1 streams, \d+ chunks .* checked: intact/);
  okAs(OWNER, ['archive', 'unpack', '--store', store, 's0', '--pool', dir, 'v', '--no-lock']);
  const exported = join(work, 'reader', 'v.raw');
  okAs(OWNER, ['export', '--pool', dir, 'v', exported]);
  assert.equal(runAs(undefined, ['cmp', image, exported]).code, 0, 'the unpacked volume holds the packed bytes');
  assert.equal(runAs(undefined, ['sh', '-c', `cd '${store}' && find . -exec stat -c '%n %s %Y' {} + | sort`]).stdout, before, 'the store is as it was');
});

test("root working in a stranger's directory does not follow a lock planted there as a link to root's file", () => {
  const planted = join(work, 'planted-pool');
  mkdirSync(planted);
  const victim = join(work, 'victim-of-lock');
  writeFileSync(victim, 'precious\n');
  symlinkSync(victim, join(planted, 'lock'));
  chownSync(planted, STRANGER, STRANGER);
  lchownSync(join(planted, 'lock'), STRANGER, STRANGER);
  const create = thinbdAs(undefined, ['pool', 'create', '--pool', planted, '--data-size', '64M']);
  assert.equal(create.code, 1, create.stderr);
  assert.equal(create.stderr, `thinbd: Cannot lock pool ${planted}: ${join(planted, 'lock')} is a symbolic link (thinbd does not follow it; remove it)\n`);
  assert.equal(readFileSync(victim, 'utf8'), 'precious\n');
});

test('serve warns once about a TLS key or PSK file others can read, and not about a private one', async () => {
  const dir = join(work, 'tls-secrets');
  okAs(undefined, ['pool', 'create', '--pool', dir, '--data-size', '64M']);
  const psk = join(work, 'keys.psk');
  writeFileSync(psk, `alice:${'ab'.repeat(32)}\n`);
  for (const [fileMode, expected] of [[0o644, 1], [0o600, 0]] as const) {
    chmodSync(psk, fileMode);
    const server = await startServer(undefined, dir, ['--listen', '127.0.0.1:0', '--tls', 'require', '--tls-psk', psk, '--log-format', 'human']);
    let warnings: string[];
    try {
      if (expected > 0) await server.waitForStderr(/--tls-psk/);
    } finally {
      await server.stop();
      warnings = server.stderr().split('\n').filter((line) => line.includes('warning'));
    }
    assert.equal(warnings.length, expected, server.stderr());
    if (expected > 0) assert.equal(warnings[0], `thinbd serve: warning: --tls-psk: ${psk} is readable by other users (mode 0644); chmod 600 it, or 700 its directory`);
  }
});
