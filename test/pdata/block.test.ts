// Metadata block headers, node invariants on untrusted bytes, the block cache and the walker.
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { isThinError } from '../../src/errors.ts';
import { MemoryBlockFile } from '../../src/io/memory.ts';
import { METADATA_BLOCK_SIZE_BYTES } from '../../src/constants.ts';
import { Block, BlockHeader, BlockType, checksumOf, sealBlock, validateBlock } from '../../src/pdata/block.ts';
import { BlockCache } from '../../src/pdata/cache.ts';
import { BTree } from '../../src/pdata/btree/btree.ts';
import { TreeKind, u64Codec } from '../../src/pdata/btree/codec.ts';
import { NodeHeader, childAt, entryCount, keyAt, setChild, setKey } from '../../src/pdata/btree/node.ts';
import { TreeWalker } from '../../src/pdata/btree/walker.ts';
import { TransactionManager } from '../../src/pdata/transaction.ts';
import { POOL_ID, Random, checkReferences, newManager, payloadRoots, rootsPayload, withSeed } from './helpers.ts';

function sealed(blockNr: number, type: number, transactionId: number, poolId = POOL_ID): Uint8Array {
  const block = new Block(blockNr, new Uint8Array(METADATA_BLOCK_SIZE_BYTES));
  block.bytes.fill(7, 32);
  sealBlock(block, type, transactionId, poolId);
  return block.bytes;
}

const corruptBlock = (pattern: RegExp) => (error: unknown) => isThinError(error, 'THIN_CORRUPT_BLOCK') && pattern.test((error as Error).message);

describe('metadata block header', () => {
  test('a sealed block validates at its own place', () => {
    validateBlock(sealed(17, BlockType.btreeLeaf, 3), { blockNr: 17, expectedType: BlockType.btreeLeaf, poolId: POOL_ID, transactionIdMax: 3 });
  });

  test('every bit flip anywhere in a block fails its checksum', () => {
    const bytes = sealed(17, BlockType.btreeLeaf, 3);
    for (let bit = 0; bit < METADATA_BLOCK_SIZE_BYTES * 8; bit += 7) {
      const flipped = bytes.slice();
      flipped[bit >>> 3]! ^= 1 << (bit & 7);
      assert.throws(
        () => validateBlock(flipped, { blockNr: 17, expectedType: BlockType.btreeLeaf }),
        corruptBlock(/^Cannot read metadata block 17: checksum mismatch$/),
        `bit ${bit}`,
      );
    }
  });

  test('a block of another type, place, pool or a later transaction is rejected with the reason', () => {
    const bytes = sealed(17, BlockType.btreeLeaf, 3);
    assert.throws(() => validateBlock(bytes, { blockNr: 17, expectedType: BlockType.btreeInternal }), corruptBlock(/block type 3, expected 2/));
    assert.throws(() => validateBlock(bytes, { blockNr: 18, expectedType: BlockType.btreeLeaf }), corruptBlock(/it says it is block 17/));
    assert.throws(() => validateBlock(bytes, { blockNr: 17, expectedType: BlockType.btreeLeaf, poolId: 5n }), corruptBlock(/belongs to pool/));
    assert.throws(
      () => validateBlock(bytes, { blockNr: 17, expectedType: BlockType.btreeLeaf, transactionIdMax: 2 }),
      corruptBlock(/written by transaction 3, newer than 2/),
    );
    assert.throws(() => validateBlock(new Uint8Array(METADATA_BLOCK_SIZE_BYTES), { blockNr: 17, expectedType: 3 }), corruptBlock(/never written/));
    // One byte set anywhere, even the last, is a damaged block, not an unwritten one.
    const lastByteSet = new Uint8Array(METADATA_BLOCK_SIZE_BYTES);
    lastByteSet[METADATA_BLOCK_SIZE_BYTES - 1] = 1;
    assert.throws(() => validateBlock(lastByteSet, { blockNr: 17, expectedType: 3 }), corruptBlock(/checksum mismatch/));
    // A block of zeros inside a larger buffer (a read of several blocks) is still a block of zeros.
    const shared = new Uint8Array(3 * METADATA_BLOCK_SIZE_BYTES).fill(7);
    const inside = shared.subarray(METADATA_BLOCK_SIZE_BYTES, 2 * METADATA_BLOCK_SIZE_BYTES).fill(0);
    assert.throws(() => validateBlock(inside, { blockNr: 17, expectedType: 3 }), corruptBlock(/never written/));
    const reserved = bytes.slice();
    const block = new Block(17, reserved);
    block.view.setUint16(BlockHeader.reservedOffset, 1, true);
    sealBlockKeepingHeader(block);
    assert.throws(() => validateBlock(reserved, { blockNr: 17, expectedType: 3 }), corruptBlock(/reserved header field/));
  });
});

