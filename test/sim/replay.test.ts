// Reproducibility (docs/fault-model.md G18): a simulated pool is the same bytes every time it is
// made, in any process, because the simulator gives Pool.createOn a pool id and a fixed clock
// (pool-bases.ts) instead of a random id and Date.now().
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { Pool } from '../../src/pool/pool.ts';
import { TransactionManager } from '../../src/pdata/transaction.ts';
import { SimMachine, type SparseImage } from './sim-disk.ts';
import { BLOCK_SIZE_BYTES, SIM_POOL_CREATE_OPTIONS, SIM_POOL_ID, createSimPool, poolFiles, simNow } from './pool-bases.ts';

function digest(images: ReadonlyMap<string, SparseImage>): string {
  const hash = createHash('sha256');
  const chunk = new Uint8Array(1024 * 1024);
  for (const [name, image] of [...images].sort(([a], [b]) => a.localeCompare(b))) {
    hash.update(`${name}:${image.sizeBytes}:`);
    for (let offsetBytes = 0; offsetBytes < image.sizeBytes; offsetBytes += chunk.length) {
      const view = chunk.subarray(0, Math.min(chunk.length, image.sizeBytes - offsetBytes));
      image.read(view, offsetBytes);
      hash.update(view);
    }
  }
  return hash.digest('hex');
}

async function makePool(): Promise<{ images: ReadonlyMap<string, SparseImage>; trace: string }> {
  const { machine, pool } = await createSimPool(3);
  const volume = await pool.createVolume('vol', { sizeBytes: 2 * BLOCK_SIZE_BYTES });
  await volume.write(100, new Uint8Array(5000).fill(7));
  await pool.snapshot('vol', 'snap');
  await pool.close();
  return { images: machine.currentImages(), trace: machine.traceDigest() };
}

test('a simulated pool made twice is byte for byte the same: its pool id and clock are given', async () => {
  const first = await makePool();
  const second = await makePool();
  assert.equal(second.trace, first.trace);
  assert.equal(digest(second.images), digest(first.images));
  const probe = new SimMachine({ seed: 4, images: first.images });
  const { tm } = await TransactionManager.open(probe.disk('metadata'), { readOnly: true });
  assert.equal(tm.poolId, SIM_POOL_ID);
  const pool = await Pool.openOn(poolFiles(new SimMachine({ seed: 5, images: first.images })), { readOnly: true });
  assert.equal(pool.list().find((info) => info.name === 'vol')?.createdAt, new Date(simNow()).toISOString());
  await pool.close();
});

test('createOn refuses a pool id that is not a non-zero u64', async () => {
  const machine = new SimMachine({ seed: 6 });
  machine.createDisk('metadata', 0);
  machine.createDisk('data', 0);
  for (const poolId of [0n, 1n << 64n]) {
    await assert.rejects(
      Pool.createOn(poolFiles(machine), { ...SIM_POOL_CREATE_OPTIONS, poolId }),
      /not a non-zero 64-bit number/,
    );
  }
});
