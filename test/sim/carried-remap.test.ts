// A remap made durable by one log record carrying the write's bytes (docs/format.md F-LOG-9), at
// the worst power cut: every write not yet synced is lost. The new block was written but never
// synced, so replay must rebuild it from the old block and the carried bytes; and once a later
// flush has synced the data file, replay must not rebuild it again over what that flush made
// durable (the sync mark). First the two cases named, as scenarios; then seeded campaigns of
// remaps, writes into remapped blocks and flushes, with the power cut at every point of the trace
// (several crash images each), against a byte oracle: every byte reads the value of the last
// write to it that was acknowledged durable, or of a later write, and nothing else; a later write
// not acknowledged may also have torn its sectors (garbage there, as pool-model.ts allows).
//
// Replay a failure: THINBD_SEED=S node --import tsx --test test/sim/carried-remap.test.ts (add
// THINBD_CRASH_POINT=K THINBD_VARIANT=V for the single state). A seed that found a bug goes into
// regressions.json ("carried-remap"), which runs first.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Pool } from '../../src/pool/pool.ts';
import { BLOCK_SIZE_BYTES, createSimPool, poolFiles, simNow } from './pool-bases.ts';
import { checkSimPool } from './pool-check.ts';
import { campaignTestSeeds, runCampaigns, runCrashCampaign } from './crash-harness.ts';
import { Rng } from './rng.ts';
import { SimMachine } from './sim-disk.ts';

const OLD = 0x0a;
const REMAPPED = 0xb0;
const AFTER = 0xc3;

const VOLUME_BLOCKS = 4;
const CAMPAIGN_COUNT = Number(process.env['THINBD_CAMPAIGNS'] ?? 6);
const ROOT_SEED = Number(process.env['THINBD_ROOT_SEED'] ?? 20261207);

/** The disks of a closed pool whose volume `v` has VOLUME_BLOCKS blocks of OLD, and their data blocks. */
async function oldVolumeImages(): Promise<{ images: ReturnType<SimMachine['currentImages']>; dataBlocks: number[] }> {
  const { machine, pool } = await createSimPool(7);
  const volume = await pool.createVolume('v', { sizeBytes: VOLUME_BLOCKS * BLOCK_SIZE_BYTES });
  await volume.write(0, new Uint8Array(VOLUME_BLOCKS * BLOCK_SIZE_BYTES).fill(OLD));
  const dataBlocks = volume.mappedRuns().flatMap((run) => Array.from({ length: run.lengthBlocks }, (_, index) => run.dataBlock + index));
  await pool.close();
  return { images: machine.currentImages(), dataBlocks };
}

function refuseWrites(machine: SimMachine, dataBlocks: readonly number[]): void {
  for (const block of dataBlocks) machine.disk('data').failWrites({ beginBytes: block * BLOCK_SIZE_BYTES, endBytes: (block + 1) * BLOCK_SIZE_BYTES }, { persistent: true });
}

/** A pool whose volume's block 1 (data block 1: the log names a non-zero old block) holds OLD and refuses writes: the next write into it is remapped. */
async function remappingPool(): Promise<{ machine: SimMachine; pool: Pool }> {
  const { images, dataBlocks } = await oldVolumeImages();
  assert.ok(dataBlocks[1]! > 0);
  const machine = new SimMachine({ seed: 7, images });
  refuseWrites(machine, [dataBlocks[1]!]);
  return { machine, pool: await Pool.openOn(poolFiles(machine), { now: simNow }) };
}

/** Powers up machines on the disks as a power cut now leaves them, every write not synced lost. */
function cutPower(machine: SimMachine): () => SimMachine {
  const point = machine.crashPoint(machine.events.length);
  machine.kill();
  return () => point.machine({ variantIndex: 0, outcomes: point.pending.map(() => ({ kind: 'lost' as const })), description: 'every pending write lost' });
}

