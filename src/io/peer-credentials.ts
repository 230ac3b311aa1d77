// Who is at the other end of a Unix socket: SO_PEERCRED, the credentials the kernel recorded when
// the peer connected (it cannot lie about them). Node has no API for it, so getsockopt is called
// from libc through koffi, as the pool lock calls flock.
import { loadKoffi } from '../util/native.ts';

const koffi = loadKoffi();

const SOL_SOCKET = 1;
const SO_PEERCRED = 17;
/** struct ucred { pid_t pid; uid_t uid; gid_t gid; }: three 32-bit fields. */
const UCRED_BYTES = 12;

const getsockopt = koffi
  .load('libc.so.6')
  .func('int getsockopt(int, int, int, _Out_ uint8_t *, _Inout_ uint32_t *)') as (
  fd: number,
  level: number,
  name: number,
  value: Uint8Array,
  length: number[],
) => number;

export interface PeerCredentials {
  pid: number;
  uid: number;
  gid: number;
}

/** The peer of a connected Unix socket descriptor, or undefined when the kernel will not say. */
export function peerCredentials(fd: number): PeerCredentials | undefined {
  const value = new Uint8Array(UCRED_BYTES);
  const length = [UCRED_BYTES];
  if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, value, length) !== 0 || length[0] !== UCRED_BYTES) return undefined;
  const view = new DataView(value.buffer);
  return { pid: view.getInt32(0, true), uid: view.getUint32(4, true), gid: view.getUint32(8, true) };
}
