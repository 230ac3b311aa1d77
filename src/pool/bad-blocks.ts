// What a read or a write of the data file does when the medium refuses it with EIO: it is retried,
// then narrowed to the 512-byte sectors that fail (bisection: a failing range is split in halves
// and each half tried again, so k bad sectors in n cost about 2k·log2(n/8) operations, down to
// ranges of NARROW_SECTORS_ONE_BY_ONE_MAX sectors, which are tried sector by sector: at most 8 more
// each), and the sectors are recorded as bad ranges (bad-ranges.ts). Anything but EIO (a failed sync, a closed
// file, ENOSPC) is not narrowed: it says nothing about where, and stays fail-stop.
//
// A write that is narrowed rewrites the pieces that take it, so the good sectors hold what the
// caller asked for; the caller then moves the block away from the bad ones (remap.ts). A read
// that is narrowed fills what reads; the caller fails the request for the rest with EIO.
import { performance } from 'node:perf_hooks';
import { NARROW_SECTORS_ONE_BY_ONE_MAX, READ_ATTEMPTS_MAX } from '../constants.ts';
import { ThinError } from '../errors.ts';
import type { BlockFile } from '../io/block-file.ts';
import { MEDIA_SECTOR_BYTES, isMediaError } from '../io/media-error.ts';

/** Half-open sector ranges [begin, end) of the data file. */
export interface SectorRange {
  beginSector: number;
  endSector: number;
}

export interface MediaErrorCounters {
  /** Reads that failed with EIO and then succeeded when tried again. */
  readsRecovered: number;
  /** Reads that still failed after READ_ATTEMPTS_MAX attempts (some sectors unreadable). */
  readsFailed: number;
  /** Writes that failed with EIO (worked around by a remap, or failed). */
  writesFailed: number;
}

/** The sectors a byte range touches. */
export function sectorsOf(offsetBytes: number, lengthBytes: number): SectorRange {
  return { beginSector: Math.floor(offsetBytes / MEDIA_SECTOR_BYTES), endSector: Math.ceil((offsetBytes + lengthBytes) / MEDIA_SECTOR_BYTES) };
}

/** Joins touching ranges (the bisection yields them in order). */
function joined(ranges: SectorRange[]): SectorRange[] {
  const out: SectorRange[] = [];
  for (const range of ranges) {
    const last = out[out.length - 1];
    if (last !== undefined && last.endSector === range.beginSector) last.endSector = range.endSector;
    else out.push({ ...range });
  }
  return out;
}

export class MediaErrors {
  readonly counters: MediaErrorCounters = { readsRecovered: 0, readsFailed: 0, writesFailed: 0 };
  readonly #file: BlockFile;

  constructor(file: BlockFile) {
    this.#file = file;
  }

