// Which I/O failures are the medium's: an EIO from a read or a write names the range that failed,
// so the layers above may narrow it to sectors and work around them (pool/bad-blocks.ts,
// io/mirror.ts). Anything else (a failed sync, ENOSPC, a closed file, a machine that lost power)
// says nothing about where, and stays fail-stop (docs/internals.md decision 11).
import { isThinError } from '../errors.ts';

/** 512-byte sectors: the unit NBD, dm-thin and the kernel's block layer count in, and the unit bad ranges are recorded in. */
export const MEDIA_SECTOR_BYTES = 512;

function codeOf(error: unknown): string | undefined {
  if (typeof error === 'object' && error !== null && 'code' in error && typeof error.code === 'string') return error.code;
  return undefined;
}

/** True for a THIN_IO error whose cause (or itself) is EIO: a read or write the medium refused. */
export function isMediaError(error: unknown): boolean {
  if (!isThinError(error, 'THIN_IO')) return codeOf(error) === 'EIO';
  let cause: unknown = error.cause;
  for (let depth = 0; depth < 4 && cause !== undefined; depth++) {
    if (codeOf(cause) === 'EIO') return true;
    cause = typeof cause === 'object' && cause !== null && 'cause' in cause ? cause.cause : undefined;
  }
  return false;
}
