// TLS credentials for the interop tests, made the way nbdkit's and qemu's documentation say:
// GnuTLS certtool for a CA, a server and client certificates, psktool for PSK files. The
// directories use the names both libnbd (`tls-certificates=DIR`) and qemu (`tls-creds-x509,dir=DIR`)
// look for: ca-cert.pem, server-cert.pem/server-key.pem, client-cert.pem/client-key.pem.
import { spawnSync } from 'node:child_process';
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { requireTools } from './helpers.ts';

function runTool(command: string, args: string[]): void {
  const result = spawnSync(command, args, { encoding: 'utf8' });
  if (result.status !== 0) throw new Error(`${command} ${args.join(' ')} failed (${result.status}): ${result.stderr}`);
}

function privateKey(path: string): void {
  runTool('certtool', ['--generate-privkey', '--key-type=ecdsa', '--outfile', path]);
}

export interface CertificateAuthority {
  dir: string;
  certFile: string;
  keyFile: string;
}

/** A CA in DIR (ca-cert.pem, ca-key.pem). */
export function makeCa(dir: string, name: string): CertificateAuthority {
  requireTools('certtool');
  mkdirSync(dir, { recursive: true });
  const keyFile = join(dir, 'ca-key.pem');
  const certFile = join(dir, 'ca-cert.pem');
  privateKey(keyFile);
  const template = join(dir, 'ca.info');
  writeFileSync(template, `cn = ${name}\nca\ncert_signing_key\nexpiration_days = 30\n`);
  runTool('certtool', ['--generate-self-signed', '--load-privkey', keyFile, '--template', template, '--outfile', certFile]);
  return { dir, certFile, keyFile };
}

/** A certificate signed by `ca`, written as `${role}-cert.pem` and `${role}-key.pem` in DIR, with the CA's certificate beside it. */
export function makeCertificate(ca: CertificateAuthority, dir: string, role: 'server' | 'client', commonName: string): { certFile: string; keyFile: string } {
  mkdirSync(dir, { recursive: true });
  const keyFile = join(dir, `${role}-key.pem`);
  const certFile = join(dir, `${role}-cert.pem`);
  privateKey(keyFile);
  const template = join(dir, `${role}.info`);
  const usage = role === 'server' ? 'tls_www_server\ndns_name = localhost\nip_address = 127.0.0.1\n' : 'tls_www_client\n';
  writeFileSync(template, `cn = ${commonName}\n${usage}signing_key\nencryption_key\nexpiration_days = 30\n`);
  runTool('certtool', [
    '--generate-certificate',
    '--load-ca-certificate', ca.certFile,
    '--load-ca-privkey', ca.keyFile,
    '--load-privkey', keyFile,
    '--template', template,
    '--outfile', certFile,
  ]);
  runTool('cp', [ca.certFile, join(dir, 'ca-cert.pem')]);
  return { certFile, keyFile };
}

/** Adds (or replaces) a random key for `user` in a psktool file; returns the file. */
export function makePsk(file: string, user: string): string {
  requireTools('psktool');
  runTool('psktool', ['-u', user, '-p', file]);
  return file;
}