  /**
   * Reads [offsetBytes, +target.length) of the data file, trying again when the medium refuses.
   * Returns the sector ranges that stay unreadable (empty: the read succeeded, all of target is
   * filled); the readable parts of target are filled either way. Throws what is not EIO.
   * `failedAttempts`: tries the caller already made and saw fail with EIO.
   */
  async read(target: Uint8Array, offsetBytes: number, failedAttempts = 0): Promise<SectorRange[]> {
    for (let attempt = failedAttempts + 1; ; attempt++) {
      try {
        await this.#file.read(target, offsetBytes);
        if (attempt > 1) this.counters.readsRecovered += 1;
        return [];
      } catch (error) {
        if (!isMediaError(error)) throw error;
        if (attempt >= READ_ATTEMPTS_MAX) break;
      }
    }
    this.counters.readsFailed += 1;
    const failing = await this.#narrow(offsetBytes, target.length, async (pieceOffset, pieceLength) => {
      await this.#file.read(target.subarray(pieceOffset - offsetBytes, pieceOffset - offsetBytes + pieceLength), pieceOffset);
    });
    // Unreadable sectors read as nothing we could vouch for: zeros in the buffer, never shown to a client.
    for (const range of failing) {
      const begin = Math.max(offsetBytes, range.beginSector * MEDIA_SECTOR_BYTES) - offsetBytes;
      const end = Math.min(offsetBytes + target.length, range.endSector * MEDIA_SECTOR_BYTES) - offsetBytes;
      target.fill(0, begin, end);
    }
    return failing;
  }

  /**
   * After a write of source at offsetBytes failed with EIO: writes it again piece by piece and
   * returns the sector ranges that refuse it (empty when the whole write went through this time).
   */
  async narrowWrite(source: Uint8Array, offsetBytes: number): Promise<SectorRange[]> {
    this.counters.writesFailed += 1;
    return this.#narrow(offsetBytes, source.length, async (pieceOffset, pieceLength) => {
      await this.#file.write(source.subarray(pieceOffset - offsetBytes, pieceOffset - offsetBytes + pieceLength), pieceOffset);
    });
  }

  /**
   * The sector ranges of [offsetBytes, +lengthBytes) on which `attempt` fails with EIO: a range
   * wider than NARROW_SECTORS_ONE_BY_ONE_MAX is tried whole and halved when it fails; a narrower
   * one is tried sector by sector (the caller has just seen the whole request fail, so a request
   * that narrow is not tried whole again).
   */
  async #narrow(offsetBytes: number, lengthBytes: number, attempt: (offsetBytes: number, lengthBytes: number) => Promise<void>): Promise<SectorRange[]> {
    const failing: SectorRange[] = [];
    const endBytes = offsetBytes + lengthBytes;
    const tries = async (beginSector: number, endSector: number): Promise<boolean> => {
      const pieceOffset = Math.max(offsetBytes, beginSector * MEDIA_SECTOR_BYTES);
      const pieceEnd = Math.min(endBytes, endSector * MEDIA_SECTOR_BYTES);
      try {
        await attempt(pieceOffset, pieceEnd - pieceOffset);
        return true;
      } catch (error) {
        if (!isMediaError(error)) throw error;
        return false;
      }
    };
    const visit = async (beginSector: number, endSector: number): Promise<void> => {
      if (endSector - beginSector <= NARROW_SECTORS_ONE_BY_ONE_MAX) {
        for (let sector = beginSector; sector < endSector; sector++) {
          if (!(await tries(sector, sector + 1))) failing.push({ beginSector: sector, endSector: sector + 1 });
        }
        return;
      }
      if (await tries(beginSector, endSector)) return;
      const middle = beginSector + Math.floor((endSector - beginSector) / 2);
      await visit(beginSector, middle);
      await visit(middle, endSector);
    };
    const { beginSector, endSector } = sectorsOf(offsetBytes, lengthBytes);
    await visit(beginSector, endSector);
    return joined(failing);
  }
}

/** The error a request gets for sectors that stay unreadable: EIO for that range only. */
export function unreadableError(what: string, dataBlock: number, ranges: readonly SectorRange[]): ThinError {
  const list = ranges.map((range) => `[${range.beginSector}, ${range.endSector})`).join(', ');
  return new ThinError(
    'THIN_IO',
    `Cannot read ${what}: sectors ${list} of data block ${dataBlock} are unreadable (EIO); the rest of the volume reads on, and a write that covers them moves the block`,
    { cause: Object.assign(new Error('EIO: unreadable sectors'), { code: 'EIO' }) },
  );
}

/** A write some sectors of which the medium refused even piece by piece: THIN_IO (EIO) with the ranges. */
export class SectorsRefused extends ThinError {
  readonly ranges: readonly SectorRange[];
  /** When the refused write began, and when its narrowing ended (performance.now(), ms): the remap benchmark's narrowing phase. */
  readonly writeStartedMs: number;
  readonly refusedMs: number;

  constructor(description: string, offsetBytes: number, lengthBytes: number, ranges: readonly SectorRange[], writeStartedMs = performance.now()) {
    const list = ranges.map((range) => `[${range.beginSector}, ${range.endSector})`).join(', ');
    super('THIN_IO', `Cannot write ${lengthBytes} bytes at offset ${offsetBytes} of ${description}: sectors ${list} refuse writes (EIO)`, {
      cause: Object.assign(new Error('EIO: sectors refuse writes'), { code: 'EIO' }),
    });
    this.ranges = ranges;
    this.writeStartedMs = writeStartedMs;
    this.refusedMs = performance.now();
  }
}