/** Recomputes only the checksum, leaving a deliberately bad header or node field in place. */
function sealBlockKeepingHeader(block: Block): void {
  block.view.setUint32(BlockHeader.checksumOffset, checksumOf(block.bytes), true);
}

/** Rewrites a committed node with a change and a valid checksum: what a buggy writer would leave. */
function rewriteNode(file: MemoryBlockFile, blockNr: number, change: (block: Block) => void): void {
  const bytes = new Uint8Array(METADATA_BLOCK_SIZE_BYTES);
  file.readSync(bytes, blockNr * METADATA_BLOCK_SIZE_BYTES);
  const block = new Block(blockNr, bytes);
  change(block);
  sealBlockKeepingHeader(block);
  file.writeSync(bytes, blockNr * METADATA_BLOCK_SIZE_BYTES);
}

describe('B+tree nodes from disk', () => {
  async function twoLevelTree() {
    const { file, tm } = newManager();
    const tree = new BTree(tm, u64Codec(TreeKind.test));
    let root = tree.createEmpty();
    for (let key = 0; key < 2000; key++) root = tree.insert(root, key * 2, key);
    await tm.commit(rootsPayload(root));
    return { file, root };
  }

  const cases: Array<[string, (block: Block) => void, RegExp]> = [
    ['keys out of order', (block) => setKey(block, 1, keyAt(block, 0)), /keys not strictly increasing/],
    ['an entry count above capacity', (block) => block.view.setUint16(NodeHeader.entryCountOffset, 300, true), /exceeds capacity/],
    ['another tree kind', (block) => block.view.setUint16(NodeHeader.treeKindOffset, 9, true), /tree kind 9, expected 15/],
    ['a level beyond the depth limit', (block) => block.view.setUint16(NodeHeader.levelOffset, 40, true), /level 40/],
    ['a wrong value size', (block) => block.view.setUint32(NodeHeader.valueSizeOffset, 16, true), /value size 16/],
    ['a key of 2^53 or more', (block) => { block.view.setUint32(NodeHeader.keysOffset + 4, 0x0040_0000, true); }, /beyond 2\^53|not below|strictly/],
  ];
  for (const [what, change, pattern] of cases) {
    test(`a node with ${what} but a valid checksum is rejected as corrupt, naming the block and key range`, async () => {
      const { file, root } = await twoLevelTree();
      const { tm: probe } = await TransactionManager.open(file);
      const walker = new TreeWalker(probe);
      const leaves: number[] = [];
      walker.walk(root, u64Codec(TreeKind.test), { node: (visit) => { if (visit.level === 0) leaves.push(visit.blockNr); } });
      const target = leaves[1]!;
      rewriteNode(file, target, change);
      const { tm } = await TransactionManager.open(file);
      const tree = new BTree(tm, u64Codec(TreeKind.test));
      assert.throws(
        () => [...tree.entries(root)],
        (error) => isThinError(error, 'THIN_CORRUPT_NODE') && pattern.test((error as Error).message) && new RegExp(`metadata block ${target} \\(keys \\[`).test((error as Error).message),
      );
      const found = new TreeWalker(tm).walk(root, u64Codec(TreeKind.test));
      assert.equal(found.length, 1);
      assert.equal(found[0]!.blockNr, target);
    });
  }

  test('a child pointer to itself or past the metadata is rejected', async () => {
    const { file, root } = await twoLevelTree();
    rewriteNode(file, root, (block) => setChild(block, 0, root, block.transactionId));
    const { tm } = await TransactionManager.open(file);
    assert.throws(() => new BTree(tm, u64Codec(TreeKind.test)).lookup(root, 10), (error) => isThinError(error, 'THIN_CORRUPT_NODE') && /points to the node itself/.test((error as Error).message));
  });
});

