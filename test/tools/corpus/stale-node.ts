// A stale node: a lost write left an older, valid version of a leaf of volume b in its place
// (made here by dropping the leaf's last entry and sealing it as written one transaction
// earlier). Checksum, type and location are all right; only the transaction its parent recorded
// (F-NODE-6) tells it is stale.
import { reseal, volumeLayout, readBlock } from './base.ts';
import { Block } from '../../../src/pdata/index.ts';
import type { CorpusEntry } from './entry.ts';

const ENTRY_COUNT_OFFSET = 36;

export const entry: CorpusEntry = {
  name: 'stale-node',
  description: 'an older valid version of a leaf in place of the current one is named as stale; repair loses that leaf',
  damage(dir, layout) {
    const b = volumeLayout(layout, 'b');
    const leaf = b.leaves[2]!;
    const transactionId = new Block(leaf.blockNr, readBlock(dir, leaf.blockNr)).transactionId;
    reseal(dir, leaf.blockNr, (view) => view.setUint16(ENTRY_COUNT_OFFSET, view.getUint16(ENTRY_COUNT_OFFSET, true) - 1, true), { transactionId: transactionId - 1 });
    return {
      problems: [new RegExp(`^volume b \\(id ${b.id}\\), mapping tree, metadata block ${leaf.blockNr} \\(path [^)]*\\): .*stale`, 'm')],
      fates: { b: { kind: 'lost', ranges: [[leaf.keyBegin ?? 0, leaf.keyEnd ?? Infinity]] } },
    };
  },
};
