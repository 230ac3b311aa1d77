// Model-based test of the pool: seeded random sequences of create / write / discard /
// write-zeroes / snapshot / remove / resize / flush / close-and-reopen, run against the real pool
// on memory files and against a naive model holding every volume's bytes. After every step the
// touched volumes' contents and every volume's mapped block count are compared, and the data
// space map's used count is compared with the blocks mappings actually refer to; checkPool runs
// after every reopen and at the end. The data space is small, so writes run out of space too.
//
// Replay one seed: MODEL_SEED=1234 node --import tsx --test test/pool/model.test.ts
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { isThinError } from '../../src/errors.ts';
import { MemoryBlockFile } from '../../src/io/memory.ts';
import { Pool, type PoolFiles } from '../../src/pool/pool.ts';
import type { Volume } from '../../src/pool/volume.ts';
import { checkPool } from '../../src/tools/check.ts';
import { ForwardingBlockFile } from '../io/forwarding-block-file.ts';
import { Rng } from '../sim/rng.ts';
import { BLOCK, METADATA_BYTES } from './helpers.ts';

const SEEDS = Number(process.env['MODEL_SEEDS'] ?? 80);
const OPS = Number(process.env['MODEL_OPS'] ?? 500);
const FIRST_SEED = Number(process.env['MODEL_SEED'] ?? 1);
const DATA_BLOCKS = 40;
const VOLUME_BLOCKS_MAX = 16;
const VOLUMES_MAX = 6;
const totals = { ops: 0, noSpace: 0, reopens: 0, snapshots: 0 };
const sourceScratch = new Uint8Array(VOLUME_BLOCKS_MAX * BLOCK);
/** One read buffer for every comparison: allocating a volume's worth per step dominated the run. */
const scratch = new Uint8Array(VOLUME_BLOCKS_MAX * BLOCK);

/** Lets a pool be closed and opened again on the same memory: close() does not close these. */
class KeptOpen extends ForwardingBlockFile<MemoryBlockFile> {
  override async close(): Promise<void> {}
}

interface ModelVolume {
  bytes: Uint8Array;
  /** Per virtual block: does the pool map it? */
  mapped: boolean[];
  readOnly: boolean;
}

function blocksOf(sizeBytes: number): number {
  return Math.ceil(sizeBytes / BLOCK);
}

class Run {
  readonly seed: number;
  readonly rng: Rng;
  readonly files: PoolFiles;
  pool!: Pool;
  model = new Map<string, ModelVolume>();
  nextName = 0;
  log: string[] = [];

  constructor(seed: number) {
    this.seed = seed;
    this.rng = new Rng(seed);
    this.files = { metadata: new KeptOpen(new MemoryBlockFile(0, 'metadata')), data: new KeptOpen(new MemoryBlockFile(0, 'data')) };
  }

  async start(): Promise<void> {
    this.pool = await Pool.createOn(this.files, { dataSizeBytes: DATA_BLOCKS * BLOCK, blockSizeBytes: BLOCK, metadataSizeBytes: METADATA_BYTES });
  }

  names(filter: (volume: ModelVolume) => boolean = () => true): string[] {
    return [...this.model.entries()].filter(([, volume]) => filter(volume)).map(([name]) => name);
  }

  pick<T>(items: T[]): T | undefined {
    return items.length === 0 ? undefined : items[this.rng.int(items.length)];
  }

  randomSize(): number {
    const blocks = 1 + this.rng.int(VOLUME_BLOCKS_MAX);
    return this.rng.chance(0.3) ? blocks * BLOCK - this.rng.int(BLOCK - 1) : blocks * BLOCK;
  }

  /** A random byte range inside a volume: mostly small, sometimes whole blocks or several. */
  randomRange(sizeBytes: number): { offsetBytes: number; lengthBytes: number } {
    const kind = this.rng.int(4);
    let offsetBytes: number;
    let lengthBytes: number;
    if (kind === 0) {
      offsetBytes = this.rng.int(sizeBytes);
      lengthBytes = 1 + this.rng.int(4096);
    } else if (kind === 1) {
      offsetBytes = this.rng.int(blocksOf(sizeBytes)) * BLOCK;
      lengthBytes = (1 + this.rng.int(3)) * BLOCK;
    } else if (kind === 2) {
      offsetBytes = this.rng.int(sizeBytes);
      lengthBytes = 1 + this.rng.int(3 * BLOCK);
    } else {
      offsetBytes = 0;
      lengthBytes = sizeBytes;
    }
    offsetBytes = Math.min(offsetBytes, sizeBytes - 1);
    lengthBytes = Math.max(1, Math.min(lengthBytes, sizeBytes - offsetBytes));
    return { offsetBytes, lengthBytes };
  }

