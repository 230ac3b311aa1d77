// Memory on 4 KiB boundaries, for writes that go around the page cache (O_DIRECT, io/file.ts).
//
// Linux's direct I/O needs the buffer's address, the file offset and the length aligned to the
// device's logical block size (open(2), "O_DIRECT"); 4 KiB covers 512-byte and 4 KiB devices.
// JavaScript cannot see an address, and Node's large buffers sit 16 bytes past a page boundary
// (glibc's header before memory it maps), so the address is asked of libc through koffi:
// memmove(p, p, 0) returns p.
import { loadKoffi } from '../util/native.ts';

/** Alignment of direct writes: memory, file offset and length. */
export const DIRECT_ALIGN_BYTES = 4096;

const koffi = loadKoffi();
const memmove = koffi.load('libc.so.6').func('uintptr_t memmove(void *, void *, size_t)') as (to: Uint8Array, from: Uint8Array, bytes: number) => number | bigint;

/** The address of a view's first byte (a safe integer on x86-64 and arm64: user addresses are below 2^48). */
export function addressOf(view: Uint8Array): number {
  return Number(memmove(view, view, 0));
}

/** Whether a view starts on a DIRECT_ALIGN_BYTES boundary of memory. */
export function isAlignedInMemory(view: Uint8Array): boolean {
  return addressOf(view) % DIRECT_ALIGN_BYTES === 0;
}

/**
 * `lengthBytes` of shared memory whose first byte is on a DIRECT_ALIGN_BYTES boundary (a view
 * into a SharedArrayBuffer one alignment larger).
 */
export function alignedSharedBytes(lengthBytes: number): Uint8Array {
  const whole = new Uint8Array(new SharedArrayBuffer(lengthBytes + DIRECT_ALIGN_BYTES));
  const skip = (DIRECT_ALIGN_BYTES - (addressOf(whole) % DIRECT_ALIGN_BYTES)) % DIRECT_ALIGN_BYTES;
  return whole.subarray(skip, skip + lengthBytes);
}
