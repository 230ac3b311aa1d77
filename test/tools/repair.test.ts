// repair: a damaged pool yields a new pool that check accepts, that keeps everything readable
// (block for block) and that loses only what sat under the damage, each loss named; what a killed
// repair left is removed by the next.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { closeSync, existsSync, fstatSync, mkdirSync, openSync, readFileSync, symlinkSync, writeFileSync, writeSync } from 'node:fs';
import { Pool } from '../../src/pool/pool.ts';
import { repairPool, repairPoolInPlace } from '../../src/tools/repair.ts';
import { PoolView } from '../../src/tools/pool-view.ts';
import { checkPool } from '../../src/tools/check.ts';
import { TreeWalker, type ValueCodec } from '../../src/pdata/index.ts';
import { extentReadCodec } from '../../src/pool/trees.ts';
import type { Extent } from '../../src/pool/ranges.ts';
import { METADATA_BLOCK_SIZE_BYTES } from '../../src/constants.ts';
import { Rng } from '../sim/rng.ts';
import { Scratch } from './thin-tools.ts';

const BLOCK = 65536;
const VOLUME_BLOCKS = 2000;

/** Two volumes with thousands of scattered extents (many leaves); a snapshot of one. */
async function makePool(dir: string): Promise<void> {
  const rng = new Rng(9);
  const pool = await Pool.create(dir, { dataSizeBytes: 128 * 1024 * 1024, blockSizeBytes: BLOCK });
  try {
    for (const name of ['a', 'b']) {
      const volume = await pool.createVolume(name, { sizeBytes: VOLUME_BLOCKS * BLOCK, labels: { name } });
      for (let block = 0; block < VOLUME_BLOCKS; block += 2) await volume.write(block * BLOCK, rng.bytes(64));
    }
    await pool.snapshot('a', 'a-snap');
    await pool.volume('a').write(0, rng.bytes(64));
  } finally {
    await pool.close();
  }
}

/** Leaves of a volume's mapping tree with the key range each covers. */
async function leavesOf(dir: string, name: string): Promise<Array<{ blockNr: number; keyBegin: number; keyEnd: number }>> {
  const view = await PoolView.open(dir);
  try {
    const device = view.device(name);
    const codec: ValueCodec<Extent> = extentReadCodec(view.payload.dataBlockCount);
    const leaves = new Map<number, { blockNr: number; keyBegin: number; keyEnd: number }>();
    new TreeWalker(view.tm).walk(device.value.mappingRoot, codec, {
      leaf: (key, extent, leafBlockNr) => {
        const leaf = leaves.get(leafBlockNr) ?? { blockNr: leafBlockNr, keyBegin: key, keyEnd: key };
        leaf.keyEnd = key + extent.lengthBlocks;
        leaves.set(leafBlockNr, leaf);
      },
    });
    return [...leaves.values()];
  } finally {
    await view.close();
  }
}

/** Overwrites a metadata block in both copies of the mirror (its second half): damage the mirror cannot mend. */
function smash(dir: string, blockNr: number): void {
  const fd = openSync(`${dir}/metadata`, 'r+');
  try {
    const mirrorOffsetBytes = fstatSync(fd).size / 2;
    for (const base of [0, mirrorOffsetBytes]) {
      writeSync(fd, Buffer.alloc(METADATA_BLOCK_SIZE_BYTES, 0x5a), 0, METADATA_BLOCK_SIZE_BYTES, base + blockNr * METADATA_BLOCK_SIZE_BYTES);
    }
  } finally {
    closeSync(fd);
  }
}

async function volumeBlocks(dir: string, name: string): Promise<Buffer[]> {
  const pool = await Pool.open(dir, { readOnly: true });
  try {
    const volume = pool.volume(name);
    const blocks: Buffer[] = [];
    const buffer = new Uint8Array(64);
    for (let block = 0; block < VOLUME_BLOCKS; block += 1) {
      await volume.read(block * BLOCK, buffer);
      blocks.push(Buffer.from(buffer));
    }
    return blocks;
  } finally {
    await pool.close();
  }
}

test('repair of a whole pool loses nothing and gives a pool with the same volumes and contents', async () => {
  const scratch = new Scratch();
  try {
    const dir = scratch.path('pool');
    await makePool(dir);
    const report = await repairPool(dir, scratch.path('fixed'));
    assert.deepEqual(report.lost, []);
    assert.deepEqual(report.volumes.map((v) => v.name), ['a', 'b', 'a-snap']);
    assert.deepEqual((await checkPool(report.dir)).problems, []);
    for (const name of ['a', 'b', 'a-snap']) assert.deepEqual(await volumeBlocks(report.dir, name), await volumeBlocks(dir, name), name);
  } finally {
    scratch.remove();
  }
});

