// TLS on the NBD port (spec "TLS support"): the credentials and the upgrade of an open connection
// after NBD_OPT_STARTTLS. The spec leaves authentication to the deployment; thinbd offers what
// nbdkit and qemu-nbd offer, so the same clients and key files work:
//   - X.509: the server's certificate and key; with a CA, clients must present a certificate that
//     chains to it (nbdkit --tls-verify-peer, qemu tls-creds-x509 verify-peer=on).
//   - PSK: nbdkit's file format (made by GnuTLS `psktool -u NAME -p FILE`): one `username:hexkey`
//     per line. The file is read again when it changes, so a key is added or revoked without a
//     restart (GnuTLS also reads its PSK file at each handshake).
// Both may be given: a client then authenticates with either.
//
// Modes (spec "Server-side requirements"): `on` is the spec's SELECTIVETLS with no TLS-only
// export (STARTTLS is offered, plain clients still work); `require` is FORCEDTLS (every option but
// STARTTLS and ABORT gets NBD_REP_ERR_TLS_REQD, nothing is listed or opened before TLS).

import { readFileSync, statSync } from 'node:fs';
import tls from 'node:tls';
import type { Duplex } from 'node:stream';
import { NBD_TLS_PSK_IDENTITY_BYTES_MAX, NBD_TLS_PSK_KEY_BYTES_MAX } from '../constants.ts';
import { ThinError } from '../errors.ts';
import type { LogSink } from '../util/log.ts';

export type NbdTlsMode = 'off' | 'on' | 'require';

export interface NbdTlsFiles {
  /** PEM certificate chain the server presents (X.509). */
  certFile?: string;
  /** PEM private key of that certificate. */
  keyFile?: string;
  /** PEM CA certificates: when given, clients must present a certificate signed by one of them. */
  caFile?: string;
  /** nbdkit/psktool PSK file: `username:hexkey` lines. */
  pskFile?: string;
}

/** What the server needs to upgrade a connection; built once from the files (loadNbdTls). */
export interface NbdTls {
  readonly mode: 'on' | 'require';
  /** Wraps an open connection (its STARTTLS reply already sent) in the server side of TLS. */
  upgrade(socket: Duplex): tls.TLSSocket;
}

/** One line of a PSK file, parsed. */
export interface PskEntry {
  identity: string;
  key: Buffer;
}

/** Parses nbdkit's PSK file format; a malformed line is an error naming the file and line. */
export function parsePskFile(text: string, fileName: string): Map<string, Buffer> {
  const keys = new Map<string, Buffer>();
  const lines = text.split('\n');
  for (let index = 0; index < lines.length; index++) {
    const line = lines[index]!.replace(/\r$/, '');
    if (line.trim() === '') continue;
    const where = `${fileName} line ${index + 1}`;
    const colon = line.lastIndexOf(':');
    if (colon <= 0) throw new ThinError('THIN_INVALID', `PSK file ${where} is not "username:hexkey".`);
    const identity = line.slice(0, colon);
    const hex = line.slice(colon + 1).trim();
    if (Buffer.byteLength(identity, 'utf8') > NBD_TLS_PSK_IDENTITY_BYTES_MAX) {
      throw new ThinError('THIN_INVALID', `PSK file ${where}: the username is longer than ${NBD_TLS_PSK_IDENTITY_BYTES_MAX} bytes.`);
    }
    if (hex.length === 0 || hex.length % 2 !== 0 || !/^[0-9a-fA-F]+$/.test(hex)) {
      throw new ThinError('THIN_INVALID', `PSK file ${where}: the key of ${JSON.stringify(identity)} is not an even number of hex digits.`);
    }
    if (hex.length / 2 > NBD_TLS_PSK_KEY_BYTES_MAX) {
      throw new ThinError('THIN_INVALID', `PSK file ${where}: the key of ${JSON.stringify(identity)} is longer than ${NBD_TLS_PSK_KEY_BYTES_MAX} bytes.`);
    }
    if (keys.has(identity)) throw new ThinError('THIN_INVALID', `PSK file ${where}: username ${JSON.stringify(identity)} appears twice.`);
    keys.set(identity, Buffer.from(hex, 'hex'));
  }
  if (keys.size === 0) throw new ThinError('THIN_INVALID', `PSK file ${fileName} holds no key.`);
  return keys;
}

/** A PSK file, read again whenever its size or modification time changes. */
class PskFile {
  readonly #path: string;
  readonly #log: LogSink;
  #stamp = '';
  #keys = new Map<string, Buffer>();

  constructor(path: string, log: LogSink) {
    this.#path = path;
    this.#log = log;
    this.#reload(true);
  }

  /** The key of one identity, or undefined (unknown identity, or the file became unreadable). */
  lookup(identity: string): Buffer | undefined {
    this.#reload(false);
    return this.#keys.get(identity);
  }

  #reload(first: boolean): void {
    let stamp: string;
    try {
      const stats = statSync(this.#path);
      stamp = `${stats.size}:${stats.mtimeMs}:${stats.ino}`;
      if (stamp === this.#stamp) return;
      this.#keys = parsePskFile(readFileSync(this.#path, 'utf8'), this.#path);
      this.#stamp = stamp;
      if (!first) this.#log({ level: 'info', event: 'tls.psk_reloaded', message: `PSK file ${this.#path} reloaded: ${this.#keys.size} key(s)` });
    } catch (error) {
      if (first) {
        if (error instanceof ThinError) throw error;
        throw new ThinError('THIN_INVALID', `Cannot read the PSK file ${this.#path}: ${error instanceof Error ? error.message : String(error)}`, { cause: error });
      }
      // A file that went bad admits no one until it is fixed: failing open would keep revoked keys.
      this.#keys = new Map();
      this.#stamp = '';
      this.#log({
        level: 'error',
        event: 'tls.psk_unreadable',
        message: `PSK file ${this.#path} cannot be read, refusing PSK clients: ${error instanceof Error ? error.message : String(error)}`,
      });
    }
  }
}

