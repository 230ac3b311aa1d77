// The superblock scan works on block files: with every superblock copy gone, it finds the newest
// generation's trees in a pool held in memory and writes a copy a PoolView opens whole.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { METADATA_BLOCK_SIZE_BYTES, SUPERBLOCK_BLOCK_NRS } from '../../src/constants.ts';
import { MemoryBlockFile } from '../../src/io/memory.ts';
import { openPoolForTools } from '../../src/tools/open.ts';
import { PoolView } from '../../src/tools/pool-view.ts';
import { rebuildSuperblock } from '../../src/tools/superblock-scan.ts';
import { BLOCK, METADATA_BYTES, filled, memoryPool } from '../pool/helpers.ts';

test('with every superblock copy zeroed, the scan finds the last generation and its volumes on block files', async () => {
  const { pool, files: written } = await memoryPool(256);
  const volume = await pool.createVolume('base', { sizeBytes: 32 * BLOCK });
  for (let block = 0; block < 8; block++) await volume.write(block * BLOCK, filled(BLOCK, block + 1));
  await pool.snapshot('base', 'snap');
  await pool.volume('base').write(2 * BLOCK, filled(BLOCK, 0xee));
  await pool.close();
  const files = { metadata: MemoryBlockFile.from(written.metadata.snapshot(), 'metadata'), data: MemoryBlockFile.from(written.data.snapshot(), 'data') };
  const before = await PoolView.open(files);
  const generation = before.tm.generation;
  const mappingsBefore = before.devices().map((device) => [device.details.name, [...before.mappings(device)]]);
  await before.close();

  // Both copies of each (docs/format.md "Metadata mirror").
  for (const base of [0, METADATA_BYTES]) {
    for (const blockNr of SUPERBLOCK_BLOCK_NRS) await files.metadata.write(new Uint8Array(METADATA_BLOCK_SIZE_BYTES), base + blockNr * METADATA_BLOCK_SIZE_BYTES);
  }
  const unopened = await openPoolForTools(files);
  assert.equal(unopened.view, undefined);
  assert.deepEqual(unopened.findings.map((finding) => finding.kind), ['no-generation']);

  const copy = new MemoryBlockFile(0, 'scanned copy');
  const scanned = await rebuildSuperblock(files, copy, BLOCK);
  assert.equal(scanned.generation, generation);
  const after = await PoolView.open({ metadata: copy, data: files.data }, { validateRoots: true });
  assert.deepEqual(
    after.devices().map((device) => [device.details.name, [...after.mappings(device)]]),
    mappingsBefore,
  );
  await after.close();
});
