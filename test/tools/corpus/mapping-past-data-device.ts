// A mapping past the data device, under a valid checksum: one extent of a leaf of volume b names
// data blocks beyond the data file. Repair drops that one mapping, not the leaf. The leaf is
// compact (docs/format.md "Compact leaf"), so the damage is to a data block offset from its base.
import { Block } from '../../../src/pdata/index.ts';
import { isCompact, keyAt, valueOffset } from '../../../src/pdata/btree/node.ts';
import { DATA_BLOCK_COUNT, readBlock, reseal, volumeLayout } from './base.ts';
import type { CorpusEntry } from './entry.ts';

export const entry: CorpusEntry = {
  name: 'mapping-past-data-device',
  description: 'a mapping whose data blocks lie past the data device is named; repair loses that mapping only',
  damage(dir, layout) {
    const b = volumeLayout(layout, 'b');
    const leaf = b.leaves[2]!;
    const block = new Block(leaf.blockNr, readBlock(dir, leaf.blockNr));
    if (!isCompact(block)) throw new Error(`leaf ${leaf.blockNr} of volume b is not compact: the base pool is not what this entry damages`);
    const key = keyAt(block, 0);
    const offsetBytes = valueOffset(block, 0);
    reseal(dir, leaf.blockNr, (view) => {
      view.setUint32(offsetBytes, DATA_BLOCK_COUNT + 10, true);
    });
    return {
      problems: [new RegExp(`^volume b \\(id ${b.id}\\), mapping tree, metadata block ${leaf.blockNr} \\(path [^)]*\\): .*past the data space`, 'm')],
      fates: { b: { kind: 'lost', ranges: [[key, key + 1]] } },
    };
  },
};