/**
 * The cipher list (Node takes TLS 1.3 suites and older ones in one string):
 *   - TLS 1.3 suites hashing with SHA-256 first, chosen by the server (honorCipherOrder): OpenSSL
 *     gives a key from Node's pskCallback a SHA-256 hash and ignores it when the suite chosen
 *     hashes otherwise; with a certificate configured too, the handshake then fell back to X.509
 *     and a PSK-only client was refused (GnuTLS: "Insufficient credentials").
 *   - Node's default list ends with `!PSK`, which keeps every TLS 1.2 PSK suite out however they
 *     are added: it is dropped, and the forward-secret ECDHE-PSK suites go ahead of the defaults.
 */
function cipherList(): string {
  const tls13 = ['TLS_AES_128_GCM_SHA256', 'TLS_CHACHA20_POLY1305_SHA256', 'TLS_AES_256_GCM_SHA384'];
  const psk12 = ['ECDHE-PSK-CHACHA20-POLY1305', 'ECDHE-PSK-AES256-CBC-SHA384', 'ECDHE-PSK-AES128-CBC-SHA256'];
  const defaults = tls.DEFAULT_CIPHERS.split(':').filter((cipher) => cipher !== '!PSK' && !tls13.includes(cipher));
  return [...tls13, ...psk12, ...defaults].join(':');
}

function readPem(path: string, what: string): Buffer {
  try {
    return readFileSync(path);
  } catch (error) {
    throw new ThinError('THIN_INVALID', `Cannot read the TLS ${what} ${path}: ${error instanceof Error ? error.message : String(error)}`, { cause: error });
  }
}

/** Reads and checks the credentials; throws a sentence naming the file when one is unusable. */
export function loadNbdTls(mode: 'on' | 'require', files: NbdTlsFiles, log: LogSink = () => {}): NbdTls {
  if ((files.certFile === undefined) !== (files.keyFile === undefined)) {
    throw new ThinError('THIN_INVALID', 'A TLS certificate needs its key and a key its certificate (--tls-cert and --tls-key go together).');
  }
  if (files.certFile === undefined && files.pskFile === undefined) {
    throw new ThinError('THIN_INVALID', `TLS ${mode} needs credentials: --tls-cert and --tls-key, or --tls-psk, or both.`);
  }
  if (files.caFile !== undefined && files.certFile === undefined) {
    throw new ThinError('THIN_INVALID', '--tls-ca verifies client certificates, which needs a server certificate (--tls-cert, --tls-key).');
  }
  const contextOptions: tls.SecureContextOptions = {
    minVersion: 'TLSv1.2',
    ciphers: cipherList(),
    honorCipherOrder: true,
    // OpenSSL refuses a PSK handshake on a server that verifies peers unless sessions have a
    // context ("session id context uninitialized"); tls.Server sets one, a bare TLSSocket does not.
    sessionIdContext: 'thinbd-nbd',
  };
  if (files.certFile !== undefined && files.keyFile !== undefined) {
    contextOptions.cert = readPem(files.certFile, 'certificate');
    contextOptions.key = readPem(files.keyFile, 'key');
  }
  if (files.caFile !== undefined) contextOptions.ca = readPem(files.caFile, 'CA file');
  let secureContext: tls.SecureContext;
  try {
    secureContext = tls.createSecureContext(contextOptions);
  } catch (error) {
    const which = [files.certFile, files.keyFile, files.caFile].filter((file) => file !== undefined).join(', ');
    throw new ThinError('THIN_INVALID', `The TLS credentials (${which}) are not usable: ${error instanceof Error ? error.message : String(error)}`, { cause: error });
  }
  const psk = files.pskFile === undefined ? undefined : new PskFile(files.pskFile, log);
  const verifyClients = files.caFile !== undefined;
  const pskCallback = (socket: tls.TLSSocket, identity: string): Buffer | null => {
    const key = psk?.lookup(identity);
    if (key === undefined) return null;
    pskIdentities.set(socket, identity);
    return key;
  };
  return {
    mode,
    upgrade(socket: Duplex): tls.TLSSocket {
      return new tls.TLSSocket(socket as unknown as import('node:net').Socket, {
        isServer: true,
        secureContext,
        // A PSK handshake carries no certificate, and Node counts it as verified (TLS 1.2 PSK
        // suites, and TLS 1.3 external PSKs): both kinds of client can meet one server.
        requestCert: verifyClients,
        rejectUnauthorized: verifyClients,
        ...(psk === undefined ? {} : { pskCallback }),
      });
    },
  };
}

/** The PSK identity each connection authenticated with (Node does not keep it on the socket). */
const pskIdentities = new WeakMap<tls.TLSSocket, string>();

/** How a TLS connection authenticated, for the log: PSK identity or certificate subject. */
export function describeTlsPeer(socket: tls.TLSSocket): string {
  const protocol = socket.getProtocol() ?? 'TLS';
  const identity = pskIdentities.get(socket);
  if (identity !== undefined) return `${protocol}, PSK identity ${identity}`;
  const certificate = socket.getPeerCertificate();
  if (certificate !== null && typeof certificate === 'object' && certificate.subject !== undefined) {
    return `${protocol}, client certificate ${certificate.subject.CN ?? JSON.stringify(certificate.subject)}`;
  }
  return `${protocol}`;
}