  async step(index: number): Promise<string[]> {
    const roll = this.rng.int(100);
    const writable = this.names((volume) => !volume.readOnly);
    if (roll < 6 || this.model.size === 0) {
      if (this.model.size >= VOLUMES_MAX) return [];
      const name = `v${this.nextName++}`;
      const sizeBytes = this.randomSize();
      this.log.push(`${index}: create ${name} ${sizeBytes}`);
      await this.pool.createVolume(name, { sizeBytes });
      this.model.set(name, { bytes: new Uint8Array(sizeBytes), mapped: new Array<boolean>(blocksOf(sizeBytes)).fill(false), readOnly: false });
      return [name];
    }
    if (roll < 50) {
      const name = this.pick(writable);
      if (name === undefined) return [];
      const volume = this.model.get(name)!;
      const { offsetBytes, lengthBytes } = this.randomRange(volume.bytes.length);
      const value = 1 + this.rng.int(255);
      const fua = this.rng.chance(0.05);
      this.log.push(`${index}: write ${name} ${offsetBytes}+${lengthBytes} =${value}${fua ? ' fua' : ''}`);
      // One long-lived source buffer: the pool does not keep the caller's bytes after the write.
      const source = sourceScratch.subarray(0, lengthBytes).fill(value);
      await this.tolerateNoSpace(name, offsetBytes, lengthBytes, () => this.pool.volume(name).write(offsetBytes, source, { fua }), (v) => {
        v.bytes.set(source, offsetBytes);
        markMapped(v, offsetBytes, lengthBytes, true);
      });
      return [name];
    }
    if (roll < 60) {
      const name = this.pick(writable);
      if (name === undefined) return [];
      const volume = this.model.get(name)!;
      const { offsetBytes, lengthBytes } = this.randomRange(volume.bytes.length);
      this.log.push(`${index}: discard ${name} ${offsetBytes}+${lengthBytes}`);
      await this.tolerateNoSpace(name, offsetBytes, lengthBytes, () => this.pool.volume(name).discard(offsetBytes, lengthBytes), (v) => {
        v.bytes.fill(0, offsetBytes, offsetBytes + lengthBytes);
        unmapWhole(v, offsetBytes, lengthBytes);
      });
      return [name];
    }
    if (roll < 68) {
      const name = this.pick(writable);
      if (name === undefined) return [];
      const volume = this.model.get(name)!;
      const { offsetBytes, lengthBytes } = this.randomRange(volume.bytes.length);
      const noHole = this.rng.chance(0.4);
      this.log.push(`${index}: write-zeroes ${name} ${offsetBytes}+${lengthBytes}${noHole ? ' no-hole' : ''}`);
      await this.tolerateNoSpace(name, offsetBytes, lengthBytes, () => this.pool.volume(name).writeZeroes(offsetBytes, lengthBytes, { noHole }), (v) => {
        v.bytes.fill(0, offsetBytes, offsetBytes + lengthBytes);
        if (noHole) markMapped(v, offsetBytes, lengthBytes, true);
        else unmapWhole(v, offsetBytes, lengthBytes);
      });
      return [name];
    }
    if (roll < 76) {
      const source = this.pick(this.names());
      if (source === undefined || this.model.size >= VOLUMES_MAX) return [];
      const name = `v${this.nextName++}`;
      const readOnly = this.rng.chance(0.25);
      totals.snapshots += 1;
      this.log.push(`${index}: snapshot ${source} -> ${name}${readOnly ? ' ro' : ''}`);
      await this.pool.snapshot(source, name, { readOnly });
      const origin = this.model.get(source)!;
      this.model.set(name, { bytes: origin.bytes.slice(), mapped: [...origin.mapped], readOnly });
      return [name];
    }
    if (roll < 82) {
      const name = this.pick(this.names());
      if (name === undefined) return [];
      this.log.push(`${index}: remove ${name}`);
      await this.pool.removeVolume(name);
      this.model.delete(name);
      return [];
    }
    if (roll < 88) {
      const name = this.pick(writable);
      if (name === undefined) return [];
      const volume = this.model.get(name)!;
      const sizeBytes = this.randomSize();
      this.log.push(`${index}: resize ${name} ${volume.bytes.length} -> ${sizeBytes}`);
      try {
        await this.pool.resizeVolume(name, sizeBytes);
      } catch (error) {
        if (!isThinError(error, 'THIN_NO_SPACE')) throw error;
        this.log.push(`${index}: (no space)`);
        totals.noSpace += 1;
        return [name];
      }
      const bytes = new Uint8Array(sizeBytes);
      bytes.set(volume.bytes.subarray(0, Math.min(sizeBytes, volume.bytes.length)));
      const mapped = new Array<boolean>(blocksOf(sizeBytes)).fill(false);
      for (let block = 0; block < Math.min(mapped.length, volume.mapped.length); block += 1) mapped[block] = volume.mapped[block]!;
      this.model.set(name, { bytes, mapped, readOnly: false });
      return [name];
    }
    if (roll < 96) {
      this.log.push(`${index}: flush`);
      await this.pool.flush();
      return [];
    }
    this.log.push(`${index}: close and reopen`);
    await this.reopen();
    return this.names();
  }

