// `metadata size`: dm-thin's figure is thin_metadata_size 0.9.0's to the byte; thinbd's figure is
// derived from its node layout and behaves as an estimate must.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { dmThinMetadataBlocks, estimateMetadataSize } from '../../src/tools/metadata-size.ts';
import { METADATA_BLOCK_COUNT_MIN, METADATA_BLOCK_SIZE_BYTES } from '../../src/constants.ts';
import { requireThinTools, toolOutput } from './thin-tools.ts';
import { SpaceMap } from '../../src/pdata/space-map.ts';
import { TreeWalker } from '../../src/pdata/btree/walker.ts';
import { refCountExtentCodec } from '../../src/pdata/space-map.ts';
import { TreeKind } from '../../src/pdata/btree/codec.ts';
import { newManager } from '../pdata/helpers.ts';

const KiB = 1024;
const MiB = 1024 * KiB;
const GiB = 1024 * MiB;
const TiB = 1024 * GiB;

test("dm-thin's figure equals thin_metadata_size 0.9.0's for block sizes from 64k to 1g, pools from 1g to 1p and 1 to 100000 thins", () => {
  requireThinTools();
  const blockSizes: Array<[string, number]> = [['64k', 64 * KiB], ['128k', 128 * KiB], ['1m', MiB], ['4m', 4 * MiB], ['1g', GiB]];
  const poolSizes: Array<[string, number]> = [['3g', 3 * GiB], ['1t', TiB], ['10t', 10 * TiB], ['1p', 1024 * TiB], ['1000m', 1000 * MiB]];
  let compared = 0;
  for (const [blockText, blockSizeBytes] of blockSizes) {
    for (const [poolText, dataSizeBytes] of poolSizes) {
      if (dataSizeBytes <= blockSizeBytes) continue;
      for (const thins of [1, 37, 10_000, 100_000]) {
        const expected = Number(toolOutput('thin_metadata_size', ['-b', blockText, '-s', poolText, '-m', String(thins), '-u', 'b', '-n']).trim());
        const estimate = estimateMetadataSize({ dataSizeBytes, blockSizeBytes, volumeCount: thins });
        assert.equal(estimate.dmThin.metadataBytes, expected, `-b ${blockText} -s ${poolText} -m ${thins}`);
        compared += 1;
      }
    }
  }
  assert.ok(compared >= 80);
});

test("the refs' worked examples hold: 64k/1t/1 is 545,398,784 bytes", () => {
  assert.equal(dmThinMetadataBlocks(TiB, 64 * KiB, 1) * 4096, 545_398_784);
  assert.equal(dmThinMetadataBlocks(1024 * TiB, 4 * MiB, 10_000) * 4096, 8_767_246_336);
  assert.equal(dmThinMetadataBlocks(10 * TiB, 64 * KiB, 100) * 4096, 5_454_340_096);
});

test("thinbd's worst case is at most dm-thin's for large pools, and runs of blocks shrink it in proportion", () => {
  for (const blockSizeBytes of [64 * KiB, 128 * KiB, MiB]) {
    for (const dataSizeBytes of [100 * GiB, TiB, 16 * TiB]) {
      const estimate = estimateMetadataSize({ dataSizeBytes, blockSizeBytes, volumeCount: 10 });
      const ratio = estimate.thinbd.metadataBytes / estimate.dmThin.metadataBytes;
      assert.ok(ratio > 0.5 && ratio <= 1, `${dataSizeBytes} bytes in ${blockSizeBytes}-byte blocks: thinbd / dm-thin = ${ratio}`);
    }
  }
  const worst = estimateMetadataSize({ dataSizeBytes: TiB, blockSizeBytes: 64 * KiB, volumeCount: 10 });
  // The dense groups: 2^24 blocks in 2^21 entries of 12 bytes, half a compact leaf (167) each.
  assert.ok(worst.thinbd.breakdown.dataSpaceMapBlocks < worst.thinbd.breakdown.mappingBlocks / 7, 'the data space map is a small part of the worst case');
  const runs = estimateMetadataSize({ dataSizeBytes: TiB, blockSizeBytes: 64 * KiB, volumeCount: 10, averageRunBlocks: 64 });
  // Runs of 64: 1/64 of the mapping entries and an extent per run in the space map (2 × N/64), against N + N/8 at worst.
  assert.ok(runs.thinbd.metadataBytes < worst.thinbd.metadataBytes / 30, 'runs of 64 blocks need far less');
  assert.equal(worst.thinbd.metadataBytes, worst.thinbd.metadataBlocks * METADATA_BLOCK_SIZE_BYTES);
  const { mappingBlocks, dataSpaceMapBlocks, volumeBlocks, fixedBlocks } = worst.thinbd.breakdown;
  assert.equal(mappingBlocks + dataSpaceMapBlocks + volumeBlocks + fixedBlocks, worst.thinbd.metadataBlocks);
});

test('a small pool is recommended the smallest metadata file thinbd makes', () => {
  const small = estimateMetadataSize({ dataSizeBytes: GiB, blockSizeBytes: 64 * KiB, volumeCount: 1 });
  assert.equal(small.thinbd.recommendedMetadataBytes, METADATA_BLOCK_COUNT_MIN * METADATA_BLOCK_SIZE_BYTES);
  assert.ok(small.thinbd.metadataBytes < small.thinbd.recommendedMetadataBytes);
});

test('bad inputs are refused with THIN_INVALID', () => {
  assert.throws(() => estimateMetadataSize({ dataSizeBytes: GiB, blockSizeBytes: 96 * KiB, volumeCount: 1 }), { code: 'THIN_INVALID' });
  assert.throws(() => estimateMetadataSize({ dataSizeBytes: 64 * KiB, blockSizeBytes: 64 * KiB, volumeCount: 1 }), { code: 'THIN_INVALID' });
  assert.throws(() => estimateMetadataSize({ dataSizeBytes: GiB, blockSizeBytes: 64 * KiB, volumeCount: 0 }), { code: 'THIN_INVALID' });
});

test("the estimate's data space map holds what a real one of alternating counts takes", () => {
  // The worst case the estimate counts: every data block's count differs from its neighbours'.
  const blockSizeBytes = 64 * KiB;
  const dataBlockCount = 120_000;
  const { tm } = newManager();
  const spaceMap = SpaceMap.create(tm, dataBlockCount);
  spaceMap.inc(0, dataBlockCount);
  for (let blockNr = 0; blockNr < dataBlockCount; blockNr += 2) spaceMap.inc(blockNr);
  let nodes = 0;
  new TreeWalker(tm).walk(spaceMap.root, refCountExtentCodec(TreeKind.dataSpaceMap), { node: () => (nodes += 1) });
  const estimate = estimateMetadataSize({ dataSizeBytes: dataBlockCount * blockSizeBytes, blockSizeBytes, volumeCount: 1 });
  // Real leaves are fuller than the estimate's half-full ones, but not twice as full.
  assert.ok(nodes <= estimate.thinbd.breakdown.dataSpaceMapBlocks, `${nodes} nodes, estimated ${estimate.thinbd.breakdown.dataSpaceMapBlocks}`);
  assert.ok(nodes > estimate.thinbd.breakdown.dataSpaceMapBlocks / 2.1, `${nodes} nodes, estimated ${estimate.thinbd.breakdown.dataSpaceMapBlocks}`);
});
