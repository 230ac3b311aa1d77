// Bytes from disk are untrusted: nodes with random damage under a valid checksum (what a buggy
// writer or a misdirected valid block would leave) must fail with a typed ThinError, or read
// consistently, and never trip an assertion or a TypeError/RangeError.
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { ThinError } from '../../src/errors.ts';
import { METADATA_BLOCK_HEADER_BYTES, METADATA_BLOCK_SIZE_BYTES } from '../../src/constants.ts';
import { Block, BlockHeader, checksumOf } from '../../src/pdata/block.ts';
import { BTree } from '../../src/pdata/btree/btree.ts';
import { TreeKind, u64Codec } from '../../src/pdata/btree/codec.ts';
import { TreeWalker } from '../../src/pdata/btree/walker.ts';
import { SpaceMap, refCountExtentCodec } from '../../src/pdata/space-map.ts';
import { TransactionManager } from '../../src/pdata/transaction.ts';
import { Random, newManager, payloadRoots, rootsPayload, withSeed } from './helpers.ts';

const codec = u64Codec(TreeKind.test);

function expectThinOrNothing(action: () => unknown, where: string): void {
  try {
    action();
  } catch (error) {
    if (error instanceof ThinError) return;
    assert.fail(`${where}: threw ${error instanceof Error ? `${error.name}: ${error.message}` : String(error)}`);
  }
}

describe('damaged nodes with valid checksums', () => {
  for (const seed of [61, 62, 63]) {
    test(`random damage to any node fails with a ThinError or reads consistently, never an assertion (seed ${seed})`, async () =>
      withSeed(seed, async () => {
        const random = new Random(seed);
        const { file, tm } = newManager();
        const tree = new BTree(tm, codec);
        const spaceMap = SpaceMap.create(tm, 100_000);
        let root = tree.createEmpty();
        for (let key = 0; key < 3000; key++) root = tree.insert(root, random.below(1_000_000), key);
        for (let step = 0; step < 400; step++) spaceMap.inc(random.below(99_000), 1 + random.below(500));
        await tm.commit(rootsPayload(root, spaceMap.root));
        const nodes: number[] = [];
        const collect = new TreeWalker(tm);
        collect.walk(root, codec, { node: (visit) => nodes.push(visit.blockNr) });
        collect.walk(spaceMap.root, refCountExtentCodec(TreeKind.dataSpaceMap), { node: (visit) => nodes.push(visit.blockNr) });
        for (let iteration = 0; iteration < 150; iteration++) {
          const blockNr = nodes[random.below(nodes.length)]!;
          const original = new Uint8Array(METADATA_BLOCK_SIZE_BYTES);
          file.readSync(original, blockNr * METADATA_BLOCK_SIZE_BYTES);
          const damaged = original.slice();
          const changes = 1 + random.below(6);
          for (let change = 0; change < changes; change++) {
            // Mostly the node header and the first keys and values, where damage matters most.
            const offset = METADATA_BLOCK_HEADER_BYTES + (random.chance(0.6) ? random.below(200) : random.below(METADATA_BLOCK_SIZE_BYTES - METADATA_BLOCK_HEADER_BYTES));
            damaged[offset] = random.below(256);
          }
          new Block(blockNr, damaged).view.setUint32(BlockHeader.checksumOffset, checksumOf(damaged), true);
          file.writeSync(damaged, blockNr * METADATA_BLOCK_SIZE_BYTES);
          const where = `seed ${seed}, iteration ${iteration}, block ${blockNr}`;
          let opened: Awaited<ReturnType<typeof TransactionManager.open>> | undefined;
          try {
            opened = await TransactionManager.open(file, { cacheBlocksMax: 64 });
          } catch (error) {
            assert.ok(error instanceof ThinError, `${where}: open threw ${String(error)}`);
          }
          if (opened !== undefined) {
            const { tm: damagedTm, payload } = opened;
            const [treeRoot, spaceRoot] = payloadRoots(payload);
            const damagedTree = new BTree(damagedTm, codec);
            expectThinOrNothing(() => [...damagedTree.entries(treeRoot!)], `${where}: entries`);
            expectThinOrNothing(() => damagedTree.floor(treeRoot!, random.below(1_000_000)), `${where}: floor`);
            expectThinOrNothing(() => damagedTree.ceiling(treeRoot!, random.below(1_000_000)), `${where}: ceiling`);
            expectThinOrNothing(() => new TreeWalker(damagedTm).walk(treeRoot!, codec), `${where}: walk`);
            expectThinOrNothing(() => {
              const space = new SpaceMap(damagedTm, spaceRoot!, 100_000);
              space.findFree(random.below(100_000), 10);
              space.inc(random.below(99_000), 3);
            }, `${where}: space map`);
            let current = treeRoot!;
            for (let step = 0; step < 40; step++) {
              expectThinOrNothing(() => {
                current = random.chance(0.5) ? damagedTree.insert(current, random.below(1_000_000), step) : damagedTree.remove(current, random.below(1_000_000));
              }, `${where}: change ${step}`);
            }
          }
          file.writeSync(original, blockNr * METADATA_BLOCK_SIZE_BYTES);
        }
      }));
  }
});