  /**
   * Runs an operation that may run out of data space. On success the model follows `apply`; on
   * THIN_NO_SPACE each block of the range must hold either its old or its new contents, and the
   * model adopts what the pool has.
   */
  async tolerateNoSpace(
    name: string,
    offsetBytes: number,
    lengthBytes: number,
    operation: () => Promise<void>,
    apply: (volume: ModelVolume) => void,
  ): Promise<void> {
    const volume = this.model.get(name)!;
    try {
      await operation();
    } catch (error) {
      if (!isThinError(error, 'THIN_NO_SPACE')) throw error;
      this.log.push('  (no space)');
      totals.noSpace += 1;
      const intended = { bytes: volume.bytes.slice(), mapped: [...volume.mapped], readOnly: volume.readOnly };
      apply(intended);
      const actual = scratch.subarray(0, volume.bytes.length);
      await this.pool.volume(name).read(0, actual);
      const extents = mappedBlocksOf(this.pool.volume(name));
      const firstBlock = Math.floor(offsetBytes / BLOCK);
      const endBlock = Math.ceil((offsetBytes + lengthBytes) / BLOCK);
      for (let block = firstBlock; block < endBlock; block += 1) {
        const begin = block * BLOCK;
        const end = Math.min(begin + BLOCK, actual.length);
        const got = actual.subarray(begin, end);
        const isOld = Buffer.compare(got, volume.bytes.subarray(begin, end)) === 0;
        const isNew = Buffer.compare(got, intended.bytes.subarray(begin, end)) === 0;
        assert.ok(isOld || isNew, `block ${block} of ${name} holds neither its old nor its new contents after THIN_NO_SPACE`);
        volume.bytes.set(got, begin);
        volume.mapped[block] = extents[block]!;
      }
      return;
    }
    apply(volume);
  }

  async reopen(): Promise<void> {
    await this.pool.close();
    const report = await checkPool(this.files);
    totals.reopens += 1;
    assert.ok(report.ok, `checkPool after close: ${JSON.stringify(report.problems.slice(0, 5))}`);
    this.pool = await Pool.openOn(this.files);
  }

  async compare(names: string[]): Promise<void> {
    for (const name of names) {
      const volume = this.model.get(name);
      if (volume === undefined) continue;
      const real = this.pool.volume(name);
      assert.equal(real.sizeBytes, volume.bytes.length, `size of ${name}`);
      const actual = scratch.subarray(0, volume.bytes.length);
      await real.read(0, actual);
      if (Buffer.compare(actual, volume.bytes) !== 0) {
        let first = 0;
        while (actual[first] === volume.bytes[first]) first += 1;
        assert.fail(`contents of ${name} differ first at byte ${first} (block ${Math.floor(first / BLOCK)}): pool ${actual[first]}, model ${volume.bytes[first]}`);
      }
    }
    // Accounting: mapped blocks per volume, and the data space map against actual references.
    const usage = this.pool.usage();
    for (const info of this.pool.list()) {
      const volume = this.model.get(info.name);
      assert.ok(volume !== undefined, `the pool has a volume ${info.name} the model does not`);
      const expected = volume.mapped.filter(Boolean).length;
      assert.equal(usage.get(info.id)?.mappedBlocks, expected, `mapped blocks of ${info.name}`);
    }
    assert.equal(this.pool.list().length, this.model.size, 'volume count');
    assert.equal(this.pool.status().dataBlocksUsed, this.pool.referencedDataBlocks(), 'data space map used count vs. blocks referenced');
  }
}

