// Power cuts at every point of a recorded commit trace: writes since the last sync are each
// written, dropped or torn sector by sector (SQLite's 3/8 : 3/8 : 1/4, docs/fault-model.md section 2).
// After every cut the metadata must open at an acknowledged generation or a newer sealed one,
// never fall back past a valid copy, hold exactly that generation's trees, and have reference
// counts equal to the references a walk finds (no leaks, no double references).
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import type { BlockFile } from '../../src/io/block-file.ts';
import { MemoryBlockFile } from '../../src/io/memory.ts';
import { METADATA_BLOCK_COUNT_MIN, METADATA_BLOCK_SIZE_BYTES } from '../../src/constants.ts';
import { BTree } from '../../src/pdata/btree/btree.ts';
import { TreeWalker } from '../../src/pdata/btree/walker.ts';
import { TransactionManager } from '../../src/pdata/transaction.ts';
import { ForwardingBlockFile } from '../io/forwarding-block-file.ts';
import { POOL_ID, Random, checkReferences, dataRefCodec, payloadRoots, rootsPayload, withSeed } from './helpers.ts';

type TraceEvent =
  | { kind: 'write'; blockNr: number; bytes: Uint8Array }
  | { kind: 'sync' }
  | { kind: 'seal'; generation: number }
  | { kind: 'ack'; generation: number };

/**
 * A block file that records every write and sync, in completion order. A write of several blocks
 * (a commit writes neighbours together) is recorded block by block: a power cut may land between
 * any two of them, as it may tear a write on a real disk.
 */
class TracingFile extends ForwardingBlockFile<MemoryBlockFile> {
  readonly events: TraceEvent[] = [];
  constructor() {
    super(new MemoryBlockFile(0, 'traced metadata'));
  }
  override async write(source: Uint8Array, offsetBytes: number): Promise<void> {
    assert.equal(offsetBytes % METADATA_BLOCK_SIZE_BYTES, 0);
    assert.equal(source.length % METADATA_BLOCK_SIZE_BYTES, 0);
    const bytes = source.slice();
    await new Promise((resolve) => setImmediate(resolve));
    for (let offset = 0; offset < bytes.length; offset += METADATA_BLOCK_SIZE_BYTES) {
      const block = bytes.subarray(offset, offset + METADATA_BLOCK_SIZE_BYTES);
      this.events.push({ kind: 'write', blockNr: (offsetBytes + offset) / METADATA_BLOCK_SIZE_BYTES, bytes: block });
      this.inner.writeSync(block, offsetBytes + offset);
    }
  }
  override async sync(): Promise<void> {
    this.events.push({ kind: 'sync' });
  }
}

/** The disk after a power cut: a map of blocks, sparse, cheap to build per crash point. */
class CrashImage implements BlockFile {
  readonly description = 'crash image';
  readonly blocks: Map<number, Uint8Array>;
  constructor(blocks: Map<number, Uint8Array>) {
    this.blocks = blocks;
  }
  sizeBytes(): number {
    return METADATA_BLOCK_COUNT_MIN * METADATA_BLOCK_SIZE_BYTES;
  }
  readSync(target: Uint8Array, offsetBytes: number): void {
    assert.equal(target.length, METADATA_BLOCK_SIZE_BYTES);
    const block = this.blocks.get(offsetBytes / METADATA_BLOCK_SIZE_BYTES);
    if (block === undefined) target.fill(0);
    else target.set(block);
  }
  async read(target: Uint8Array, offsetBytes: number): Promise<void> {
    this.readSync(target, offsetBytes);
  }
  async write(source: Uint8Array, offsetBytes: number): Promise<void> {
    for (let offset = 0; offset < source.length; offset += METADATA_BLOCK_SIZE_BYTES) {
      this.blocks.set((offsetBytes + offset) / METADATA_BLOCK_SIZE_BYTES, source.slice(offset, offset + METADATA_BLOCK_SIZE_BYTES));
    }
  }
  async sync(): Promise<void> {}
  async grow(): Promise<void> {}
  async close(): Promise<void> {}
}

