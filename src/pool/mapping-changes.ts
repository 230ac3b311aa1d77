// Mapping changes: a volume's virtual blocks to data blocks, as extents in its mapping tree
// (F-POOL-20..24), and the data reference counts that follow them.
//
// Every change is synchronous and runs as one engine metadata change (MappingHost.mutate: room
// checked first, needs-check if it is cut short), and is noted for the delta log as the logical
// change it is (a map, an unmap batch, one remap), so that replay repeats it exactly.
import { assert } from '../errors.ts';
import type { BTree, SpaceMap } from '../pdata/index.ts';
import { DeltaLogEntryKind, type DeltaLogEntry } from '../journal/log.ts';
import { EXTENT_LENGTH_BLOCKS_MAX } from './codecs.ts';
import type { Device } from './devices.ts';
import type { PoolMutant } from './mutants.ts';
import type { MetadataRoom } from './space-policy.ts';
import { canMerge, cutExtent, type Extent, type KeyedExtent } from './ranges.ts';

/** Extents cut per metadata change by unmapRange (see there). */
const UNMAP_EXTENTS_PER_CHANGE = 8;

/** Where a virtual block is mapped: the extent holding it (at key) and its own data block. */
export interface Mapping {
  key: number;
  extent: Extent;
  dataBlock: number;
}

/** A run of virtual blocks [begin, end), mapped from dataBlock on (at pool time `time`), or unmapped. */
export interface BlockRun {
  begin: number;
  end: number;
  dataBlock?: number;
  time?: number;
}

/** What mapping changes need from the engine (PoolCore). */
export interface MappingHost {
  /**
   * Runs a change of at most `treeChanges` tree operations as one engine metadata change; a change
   * that frees space (an unmap) may use the metadata recovery reserve (F-POOL-47).
   */
  mutate<T>(what: string, treeChanges: number, change: () => T, room?: MetadataRoom): T;
  markDirty(device: Device): void;
  /** Records a change for the delta log (nothing while replaying, or with the log off). */
  note(entry: DeltaLogEntry): void;
  /** The pool time a new mapping gets. */
  readonly time: number;
}

export class MappingChanges {
  readonly tree: BTree<Extent>;
  readonly dataSpace: SpaceMap;
  readonly #host: MappingHost;
  /** The in-place-write-to-shared-block mutant (mutants.ts): tests only. */
  readonly #countDecidesSharing: boolean;

  constructor(tree: BTree<Extent>, dataSpace: SpaceMap, host: MappingHost, mutant?: PoolMutant) {
    this.tree = tree;
    this.dataSpace = dataSpace;
    this.#host = host;
    this.#countDecidesSharing = mutant === 'in-place-write-to-shared-block';
  }

  lookup(device: Device, virtualBlock: number): Mapping | undefined {
    const found = this.tree.floor(device.value.mappingRoot, virtualBlock);
    if (found === undefined) return undefined;
    const [key, extent] = found;
    if (virtualBlock >= key + extent.lengthBlocks) return undefined;
    return { key, extent, dataBlock: extent.dataBlock + (virtualBlock - key) };
  }

  /** Mapped and unmapped runs of virtual blocks [begin, end), in order. */
  blockRuns(device: Device, begin: number, end: number): BlockRun[] {
    const runs: BlockRun[] = [];
    const root = device.value.mappingRoot;
    let position = begin;
    const first = this.tree.floor(root, begin);
    const extents: KeyedExtent[] = [];
    if (first !== undefined && first[0] + first[1].lengthBlocks > begin) extents.push({ virtualBlock: first[0], ...first[1] });
    for (const [key, extent] of this.tree.entries(root, begin, end)) {
      if (key === first?.[0]) continue;
      extents.push({ virtualBlock: key, ...extent });
    }
    for (const extent of extents) {
      const extentBegin = Math.max(extent.virtualBlock, begin);
      const extentEnd = Math.min(extent.virtualBlock + extent.lengthBlocks, end);
      if (extentBegin >= extentEnd) continue;
      if (extentBegin > position) runs.push({ begin: position, end: extentBegin });
      runs.push({ begin: extentBegin, end: extentEnd, dataBlock: extent.dataBlock + (extentBegin - extent.virtualBlock), time: extent.time });
      position = extentEnd;
    }
    if (position < end) runs.push({ begin: position, end });
    return runs;
  }

