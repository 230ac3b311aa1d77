// Power cuts at every event of the space policy's paths (docs/format.md F-POOL-45, F-POOL-46,
// F-MIR-6, docs/fault-model.md G12): automatic growth of the data file, a pool resize of the
// mirrored metadata past its mirror (the mirror moves first; from then on every crash image is
// also recovered from the mirror alone),
// freed blocks punched back to the host and then reused by partial writes that rely on the
// punched block reading zeros, a write refused at data-max (`--when-full error`), and a write held
// by `--when-full queue` until a remove frees space.
//
// Each seed runs one workload (the seed picks the order of the blocks and where partial writes
// land); every crash point is recovered in a few crash images and the recovered pool must:
//   - open, with every volume's every block holding what some model state from the last
//     acknowledged flush on says (a mapped block that was punched reads zeros where the model has
//     bytes, and fails this; so does a reused block that shows bytes of its former owner);
//   - hold the volumes of the acknowledged state (a volume may be gone only if a later state
//     removed it);
//   - pass checkPool with no problem at all, and take a new volume's write and flush.
//
// Replay: THINBD_SEED=S node --import tsx --test test/sim/space-crash.test.ts (THINBD_CRASH_POINT,
// THINBD_VARIANT narrow it). Seeds that found a bug go into regressions.json ("space-crash").
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Pool, type PoolFiles } from '../../src/pool/pool.ts';
import { isThinError } from '../../src/errors.ts';
import { METADATA_BLOCK_SIZE_BYTES } from '../../src/constants.ts';
import { Rng } from './rng.ts';
import { SimMachine, type SparseImage } from './sim-disk.ts';
import { campaignTestSeeds, runCampaigns, runCrashCampaign, type CrashCampaignResult } from './crash-harness.ts';
import { checkSimPool } from './pool-check.ts';
import { BLOCK_SIZE_BYTES as BLOCK, METADATA_SIZE_BYTES, SIM_POOL_CREATE_OPTIONS, poolFiles, simNow } from './pool-bases.ts';

const CAMPAIGN_COUNT = Number(process.env['THINBD_CAMPAIGNS'] ?? 3);
const ROOT_SEED = Number(process.env['THINBD_ROOT_SEED'] ?? 20261206);
const VARIANTS_PER_POINT = 2;
/** The data file starts at 16 blocks and may grow to 40, 8 at a time. */
const DATA_BLOCKS_START = 16;
const DATA_BLOCKS_MAX = 40;
const SPACE = { dataMaxBytes: DATA_BLOCKS_MAX * BLOCK, growStepBytes: 8 * BLOCK, lowWater: { bytes: 2 * BLOCK } };

/** A block's contents: zeros except `length` bytes of `byte` at `offset`. */
interface BlockContent {
  byte: number;
  offset: number;
  length: number;
}
/** Volume name -> (block -> contents; absent blocks read zeros), with the volume's size in blocks. */
type ModelState = ReadonlyMap<string, { blocks: number; content: ReadonlyMap<number, BlockContent> }>;

class Model {
  readonly states: ModelState[] = [new Map()];
  /** states index of each acknowledged flush, in order. */
  readonly acks: number[] = [];
  #current = new Map<string, { blocks: number; content: Map<number, BlockContent> }>();

  create(name: string, blocks: number): void {
    this.#current.set(name, { blocks, content: new Map() });
    this.#push();
  }
  write(name: string, block: number, content: BlockContent): void {
    this.#current.get(name)!.content.set(block, content);
    this.#push();
  }
  remove(name: string): void {
    this.#current.delete(name);
    this.#push();
  }
  ack(machine: SimMachine): void {
    this.acks.push(this.states.length - 1);
    machine.mark(`ack ${this.acks.length - 1}`);
  }
  #push(): void {
    const copy = new Map<string, { blocks: number; content: ReadonlyMap<number, BlockContent> }>();
    for (const [name, volume] of this.#current) copy.set(name, { blocks: volume.blocks, content: new Map(volume.content) });
    this.states.push(copy);
  }
}

function blockBytes(content: BlockContent | undefined): Uint8Array {
  const bytes = new Uint8Array(BLOCK);
  if (content !== undefined) bytes.fill(content.byte, content.offset, content.offset + content.length);
  return bytes;
}

function sameBytes(a: Uint8Array, b: Uint8Array): boolean {
  return Buffer.compare(a, b) === 0;
}

async function write(pool: Pool, model: Model, name: string, block: number, content: BlockContent): Promise<void> {
  const bytes = blockBytes(content);
  await pool.volume(name).write(block * BLOCK + content.offset, bytes.subarray(content.offset, content.offset + content.length));
  model.write(name, block, content);
}

async function flush(pool: Pool, model: Model, machine: SimMachine): Promise<void> {
  await pool.flush();
  model.ack(machine);
}