const SECTOR_BYTES = 512;

function crashImage(events: TraceEvent[], crashAfter: number, random: Random): CrashImage {
  const durable = new Map<number, Uint8Array>();
  let pending: Array<{ blockNr: number; bytes: Uint8Array }> = [];
  for (const event of events.slice(0, crashAfter)) {
    if (event.kind === 'write') pending.push(event);
    else if (event.kind === 'sync') {
      for (const write of pending) durable.set(write.blockNr, write.bytes);
      pending = [];
    }
  }
  const image = new Map(durable);
  for (const write of pending) {
    const roll = random.next();
    if (roll < 3 / 8) image.set(write.blockNr, write.bytes);
    else if (roll < 6 / 8) continue;
    else {
      const old = image.get(write.blockNr) ?? new Uint8Array(METADATA_BLOCK_SIZE_BYTES);
      const torn = old.slice();
      for (let offset = 0; offset < METADATA_BLOCK_SIZE_BYTES; offset += SECTOR_BYTES) {
        const sector = random.next();
        if (sector < 1 / 3) torn.set(write.bytes.subarray(offset, offset + SECTOR_BYTES), offset);
        else if (sector < 2 / 3) for (let index = offset; index < offset + SECTOR_BYTES; index++) torn[index] = random.below(256);
      }
      image.set(write.blockNr, torn);
    }
  }
  return new CrashImage(image);
}

interface Recorded {
  events: TraceEvent[];
  /** Entries of [origin, snapshot] per sealed generation. */
  models: Map<number, Array<Array<[number, number]>>>;
}

const VALUE_BYTES = 150;

/** Runs a seeded workload of tree changes, snapshots and commits (some overlapping) and records it. */
async function recordWorkload(seed: number, commits: number): Promise<Recorded> {
  const random = new Random(seed);
  const file = new TracingFile();
  const tm = TransactionManager.format(file, { metadataBlockCount: METADATA_BLOCK_COUNT_MIN, poolId: POOL_ID });
  const tree = new BTree(tm, dataRefCodec(VALUE_BYTES, new Map()));
  let origin = tree.createEmpty();
  let snapshot: number | undefined;
  const model = new Map<number, number>();
  let snapshotModel = new Map<number, number>();
  const models = new Map<number, Array<Array<[number, number]>>>();
  const sorted = (map: Map<number, number>): Array<[number, number]> => [...map.entries()].sort((a, b) => a[0] - b[0]);
  let inFlight: Promise<void> | undefined;
  for (let commit = 0; commit < commits; commit++) {
    const changes = 5 + random.below(120);
    for (let step = 0; step < changes; step++) {
      const key = random.below(2000);
      if (random.chance(0.65)) {
        origin = tree.insert(origin, key, commit * 10_000 + step);
        model.set(key, commit * 10_000 + step);
      } else {
        origin = tree.remove(origin, key);
        model.delete(key);
      }
    }
    if (random.chance(0.3)) {
      if (snapshot !== undefined) tree.releaseTree(snapshot);
      snapshot = origin;
      tree.retainTree(snapshot);
      snapshotModel = new Map(model);
    }
    const generation = tm.transactionId;
    file.events.push({ kind: 'seal', generation });
    models.set(generation, [sorted(model), snapshot === undefined ? [] : sorted(snapshotModel)]);
    const done = tm.commit(rootsPayload(origin, snapshot === undefined ? 0 : snapshot + 1)).then(() => {
      file.events.push({ kind: 'ack', generation });
    });
    // Sometimes keep changing while the commit is written.
    if (random.chance(0.4)) {
      await inFlight;
      inFlight = done;
    } else {
      await inFlight;
      await done;
      inFlight = undefined;
    }
  }
  await inFlight;
  return { events: file.events, models };
}

