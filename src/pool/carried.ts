// Bytes a remap's log record carried (docs/format.md "Delta log", F-LOG-9), replayed at open.
//
// A remap is made durable by one record holding the remap, the bad range and the bytes the write
// brought, with one sync of the metadata file: the new block's write is not synced before it. So
// after a power cut the new block may hold anything, and replay rebuilds it: the old block's bytes
// (held for good by its bad range, F-BAD-3, and in any case pending free while the log lives,
// F-LOG-8), with the carried bytes over them. Only records after the last one flagged dataSynced
// are rebuilt from: such a record proves the new blocks durable, and later writes into them may
// have been acknowledged since. A block carried twice (remapped again, off the first new block)
// is rebuilt from the first rebuild, in log order, and only blocks still in use are written.
//
// A read-write open writes the rebuilt blocks before its rollup (which syncs the data file before
// its superblock); a read-only open serves them from memory (CarriedOverlay). Sectors of an old
// block that no longer read are zeros in the rebuilt block, and recorded as bad (read error).
import { ThinError } from '../errors.ts';
import type { BlockFile } from '../io/block-file.ts';
import { ForwardingBlockFile } from '../io/forwarding.ts';
import { DeltaLogEntryKind, DeltaLogRecordFlag } from '../journal/log.ts';
import type { DeltaLogRecord } from '../journal/replay.ts';
import { MediaErrors, type SectorRange } from './bad-blocks.ts';

export interface CarriedRebuild {
  /** Data block → its rebuilt contents, for blocks still in use after the log. */
  blocks: Map<number, Uint8Array>;
  /** Sectors of old blocks that did not read (their bytes are zeros in the rebuilt blocks). */
  unreadable: SectorRange[];
  /** Some record after the last one flagged dataSynced carries bytes (DeltaLog.carriedSinceSync). */
  carriedSinceSync: boolean;
}

/** Rebuilds the blocks whose bytes records of the log carried and no later sync made durable (F-LOG-9). */
export async function rebuildCarried(records: readonly DeltaLogRecord[], data: BlockFile, blockSizeBytes: number, dataBlockCount: number): Promise<CarriedRebuild> {
  let first = 0;
  records.forEach((record, index) => {
    if ((record.flags & DeltaLogRecordFlag.dataSynced) !== 0) first = index + 1;
  });
  const rebuilt = new Map<number, Uint8Array>();
  const movedOff = new Set<number>();
  const unreadable: SectorRange[] = [];
  const media = new MediaErrors(data);
  let carriedSinceSync = false;
  for (const record of records.slice(first)) {
    if (record.carriedBytes.length > 0) carriedSinceSync = true;
    let carriedIndex = 0;
    for (const [entryIndex, entry] of record.entries.entries()) {
      if (entry.kind !== DeltaLogEntryKind.carried) continue;
      const bytes = record.carriedBytes[carriedIndex++]!;
      const offsetInBlockBytes = entry.virtualBlock;
      if (offsetInBlockBytes + bytes.length > blockSizeBytes || entry.dataBlock >= dataBlockCount || entry.oldDataBlock >= dataBlockCount || entry.dataBlock === entry.oldDataBlock) {
        throw new ThinError(
          'THIN_CORRUPT_BLOCK',
          `Delta log record ${record.sequence} (ring slot ${record.index}) entry ${entryIndex} carries ${bytes.length} bytes at byte ${offsetInBlockBytes} of data block ${entry.dataBlock} from data block ${entry.oldDataBlock}: outside the pool's blocks`,
        );
      }
      let content = rebuilt.get(entry.oldDataBlock);
      if (content === undefined) {
        content = new Uint8Array(blockSizeBytes);
        unreadable.push(...(await media.read(content, entry.oldDataBlock * blockSizeBytes)));
      } else {
        content = Uint8Array.from(content);
      }
      content.set(bytes, offsetInBlockBytes);
      rebuilt.set(entry.dataBlock, content);
      movedOff.add(entry.oldDataBlock);
    }
  }
  for (const block of movedOff) rebuilt.delete(block);
  return { blocks: rebuilt, unreadable, carriedSinceSync };
}

/** The data file of a read-only open, with rebuilt blocks (rebuildCarried) read from memory. */
export class CarriedOverlay extends ForwardingBlockFile {
  readonly #blocks: Map<number, Uint8Array>;
  readonly #blockSizeBytes: number;

  constructor(inner: BlockFile, blocks: Map<number, Uint8Array>, blockSizeBytes: number) {
    super(inner);
    this.#blocks = blocks;
    this.#blockSizeBytes = blockSizeBytes;
  }

  override readSync(target: Uint8Array, offsetBytes: number): void {
    super.readSync(target, offsetBytes);
    this.#patch(target, offsetBytes);
  }

  override async read(target: Uint8Array, offsetBytes: number): Promise<void> {
    await super.read(target, offsetBytes);
    this.#patch(target, offsetBytes);
  }

  override async write(source: Uint8Array, offsetBytes: number): Promise<void> {
    await super.write(source, offsetBytes);
    // Written, a block reads from the file again.
    for (let block = Math.floor(offsetBytes / this.#blockSizeBytes); block * this.#blockSizeBytes < offsetBytes + source.length; block++) {
      const content = this.#blocks.get(block);
      if (content === undefined) continue;
      const begin = Math.max(offsetBytes, block * this.#blockSizeBytes);
      const end = Math.min(offsetBytes + source.length, (block + 1) * this.#blockSizeBytes);
      content.set(source.subarray(begin - offsetBytes, end - offsetBytes), begin - block * this.#blockSizeBytes);
    }
  }

  #patch(target: Uint8Array, offsetBytes: number): void {
    const bs = this.#blockSizeBytes;
    for (let block = Math.floor(offsetBytes / bs); block * bs < offsetBytes + target.length; block++) {
      const content = this.#blocks.get(block);
      if (content === undefined) continue;
      const begin = Math.max(offsetBytes, block * bs);
      const end = Math.min(offsetBytes + target.length, (block + 1) * bs);
      target.set(content.subarray(begin - block * bs, end - block * bs), begin - offsetBytes);
    }
  }
}
