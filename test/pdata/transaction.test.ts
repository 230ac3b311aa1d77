// The transaction manager: commit and reopen, frees that wait for their commit, sealing while a
// commit is written, the order of writes and syncs, and refusing when full or read-only.
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { MemoryBlockFile } from '../../src/io/memory.ts';
import { isThinError } from '../../src/errors.ts';
import { METADATA_BLOCK_COUNT_MIN, METADATA_BLOCK_SIZE_BYTES, METADATA_FORMAT_VERSION, SUPERBLOCK_BLOCK_NRS } from '../../src/constants.ts';
import { Block, BlockType, sealBlock } from '../../src/pdata/block.ts';
import { SuperblockLayout } from '../../src/pdata/superblock.ts';
import { BTree } from '../../src/pdata/btree/btree.ts';
import { TreeKind, u64Codec } from '../../src/pdata/btree/codec.ts';
import { SpaceMap } from '../../src/pdata/space-map.ts';
import { TransactionManager } from '../../src/pdata/transaction.ts';
import { ForwardingBlockFile } from '../io/forwarding-block-file.ts';
import { POOL_ID, Random, checkReferences, newManager, payloadRoots, rootsPayload, withSeed } from './helpers.ts';

/** Records every write and sync in order; writes may be held back to test overlapping commits. */
class RecordingFile extends ForwardingBlockFile {
  readonly events: string[] = [];
  constructor() {
    super(new MemoryBlockFile(0, 'recorded'));
  }
  override async write(source: Uint8Array, offsetBytes: number): Promise<void> {
    await new Promise((resolve) => setImmediate(resolve));
    this.events.push(`write ${offsetBytes / METADATA_BLOCK_SIZE_BYTES}`);
    await this.inner.write(source, offsetBytes);
  }
  override async sync(): Promise<void> {
    this.events.push('sync');
  }
}

const codec = u64Codec(TreeKind.test);

