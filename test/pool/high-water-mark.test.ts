// The data high-water mark's three values only move up and stay ordered: durable ≤ sealed ≤
// target ≤ block count (pool/high-water-mark.ts).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { DATA_HIGH_WATER_MARK_STEP_BLOCKS } from '../../src/constants.ts';
import { HighWaterMark } from '../../src/pool/high-water-mark.ts';
import type { Pool } from '../../src/pool/pool.ts';
import { checkPool } from '../../src/tools/check.ts';
import { BLOCK, copyFiles, memoryPool } from './helpers.ts';

test('the target is raised ahead, sealed by a commit, and durable when that commit ends', () => {
  const mark = new HighWaterMark(0, 4096);
  assert.equal(mark.raisePending, false);
  assert.equal(mark.raiseTarget(1024), 0);
  assert.deepEqual([mark.durable, mark.sealed, mark.target, mark.raisePending], [0, 0, 1024, true]);
  const sealed = mark.seal();
  assert.deepEqual([sealed, mark.raisePending], [1024, false]);
  mark.raiseTarget(2048); // a later raise while the first commit is still being written
  mark.committed(sealed);
  assert.deepEqual([mark.durable, mark.sealed, mark.target], [1024, 1024, 2048]);
  mark.assertInvariants();
});

test('the target never passes the data block count nor moves down', () => {
  const mark = new HighWaterMark(100, 1000);
  mark.raiseTarget(5000);
  assert.equal(mark.target, 1000);
  mark.raiseTarget(10);
  assert.equal(mark.target, 1000);
});

test('a commit that claims a mark never sealed is a bug, caught at once', () => {
  const mark = new HighWaterMark(0, 1000);
  mark.raiseTarget(500);
  assert.throws(() => mark.committed(500), /internal error.*never sealed/);
});

/** A data space a little over one step of the mark (and small enough for memory). */
const DATA_SPACE_BLOCKS = DATA_HIGH_WATER_MARK_STEP_BLOCKS + 192;

/** Provisions `count` new data blocks of `volume`, one byte in each (no block is written whole). */
async function provision(pool: Pool, name: string, count: number): Promise<void> {
  const volume = pool.volume(name);
  const byte = Uint8Array.of(0x5a);
  for (let index = 0; index < count; index++) await volume.write(index * BLOCK + 1, byte);
}

test('a stream of new blocks commits as the high-water mark steps up, unless the mark was raised over it ahead', async () => {
  // Without the raise: the writes pass the first step (DATA_HIGH_WATER_MARK_STEP_BLOCKS), and each step is a commit.
  const plain = await memoryPool(DATA_SPACE_BLOCKS);
  await plain.pool.createVolume('v', { sizeBytes: DATA_SPACE_BLOCKS * BLOCK });
  await plain.pool.flush();
  const plainBefore = plain.pool.status().transactionId;
  await provision(plain.pool, 'v', DATA_HIGH_WATER_MARK_STEP_BLOCKS + 64);
  assert.ok(plain.pool.status().transactionId > plainBefore, 'the writes committed a raise of the mark');
  await plain.pool.close();

  // Raised ahead over the whole data space: one commit now, none while the same writes run.
  const raised = await memoryPool(DATA_SPACE_BLOCKS);
  await raised.pool.createVolume('v', { sizeBytes: DATA_SPACE_BLOCKS * BLOCK });
  await raised.pool.flush();
  const before = raised.pool.status().transactionId;
  // More than the data space holds: the mark stops at its end.
  await raised.pool.raiseHighWaterMarkAhead(2 * DATA_SPACE_BLOCKS * BLOCK);
  const after = raised.pool.status().transactionId;
  assert.equal(after, before + 1);
  await provision(raised.pool, 'v', DATA_HIGH_WATER_MARK_STEP_BLOCKS + 64);
  assert.equal(raised.pool.status().transactionId, after);
  // Consistent: every mapped block lies below the durable mark (the checker verifies it).
  await raised.pool.flush();
  const report = await checkPool(copyFiles(raised));
  assert.ok(report.ok, JSON.stringify(report.problems.slice(0, 3)));
  await raised.pool.close();
});

test('raising the mark ahead counts from the blocks in use: raised twice for the same writes, it commits once', async () => {
  const { pool } = await memoryPool(4096);
  await pool.createVolume('v', { sizeBytes: 64 * BLOCK });
  await pool.flush();
  const before = pool.status().transactionId;
  await pool.raiseHighWaterMarkAhead(1000 * BLOCK);
  assert.equal(pool.status().transactionId, before + 1);
  // No block was taken since: the mark already covers as much past the blocks in use.
  await pool.raiseHighWaterMarkAhead(1000 * BLOCK);
  assert.equal(pool.status().transactionId, before + 1);
  // Blocks taken move the mark's need up with them.
  await provision(pool, 'v', 64);
  const written = pool.status().transactionId;
  await pool.raiseHighWaterMarkAhead(1000 * BLOCK);
  assert.equal(pool.status().transactionId, written + 1);
  await pool.close();
});
