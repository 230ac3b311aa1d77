// A mapping past the data device, under a valid checksum: one extent of a leaf of volume b names
// data blocks beyond the data file. Repair drops that one mapping, not the leaf.
import { nodeCapacity } from '../../../src/pdata/index.ts';
import { EXTENT_VALUE_SIZE_BYTES } from '../../../src/pool/codecs.ts';
import { DATA_BLOCK_COUNT, reseal, volumeLayout } from './base.ts';
import type { CorpusEntry } from './entry.ts';

const NODE_HEADER_BYTES = 48;

export const entry: CorpusEntry = {
  name: 'mapping-past-data-device',
  description: 'a mapping whose data blocks lie past the data device is named; repair loses that mapping only',
  damage(dir, layout) {
    const b = volumeLayout(layout, 'b');
    const leaf = b.leaves[2]!;
    const valuesOffset = NODE_HEADER_BYTES + 8 * nodeCapacity(EXTENT_VALUE_SIZE_BYTES);
    let key = -1;
    reseal(dir, leaf.blockNr, (view) => {
      key = Number(view.getBigUint64(NODE_HEADER_BYTES, true));
      view.setBigUint64(valuesOffset, BigInt(DATA_BLOCK_COUNT + 10), true);
    });
    return {
      problems: [new RegExp(`^volume b \\(id ${b.id}\\), mapping tree, metadata block ${leaf.blockNr} \\(path [^)]*\\): .*past the data space`, 'm')],
      fates: { b: { kind: 'lost', ranges: [[key, key + 1]] } },
    };
  },
};