describe('block cache', () => {
  test('the cache never holds more than its bound and keeps recently used blocks', () => {
    const cache = new BlockCache(4);
    const blocks = Array.from({ length: 10 }, (_, blockNr) => new Block(blockNr, new Uint8Array(METADATA_BLOCK_SIZE_BYTES)));
    for (const block of blocks.slice(0, 4)) cache.put(block);
    cache.get(0);
    cache.put(blocks[4]!);
    assert.equal(cache.sizeBlocks, 4);
    assert.equal(cache.get(0), blocks[0], 'a block used since the last sweep gets a second chance');
    for (const block of blocks) cache.put(block);
    assert.equal(cache.sizeBlocks, 4);
    cache.delete(9);
    assert.equal(cache.get(9), undefined);
  });

  for (const seed of [41, 42]) {
    test(`trees stay correct with a cache of 8 blocks, reading evicted blocks back from disk (seed ${seed})`, async () => withSeed(seed, async () => {
      const random = new Random(seed);
      const file = new MemoryBlockFile(0);
      const tm = TransactionManager.format(file, { metadataBlockCount: 17408, poolId: POOL_ID, cacheBlocksMax: 8 });
      const tree = new BTree(tm, u64Codec(TreeKind.test));
      let root = tree.createEmpty();
      const model = new Map<number, number>();
      for (let step = 0; step < 4000; step++) {
        const key = random.below(5000);
        if (random.chance(0.6)) {
          root = tree.insert(root, key, step);
          model.set(key, step);
        } else {
          root = tree.remove(root, key);
          model.delete(key);
        }
        if (step % 300 === 299) await tm.commit(rootsPayload(root));
        if (step % 997 === 0) assert.equal(tree.lookup(root, key), model.get(key), `seed ${seed}, step ${step}`);
      }
      await tm.commit(rootsPayload(root));
      assert.ok(tm.counters.metadataBlocksRead > 0, 'evicted blocks were read back');
      assert.deepEqual([...tree.entries(root)], [...model.entries()].sort((a, b) => a[0] - b[0]), `seed ${seed}`);
      checkReferences(tm, [root], u64Codec(TreeKind.test), undefined, `seed ${seed}`);
      const { tm: reopened, payload } = await TransactionManager.open(file, { cacheBlocksMax: 8 });
      assert.deepEqual([...new BTree(reopened, u64Codec(TreeKind.test)).entries(payloadRoots(payload)[0]!)], [...tree.entries(root)]);
    }));
  }
});

describe('walker', () => {
  test('a node shared by two roots is visited once and counted twice', () => {
    const { tm } = newManager();
    const tree = new BTree(tm, u64Codec(TreeKind.test));
    let origin = tree.createEmpty();
    for (let key = 0; key < 1000; key++) origin = tree.insert(origin, key, key);
    tree.retainTree(origin);
    const snapshot = origin;
    origin = tree.insert(origin, 5, 55); // shadows the root and one leaf
    const walker = new TreeWalker(tm);
    const visited: number[] = [];
    let leafEntries = 0;
    for (const root of [origin, snapshot]) {
      walker.walk(root, u64Codec(TreeKind.test), { node: (visit) => visited.push(visit.blockNr), leaf: () => (leafEntries += 1) });
    }
    assert.equal(new Set(visited).size, visited.length, 'no node visited twice');
    const sharedLeaf = childAt(tm.read(snapshot, BlockType.btreeInternal), 3);
    assert.equal(walker.referenceCount(sharedLeaf), 2);
    assert.equal(tm.refCount(sharedLeaf), 2);
    assert.equal(leafEntries, 1000 + entryCount(tm.read(childAt(tm.read(origin, BlockType.btreeInternal), 0), BlockType.btreeLeaf)));
    assert.deepEqual(walker.metadataReferenceMismatches(), []);
  });
});
