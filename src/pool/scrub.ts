// `thinbd scrub`: reads everything the pool holds, so that sectors going bad are found while the
// data on them can still be moved and while the metadata still has a good copy (a drive's own
// surface scan finds them only when it is asked). Works on a served pool, beside its clients, at
// a bounded rate (SCRUB_RATE_BYTES_PER_SECOND_DEFAULT).
//
// - Metadata: every block in use, each copy, compared and mended (pdata/scrub.ts).
// - Data: every data block the data space map counts used (every volume's and snapshot's data, once
//   however many share it), read in SCRUB_CHUNK_BYTES pieces through the data path's retries and
//   narrowing (bad-blocks.ts). Unreadable sectors are recorded as bad ranges (durably, by a commit
//   at the end); the data there is gone, and a read of them fails with EIO until a write covers
//   them (docs/format.md F-BAD-5). Blocks that already hold a bad range are not read again; those
//   of them a volume or snapshot still maps (F-BAD-3: the range holds one reference, a mapping
//   another) have their unreadable ranges reported as known, so a scrub after a client met the
//   error does not say that everything read.
import { SCRUB_CHUNK_BYTES, SCRUB_RATE_BYTES_PER_SECOND_DEFAULT } from '../constants.ts';
import { ThinError, assert } from '../errors.ts';
import { scrubMetadata, type MetadataScrubReport } from '../pdata/scrub.ts';
import type { SpaceMap, TransactionManager } from '../pdata/index.ts';
import type { MediaErrors, SectorRange } from './bad-blocks.ts';
import { BadRangeFlag, type BadRanges } from './bad-ranges.ts';

export interface ScrubOptions {
  /** Bytes read per second at most (data and metadata together); default SCRUB_RATE_BYTES_PER_SECOND_DEFAULT. */
  rateBytesPerSecond?: number;
  /** Called after each piece with bytes read so far and the total expected. */
  onProgress?: (doneBytes: number, totalBytes: number) => void;
  /** Clock and sleep, for tests (default: the real ones). */
  nowMs?: () => number;
  sleepMs?: (ms: number) => Promise<void>;
}

export interface DataScrubReport {
  /** Data blocks read (in use, without a bad range recorded before). */
  blocksRead: number;
  /** Blocks passed over because they already hold a recorded bad range. */
  blocksKnownBad: number;
  bytesRead: number;
  /** Reads that failed and then succeeded when tried again. */
  readsRecovered: number;
  /** Sectors found unreadable now, per data block: recorded as bad ranges. */
  unreadable: Array<{ dataBlock: number; beginSector: number; endSector: number }>;
  /**
   * Sectors recorded unreadable before (a client's read, an earlier scrub) in blocks a volume or
   * snapshot still maps: data still lost until a write covers them.
   */
  knownUnreadable: Array<{ dataBlock: number; beginSector: number; endSector: number }>;
}

export interface ScrubReport {
  metadata: MetadataScrubReport;
  data: DataScrubReport;
  /** Bad ranges recorded in the pool after the scrub (data and metadata). */
  badRanges: number;
  durationMs: number;
  /** Whether it stopped early (the pool closed under it). */
  stopped: boolean;
}

/** What the scrub needs from the engine (PoolCore). */
export interface ScrubHost {
  readonly tm: TransactionManager;
  readonly dataSpace: SpaceMap;
  readonly blockSizeBytes: number;
  readonly media: MediaErrors;
  readonly badRanges: BadRanges;
  /** Records unreadable data sectors (when the pool may change). */
  recordBad(ranges: readonly SectorRange[], flags: number): void;
  readonly closed: boolean;
}

export async function scrubPool(host: ScrubHost, options: ScrubOptions = {}): Promise<ScrubReport> {
  const rate = options.rateBytesPerSecond ?? SCRUB_RATE_BYTES_PER_SECOND_DEFAULT;
  if (!(Number.isFinite(rate) && rate > 0)) throw new ThinError('THIN_INVALID', `A scrub rate of ${rate} bytes per second is not a positive number`);
  const nowMs = options.nowMs ?? (() => performance.now());
  const sleepMs = options.sleepMs ?? ((ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms)));
  const startMs = nowMs();
  const bs = host.blockSizeBytes;
  assert(SCRUB_CHUNK_BYTES % 512 === 0, 'scrub chunks are whole sectors');

  const usedDataBlocks = host.dataSpace.usedBlockCount;
  const totalBytes = usedDataBlocks * bs + host.tm.metadataBlocksUsed * 4096 * (host.tm.mirror?.copyCount ?? 1);
  let doneBytes = 0;
  let stopped = false;
  // Paces reads to the rate: after each piece, sleep until the bytes so far fit in the time so far.
  const pace = async (bytesJustRead: number): Promise<boolean> => {
    doneBytes += bytesJustRead;
    options.onProgress?.(Math.min(doneBytes, totalBytes), totalBytes);
    const dueMs = startMs + (doneBytes / rate) * 1000;
    const waitMs = dueMs - nowMs();
    if (waitMs > 0) await sleepMs(waitMs);
    if (host.closed) stopped = true;
    return !stopped;
  };

  const metadata = await scrubMetadata(host.tm, pace);

  const data: DataScrubReport = { blocksRead: 0, blocksKnownBad: 0, bytesRead: 0, readsRecovered: 0, unreadable: [], knownUnreadable: [] };
  const recoveredBefore = host.media.counters.readsRecovered;
  const chunkBytes = Math.min(SCRUB_CHUNK_BYTES, bs);
  const buffer = new Uint8Array(chunkBytes);
  // The extents are listed first: recording a bad range changes the data space map under a generator.
  const extents = stopped ? [] : [...host.dataSpace.extents()];
  outer: for (const extent of extents) {
    for (let block = extent.begin; block < extent.begin + extent.lengthBlocks; block++) {
      if (host.badRanges.hasDataBlock(block)) {
        data.blocksKnownBad += 1;
        if (host.dataSpace.count(block) > 1) {
          for (const range of host.badRanges.dataRangesIn(block)) {
            if ((range.flags & BadRangeFlag.readError) !== 0) data.knownUnreadable.push({ dataBlock: block, beginSector: range.beginSector, endSector: range.endSector });
          }
        }
        continue;
      }
      for (let offsetInBlock = 0; offsetInBlock < bs; offsetInBlock += chunkBytes) {
        const offsetBytes = block * bs + offsetInBlock;
        const unreadable = await host.media.read(buffer, offsetBytes);
        data.bytesRead += chunkBytes;
        if (unreadable.length > 0) {
          for (const range of unreadable) data.unreadable.push({ dataBlock: block, ...range });
          host.recordBad(unreadable, BadRangeFlag.readError);
        }
        if (!(await pace(chunkBytes))) break outer;
      }
      data.blocksRead += 1;
    }
  }
  data.readsRecovered = host.media.counters.readsRecovered - recoveredBefore;
  return { metadata, data, badRanges: host.badRanges.count, durationMs: nowMs() - startMs, stopped };
}