function markMapped(volume: ModelVolume, offsetBytes: number, lengthBytes: number, mapped: boolean): void {
  const end = Math.ceil((offsetBytes + lengthBytes) / BLOCK);
  for (let block = Math.floor(offsetBytes / BLOCK); block < end; block += 1) volume.mapped[block] = mapped;
}

/** Blocks covered whole (a block ending at the volume's end counts as whole) become unmapped. */
function unmapWhole(volume: ModelVolume, offsetBytes: number, lengthBytes: number): void {
  const endBytes = offsetBytes + lengthBytes;
  const end = Math.ceil(endBytes / BLOCK);
  for (let block = Math.floor(offsetBytes / BLOCK); block < end; block += 1) {
    const blockBegin = block * BLOCK;
    const blockEnd = Math.min(blockBegin + BLOCK, volume.bytes.length);
    if (offsetBytes <= blockBegin && endBytes >= blockEnd) volume.mapped[block] = false;
  }
}

function mappedBlocksOf(volume: Volume): boolean[] {
  const result: boolean[] = [];
  for (const extent of volume.extents(0, volume.sizeBytes)) {
    for (let index = 0; index < Math.ceil(extent.lengthBytes / BLOCK); index += 1) result.push(extent.mapped);
  }
  return result;
}

async function runSeed(seed: number): Promise<void> {
  const run = new Run(seed);
  await run.start();
  try {
    for (let index = 0; index < OPS; index += 1) {
      const touched = await run.step(index);
      totals.ops += 1;
      await run.compare(touched);
    }
    await run.compare(run.names());
    await run.pool.close();
    const report = await checkPool(run.files);
    assert.ok(report.ok, `checkPool at the end: ${JSON.stringify(report.problems.slice(0, 5))}`);
  } catch (error) {
    const message = error instanceof Error ? error.message : String(error);
    throw new Error(`model test failed with seed ${seed} (replay: MODEL_SEED=${seed} MODEL_SEEDS=1): ${message}\nlast steps:\n${run.log.slice(-15).join('\n')}`, {
      cause: error,
    });
  }
}

test(`the pool agrees with a naive model over ${SEEDS} seeds of ${OPS} random operations`, async (t) => {
  for (let seed = FIRST_SEED; seed < FIRST_SEED + SEEDS; seed += 1) await runSeed(seed);
  t.diagnostic(`operations ${totals.ops}, snapshots ${totals.snapshots}, out of space ${totals.noSpace}, reopens with checkPool ${totals.reopens}`);
});

// ---- concurrency: requests issued together take effect in the order they were issued ----
//
// Every request takes its range lock in the same turn it is called, and locks are granted first
// come, first served, so a batch of requests issued without waiting (overlapping or not, with
// snapshots and resizes among them) must leave the pool as the same requests run one by one.

const CONCURRENT_SEEDS = Number(process.env['MODEL_CONCURRENT_SEEDS'] ?? 40);
const CONCURRENT_BATCHES = 60;
const CONCURRENT_DATA_BLOCKS = 1024;