function treeEntries(tm: TransactionManager, root: number): Array<[number, number]> {
  return [...new BTree(tm, dataRefCodec(VALUE_BYTES, new Map())).entries(root)];
}

describe('power cuts during commits', () => {
  for (const seed of [1, 2, 3]) {
    test(`after a cut at any point the metadata opens at an acknowledged or newer sealed generation with exact contents and counts (seed ${seed})`, async () => withSeed(seed, async () => {
      const { events, models } = await recordWorkload(seed, 10);
      const random = new Random(seed * 7919);
      let checked = 0;
      for (let crashAfter = 0; crashAfter <= events.length; crashAfter++) {
        const before = events.slice(0, crashAfter);
        const acknowledged = Math.max(0, ...before.filter((event) => event.kind === 'ack').map((event) => (event as { generation: number }).generation));
        const sealed = Math.max(0, ...before.filter((event) => event.kind === 'seal').map((event) => (event as { generation: number }).generation));
        for (let variant = 0; variant < 3; variant++) {
          const where = `seed ${seed}, cut after event ${crashAfter}, variant ${variant}`;
          const image = crashImage(events, crashAfter, random);
          let opened;
          try {
            opened = await TransactionManager.open(image, {
              validatePayload(payload, tm) {
                const walker = new TreeWalker(tm);
                const codec = dataRefCodec(VALUE_BYTES, new Map());
                const [origin, snapshotPlusOne] = payloadRoots(payload);
                const found = [...walker.walk(origin!, codec), ...(snapshotPlusOne! > 0 ? walker.walk(snapshotPlusOne! - 1, codec) : [])];
                if (found.length > 0) throw found[0]!.error;
              },
            });
          } catch (error) {
            assert.equal(acknowledged, 0, `${where}: open failed after generation ${acknowledged} was acknowledged: ${String(error)}`);
            continue;
          }
          const { tm, payload, report } = opened;
          assert.ok(
            report.generation >= acknowledged && report.generation <= sealed,
            `${where}: opened generation ${report.generation}, acknowledged ${acknowledged}, sealed ${sealed}`,
          );
          assert.equal(report.fellBack, false, `${where}: fell back: ${JSON.stringify(report.rejected)}`);
          const [origin, snapshotPlusOne] = payloadRoots(payload);
          const [originModel, snapshotModel] = models.get(report.generation)!;
          assert.deepEqual(treeEntries(tm, origin!), originModel, `${where}: origin of generation ${report.generation}`);
          const roots = [origin!];
          if (snapshotPlusOne! > 0) {
            assert.deepEqual(treeEntries(tm, snapshotPlusOne! - 1), snapshotModel, `${where}: snapshot of generation ${report.generation}`);
            roots.push(snapshotPlusOne! - 1);
          }
          checkReferences(tm, roots, dataRefCodec(VALUE_BYTES, new Map()), undefined, where);
          checked += 1;
          // Now and then, go on from the cut: change, commit, reopen.
          if (crashAfter % 17 === 0 && variant === 0) {
            const tree = new BTree(tm, dataRefCodec(VALUE_BYTES, new Map()));
            let root = origin!;
            for (let key = 0; key < 300; key++) root = tree.insert(root, key * 5, key);
            await tm.commit(rootsPayload(root, snapshotPlusOne!));
            const again = await TransactionManager.open(image);
            assert.equal(again.report.generation, report.generation + 1, `${where}: commit after recovery`);
            assert.deepEqual(treeEntries(again.tm, payloadRoots(again.payload)[0]!), [...tree.entries(root)], `${where}: after recovery`);
            checkReferences(again.tm, snapshotPlusOne! > 0 ? [root, snapshotPlusOne! - 1] : [root], dataRefCodec(VALUE_BYTES, new Map()), undefined, where);
          }
        }
      }
      assert.ok(checked > events.length, `seed ${seed}: only ${checked} crash states opened`);
    }));
  }
});
