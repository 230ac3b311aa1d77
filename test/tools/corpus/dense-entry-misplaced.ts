// A dense entry of the data space map moved off its group (a buggy writer, under a valid
// checksum): its key is no longer a multiple of 8 (F-SM-7). Check names the space map, the block
// and the rule's words, and does not judge data reference counts; repair, which counts data
// references anew from the mappings, loses nothing.
import { Block } from '../../../src/pdata/index.ts';
import { CompactLeaf, entryCount, isCompact, isLeaf, keyAt, valueOffset } from '../../../src/pdata/btree/node.ts';
import { readBlock, reseal } from './base.ts';
import type { CorpusEntry } from './entry.ts';

export const entry: CorpusEntry = {
  name: 'dense-entry-misplaced',
  description: "a dense entry of the data space map whose key is not a multiple of 8 is named; repair loses nothing",
  damage(dir, layout) {
    const root = layout.dataSpaceMapRoot;
    const block = new Block(root, readBlock(dir, root));
    if (!isLeaf(block) || !isCompact(block)) throw new Error(`data space map root ${root} is not a compact leaf: the base pool is not what this entry damages`);
    // A dense entry is the one whose count field (the second u32 of its value) is 0.
    let index = 0;
    while (index < entryCount(block) && block.view.getUint32(valueOffset(block, index) + 4, true) !== 0) index += 1;
    if (index === entryCount(block)) throw new Error(`data space map root ${root} holds no dense entry: the base pool is not what this entry damages`);
    const key = keyAt(block, index);
    reseal(dir, root, (view) => {
      const keyOffsetAt = CompactLeaf.keysOffset + 4 * index;
      view.setUint32(keyOffsetAt, view.getUint32(keyOffsetAt, true) + 1, true);
    });
    return {
      problems: [new RegExp(`^data space map: Space map at metadata block ${root} has a dense entry at block ${key + 1}, which is not a multiple of 8; data reference counts are not checked`, 'm')],
    };
  },
};
