// Open never goes back silently (docs/fault-model.md G9; docs/format.md F-SB-6, F-SB-10): when
// the newest generation was written but no copy of it is usable, the pool opens the previous one
// in needs-check mode saying why, and checkPool reports the lost generation as a problem.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { MemoryBlockFile } from '../../src/io/memory.ts';
import { isThinError } from '../../src/errors.ts';
import { METADATA_BLOCK_SIZE_BYTES, SUPERBLOCK_BLOCK_NRS } from '../../src/constants.ts';
import { decodeSuperblock, superblockCopyIndexes } from '../../src/pdata/superblock.ts';
import { Pool } from '../../src/pool/pool.ts';
import { checkPool } from '../../src/tools/check.ts';
import { readBlock, writeBlock } from '../pdata/helpers.ts';
import { BLOCK, METADATA_BYTES, copyFiles, filled, memoryPool } from './helpers.ts';

function newestGeneration(file: MemoryBlockFile): number {
  return Math.max(...SUPERBLOCK_BLOCK_NRS.map((blockNr, copyIndex) => decodeSuperblock(readBlock(file, blockNr), copyIndex).fields?.generation ?? 0));
}

test('a superblock copy misdirected onto its partner\'s place opens the older generation in needs-check, never silently read-write', async () => {
  const first = await memoryPool();
  const volume = await first.pool.createVolume('vol', { sizeBytes: 4 * BLOCK });
  await volume.write(0, filled(BLOCK, 0x11));
  await first.pool.close();
  const metadataBefore = copyFiles(first).metadata as MemoryBlockFile;

  const secondFiles = copyFiles(first) as { metadata: MemoryBlockFile; data: MemoryBlockFile };
  const second = await Pool.openOn(secondFiles);
  await second.volume('vol').write(BLOCK, filled(BLOCK, 0x22));
  await second.close();
  const files = { metadata: MemoryBlockFile.from(secondFiles.metadata.snapshot()), data: MemoryBlockFile.from(secondFiles.data.snapshot()) };

  // The newest generation g was written to both copies of its pair, but the write of copy a
  // landed on copy b's place (after b's own write): a holds what it held before, b holds a's bytes.
  const generation = newestGeneration(files.metadata);
  const [a, b] = superblockCopyIndexes(generation).map((index) => SUPERBLOCK_BLOCK_NRS[index]!);
  // In both copies of the mirrored metadata (docs/format.md "Metadata mirror"): one copy alone is mended from the other.
  for (const mirrorBlocks of [0, METADATA_BYTES / METADATA_BLOCK_SIZE_BYTES]) {
    writeBlock(files.metadata, mirrorBlocks + b!, readBlock(files.metadata, a!));
    writeBlock(files.metadata, mirrorBlocks + a!, readBlock(metadataBefore, a!));
  }
  assert.ok(newestGeneration(files.metadata) < generation, 'no usable copy of the newest generation is left');

  const report = await checkPool({ metadata: MemoryBlockFile.from(files.metadata.snapshot()), data: MemoryBlockFile.from(files.data.snapshot()) });
  assert.ok(
    report.problems.some((problem) => problem.where === `superblock generation ${generation}` && /says it is block/.test(problem.message)),
    `checkPool reports the lost generation as a problem: ${JSON.stringify(report.problems)}`,
  );

  const pool = await Pool.openOn(files);
  try {
    const status = pool.status();
    assert.equal(status.mode, 'needs-check');
    assert.match(status.modeReason ?? '', new RegExp(`older than generation ${generation}, which was committed`));
    assert.match(status.modeReason ?? '', /a misdirected or lost superblock write/);
    // Reads go on; writes and flushes are refused.
    const bytes = new Uint8Array(BLOCK);
    await pool.volume('vol').read(0, bytes);
    assert.deepEqual(bytes, filled(BLOCK, 0x11));
    await assert.rejects(pool.volume('vol').write(0, filled(BLOCK, 0x33)), (error) => isThinError(error, 'THIN_READ_ONLY'));
  } finally {
    await pool.close();
  }
});