describe('transaction manager', () => {
  test('a committed state reopens identically: trees, reference counts and counters (seed 31)', async () => withSeed(31, async () => {
    const { file, tm } = newManager();
    const tree = new BTree(tm, codec);
    const random = new Random(31);
    let a = tree.createEmpty();
    for (let step = 0; step < 4000; step++) a = tree.insert(a, random.below(100_000), step);
    await tm.commit(rootsPayload(a));
    let b = a;
    tree.retainTree(b);
    for (let step = 0; step < 500; step++) b = tree.remove(b, random.below(100_000));
    await tm.commit(rootsPayload(a, b));
    const { tm: reopened, payload, report } = await TransactionManager.open(file);
    assert.equal(report.generation, 2);
    assert.equal(report.degraded, false);
    assert.equal(reopened.transactionId, 3);
    assert.equal(reopened.metadataBlocksUsed, tm.metadataBlocksUsed);
    const [ra, rb] = payloadRoots(payload);
    const again = new BTree(reopened, codec);
    assert.deepEqual([...again.entries(ra!)], [...tree.entries(a)]);
    assert.deepEqual([...again.entries(rb!)], [...tree.entries(b)]);
    for (let blockNr = 0; blockNr < tm.metadataBlockCount; blockNr++) {
      if (reopened.refCount(blockNr) !== tm.refCount(blockNr)) assert.fail(`block ${blockNr}: ${reopened.refCount(blockNr)} vs ${tm.refCount(blockNr)}`);
    }
    checkReferences(reopened, [ra!, rb!], codec);
  }));

  test('a block freed in the open transaction is not reused before that transaction commits', async () => {
    const { tm } = newManager();
    const tree = new BTree(tm, codec);
    let root = tree.createEmpty();
    for (let key = 0; key < 2000; key++) root = tree.insert(root, key, key);
    await tm.commit(rootsPayload(root));
    const committed = new Set<number>();
    for (let blockNr = 0; blockNr < tm.metadataBlockCount; blockNr++) if (tm.refCount(blockNr) > 0) committed.add(blockNr);
    // Shadow the whole tree away, then allocate many blocks: none may be a committed block.
    root = tree.insert(root, 5, 55);
    const newRoot = root;
    tree.releaseTree(newRoot);
    const freed = [...committed].filter((blockNr) => tm.refCount(blockNr) === 0);
    assert.ok(freed.length > 0, 'the test frees committed blocks');
    for (const blockNr of freed) assert.equal(tm.isPendingFree(blockNr), true, `block ${blockNr} pending`);
    const allocated: number[] = [];
    while (tm.metadataBlocksFree > 300) allocated.push(tm.allocate(BlockType.details).blockNr);
    for (const blockNr of allocated) assert.ok(!committed.has(blockNr), `block ${blockNr} reused before its free committed`);
    for (const blockNr of allocated) tm.dec(blockNr);
    const sealed = tm.commit(rootsPayload());
    for (const blockNr of freed) assert.equal(tm.isPendingFree(blockNr), true, `block ${blockNr} pending while the commit is written`);
    await sealed;
    for (const blockNr of freed) assert.equal(tm.isPendingFree(blockNr), false, `block ${blockNr} free after the commit`);
  });

  test('a block allocated and freed in the same transaction is reusable at once', () => {
    const { tm } = newManager();
    const block = tm.allocate(BlockType.details);
    const free = tm.metadataBlocksFree;
    tm.dec(block.blockNr);
    assert.equal(tm.metadataBlocksFree, free + 1);
    assert.equal(tm.isPendingFree(block.blockNr), false);
  });

  test('changes made while a sealed transaction is written go into the next one', async () => {
    const { file, tm } = newManager();
    const tree = new BTree(tm, codec);
    let root = tree.createEmpty();
    for (let key = 0; key < 1000; key++) root = tree.insert(root, key, key);
    const first = tm.commit(rootsPayload(root));
    assert.equal(tm.transactionId, 2, 'the next transaction opens at once');
    const rootAtFirst = root;
    for (let key = 0; key < 1000; key += 2) root = tree.remove(root, key);
    assert.notEqual(root, rootAtFirst, 'changing a sealed block shadows it');
    const second = tm.commit(rootsPayload(root));
    await Promise.all([first, second]);
    assert.equal(tm.durableTransactionId, 2);
    const { tm: reopened, payload } = await TransactionManager.open(file);
    const again = new BTree(reopened, codec);
    assert.deepEqual([...again.entries(payloadRoots(payload)[0]!)], [...tree.entries(root)]);
  });

  test('a commit awaits beforeMetadata, writes every block and syncs before writing the superblock pair, then syncs', async () => {
    const file = new RecordingFile();
    const tm = TransactionManager.format(file, { metadataBlockCount: METADATA_BLOCK_COUNT_MIN, poolId: POOL_ID });
    const tree = new BTree(tm, codec);
    let root = tree.createEmpty();
    for (let key = 0; key < 800; key++) root = tree.insert(root, key, key);
    for (let generation = 1; generation <= 3; generation++) {
      file.events.length = 0;
      await tm.commit(rootsPayload(root), async () => {
        await new Promise((resolve) => setTimeout(resolve, 2));
        file.events.push('beforeMetadata');
      });
      root = tree.insert(root, 10_000 + generation, generation);
      const superblockWrites = file.events
        .map((event, index) => ({ event, index }))
        .filter(({ event }) => SUPERBLOCK_BLOCK_NRS.some((blockNr) => event === `write ${blockNr}`));
      assert.equal(superblockWrites.length, 2, `generation ${generation}: two superblock copies written: ${file.events.join(', ')}`);
      const expectedCopies = SUPERBLOCK_BLOCK_NRS.filter((_, index) => index % 2 === generation % 2).map((blockNr) => `write ${blockNr}`);
      assert.deepEqual(superblockWrites.map(({ event }) => event).sort(), expectedCopies.sort());
      const firstSuperblock = superblockWrites[0]!.index;
      assert.equal(file.events[0], 'beforeMetadata', 'nothing is written before beforeMetadata resolves');
      assert.equal(file.events[firstSuperblock - 1], 'sync', 'a sync separates the blocks from the superblock');
      assert.ok(file.events.slice(1, firstSuperblock - 1).every((event) => event.startsWith('write ')), 'blocks first');
      assert.equal(file.events[file.events.length - 1], 'sync', 'the commit ends with a sync');
      assert.equal(file.events.filter((event) => event === 'sync').length, 2);
    }
    assert.equal(tm.counters.commits, 3);
    assert.equal(tm.counters.syncs, 6);
  });

  test('a commit writes neighbouring blocks in one write each run, and every block reads back', async () => {
    const file = new RecordingFile();
    const tm = TransactionManager.format(file, { metadataBlockCount: METADATA_BLOCK_COUNT_MIN, poolId: POOL_ID });
    const tree = new BTree(tm, codec);
    let root = tree.createEmpty();
    for (let key = 0; key < 20_000; key++) root = tree.insert(root, key, key * 3);
    await tm.commit(rootsPayload(root));
    const blockWrites = file.events.filter((event) => event.startsWith('write ')).length - 2;
    assert.ok(tm.counters.metadataBlocksWritten - 2 > 4 * blockWrites, `${tm.counters.metadataBlocksWritten - 2} blocks in ${blockWrites} writes`);
    const { tm: reopened, payload } = await TransactionManager.open(file.inner);
    const again = new BTree(reopened, codec);
    let count = 0;
    for (const [key, value] of again.entries(payloadRoots(payload)[0]!)) {
      assert.equal(value, key * 3);
      count += 1;
    }
    assert.equal(count, 20_000);
  });

  test('a failed commit makes the manager refuse every later change and commit', async () => {
    const { tm } = newManager();
    const tree = new BTree(tm, codec);
    const root = tree.createEmpty();
    await assert.rejects(
      tm.commit(rootsPayload(root), async () => {
        throw new Error('data sync failed');
      }),
      /data sync failed|Commit/,
    );
    assert.throws(() => tree.insert(root, 1, 1), (error) => isThinError(error, 'THIN_IO'));
    await assert.rejects(tm.commit(rootsPayload(root)), (error) => isThinError(error, 'THIN_IO'));
  });

  test('a failed metadata write fails the commit, and reopening finds the previous generation intact', async () => {
    const file = new RecordingFile();
    const tm = TransactionManager.format(file, { metadataBlockCount: METADATA_BLOCK_COUNT_MIN, poolId: POOL_ID });
    const tree = new BTree(tm, codec);
    let root = tree.createEmpty();
    for (let key = 0; key < 500; key++) root = tree.insert(root, key, key);
    await tm.commit(rootsPayload(root));
    const committed = [...tree.entries(root)];
    for (let key = 500; key < 1000; key++) root = tree.insert(root, key, key);
    let writes = 0;
    const write = file.write.bind(file);
    file.write = async (source, offsetBytes) => {
      writes += 1;
      if (writes === 3) throw Object.assign(new Error('EIO: i/o error, write'), { code: 'EIO' });
      return write(source, offsetBytes);
    };
    await assert.rejects(tm.commit(rootsPayload(root)), (error) => isThinError(error, 'THIN_IO') && /generation 2/.test((error as Error).message));
    assert.equal(tm.durableTransactionId, 1);
    assert.throws(() => tree.insert(root, 5000, 1), (error) => isThinError(error, 'THIN_IO') && /reopen/.test((error as Error).message));
    file.write = write;
    const { tm: reopened, payload, report } = await TransactionManager.open(file.inner);
    assert.equal(report.generation, 1);
    assert.deepEqual([...new BTree(reopened, codec).entries(payloadRoots(payload)[0]!)], committed);
  });

  test('a failed metadata read is a THIN_IO error naming the block', async () => {
    const { file, tm } = newManager();
    const tree = new BTree(tm, codec);
    const root = tree.insert(tree.createEmpty(), 1, 1);
    await tm.commit(rootsPayload(root));
    const { tm: reopened } = await TransactionManager.open(file);
    file.readSync = () => {
      throw new Error('EIO: i/o error, read');
    };
    assert.throws(
      () => new BTree(reopened, codec).lookup(root, 1),
      (error) => isThinError(error, 'THIN_IO') && new RegExp(`metadata block ${root}`).test((error as Error).message),
    );
  });

  test('a manager opened read-only reads but refuses changes', async () => {
    const { file, tm } = newManager();
    const tree = new BTree(tm, codec);
    const root = tree.insert(tree.createEmpty(), 7, 70);
    await tm.commit(rootsPayload(root));
    const { tm: readOnly, payload } = await TransactionManager.open(file, { readOnly: true });
    const again = new BTree(readOnly, codec);
    assert.equal(again.lookup(payloadRoots(payload)[0]!, 7), 70);
    assert.throws(() => again.insert(payloadRoots(payload)[0]!, 8, 80), (error) => isThinError(error, 'THIN_READ_ONLY'));
    await assert.rejects(readOnly.commit(payload), (error) => isThinError(error, 'THIN_READ_ONLY'));
  });

  test('filling the metadata fails with THIN_NO_METADATA_SPACE and still commits from the reserve', async () => {
    const { file, tm } = newManager();
    const tree = new BTree(tm, u64Codec(TreeKind.test));
    const spaceMap = SpaceMap.create(tm, 100_000_000);
    let root = tree.createEmpty();
    let key = 0;
    let failure: unknown;
    try {
      for (;;) {
        // Scattered single blocks make the space map and the tree grow.
        root = tree.insert(root, key * 1000, key);
        spaceMap.inc(key * 7 + 3, 1);
        key += 1;
      }
    } catch (error) {
      failure = error;
    }
    assert.ok(isThinError(failure, 'THIN_NO_METADATA_SPACE'), `expected no metadata space, got ${String(failure)}`);
    await tm.commit(rootsPayload(root, spaceMap.root));
    const { tm: reopened, payload } = await TransactionManager.open(file);
    const [treeRoot] = payloadRoots(payload);
    assert.equal(new BTree(reopened, u64Codec(TreeKind.test)).countEntries(treeRoot!), key + (tree.has(root, key * 1000) ? 1 : 0));
  });

  test('a pool of format version 3 opens, and its first commit writes the current version; a newer version is refused by name', async () => {
    const setVersion = (file: MemoryBlockFile, version: number): void => {
      for (const blockNr of SUPERBLOCK_BLOCK_NRS) {
        const bytes = new Uint8Array(METADATA_BLOCK_SIZE_BYTES);
        file.readSync(bytes, blockNr * METADATA_BLOCK_SIZE_BYTES);
        if (bytes.every((byte) => byte === 0)) continue;
        const block = new Block(blockNr, bytes);
        block.view.setUint32(SuperblockLayout.formatVersionOffset, version, true);
        sealBlock(block, block.type, block.transactionId, block.view.getBigUint64(24, true));
        file.writeSync(bytes, blockNr * METADATA_BLOCK_SIZE_BYTES);
      }
    };
    const versions = (file: MemoryBlockFile): number[] =>
      SUPERBLOCK_BLOCK_NRS.map((blockNr) => {
        const bytes = new Uint8Array(METADATA_BLOCK_SIZE_BYTES);
        file.readSync(bytes, blockNr * METADATA_BLOCK_SIZE_BYTES);
        return new DataView(bytes.buffer).getUint32(SuperblockLayout.formatVersionOffset, true);
      });
    const { file, tm } = newManager();
    const tree = new BTree(tm, codec);
    const root = tree.insert(tree.createEmpty(), 7, 70);
    await tm.commit(rootsPayload(root));
    setVersion(file, 3);
    const { tm: old, payload } = await TransactionManager.open(file);
    assert.equal(new BTree(old, codec).lookup(payloadRoots(payload)[0]!, 7), 70);
    await old.commit(payload);
    assert.ok(versions(file).includes(METADATA_FORMAT_VERSION), `a copy says version ${METADATA_FORMAT_VERSION} (${versions(file).join(', ')})`);
    setVersion(file, METADATA_FORMAT_VERSION + 1);
    await assert.rejects(
      TransactionManager.open(file),
      (error) => isThinError(error, 'THIN_FORMAT') && new RegExp(`format version ${METADATA_FORMAT_VERSION + 1}; this build reads versions 2, 3, 4, 5, 6`).test((error as Error).message),
    );
  });

  test('format refuses a metadata size outside the limits', () => {
    assert.throws(
      () => TransactionManager.format(new MemoryBlockFile(0), { metadataBlockCount: 100, poolId: POOL_ID }),
      (error) => isThinError(error, 'THIN_INVALID'),
    );
  });

  test('grown metadata is recorded by the next commit', async () => {
    const { file, tm } = newManager();
    tm.growMetadata(METADATA_BLOCK_COUNT_MIN + 1000);
    await tm.commit(rootsPayload());
    const { tm: reopened } = await TransactionManager.open(file);
    assert.equal(reopened.metadataBlockCount, METADATA_BLOCK_COUNT_MIN + 1000);
    assert.ok(file.sizeBytes() >= (METADATA_BLOCK_COUNT_MIN + 1000) * METADATA_BLOCK_SIZE_BYTES);
  });
});
