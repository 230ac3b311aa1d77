// sd_notify(3) without libsystemd: a service started with Type=notify tells systemd it is ready
// (READY=1), what it is doing (STATUS=…) and that it is stopping (STOPPING=1) by sending one
// datagram to the Unix socket named in $NOTIFY_SOCKET. Node's dgram module has no Unix datagram
// sockets, so socket(2) and sendto(2) are called from libc through koffi, as the pool lock calls
// flock. Outside systemd ($NOTIFY_SOCKET unset) nothing is sent.
import { loadKoffi } from '../util/native.ts';

const koffi = loadKoffi();

const AF_UNIX = 1;
const SOCK_DGRAM = 2;
const SOCK_CLOEXEC = 0o2000000;
/** struct sockaddr_un: sa_family_t (2 bytes) then sun_path[108]. */
const SUN_PATH_BYTES = 108;

const libc = koffi.load('libc.so.6');
const socket = libc.func('int socket(int, int, int)') as (domain: number, type: number, protocol: number) => number;
const sendto = libc.func('intptr_t sendto(int, const uint8_t *, uintptr_t, int, const uint8_t *, uint32_t)') as (
  fd: number,
  message: Uint8Array,
  lengthBytes: number,
  flags: number,
  address: Uint8Array,
  addressBytes: number,
) => number;
const close = libc.func('int close(int)') as (fd: number) => number;

/** The socket address of $NOTIFY_SOCKET: a path, or (leading `@`) a name in the abstract namespace. */
function notifyAddress(name: string): { address: Uint8Array; addressBytes: number } | undefined {
  const abstract = name.startsWith('@');
  const path = Buffer.from(abstract ? `\0${name.slice(1)}` : name, 'utf8');
  if (path.length === 0 || path.length >= SUN_PATH_BYTES) return undefined;
  const address = new Uint8Array(2 + SUN_PATH_BYTES);
  new DataView(address.buffer).setUint16(0, AF_UNIX, true);
  address.set(path, 2);
  // A path is NUL-terminated; an abstract name is exactly its bytes.
  return { address, addressBytes: 2 + path.length + (abstract ? 0 : 1) };
}

/**
 * Sends `state` (newline-separated KEY=VALUE assignments) to systemd. Returns false when not run
 * by systemd with a notify socket, or when the datagram could not be sent.
 */
export function notifySystemd(state: string, env: NodeJS.ProcessEnv = process.env): boolean {
  const name = env['NOTIFY_SOCKET'];
  if (name === undefined || name === '') return false;
  const target = notifyAddress(name);
  if (target === undefined) return false;
  const fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return false;
  try {
    const message = Buffer.from(state, 'utf8');
    return sendto(fd, message, message.length, 0, target.address, target.addressBytes) === message.length;
  } finally {
    close(fd);
  }
}