/** Virtual block 1, after opening the machine's disks (read-only: the rebuilt blocks served from memory). */
async function readBlock(machine: SimMachine, options: { readOnly?: boolean } = {}): Promise<Uint8Array> {
  const pool = await Pool.openOn(poolFiles(machine), { now: simNow, ...options });
  try {
    const bytes = new Uint8Array(BLOCK_SIZE_BYTES);
    await pool.volume('v').read(BLOCK_SIZE_BYTES, bytes);
    return bytes;
  } finally {
    await pool.close();
  }
}

function expectBytes(bytes: Uint8Array, ranges: Array<[begin: number, end: number, value: number]>): void {
  for (const [begin, end, value] of ranges) {
    const wrong = bytes.subarray(begin, end).findIndex((byte) => byte !== value);
    assert.equal(wrong, -1, `byte ${begin + wrong} reads ${bytes[begin + wrong]}, expected ${value}`);
  }
}

test('a remapped write acknowledged with one record carrying its bytes survives the loss of every unsynced write', async () => {
  const { machine, pool } = await remappingPool();
  const before = pool.status().counters;
  await pool.volume('v').write(BLOCK_SIZE_BYTES + 4096, new Uint8Array(4096).fill(REMAPPED));
  const after = pool.status().counters;
  assert.equal(pool.status().health.data.remaps.remaps, 1);
  assert.equal(after.logRecordsCarrying - before.logRecordsCarrying, 1, 'the remap was logged by a record carrying its bytes');
  assert.equal(after.syncs - before.syncs, 1, 'one sync made the remap durable (the metadata file)');
  const recovered = cutPower(machine);
  const expected: Array<[number, number, number]> = [
    [0, 4096, OLD],
    [4096, 8192, REMAPPED],
    [8192, BLOCK_SIZE_BYTES, OLD],
  ];
  // A read-only open writes nothing, and serves the rebuilt block from memory.
  expectBytes(await readBlock(recovered(), { readOnly: true }), expected);
  expectBytes(await readBlock(recovered()), expected);
});

test('a write into the new block flushed after the remap survives the cut: the flush wrote a sync mark, so replay does not rebuild the block over it', async () => {
  const { machine, pool } = await remappingPool();
  await pool.volume('v').write(BLOCK_SIZE_BYTES + 4096, new Uint8Array(4096).fill(REMAPPED));
  await pool.volume('v').write(BLOCK_SIZE_BYTES, new Uint8Array(4096).fill(AFTER));
  await pool.flush();
  assert.equal(pool.status().counters.logSyncMarks, 1, 'the flush that synced the data file wrote a sync mark');
  const bytes = await readBlock(cutPower(machine)());
  expectBytes(bytes, [
    [0, 4096, AFTER],
    [4096, 8192, REMAPPED],
    [8192, BLOCK_SIZE_BYTES, OLD],
  ]);
});

interface WriteOp {
  kind: 'write';
  /** Volume byte offset and length (whole sectors). */
  offsetBytes: number;
  lengthBytes: number;
  value: number;
}
type Op = WriteOp | { kind: 'flush' };

/** Writes into the blocks (the first into a block refusing writes is a remap, durable on return) and flushes. */
function opsOf(rng: Rng): Op[] {
  const ops: Op[] = [];
  for (let count = rng.range(5, 10), value = 0x20; ops.length < count; value++) {
    if (ops.length > 0 && rng.chance(0.3)) {
      ops.push({ kind: 'flush' });
      continue;
    }
    const block = rng.int(VOLUME_BLOCKS);
    const firstSector = rng.int(BLOCK_SIZE_BYTES / 512);
    const sectorCount = rng.range(1, Math.min(16, BLOCK_SIZE_BYTES / 512 - firstSector) + 1);
    ops.push({ kind: 'write', offsetBytes: block * BLOCK_SIZE_BYTES + firstSector * 512, lengthBytes: sectorCount * 512, value });
  }
  return ops;
}

