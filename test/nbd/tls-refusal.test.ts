// What a TLS server refuses, and that refusing one client costs the others nothing: under
// `require` nothing is listed or opened before STARTTLS (spec "TLS support", FORCEDTLS); a wrong
// pre-shared key, an unknown PSK user, an untrusted or missing client certificate fail the
// handshake while a client already connected goes on reading and writing; the PSK file is read
// again when it changes.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync, writeFileSync, mkdirSync, copyFileSync } from 'node:fs';
import { join } from 'node:path';
import { loadNbdTls } from '../../src/nbd/tls.ts';
import type { LogEntry } from '../../src/util/log.ts';
import {
  NBD_CMD_READ,
  NBD_CMD_WRITE,
  NBD_OPT_ABORT,
  NBD_OPT_EXPORT_NAME,
  NBD_OPT_GO,
  NBD_OPT_INFO,
  NBD_OPT_LIST,
  NBD_OPT_SET_META_CONTEXT,
  NBD_OPT_STARTTLS,
  NBD_OPT_STRUCTURED_REPLY,
  NBD_REP_ACK,
  NBD_REP_ERR_INVALID,
  NBD_REP_ERR_TLS_REQD,
  NBD_REP_ERR_UNSUP,
  NBD_REP_SERVER,
} from '../../src/nbd/protocol.ts';
import { encodeInfoRequest, encodeMetaContextRequest, encodeOption, NbdTestClient } from './client.ts';
import { patternBytes, requireTools, run, startServer, tempDir } from './helpers.ts';
import { MemoryExport } from './memory-export.ts';
import { makeCa, makeCertificate, makePsk } from './tls-credentials.ts';

const MiB = 1024 * 1024;

requireTools('nbdinfo', 'certtool', 'psktool');
const dir = tempDir('tls-refusal');
const ca = makeCa(join(dir.path, 'ca'), 'thinbd test CA');
const serverCert = makeCertificate(ca, join(dir.path, 'server'), 'server', 'localhost');
const clientDir = join(dir.path, 'client');
const clientCert = makeCertificate(ca, clientDir, 'client', 'alice');
const rogueCa = makeCa(join(dir.path, 'rogue-ca'), 'someone else');
const rogueDir = join(dir.path, 'rogue');
makeCertificate(rogueCa, rogueDir, 'client', 'mallory');
// The rogue client trusts the real server's CA (so the server is the one refusing) but holds a
// certificate from another CA.
copyFileSync(ca.certFile, join(rogueDir, 'ca-cert.pem'));
const noCertDir = join(dir.path, 'no-cert');
mkdirSync(noCertDir);
copyFileSync(ca.certFile, join(noCertDir, 'ca-cert.pem'));

const serverPskFile = makePsk(join(dir.path, 'server.psk'), 'alice');
const wrongKeyFile = makePsk(join(dir.path, 'wrong.psk'), 'alice');
const strangerFile = makePsk(join(dir.path, 'stranger.psk'), 'stranger');

const disk = new MemoryExport({ name: 'disk', sizeBytes: 16 * MiB });
const logs: string[] = [];
const tlsFiles = { ...serverCert, caFile: ca.certFile, pskFile: serverPskFile };
const log = (entry: LogEntry): void => {
  logs.push(entry.message);
};
const required = await startServer([disk], { tls: loadNbdTls('require', tlsFiles, log), log });
const optional = await startServer([disk], { tls: loadNbdTls('on', tlsFiles, log), log });

