// The real clients over TLS, each with both credential kinds: nbdinfo (nbds:// URIs), qemu-io and
// qemu-img (--object tls-creds-x509 / tls-creds-psk) and nbdcopy, against a server that requires
// TLS, verifies client certificates against a CA and holds a psktool key file.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdirSync, readFileSync, writeFileSync, copyFileSync, truncateSync, openSync, writeSync, closeSync } from 'node:fs';
import { join } from 'node:path';
import { loadNbdTls } from '../../src/nbd/tls.ts';
import { patternBytes, requireTools, run, startServer, tempDir } from './helpers.ts';
import { MemoryExport } from './memory-export.ts';
import { makeCa, makeCertificate, makePsk } from './tls-credentials.ts';

const MiB = 1024 * 1024;

requireTools('nbdinfo', 'nbdcopy', 'qemu-io', 'qemu-img', 'certtool', 'psktool');
const dir = tempDir('tls-clients');
const ca = makeCa(join(dir.path, 'ca'), 'thinbd test CA');
const serverCert = makeCertificate(ca, join(dir.path, 'server'), 'server', 'localhost');
const clientDir = join(dir.path, 'client');
makeCertificate(ca, clientDir, 'client', 'alice');
// qemu wants the PSK file as DIR/keys.psk; libnbd takes the file itself.
const pskDir = join(dir.path, 'psk');
mkdirSync(pskDir);
const serverPskFile = makePsk(join(dir.path, 'server.psk'), 'alice');
makePsk(serverPskFile, 'qemu');
copyFileSync(serverPskFile, join(pskDir, 'keys.psk'));

const disk = new MemoryExport({ name: 'disk', sizeBytes: 64 * MiB });
const logs: string[] = [];
const running = await startServer([disk], {
  tls: loadNbdTls('require', { ...serverCert, caFile: ca.certFile, pskFile: serverPskFile }),
  log: (entry) => logs.push(entry.message),
});
after(async () => {
  await running.close();
  dir.remove();
});

const x509Uri = (name: string) => `nbds://127.0.0.1:${running.port}/${name}?tls-certificates=${clientDir}`;
const pskUri = (name: string) => `nbds://alice@127.0.0.1:${running.port}/${name}?tls-psk-file=${serverPskFile}`;

const credentials = {
  x509: {
    uri: x509Uri,
    qemuObject: `tls-creds-x509,id=tls0,endpoint=client,dir=${clientDir}`,
    established: /TLS established \(TLSv1\.[23], client certificate alice\)/,
  },
  psk: {
    uri: pskUri,
    qemuObject: `tls-creds-psk,id=tls0,endpoint=client,dir=${pskDir},username=qemu`,
    established: /TLS established \(TLSv1\.[23], PSK identity (alice|qemu)\)/,
  },
};

for (const [kind, creds] of Object.entries(credentials)) {
  test(`nbdinfo reads the export's size and flags over TLS with ${kind}`, async () => {
    const before = logs.length;
    const info = JSON.parse((await run('nbdinfo', ['--json', creds.uri('disk')])).stdout) as Record<string, unknown> & { exports: Array<Record<string, unknown>> };
    assert.equal(info['TLS'], true);
    assert.equal(info.exports[0]!['export-size'], 64 * MiB);
    assert.match(logs.slice(before).join('\n'), creds.established);
  });

  test(`qemu-io writes and reads patterns over TLS with ${kind} (--object ${kind === 'x509' ? 'tls-creds-x509' : 'tls-creds-psk'})`, async () => {
    const offset = kind === 'x509' ? 0 : 8 * MiB;
    const image = `driver=nbd,host=127.0.0.1,port=${running.port},export=disk,tls-creds=tls0`;
    const qemuIo = async (...commands: string[]) => {
      const args = ['--object', creds.qemuObject, '--image-opts', image];
      for (const command of commands) args.push('-c', command);
      const { stdout, stderr } = await run('qemu-io', args);
      assert.doesNotMatch(stdout + stderr, /Pattern verification failed|error|failed/i, stdout + stderr);
    };
    await qemuIo(`write -P 0x5a ${offset} 1M`, `write -P 0x33 ${offset + 2 * MiB} 64k`, 'flush');
    await qemuIo(`read -P 0x5a ${offset} 1M`, `read -P 0x33 ${offset + 2 * MiB} 64k`, `read -P 0 ${offset + MiB} 1M`);
    assert.ok(Buffer.from(disk.contents().subarray(offset, offset + MiB)).equals(Buffer.alloc(MiB, 0x5a)));
  });

  test(`qemu-img converts a file into the export and back over TLS with ${kind}`, async () => {
    const source = join(dir.path, `qemu-${kind}.raw`);
    const back = join(dir.path, `qemu-${kind}-back.raw`);
    writeFileSync(source, patternBytes(3 * MiB, kind === 'x509' ? 3 : 4));
    const target = `driver=nbd,host=127.0.0.1,port=${running.port},export=disk,tls-creds=tls0`;
    await run('qemu-img', ['convert', '-n', '--object', creds.qemuObject, '-f', 'raw', source, '--target-image-opts', target]);
    await run('qemu-img', ['convert', '--object', creds.qemuObject, '--image-opts', target, '-O', 'raw', back]);
    assert.ok(readFileSync(back).subarray(0, 3 * MiB).equals(readFileSync(source)));
    const info = JSON.parse((await run('qemu-img', ['info', '--output=json', '--object', creds.qemuObject, '--image-opts', target])).stdout) as { 'virtual-size': number };
    assert.equal(info['virtual-size'], 64 * MiB);
  });

  test(`nbdcopy copies a sparse file in and out over 4 TLS connections with ${kind}`, async () => {
    const source = join(dir.path, `nbdcopy-${kind}.raw`);
    writeFileSync(source, '');
    truncateSync(source, 64 * MiB);
    const fd = openSync(source, 'r+');
    writeSync(fd, patternBytes(5 * MiB, kind === 'x509' ? 5 : 6), 0, 5 * MiB, 20 * MiB);
    closeSync(fd);
    const before = logs.length;
    await run('nbdcopy', ['--connections=4', source, creds.uri('disk')]);
    const copy = join(dir.path, `nbdcopy-${kind}-back.raw`);
    await run('nbdcopy', ['--connections=4', creds.uri('disk'), copy]);
    assert.ok(readFileSync(copy).equals(readFileSync(source)));
    assert.ok(Buffer.from(disk.contents()).equals(readFileSync(source)));
    const established = logs.slice(before).filter((line) => creds.established.test(line)).length;
    assert.ok(established >= 2, `every nbdcopy connection used TLS (${established} handshakes logged)`);
  });
}