function permutation(rng: Rng, count: number): number[] {
  const order = Array.from({ length: count }, (_, index) => index);
  for (let index = count - 1; index > 0; index -= 1) {
    const other = rng.int(index + 1);
    [order[index], order[other]] = [order[other]!, order[index]!];
  }
  return order;
}

async function workload(machine: SimMachine, model: Model, seed: number): Promise<void> {
  const rng = new Rng(seed);
  const pool = await Pool.openOn(poolFiles(machine), { now: simNow });
  const data = machine.disk('data');

  // Growth: 20 blocks into a 16-block data file (low-water mark 2 blocks, step 8).
  await pool.createVolume('a', { sizeBytes: 24 * BLOCK });
  model.create('a', 24);
  for (const block of permutation(rng, 20)) await write(pool, model, 'a', block, { byte: 1 + block, offset: 0, length: BLOCK });
  await flush(pool, model, machine);
  assert.ok(pool.status().dataBlockCount > DATA_BLOCKS_START, 'the data file grew');
  await pool.createVolume('b', { sizeBytes: 8 * BLOCK });
  model.create('b', 8);
  for (let block = 0; block < 6; block += 1) await write(pool, model, 'b', block, { byte: 0x30 + block, offset: 0, length: BLOCK });
  await flush(pool, model, machine);

  // Punch: a's 20 blocks go back to the host once the remove is durable.
  const allocatedBefore = data.allocatedBytes();
  await pool.removeVolume('a');
  model.remove('a');
  await flush(pool, model, machine);
  await pool.spaceSettled();
  assert.ok(allocatedBefore - data.allocatedBytes() >= 20 * BLOCK, 'the removed blocks were punched');

  // Reuse: partial writes into blocks that read zeros only because they were punched.
  await pool.createVolume('c', { sizeBytes: 40 * BLOCK });
  model.create('c', 40);
  for (let block = 0; block < 10; block += 1) {
    const offset = rng.int(BLOCK - 512);
    await write(pool, model, 'c', block, { byte: 0x50 + block, offset, length: 1 + rng.int(511) });
  }
  await flush(pool, model, machine);

  // Metadata growth by resize (durable when it resolves).
  await pool.resizePool({ metadataSizeBytes: METADATA_SIZE_BYTES + 256 * METADATA_BLOCK_SIZE_BYTES });
  model.ack(machine);

  // Full at data-max: the write that finds no block fails with ENOSPC and changes nothing.
  let next = 10;
  for (; next < 40; next += 1) {
    try {
      await write(pool, model, 'c', next, { byte: 0x80 + next, offset: 0, length: BLOCK });
    } catch (error) {
      if (!isThinError(error, 'THIN_NO_SPACE')) throw error;
      break;
    }
  }
  assert.ok(next < 40, 'the pool filled up at data-max');
  assert.equal(pool.status().dataBlockCount, DATA_BLOCKS_MAX);
  await flush(pool, model, machine);

  // Queue: the write waits while b is removed and flushed, then goes through.
  pool.changeSpaceSettings({ whenFull: { queueSeconds: 600 } });
  await flush(pool, model, machine);
  const queued = pool.volume('c').write(next * BLOCK, blockBytes({ byte: 0xf0, offset: 0, length: BLOCK }));
  while (pool.status().space.writesWaiting === 0) await new Promise((resolve) => setImmediate(resolve));
  await pool.removeVolume('b');
  model.remove('b');
  await flush(pool, model, machine);
  await queued;
  model.write('c', next, { byte: 0xf0, offset: 0, length: BLOCK });
  await flush(pool, model, machine);
  await pool.close();
}

async function verify(files: PoolFiles, model: Model, marks: readonly string[]): Promise<void> {
  const acked = marks.filter((mark) => mark.startsWith('ack ')).length;
  const from = acked === 0 ? 0 : model.acks[acked - 1]!;
  const candidates = model.states.slice(from);
  const pool = await Pool.openOn(files);
  try {
    const listed = new Set(pool.list().map((info) => info.name));
    const names = new Set<string>([...listed, ...candidates.flatMap((state) => [...state.keys()])]);
    for (const name of names) {
      const holding = candidates.filter((state) => state.has(name));
      if (!listed.has(name)) {
        assert.ok(holding.length < candidates.length, `volume ${name} of the acknowledged state is missing`);
        continue;
      }
      assert.ok(holding.length > 0, `volume ${name} exists, but no state from the last acknowledged flush on has it`);
      const blocks = holding[0]!.get(name)!.blocks;
      const bytes = new Uint8Array(BLOCK);
      for (let block = 0; block < blocks; block += 1) {
        await pool.volume(name).read(block * BLOCK, bytes);
        const allowed = holding.some((state) => sameBytes(bytes, blockBytes(state.get(name)!.content.get(block))));
        if (!allowed) {
          const nonZero = bytes.findIndex((byte) => byte !== 0);
          assert.fail(`volume ${name} block ${block} holds what no state allows (first non-zero byte at ${nonZero}: ${bytes[nonZero]})`);
        }
      }
    }
    const { problems } = await checkSimPool(files);
    assert.deepEqual(problems, [], 'checkPool reports problems after recovery');
    if (pool.status().mode === 'read-write') {
      // Still usable: a new volume's write lands, unless the pool is full at data-max (then ENOSPC
      // at once: the recovered pool may have the queue setting, which would hold the probe).
      pool.changeSpaceSettings({ whenFull: 'error' });
      const probe = await pool.createVolume('after-crash', { sizeBytes: BLOCK });
      try {
        await probe.write(0, new Uint8Array(BLOCK).fill(0xee));
      } catch (error) {
        if (!isThinError(error, 'THIN_NO_SPACE')) throw error;
        assert.equal(pool.status().dataBlockCount, DATA_BLOCKS_MAX, 'ENOSPC before the data file reached data-max');
      }
      await pool.flush();
    }
  } finally {
    await pool.close();
  }
}