async function runConcurrentSeed(seed: number): Promise<void> {
  const rng = new Rng(seed);
  const files = { metadata: new KeptOpen(new MemoryBlockFile(0, 'metadata')), data: new KeptOpen(new MemoryBlockFile(0, 'data')) };
  const pool = await Pool.createOn(files, { dataSizeBytes: CONCURRENT_DATA_BLOCKS * BLOCK, blockSizeBytes: BLOCK, metadataSizeBytes: METADATA_BYTES });
  const model = new Map<string, ModelVolume>();
  let nextName = 0;
  const log: string[] = [];
  try {
    for (let batch = 0; batch < CONCURRENT_BATCHES; batch += 1) {
      while (model.size < 2) {
        const name = `c${nextName++}`;
        const sizeBytes = (4 + rng.int(12)) * BLOCK - (rng.chance(0.3) ? rng.int(BLOCK) : 0);
        await pool.createVolume(name, { sizeBytes });
        model.set(name, { bytes: new Uint8Array(sizeBytes), mapped: new Array<boolean>(blocksOf(sizeBytes)).fill(false), readOnly: false });
      }
      const usable = new Set([...model.keys()].filter((name) => !model.get(name)!.readOnly));
      const pending: Promise<unknown>[] = [];
      const count = 2 + rng.int(10);
      for (let index = 0; index < count && usable.size > 0; index += 1) {
        const names = [...usable];
        const name = names[rng.int(names.length)]!;
        const volume = model.get(name)!;
        const sizeBytes = volume.bytes.length;
        const roll = rng.int(100);
        const offsetBytes = rng.int(sizeBytes);
        const lengthBytes = 1 + rng.int(Math.min(sizeBytes - offsetBytes, rng.chance(0.5) ? 4096 : 3 * BLOCK));
        if (roll < 55) {
          const value = 1 + rng.int(255);
          log.push(`${batch}.${index}: write ${name} ${offsetBytes}+${lengthBytes} =${value}`);
          pending.push(pool.volume(name).write(offsetBytes, new Uint8Array(lengthBytes).fill(value)));
          volume.bytes.fill(value, offsetBytes, offsetBytes + lengthBytes);
          markMapped(volume, offsetBytes, lengthBytes, true);
        } else if (roll < 65) {
          log.push(`${batch}.${index}: discard ${name} ${offsetBytes}+${lengthBytes}`);
          pending.push(pool.volume(name).discard(offsetBytes, lengthBytes));
          volume.bytes.fill(0, offsetBytes, offsetBytes + lengthBytes);
          unmapWhole(volume, offsetBytes, lengthBytes);
        } else if (roll < 72) {
          const noHole = rng.chance(0.5);
          log.push(`${batch}.${index}: write-zeroes ${name} ${offsetBytes}+${lengthBytes}${noHole ? ' no-hole' : ''}`);
          pending.push(pool.volume(name).writeZeroes(offsetBytes, lengthBytes, { noHole }));
          volume.bytes.fill(0, offsetBytes, offsetBytes + lengthBytes);
          if (noHole) markMapped(volume, offsetBytes, lengthBytes, true);
          else unmapWhole(volume, offsetBytes, lengthBytes);
        } else if (roll < 80) {
          const target = `c${nextName++}`;
          log.push(`${batch}.${index}: snapshot ${name} -> ${target}`);
          pending.push(pool.snapshot(name, target));
          model.set(target, { bytes: volume.bytes.slice(), mapped: [...volume.mapped], readOnly: false });
        } else if (roll < 86) {
          const newSizeBytes = (1 + rng.int(16)) * BLOCK - (rng.chance(0.3) ? rng.int(BLOCK - 1) : 0);
          log.push(`${batch}.${index}: resize ${name} -> ${newSizeBytes}`);
          pending.push(pool.resizeVolume(name, newSizeBytes));
          const bytes = new Uint8Array(newSizeBytes);
          bytes.set(volume.bytes.subarray(0, Math.min(newSizeBytes, sizeBytes)));
          const mapped = new Array<boolean>(blocksOf(newSizeBytes)).fill(false);
          for (let block = 0; block < Math.min(mapped.length, volume.mapped.length); block += 1) mapped[block] = volume.mapped[block]!;
          model.set(name, { bytes, mapped, readOnly: false });
          usable.delete(name); // later requests in this batch would be checked against the old size
        } else if (roll < 92 && model.size > 2) {
          log.push(`${batch}.${index}: remove ${name}`);
          pending.push(pool.removeVolume(name));
          model.delete(name);
          usable.delete(name);
        } else {
          log.push(`${batch}.${index}: flush`);
          pending.push(pool.flush());
        }
      }
      const results = await Promise.allSettled(pending);
      const failed = results.find((result) => result.status === 'rejected');
      if (failed !== undefined) throw (failed as PromiseRejectedResult).reason;
      for (const [name, volume] of model) {
        const actual = scratch.subarray(0, volume.bytes.length);
        await pool.volume(name).read(0, actual);
        assert.equal(Buffer.compare(actual, volume.bytes), 0, `contents of ${name} after batch ${batch}`);
        assert.equal(pool.usage().get(pool.volume(name).id)?.mappedBlocks, volume.mapped.filter(Boolean).length, `mapped blocks of ${name}`);
      }
      assert.equal(pool.status().dataBlocksUsed, pool.referencedDataBlocks(), 'data space map used count vs. blocks referenced');
    }
    await pool.close();
    const report = await checkPool(files);
    assert.ok(report.ok, `checkPool at the end: ${JSON.stringify(report.problems.slice(0, 5))}`);
  } catch (error) {
    const message = error instanceof Error ? error.message : String(error);
    throw new Error(`concurrent model test failed with seed ${seed}: ${message}\nlast requests:\n${log.slice(-20).join('\n')}`, { cause: error });
  }
}

test(`requests issued together take effect in the order they were issued (${CONCURRENT_SEEDS} seeds)`, async () => {
  for (let seed = FIRST_SEED; seed < FIRST_SEED + CONCURRENT_SEEDS; seed += 1) await runConcurrentSeed(seed);
});
