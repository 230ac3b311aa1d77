// A compact mapping leaf whose header is wrong under a valid checksum (a buggy writer): volume b's
// middle leaf gets a key base past 2^53, which every key of the leaf is an offset from. Check
// names the leaf and the field; repair loses the blocks that leaf maps, and nothing else.
import { Block } from '../../../src/pdata/index.ts';
import { CompactLeaf, isCompact } from '../../../src/pdata/btree/node.ts';
import { readBlock, reseal, volumeLayout } from './base.ts';
import type { CorpusEntry } from './entry.ts';

export const entry: CorpusEntry = {
  name: 'compact-leaf-bad-bases',
  description: "a compact leaf of volume b's mapping tree with a key base past 2^53 is named; repair loses the blocks that leaf maps",
  damage(dir, layout) {
    const b = volumeLayout(layout, 'b');
    const leaf = b.leaves[1]!;
    if (!isCompact(new Block(leaf.blockNr, readBlock(dir, leaf.blockNr)))) {
      throw new Error(`leaf ${leaf.blockNr} of volume b is not compact: the base pool is not what this entry damages`);
    }
    reseal(dir, leaf.blockNr, (view) => {
      view.setBigUint64(CompactLeaf.keyBaseOffset, 2n ** 60n, true);
    });
    return {
      problems: [new RegExp(`^volume b \\(id ${b.id}\\), mapping tree, metadata block ${leaf.blockNr} \\(path [^)]*\\): .*compact key base \\d+ is beyond 2\\^53`, 'm')],
      fates: { b: { kind: 'lost', ranges: [[leaf.keyBegin ?? 0, leaf.keyEnd ?? Infinity]] } },
    };
  },
};
