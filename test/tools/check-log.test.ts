// A pool left with delta-log records (a crash or kill after logged flushes): check names them
// without replaying (it never writes), and the next open replays them.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Pool } from '../../src/pool/pool.ts';
import { MemoryBlockFile } from '../../src/io/memory.ts';
import { checkPool } from '../../src/tools/check.ts';

test('check names flushes still in the delta log, and the next open replays them', async () => {
  const metadata = new MemoryBlockFile(0, 'metadata');
  const data = new MemoryBlockFile(0, 'data');
  const pool = await Pool.createOn({ metadata, data }, { dataSizeBytes: 64 * 65536, blockSizeBytes: 65536 });
  const volume = await pool.createVolume('v', { sizeBytes: 16 * 65536 });
  await pool.flush();
  await volume.write(3 * 65536, new Uint8Array(4096).fill(0x5a));
  await pool.flush(); // logged: a record, not a rollup
  assert.ok(pool.status().counters.logBlocksUsed > 0, 'the flush was logged');
  // The process dies here: the images are what the disks hold.
  const crashed = () => ({ metadata: MemoryBlockFile.from(metadata.snapshot()), data: MemoryBlockFile.from(data.snapshot()) });

  const report = await checkPool(crashed());
  assert.equal(report.ok, true, JSON.stringify(report.problems));
  assert.ok(report.stats.logRecords >= 1);
  assert.ok(report.warnings.some((warning) => warning.where === 'delta log' && /not yet rolled up/.test(warning.message)));

  const reopened = await Pool.openOn(crashed());
  const back = new Uint8Array(4096);
  await reopened.volume('v').read(3 * 65536, back);
  assert.ok(back.every((byte) => byte === 0x5a), 'the logged flush was replayed');
  await reopened.close();
});