/** The empty pool every campaign starts from: 16 data blocks, the space settings above. */
async function spaceBase(): Promise<ReadonlyMap<string, SparseImage>> {
  const machine = new SimMachine({ seed: 1 });
  machine.createDisk('metadata', 0);
  machine.createDisk('data', 0);
  const pool = await Pool.createOn(poolFiles(machine), { ...SIM_POOL_CREATE_OPTIONS, dataSizeBytes: DATA_BLOCKS_START * BLOCK, space: SPACE });
  await pool.close();
  return machine.currentImages();
}

/**
 * Once the metadata file has grown for a move of the mirror (F-MIR-6), the second copy alone must
 * hold the pool too: the crash image with every block of the first copy (below the metadata block
 * count the pool opens with) punched, reading as zeros, must recover as the image itself does.
 * That proves whole, at every power cut, the copy a move made (or the old one, while no
 * superblock naming the new place is durable), and that open finds it with no first copy.
 */
async function verifyMirrorAlone(images: ReadonlyMap<string, SparseImage>, model: Model, marks: readonly string[], seed: number): Promise<boolean> {
  if (images.get('metadata')!.sizeBytes <= 2 * METADATA_SIZE_BYTES) return false;
  const copies = (): Map<string, SparseImage> => new Map([...images].map(([name, image]) => [name, image.clone()]));
  const probe = await Pool.openOn(poolFiles(new SimMachine({ seed, images: copies() })), { readOnly: true });
  const metadataBlockCount = probe.status().metadataBlockCount;
  await probe.close();
  const alone = copies();
  alone.get('metadata')!.punch(0, metadataBlockCount * METADATA_BLOCK_SIZE_BYTES);
  try {
    await verify(poolFiles(new SimMachine({ seed, images: alone })), model, marks);
  } catch (error) {
    throw new Error(`from the mirror alone (the first ${metadataBlockCount} metadata blocks punched): ${error instanceof Error ? error.message : String(error)}`, { cause: error });
  }
  return true;
}

async function runSpaceCampaign(seed: number, images: ReadonlyMap<string, SparseImage>): Promise<CrashCampaignResult & { compoundStates: number }> {
  const model = new Model();
  let compoundStates = 0;
  const result = await runCrashCampaign({
    seed,
    name: 'space',
    budget: VARIANTS_PER_POINT,
    images,
    workload: (machine) => workload(machine, model, seed),
    recover: async (machine, marks) => {
      const crashImages = machine.currentImages();
      await verify(poolFiles(machine), model, marks);
      if (await verifyMirrorAlone(crashImages, model, marks, seed)) compoundStates += 1;
    },
  });
  return { ...result, compoundStates };
}

test('a power cut at any event of growth, punching, a full pool and a queued write loses nothing acknowledged and never leaves a mapped block punched', async (t) => {
  const { seeds } = campaignTestSeeds('space-crash', ROOT_SEED, CAMPAIGN_COUNT);
  const images = await spaceBase();
  const totals = await runCampaigns(seeds, (seed) => runSpaceCampaign(seed, images));
  t.diagnostic(
    `space crash: ${seeds.length} workloads, ${totals.eventCount} events, ${totals.distinctCrashPointCount} distinct crash points, ` +
      `${totals.statesTested} crash states recovered and checked (${totals.compoundStatesTested} of them also from the metadata mirror alone, once the mirror began to move) ` +
      `in ${(totals.durationMs / 1000).toFixed(1)} s; ${totals.failures.length} workloads failed`,
  );
  if (totals.failures.length > 0) assert.fail(`${totals.failures.length} of ${seeds.length} workloads failed:\n\n${totals.failures.join('\n\n')}`);
  assert.ok(totals.statesTested > 0);
});
