// `thinbd serve` as operators run it on a shared host: TLS on the NBD port (X.509 and PSK, through
// the real command line) and --export to serve only some volumes.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { thinbd } from '../cli/run-thinbd.ts';
import { requireTools, run } from '../nbd/helpers.ts';
import { makeCa, makeCertificate, makePsk } from '../nbd/tls-credentials.ts';
import { startServe } from './serve-process.ts';

requireTools('nbdinfo', 'qemu-io', 'certtool', 'psktool');

const MiB = 1024 * 1024;
let work: string;
let pool: string;

function ok(args: string[]): string {
  const result = thinbd(args);
  assert.equal(result.code, 0, `thinbd ${args.join(' ')}: ${result.stderr}`);
  return result.stdout;
}

before(() => {
  work = mkdtempSync(join(tmpdir(), 'thinbd-front-door-'));
  pool = join(work, 'pool');
  ok(['pool', 'create', '--pool', pool, '--data-size', '256M']);
  for (const name of ['web', 'db', 'scratch']) ok(['create', '--pool', pool, name, '--size', '32M']);
});

after(() => rmSync(work, { recursive: true, force: true }));

test('serve --tls require: PSK and certificate clients read and write a volume, a plain client gets nothing', async () => {
  const ca = makeCa(join(work, 'ca'), 'front door CA');
  const serverCert = makeCertificate(ca, join(work, 'server'), 'server', 'localhost');
  const clientDir = join(work, 'client');
  makeCertificate(ca, clientDir, 'client', 'ops');
  const psk = makePsk(join(work, 'keys.psk'), 'alice');
  const server = await startServe(pool, [
    '--tls', 'require',
    '--tls-cert', serverCert.certFile,
    '--tls-key', serverCert.keyFile,
    '--tls-ca', ca.certFile,
    '--tls-psk', psk,
  ]);
  try {
    assert.match(server.output(), /on nbds:\/\/127\.0\.0\.1:\d+\/ \(TLS required\)/);
    const pskUri = `nbds://alice@127.0.0.1:${server.port}/web?tls-psk-file=${psk}`;
    const x509Uri = `nbds://127.0.0.1:${server.port}/web?tls-certificates=${clientDir}`;
    const objectArgs = ['--object', `tls-creds-x509,id=tls0,endpoint=client,dir=${clientDir}`];
    const image = `driver=nbd,host=127.0.0.1,port=${server.port},export=web,tls-creds=tls0`;
    await run('qemu-io', [...objectArgs, '--image-opts', image, '-c', 'write -P 0x42 1M 1M', '-c', 'flush']);
    assert.equal((await run('nbdinfo', ['--size', pskUri])).stdout.trim(), String(32 * MiB));
    assert.equal((await run('nbdinfo', ['--size', x509Uri])).stdout.trim(), String(32 * MiB));
    const read = await run('qemu-io', [...objectArgs, '--image-opts', image, '-c', 'read -P 0x42 1M 1M']);
    assert.doesNotMatch(read.stdout + read.stderr, /failed|error/i);
    const plain = await run('nbdinfo', ['--list', `nbd://127.0.0.1:${server.port}/`], { allowFailure: true });
    assert.notEqual(plain.code, 0);
    assert.doesNotMatch(plain.stdout, /web|db|scratch/);
    assert.equal(await server.stop(), 0);
    assert.doesNotMatch(server.output(), /warning/);
  } finally {
    await server.kill();
  }
});

test('serve --tls with bad credentials is a usage error naming the problem', () => {
  const noCredentials = thinbd(['serve', '--pool', pool, '--listen', '127.0.0.1:0', '--tls', 'require']);
  assert.equal(noCredentials.code, 2);
  assert.match(noCredentials.stderr, /--tls require: TLS require needs credentials/);
  const contradiction = thinbd(['serve', '--pool', pool, '--listen', '127.0.0.1:0', '--tls', 'off', '--tls-psk', join(work, 'keys.psk')]);
  assert.equal(contradiction.code, 2);
  const missingFile = thinbd(['serve', '--pool', pool, '--listen', '127.0.0.1:0', '--tls-psk', join(work, 'absent.psk')]);
  assert.equal(missingFile.code, 2);
  assert.match(missingFile.stderr, /absent\.psk/);
});

test('serve --export serves only the named volumes; others, and volumes created later, are unreachable', async () => {
  const server = await startServe(pool, ['--export', 'web', '--export', 'db']);
  try {
    assert.match(server.output(), /Serving 2 volume\(s\)/);
    const listing = JSON.parse((await run('nbdinfo', ['--json', '--list', server.uri('')])).stdout) as { exports: Array<{ 'export-name': string }> };
    assert.deepEqual(listing.exports.map((entry) => entry['export-name']).sort(), ['db', 'web']);
    const hidden = await run('nbdinfo', ['--size', server.uri('scratch')], { allowFailure: true });
    assert.notEqual(hidden.code, 0);
    // Created through the control socket while serving: the pool has it, NBD does not.
    ok(['create', '--pool', pool, 'later', '--size', '1M']);
    assert.match(ok(['list', '--pool', pool]), /later/);
    assert.notEqual((await run('nbdinfo', ['--size', server.uri('later')], { allowFailure: true })).code, 0);
    assert.equal((await run('nbdinfo', ['--size', server.uri('db')])).stdout.trim(), String(32 * MiB));
  } finally {
    await server.stop();
  }
  const missing = thinbd(['serve', '--pool', pool, '--listen', '127.0.0.1:0', '--export', 'nosuch']);
  assert.equal(missing.code, 1);
  assert.match(missing.stderr, /--export names no volume of this pool: nosuch/);
});

test("serve leaves thinbd's hidden volumes out unless --export names them; list shows them only with --all", async () => {
  ok(['create', '--pool', pool, 'internal', '--size', '1M', '--label', 'thinbd.hidden=test']);
  assert.doesNotMatch(ok(['list', '--pool', pool]), /internal/);
  assert.match(ok(['list', '--pool', pool, '--all']), /^internal .* rw,hidden /m);
  const names = async (uri: string): Promise<string[]> =>
    (JSON.parse((await run('nbdinfo', ['--json', '--list', uri])).stdout) as { exports: Array<{ 'export-name': string }> }).exports.map((entry) => entry['export-name']).sort();
  const all = await startServe(pool, []);
  try {
    const served = await names(all.uri(''));
    assert.ok(served.includes('web') && !served.includes('internal'), served.join(' '));
    assert.notEqual((await run('nbdinfo', ['--size', all.uri('internal')], { allowFailure: true })).code, 0);
  } finally {
    await all.stop();
  }
  const named = await startServe(pool, ['--export', 'internal']);
  try {
    assert.deepEqual(await names(named.uri('')), ['internal']);
    assert.equal((await run('nbdinfo', ['--size', named.uri('internal')])).stdout.trim(), String(MiB));
  } finally {
    await named.stop();
  }
});