  /**
   * Whether a write to a mapped block must copy it. dm-thin's time test (F-POOL-24): a mapping
   * written before the volume's last snapshot may be shared, so it is copied, even when the data
   * block's count now says only this volume holds it. The count cannot be trusted for this: it
   * reflects the open transaction, and when the other holder broke sharing in that transaction,
   * the last committed state still has it pointing at the block. Writing in place would change
   * that holder's committed contents, which a crash before the next commit brings back (the
   * crash simulator found this). A copied block gets the current time and is written in place
   * from then on.
   */
  mustCopy(device: Device, mapping: Mapping): boolean {
    if (this.#countDecidesSharing) return this.dataSpace.count(mapping.dataBlock) > 1;
    return mapping.extent.time < device.value.snapshottedTime;
  }

  /**
   * Maps virtual blocks [virtualBlock, +lengthBlocks) (unmapped) to data blocks from dataBlock at
   * the current time, as one extent merged with its neighbours (F-POOL-22).
   */
  insertMapping(device: Device, virtualBlock: number, dataBlock: number, lengthBlocks = 1): void {
    const what = lengthBlocks === 1 ? `block ${virtualBlock}` : `blocks [${virtualBlock}, ${virtualBlock + lengthBlocks})`;
    this.#host.mutate(`mapping ${what} of volume ${device.details.name}`, 5, () => {
      const root = this.#insertJoined(device.value.mappingRoot, { virtualBlock, dataBlock, lengthBlocks, time: this.#host.time }, true, true);
      this.dataSpace.inc(dataBlock, lengthBlocks);
      device.value = { ...device.value, mappingRoot: root, mappedBlockCount: device.value.mappedBlockCount + lengthBlocks };
      this.#host.markDirty(device);
      this.#host.note({ kind: DeltaLogEntryKind.map, volumeId: device.id, virtualBlock, lengthBlocks, dataBlock, oldDataBlock: 0 });
    });
  }

  /**
   * Maps virtual blocks [virtualBlock, +lengthBlocks) (unmapped) to data blocks from dataBlock,
   * which another volume maps already, at pool time `time`: a block shared by reference. Runs
   * inside the caller's metadata change (PoolCore.shareBlocks), which the delta log does not
   * describe (its map entries carry no time), so nothing is noted.
   */
  insertShared(device: Device, virtualBlock: number, dataBlock: number, lengthBlocks: number, time: number): void {
    const root = this.#insertJoined(device.value.mappingRoot, { virtualBlock, dataBlock, lengthBlocks, time }, true, true);
    this.dataSpace.inc(dataBlock, lengthBlocks);
    device.value = { ...device.value, mappingRoot: root, mappedBlockCount: device.value.mappedBlockCount + lengthBlocks };
    this.#host.markDirty(device);
  }

  /**
   * Removes the mappings of virtual blocks [begin, end), dropping their data references. Extents
   * are cut a few at a time, each batch one change (mutate), so a discard of a long, fragmented
   * range never needs room for all of it at once.
   */
  unmapRange(device: Device, begin: number, end: number): number {
    if (begin >= end) return 0;
    const tree = this.tree;
    const extents: Array<[number, Extent]> = [];
    const first = tree.floor(device.value.mappingRoot, begin);
    if (first !== undefined && first[0] < begin && first[0] + first[1].lengthBlocks > begin) extents.push(first);
    for (const entry of tree.entries(device.value.mappingRoot, begin, end)) extents.push(entry);
    let unmappedBlocks = 0;
    for (let batchBegin = 0; batchBegin < extents.length; batchBegin += UNMAP_EXTENTS_PER_CHANGE) {
      const batch = extents.slice(batchBegin, batchBegin + UNMAP_EXTENTS_PER_CHANGE);
      unmappedBlocks += this.#host.mutate(`unmapping blocks [${begin}, ${end}) of volume ${device.details.name}`, 4 * batch.length, () => {
        let root = device.value.mappingRoot;
        let batchBlocks = 0;
        for (const [key, extent] of batch) {
          const cut = cutExtent(key, extent, begin, end);
          if (cut.removed === undefined) continue;
          if (cut.left !== undefined) root = tree.insert(root, key, { dataBlock: cut.left.dataBlock, lengthBlocks: cut.left.lengthBlocks, time: cut.left.time });
          else root = tree.remove(root, key);
          if (cut.right !== undefined) {
            root = tree.insert(root, cut.right.virtualBlock, { dataBlock: cut.right.dataBlock, lengthBlocks: cut.right.lengthBlocks, time: cut.right.time });
          }
          this.dataSpace.dec(cut.removed.dataBlock, cut.removed.lengthBlocks);
          batchBlocks += cut.removed.lengthBlocks;
        }
        assert(batchBlocks <= device.value.mappedBlockCount, 'unmapped more blocks than were mapped');
        device.value = { ...device.value, mappingRoot: root, mappedBlockCount: device.value.mappedBlockCount - batchBlocks };
        this.#host.markDirty(device);
        if (batchBlocks > 0) {
          // The batch's extents are every mapping between its first and last, so unmapping that
          // span again on replay removes exactly these.
          const [lastKey, lastExtent] = batch[batch.length - 1]!;
          const spanBegin = Math.max(begin, batch[0]![0]);
          const spanEnd = Math.min(end, lastKey + lastExtent.lengthBlocks);
          this.#host.note({ kind: DeltaLogEntryKind.unmap, volumeId: device.id, virtualBlock: spanBegin, lengthBlocks: spanEnd - spanBegin, dataBlock: 0, oldDataBlock: 0 });
        }
        return batchBlocks;
      }, 'frees');
    }
    return unmappedBlocks;
  }

  /**
   * Moves virtualBlock (mapped to oldBlock) to newBlock at the current time: the end of a
   * copy-on-write, as one change. The extent holding the block keeps the parts around it; the
   * new mapping merges with a neighbour it continues (F-POOL-22). Four tree operations for a
   * block inside an extent, where an unmap and a separate insert took seven (the remap was a
   * large share of the server's CPU on writes after a snapshot: docs/benchmarks.md, "Figures behind
   * code decisions").
   */
  remap(device: Device, virtualBlock: number, oldBlock: number, newBlock: number): void {
    this.#host.mutate(`moving block ${virtualBlock} of volume ${device.details.name}`, 6, () => {
      const tree = this.tree;
      let root = device.value.mappingRoot;
      const found = tree.floor(root, virtualBlock);
      assert(
        found !== undefined && virtualBlock < found[0] + found[1].lengthBlocks && found[1].dataBlock + (virtualBlock - found[0]) === oldBlock,
        `block ${virtualBlock} moved during copy-on-write`,
      );
      const [key, extent] = found;
      const before = virtualBlock - key;
      const after = extent.lengthBlocks - before - 1;
      if (before > 0) root = tree.insert(root, key, { dataBlock: extent.dataBlock, lengthBlocks: before, time: extent.time });
      else root = tree.remove(root, key);
      if (after > 0) root = tree.insert(root, virtualBlock + 1, { dataBlock: oldBlock + 1, lengthBlocks: after, time: extent.time });
      // The kept pieces of the old extent hold old blocks, which the new one never continues.
      root = this.#insertJoined(root, { virtualBlock, dataBlock: newBlock, lengthBlocks: 1, time: this.#host.time }, before === 0, after === 0);
      this.dataSpace.dec(oldBlock, 1);
      this.dataSpace.inc(newBlock, 1);
      device.value = { ...device.value, mappingRoot: root };
      this.#host.markDirty(device);
    });
    // One entry: replay never shows the block unmapped between the two halves.
    this.#host.note({ kind: DeltaLogEntryKind.remap, volumeId: device.id, virtualBlock, lengthBlocks: 1, dataBlock: newBlock, oldDataBlock: oldBlock });
  }

  /**
   * Inserts the extent `run`, whose virtual blocks `root` leaves unmapped, joined with the
   * neighbour on either side that it continues (F-POOL-22); a side passed false is one the caller
   * knows cannot continue it, and is not looked up. Returns the new root.
   */
  #insertJoined(root: number, run: KeyedExtent, joinLeft: boolean, joinRight: boolean): number {
    const tree = this.tree;
    const { virtualBlock, lengthBlocks } = run;
    assert(lengthBlocks >= 1 && lengthBlocks <= EXTENT_LENGTH_BLOCKS_MAX, `a mapping run of ${lengthBlocks} blocks`);
    let joined = run;
    if (joinLeft && virtualBlock > 0) {
      const left = tree.floor(root, virtualBlock - 1);
      if (left !== undefined) {
        const leftExtent: KeyedExtent = { virtualBlock: left[0], ...left[1] };
        assert(leftExtent.virtualBlock + leftExtent.lengthBlocks <= virtualBlock, `block ${virtualBlock} is already mapped`);
        if (canMerge(leftExtent, joined, EXTENT_LENGTH_BLOCKS_MAX)) joined = { ...leftExtent, lengthBlocks: leftExtent.lengthBlocks + lengthBlocks };
      }
    }
    if (joinRight) {
      const rightKey = virtualBlock + lengthBlocks;
      const right = tree.lookup(root, rightKey);
      if (right !== undefined && canMerge(joined, { virtualBlock: rightKey, ...right }, EXTENT_LENGTH_BLOCKS_MAX)) {
        root = tree.remove(root, rightKey);
        joined = { ...joined, lengthBlocks: joined.lengthBlocks + right.lengthBlocks };
      }
    }
    return tree.insert(root, joined.virtualBlock, { dataBlock: joined.dataBlock, lengthBlocks: joined.lengthBlocks, time: joined.time });
  }
}