test('a smashed mapping leaf costs exactly the blocks under it, named; everything else reads back as before', async () => {
  const scratch = new Scratch();
  try {
    const dir = scratch.path('pool');
    await makePool(dir);
    const leaves = await leavesOf(dir, 'b');
    assert.ok(leaves.length >= 3, `volume b has ${leaves.length} leaves`);
    const victim = leaves[1]!;
    const before = await volumeBlocks(dir, 'b');
    const beforeA = await volumeBlocks(dir, 'a');
    smash(dir, victim.blockNr);
    assert.equal((await checkPool(dir)).ok, false, 'check sees the damage');

    const report = await repairPool(dir, scratch.path('fixed'));
    assert.equal(report.lost.length, 1, JSON.stringify(report.lost));
    assert.match(report.lost[0]!.where, new RegExp(`^volume b \\(id 2\\), mapping tree metadata block ${victim.blockNr}$`));
    assert.match(report.lost[0]!.message, /^the mappings of virtual blocks \[\d+, \d+\)/);
    assert.deepEqual((await checkPool(report.dir)).problems, []);

    const after = await volumeBlocks(report.dir, 'b');
    const zeros = Buffer.alloc(64);
    for (let block = 0; block < VOLUME_BLOCKS; block += 1) {
      const underDamage = block >= victim.keyBegin && block < victim.keyEnd;
      assert.deepEqual(after[block], underDamage ? zeros : before[block], `block ${block} (lost range [${victim.keyBegin}, ${victim.keyEnd}))`);
    }
    assert.deepEqual(await volumeBlocks(report.dir, 'a'), beforeA, 'volume a is untouched');
  } finally {
    scratch.remove();
  }
});

test('unreadable volume details keep the volume and its data under the name recovered-<id>', async () => {
  const scratch = new Scratch();
  try {
    const dir = scratch.path('pool');
    await makePool(dir);
    const view = await PoolView.open(dir);
    const detailsBlock = view.device('b').value.detailsBlock;
    await view.close();
    const before = await volumeBlocks(dir, 'b');
    smash(dir, detailsBlock);
    const report = await repairPool(dir, scratch.path('fixed'));
    assert.deepEqual(report.lost.map((loss) => loss.where), [`volume id 2, details block ${detailsBlock}`]);
    assert.deepEqual(report.volumes.map((v) => v.name), ['a', 'recovered-2', 'a-snap']);
    assert.deepEqual(await volumeBlocks(report.dir, 'recovered-2'), before);
    assert.deepEqual((await checkPool(report.dir)).problems, []);
  } finally {
    scratch.remove();
  }
});

test('what a killed repair left (its build and scan directories beside NEW, its aside in DIR for check --repair) the next run removes, unless its process runs', async () => {
  const scratch = new Scratch();
  try {
    const dir = scratch.path('pool');
    await makePool(dir);
    const dataBefore = readFileSync(`${dir}/data`);
    // What a process killed at those points leaves: a partly built pool (a data link to the pool's
    // data, some metadata) under a name carrying the dead process's pid.
    const dead = spawnSync(process.execPath, ['-e', '']).pid!;
    const leftover = (path: string): void => {
      mkdirSync(path);
      symlinkSync(`${dir}/data`, `${path}/data`);
      writeFileSync(`${path}/metadata`, Buffer.alloc(METADATA_BLOCK_SIZE_BYTES, 1));
    };
    const stamp = '2026-12-07T23-55-01-123Z';
    const deadOnes = [`fixed.tmp-${dead}-0123abcd`, `fixed.scan-${dead}-4567cdef`].map((name) => scratch.path(name));
    const deadAsides = [`repair-${stamp}-${dead}`, `repair-${stamp}-${dead}.tmp-${dead}-89abcdef`].map((name) => `${dir}/${name}`);
    const running = [scratch.path(`fixed.tmp-${process.pid}-0123abcd`), `${dir}/repair-${stamp}-${process.pid}`];
    for (const path of [...deadOnes, ...deadAsides, ...running]) leftover(path);

    await repairPool(dir, scratch.path('fixed'));
    for (const path of deadOnes) assert.equal(existsSync(path), false, `${path} is removed`);
    await repairPoolInPlace(dir);
    for (const path of deadAsides) assert.equal(existsSync(path), false, `${path} is removed`);
    for (const path of running) assert.equal(existsSync(path), true, `${path} of a running process is kept`);
    assert.ok(readFileSync(`${dir}/data`).equals(dataBefore), 'the data a leftover linked to is untouched');
    assert.deepEqual((await checkPool(dir)).problems, []);
  } finally {
    scratch.remove();
  }
});
