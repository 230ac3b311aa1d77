// Mapping leaves read in place (pool/trees.ts extentColumnsReader), which check, dump and delta
// use instead of unpacking an extent object per entry: the reader must accept exactly the leaves
// the codec's unpack accepts and give the same keys and extents, in both leaf layouts; and a
// B+tree's leaves read in order through it must list what entries() lists.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { METADATA_BLOCK_SIZE_BYTES } from '../../src/constants.ts';
import { isThinError } from '../../src/errors.ts';
import { Block } from '../../src/pdata/block.ts';
import { BTree } from '../../src/pdata/btree/btree.ts';
import { leafValueAt, planLeaf, writeLeaf } from '../../src/pdata/btree/leaf.ts';
import { NodeLayout, entryCount, keyAt, valueOffset } from '../../src/pdata/btree/node.ts';
import { CompactLeaf } from '../../src/pdata/btree/node.ts';
import type { Extent } from '../../src/pool/ranges.ts';
import { extentColumnsReader, extentReadCodec, type ExtentColumns } from '../../src/pool/trees.ts';
import { FakeBlockManager } from '../pdata/fake-block-manager.ts';
import { Random } from '../pdata/helpers.ts';

const DATA_BLOCK_COUNT = 1 << 22;

function randomEntries(random: Random, count: number, wide: boolean): Array<[number, Extent]> {
  const entries: Array<[number, Extent]> = [];
  let key = random.below(1000);
  for (let index = 0; index < count; index++) {
    // A wide leaf: lengths past the compact field's 14 bits.
    const lengthBlocks = wide ? 20_000 + random.below(1000) : 1 + random.below(40);
    entries.push([key, { dataBlock: random.below(DATA_BLOCK_COUNT - lengthBlocks), lengthBlocks, time: random.below(300) }]);
    key += lengthBlocks + random.below(5);
  }
  return entries;
}

/** What the codec makes of the leaf: every entry, or undefined when unpack refuses one. */
function unpacked(block: Block, dataBlockCount: number): Array<[number, Extent]> | undefined {
  const codec = extentReadCodec(dataBlockCount);
  const entries: Array<[number, Extent]> = [];
  for (let index = 0; index < entryCount(block); index++) {
    try {
      entries.push([keyAt(block, index), leafValueAt(block, index, codec)]);
    } catch (error) {
      if (!isThinError(error)) throw error;
      return undefined;
    }
  }
  return entries;
}

function columnEntries(columns: ExtentColumns): Array<[number, Extent]> {
  const entries: Array<[number, Extent]> = [];
  for (let index = 0; index < columns.count; index++) {
    entries.push([columns.keys[index]!, { dataBlock: columns.dataBlocks[index]!, lengthBlocks: columns.lengths[index]!, time: columns.times[index]! }]);
  }
  return entries;
}

test('the column reader accepts exactly the mapping leaves unpack accepts, with the same extents, in both layouts and after random damage', () => {
  const outcomes = { accepted: 0, refused: 0 };
  for (let seed = 1; seed <= 400; seed++) {
    const random = new Random(seed);
    const wide = random.chance(0.5);
    const entries = randomEntries(random, 1 + random.below(120), wide);
    const codec = extentReadCodec(DATA_BLOCK_COUNT);
    const plan = planLeaf(entries, codec)!;
    assert.equal(plan.layout, wide ? NodeLayout.wide : NodeLayout.compact, `seed ${seed}: layout`);
    const block = new Block(7, new Uint8Array(METADATA_BLOCK_SIZE_BYTES));
    writeLeaf(block, entries, plan, codec);
    // Damage: a byte of a value or of the compact bases, or a smaller data device, or nothing.
    const damage = random.below(4);
    let dataBlockCount = DATA_BLOCK_COUNT;
    if (damage === 1) {
      const offset = valueOffset(block, random.below(entries.length)) + random.below(wide ? 16 : 8);
      block.bytes[offset] = random.below(256);
    } else if (damage === 2 && !wide) {
      block.bytes[CompactLeaf.valueBasesOffset + random.below(16)] = random.below(256);
    } else if (damage === 3) {
      dataBlockCount = random.below(DATA_BLOCK_COUNT);
    }
    const reader = extentColumnsReader(dataBlockCount);
    const columns = reader.create();
    const expected = unpacked(block, dataBlockCount);
    const accepted = reader.read(block, columns);
    assert.equal(accepted, expected !== undefined, `seed ${seed}: reader and unpack disagree on the leaf (damage ${damage})`);
    if (expected !== undefined) assert.deepEqual(columnEntries(columns), expected, `seed ${seed}: extents`);
    outcomes[accepted ? 'accepted' : 'refused'] += 1;
  }
  assert.ok(outcomes.accepted > 100 && outcomes.refused > 30, `both outcomes exercised: ${JSON.stringify(outcomes)}`);
});

test('a tree read leaf by leaf into columns lists what entries() lists, in key order', () => {
  const random = new Random(42);
  const tm = new FakeBlockManager();
  const codec = extentReadCodec(DATA_BLOCK_COUNT);
  const tree = new BTree(tm, codec);
  let root = tree.createEmpty();
  for (let index = 0; index < 4000; index++) {
    // Mostly narrow extents (compact leaves), some long ones (wide leaves).
    const lengthBlocks = random.chance(0.05) ? 20_000 : 1 + random.below(4);
    root = tree.insert(root, random.below(2 ** 40), { dataBlock: random.below(DATA_BLOCK_COUNT - lengthBlocks), lengthBlocks, time: random.below(9) });
  }
  const reader = extentColumnsReader(DATA_BLOCK_COUNT);
  const fromLeaves: Array<[number, Extent]> = [];
  let leaves = 0;
  for (const columns of tree.leavesReadOnce(root, reader, reader.create())) {
    fromLeaves.push(...columnEntries(columns));
    leaves += 1;
  }
  assert.ok(leaves > 10, `${leaves} leaves: the tree has several levels`);
  assert.deepEqual(fromLeaves, [...tree.entries(root)]);
});

test('a leaf the reader refuses is named by leavesReadOnce as entries() names it', () => {
  const tm = new FakeBlockManager();
  const tree = new BTree(tm, extentReadCodec(DATA_BLOCK_COUNT));
  let root = tree.createEmpty();
  for (let index = 0; index < 50; index++) root = tree.insert(root, index * 10, { dataBlock: index * 100, lengthBlocks: 2, time: 0 });
  const reader = extentColumnsReader(1000); // the last extents lie past 1000 data blocks
  const fromEntries = (): unknown => [...new BTree(tm, extentReadCodec(1000)).entries(root)];
  assert.throws(fromEntries, /THIN_CORRUPT_NODE|runs past the data space/);
  let message = '';
  try {
    for (const _ of new BTree(tm, extentReadCodec(1000)).leavesReadOnce(root, reader, reader.create()));
  } catch (error) {
    message = (error as Error).message;
  }
  assert.match(message, /has a bad value at key \d+: extent at data blocks \[\d+, \d+\) runs past the data space \(1000 blocks\)/);
});
