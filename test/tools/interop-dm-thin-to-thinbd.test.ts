// dm-thin → thinbd: seeded random pool histories rendered as XML go through thin_restore and
// thin_dump (so the input is what a kernel pool's thin_dump gives), and thinbd restores them onto
// a data file whose every block is stamped with its own number. Then:
// - every volume reads back, block by block, the stamp of the data block its mappings name, and
//   zeros wherever it maps nothing (even though every data block of the file holds a stamp);
// - thinbd's dump equals thin_dump's in every attribute, transaction ids included (LVM refuses a
//   pool whose transaction id differs from its own records), once thinbd's volume comments are set
//   aside; and thin_restore + thin_dump of thinbd's dump give the original thin_dump back exactly;
// - thinbd's delta equals thin_delta's, and the pool's usage equals thin_ls's counts;
// - thinbd's own check accepts the pool.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { openSync, writeSync, closeSync, ftruncateSync } from 'node:fs';
import { Pool } from '../../src/pool/pool.ts';
import { restorePool } from '../../src/tools/restore.ts';
import { dumpPool } from '../../src/tools/dump/pool-dump.ts';
import { XmlDumpWriter } from '../../src/tools/dump/xml.ts';
import { StringSink } from '../../src/tools/dump/sink.ts';
import { writePoolDelta } from '../../src/tools/delta.ts';
import { checkPool } from '../../src/tools/check.ts';
import { generateHistory, historyXml, sortedMappings, type ModelPool } from './dm-thin-history.ts';
import { Scratch, requireThinTools, thinRestore, toolOutput } from './thin-tools.ts';

const STAMP_BYTES = 16;

/** The stamp at the start of data block n: "BLK" and n as 13 decimal digits. */
function stamp(dataBlock: number): Buffer {
  return Buffer.from(`BLK${String(dataBlock).padStart(13, '0')}`, 'ascii');
}

/** A sparse data file of nr_data_blocks blocks, each starting with its own stamp. */
function stampedDataFile(path: string, model: ModelPool): void {
  const blockSizeBytes = model.dataBlockSizeSectors * 512;
  const fd = openSync(path, 'w');
  try {
    ftruncateSync(fd, model.nrDataBlocks * blockSizeBytes);
    for (let block = 0; block < model.nrDataBlocks; block += 1) writeSync(fd, stamp(block), 0, STAMP_BYTES, block * blockSizeBytes);
  } finally {
    closeSync(fd);
  }
}

/** XML without thinbd's volume comments (thin_restore ignores them). */
function meaning(xml: string): string {
  return xml
    .split('\n')
    .filter((line) => !line.includes('<!-- thinbd:volume'))
    .join('\n');
}

const SEEDS = Array.from({ length: 12 }, (_, index) => 3000 + index);

test('for 12 seeded random dm-thin histories, thinbd restores what thin_dump wrote, and every volume reads back its mapped blocks and zeros elsewhere', async () => {
  requireThinTools();
  const scratch = new Scratch();
  try {
    let blocksRead = 0;
    for (const seed of SEEDS) {
      const model = generateHistory(seed, { steps: 30, devIdMax: seed % 2 === 0 ? 20 : 2 ** 24 - 1 });
      const metadata = thinRestore(scratch, historyXml(model), `seed-${seed}.bin`);
      const thinDumpXml = toolOutput('thin_dump', [metadata]);
      const dataPath = scratch.path(`data-${seed}`);
      stampedDataFile(dataPath, model);
      const dir = scratch.path(`pool-${seed}`);
      const summary = await restorePool([thinDumpXml], { dir, data: { path: dataPath } });
      assert.equal(summary.volumes.length, model.devices.size, `seed ${seed}`);
      assert.deepEqual(summary.warnings, [], `seed ${seed}`);

      const report = await checkPool(dir);
      assert.deepEqual(report.problems, [], `seed ${seed}: thinbd check`);

      // Our dump, in meaning, is thin_dump's.
      const sink = new StringSink();
      await dumpPool(dir, new XmlDumpWriter(sink));
      assert.equal(meaning(sink.text), meaning(thinDumpXml), `seed ${seed}: thinbd dump vs thin_dump`);
      // And back to dm-thin: thin_restore of thinbd's dump, dumped again, is the original.
      const back = thinRestore(scratch, sink.text, `back-${seed}.bin`);
      assert.equal(toolOutput('thin_dump', [back]), thinDumpXml, `seed ${seed}: dm-thin -> thinbd -> dm-thin`);

      // Block by block, through the pool's read path.
      const blockSizeBytes = model.dataBlockSizeSectors * 512;
      const pool = await Pool.open(dir, { readOnly: true });
      try {
        const head = new Uint8Array(STAMP_BYTES);
        const zeros = new Uint8Array(STAMP_BYTES);
        for (const device of model.devices.values()) {
          const volume = pool.volume(String(device.devId));
          const highest = sortedMappings(device).at(-1)?.[0] ?? -1;
          assert.equal(volume.sizeBytes, Math.max(1, highest + 1) * blockSizeBytes, `seed ${seed}: size of ${device.devId}`);
          for (let block = 0; block <= highest; block += 1) {
            await volume.read(block * blockSizeBytes, head);
            const mapping = device.mappings.get(block);
            const expected = mapping === undefined ? zeros : stamp(mapping.dataBlock);
            assert.deepEqual(Buffer.from(head), Buffer.from(expected), `seed ${seed}: device ${device.devId} block ${block}`);
            blocksRead += 1;
          }
        }
        // thin_ls's counts.
        const usage = pool.usage();
        const thinLs = toolOutput('thin_ls', ['-o', 'DEV,MAPPED_BLOCKS,EXCLUSIVE_BLOCKS,SHARED_BLOCKS', '--no-headers', metadata]);
        const expected = thinLs.trim().split('\n').filter((line) => line.trim() !== '').map((line) => line.trim().split(/\s+/).map(Number));
        const ours = [...usage.entries()].sort((a, b) => a[0] - b[0]).map(([id, u]) => [id, u.mappedBlocks, u.exclusiveBlocks, u.sharedBlocks]);
        assert.deepEqual(ours, expected.sort((a, b) => a[0]! - b[0]!), `seed ${seed}: usage vs thin_ls`);
      } finally {
        await pool.close();
      }

      // thin_delta for a spread of pairs, plain and verbose.
      const ids = [...model.devices.keys()].sort((a, b) => a - b);
      const pairs = ids.flatMap((left) => ids.map((right) => [left, right] as const));
      const stride = Math.max(1, Math.floor(pairs.length / 4));
      for (let index = 0; index < pairs.length; index += stride) {
        const [left, right] = pairs[index]!;
        for (const verbose of [false, true]) {
          const expected = toolOutput('thin_delta', ['--snap1', String(left), '--snap2', String(right), ...(verbose ? ['--verbose'] : []), metadata]);
          const ours = new StringSink();
          await writePoolDelta(dir, String(left), String(right), ours, { format: 'xml', verbose });
          assert.equal(meaning(ours.text), meaning(expected), `seed ${seed}: delta ${left} ${right}${verbose ? ' --verbose' : ''}`);
        }
      }
    }
    assert.ok(blocksRead > 5000, `only ${blocksRead} blocks read back`);
  } finally {
    scratch.remove();
  }
});