/** Waits (bounded) for a log line after index `from` to match: the server may log just after the client exits. */
async function waitForLog(pattern: RegExp, from: number, what = ''): Promise<string> {
  for (let attempt = 0; attempt < 500; attempt++) {
    const line = logs.slice(from).find((entry) => pattern.test(entry));
    if (line !== undefined) return line;
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
  throw new Error(`${what}: no log line matched ${pattern}; got:\n${logs.slice(from).join('\n')}`);
}
after(async () => {
  await required.close();
  await optional.close();
  dir.remove();
});

const clientTls = {
  ca: readFileSync(ca.certFile),
  cert: readFileSync(clientCert.certFile),
  key: readFileSync(clientCert.keyFile),
  servername: 'localhost',
};

test('under --tls require every option but STARTTLS and ABORT gets NBD_REP_ERR_TLS_REQD, and nothing is listed', async () => {
  const client = await NbdTestClient.connect({ port: required.port });
  try {
    await client.greet();
    for (const [option, data] of [
      [NBD_OPT_LIST, undefined],
      [NBD_OPT_INFO, encodeInfoRequest('disk')],
      [NBD_OPT_GO, encodeInfoRequest('disk')],
      [NBD_OPT_STRUCTURED_REPLY, undefined],
      [NBD_OPT_SET_META_CONTEXT, encodeMetaContextRequest('disk', ['base:allocation'])],
      [99, undefined],
    ] as const) {
      const replies = await client.option(option, data);
      assert.deepEqual(replies.map((reply) => reply.type), [NBD_REP_ERR_TLS_REQD], `option ${option}`);
      assert.doesNotMatch(replies[0]!.data.toString(), /disk/);
    }
    assert.deepEqual((await client.option(NBD_OPT_ABORT)).map((reply) => reply.type), [NBD_REP_ACK]);
  } finally {
    client.raw.destroy();
  }
  const listing = await run('nbdinfo', ['--list', `nbd://127.0.0.1:${required.port}/`], { allowFailure: true });
  assert.notEqual(listing.code, 0);
  assert.doesNotMatch(listing.stdout, /disk/);
});

test('under --tls require NBD_OPT_EXPORT_NAME before TLS hard-disconnects', async () => {
  const client = await NbdTestClient.connect({ port: required.port });
  await client.greet();
  client.raw.send(encodeOption(NBD_OPT_EXPORT_NAME, Buffer.from('disk')));
  assert.equal(await client.raw.waitClosed(), true);
  assert.equal(client.raw.queuedBytes, 0, 'no export size or flags were sent');
});

test('STARTTLS with data is NBD_REP_ERR_INVALID, and STARTTLS once TLS is up is NBD_REP_ERR_INVALID', async () => {
  const client = await NbdTestClient.connect({ port: required.port });
  try {
    await client.greet();
    assert.deepEqual((await client.option(NBD_OPT_STARTTLS, Buffer.from('x'))).map((reply) => reply.type), [NBD_REP_ERR_INVALID]);
    assert.deepEqual((await client.startTls(clientTls)).map((reply) => reply.type), [NBD_REP_ACK]);
    assert.deepEqual((await client.option(NBD_OPT_STARTTLS)).map((reply) => reply.type), [NBD_REP_ERR_INVALID]);
    const listed = await client.option(NBD_OPT_LIST);
    assert.deepEqual(listed.map((reply) => reply.type), [NBD_REP_SERVER, NBD_REP_ACK]);
  } finally {
    client.raw.destroy();
  }
});

test('under --tls on plain clients still work, and STARTTLS forgets what was negotiated in the clear', async () => {
  assert.equal((await run('nbdinfo', ['--size', `nbd://127.0.0.1:${optional.port}/disk`])).stdout.trim(), String(16 * MiB));
  const client = await NbdTestClient.connect({ port: optional.port });
  try {
    await client.greet();
    assert.deepEqual((await client.option(NBD_OPT_STRUCTURED_REPLY)).map((reply) => reply.type), [NBD_REP_ACK]);
    await client.startTls(clientTls);
    // Structured replies were agreed in the clear only: a meta context now needs them again.
    const meta = await client.option(NBD_OPT_SET_META_CONTEXT, encodeMetaContextRequest('disk', ['base:allocation']));
    assert.deepEqual(meta.map((reply) => reply.type), [NBD_REP_ERR_INVALID]);
  } finally {
    client.raw.destroy();
  }
});

test('without TLS configured STARTTLS is NBD_REP_ERR_UNSUP', async () => {
  const plain = await startServer([disk]);
  const client = await NbdTestClient.connect({ port: plain.port });
  try {
    await client.greet();
    assert.deepEqual((await client.option(NBD_OPT_STARTTLS)).map((reply) => reply.type), [NBD_REP_ERR_UNSUP]);
  } finally {
    client.raw.destroy();
    await plain.close();
  }
});

test('a wrong key, an unknown user, an untrusted or missing certificate are refused while a connected client keeps working', async () => {
  const connected = new NbdTestClient((await NbdTestClient.connect({ port: required.port })).raw);
  await connected.handshake('disk', { tls: clientTls });
  const data = patternBytes(64 * 1024, 9);
  assert.equal((await connected.call(NBD_CMD_WRITE, { offsetBytes: MiB, data })).error, 0);

  const port = required.port;
  const refused: Array<[string, string]> = [
    ['wrong key', `nbds://alice@127.0.0.1:${port}/disk?tls-psk-file=${wrongKeyFile}`],
    ['unknown user', `nbds://stranger@127.0.0.1:${port}/disk?tls-psk-file=${strangerFile}`],
    ['untrusted certificate', `nbds://127.0.0.1:${port}/disk?tls-certificates=${rogueDir}`],
    ['no certificate', `nbds://127.0.0.1:${port}/disk?tls-certificates=${noCertDir}`],
  ];
  for (const [what, uri] of refused) {
    const before = logs.length;
    const result = await run('nbdinfo', ['--size', uri], { allowFailure: true });
    assert.notEqual(result.code, 0, `${what}: ${result.stdout}`);
    assert.equal(result.stdout, '', what);
    await waitForLog(/TLS handshake failed/, before, what);
  }

  const reply = await connected.call(NBD_CMD_READ, { offsetBytes: MiB, lengthBytes: data.length });
  assert.equal(reply.error, 0);
  assert.ok(reply.data?.equals(data), 'the connected client reads what it wrote');
  assert.equal((await run('nbdinfo', ['--size', `nbds://alice@127.0.0.1:${port}/disk?tls-psk-file=${serverPskFile}`])).stdout.trim(), String(16 * MiB));
  connected.raw.destroy();
});

test('the PSK file is read again when it changes: a key added works, a key removed is refused, no restart', async () => {
  const port = required.port;
  const original = readFileSync(serverPskFile, 'utf8');
  const bobFile = makePsk(join(dir.path, 'bob.psk'), 'bob');
  const bob = `nbds://bob@127.0.0.1:${port}/disk?tls-psk-file=${bobFile}`;
  const alice = `nbds://alice@127.0.0.1:${port}/disk?tls-psk-file=${serverPskFile}`;
  assert.notEqual((await run('nbdinfo', ['--size', bob], { allowFailure: true })).code, 0);
  try {
    writeFileSync(serverPskFile, original + readFileSync(bobFile, 'utf8'));
    assert.equal((await run('nbdinfo', ['--size', bob])).stdout.trim(), String(16 * MiB));
    const aliceLine = original.trim();
    writeFileSync(serverPskFile, readFileSync(bobFile, 'utf8'));
    const aliceFile = join(dir.path, 'alice-only.psk');
    writeFileSync(aliceFile, `${aliceLine}\n`);
    assert.notEqual((await run('nbdinfo', ['--size', alice.replace(serverPskFile, aliceFile)], { allowFailure: true })).code, 0);
    await waitForLog(/PSK file .* reloaded: 1 key/, 0);
  } finally {
    writeFileSync(serverPskFile, original);
  }
});