test('power cuts around remaps carried by the log: every byte reads its last acknowledged write or a later one', async (t) => {
  const { images, dataBlocks } = await oldVolumeImages();
  const { seeds, replaying } = campaignTestSeeds('carried-remap', ROOT_SEED, CAMPAIGN_COUNT);
  let carrying = 0;
  let syncMarks = 0;
  const totals = await runCampaigns(seeds, async (seed) => {
    const ops = opsOf(new Rng(seed));
    const result = await runCrashCampaign({
      seed,
      name: ops.map((op) => (op.kind === 'flush' ? 'flush' : `write ${op.lengthBytes} at ${op.offsetBytes}`)).join('; '),
      images,
      budget: 3,
      setup: async (machine) => refuseWrites(machine, dataBlocks),
      workload: async (machine) => {
        const pool = await Pool.openOn(poolFiles(machine), { now: simNow });
        const remapped = new Set<number>();
        for (const [index, op] of ops.entries()) {
          if (op.kind === 'flush') {
            await pool.flush();
            machine.mark(`flush ${index}`);
            continue;
          }
          await pool.volume('v').write(op.offsetBytes, new Uint8Array(op.lengthBytes).fill(op.value));
          const block = Math.floor(op.offsetBytes / BLOCK_SIZE_BYTES);
          // The first write into a block that refuses writes moves it, durably before it returns.
          if (!remapped.has(block)) machine.mark(`remap ${index}`);
          remapped.add(block);
        }
        const counters = pool.status().counters;
        carrying += counters.logRecordsCarrying;
        syncMarks += counters.logSyncMarks;
        await pool.close();
      },
      recover: async (machine, marks) => {
        // The last write to each byte known durable: a remap returned, or a flush after it did.
        const durableOps = new Set<number>();
        for (const mark of marks) {
          const [what, at] = mark.split(' ') as [string, string];
          if (what === 'remap') durableOps.add(Number(at));
          else for (let index = 0; index < Number(at); index++) durableOps.add(index);
        }
        const files = poolFiles(machine);
        const pool = await Pool.openOn(files, { now: simNow });
        try {
          const bytes = new Uint8Array(VOLUME_BLOCKS * BLOCK_SIZE_BYTES);
          await pool.volume('v').read(0, bytes);
          for (let at = 0; at < bytes.length; at++) {
            const values = [OLD];
            let durableIndex = 0;
            ops.forEach((op, index) => {
              if (op.kind !== 'write' || at < op.offsetBytes || at >= op.offsetBytes + op.lengthBytes) return;
              values.push(op.value);
              if (durableOps.has(index)) durableIndex = values.length - 1;
            });
            // As pool-model.ts allows: garbage only where a write not acknowledged durable touched the sector (torn in place).
            const tornAllowed = durableIndex < values.length - 1;
            if (!tornAllowed && !values.slice(durableIndex).includes(bytes[at]!)) {
              assert.fail(`volume byte ${at} reads ${bytes[at]}; its writes were ${values.join(', ')}, the one at ${durableIndex} acknowledged durable (marks: ${marks.join(', ')})`);
            }
          }
          const { problems } = await checkSimPool(files);
          assert.deepEqual(problems, [], 'checkPool reports problems after recovery');
        } finally {
          await pool.close();
        }
      },
    });
    return { ...result, compoundStates: 0 };
  });
  t.diagnostic(
    `carried remaps: ${seeds.length} workloads, ${carrying} log records carrying a remap's bytes, ${syncMarks} sync marks, ` +
      `${totals.distinctCrashPointCount} distinct crash points, ${totals.statesTested} crash states recovered and checked in ${(totals.durationMs / 1000).toFixed(1)} s; ${totals.failures.length} failed`,
  );
  if (totals.failures.length > 0) assert.fail(`${totals.failures.length} of ${seeds.length} workloads failed:\n\n${totals.failures.join('\n\n')}`);
  if (!replaying) {
    assert.ok(carrying > 0, "some remaps were made durable by a record carrying the write's bytes");
    assert.ok(syncMarks > 0, 'some flushes wrote a sync mark');
  }
});
