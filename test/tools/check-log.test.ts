// A pool left with delta-log records (a crash or kill after logged flushes): check names them
// without replaying (it never writes), the next open replays them, repair (which rebuilds from
// the trees) lists them as lost with the way to keep them, and dump and delta (which read the
// trees alone) refuse rather than give the older state.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Pool } from '../../src/pool/pool.ts';
import { MemoryBlockFile } from '../../src/io/memory.ts';
import { checkPool } from '../../src/tools/check.ts';
import { repairPool } from '../../src/tools/repair.ts';
import { dumpPool } from '../../src/tools/dump/pool-dump.ts';
import { XmlDumpWriter } from '../../src/tools/dump/xml.ts';
import { StringSink } from '../../src/tools/dump/sink.ts';
import { writePoolDelta } from '../../src/tools/delta.ts';
import { isThinError } from '../../src/errors.ts';
import { cpSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

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

test('repair lists the log records its rebuilt pool lacks, and how to keep them: the pool\'s own open replays them', async () => {
  const work = mkdtempSync(join(tmpdir(), 'thinbd-repair-log-'));
  try {
    const pool = await Pool.create(join(work, 'live'), { dataSizeBytes: 64 * 65536, blockSizeBytes: 65536, commitIntervalMs: 0 });
    const volume = await pool.createVolume('v', { sizeBytes: 16 * 65536 });
    await pool.flush();
    await volume.write(3 * 65536, new Uint8Array(4096).fill(0x5a));
    await pool.flush(); // logged: a record, not a rollup
    // The process dies here: a copy of the files is what the disks hold.
    cpSync(join(work, 'live'), join(work, 'crashed'), { recursive: true });
    await pool.close();

    const report = await repairPool(join(work, 'crashed'), join(work, 'rebuilt'));
    const loss = report.lost.find((entry) => entry.where === 'delta log');
    assert.ok(loss !== undefined, JSON.stringify(report.lost));
    assert.match(
      loss.message,
      /^\d+ record\(s\) of flushed changes after the generation rebuilt from are not in the rebuilt pool\. An open of the pool replays them: to keep them, before repairing, open it read-write \('thinbd pool status --pool .*crashed' rolls them up\), or, where it opens needing a check \(after a fall back\), export its volumes \('thinbd export --pool .*crashed NAME FILE'\)$/,
    );
    const read = async (dir: string) => {
      const opened = await Pool.open(dir, { commitIntervalMs: 0 });
      try {
        const back = new Uint8Array(4096);
        await opened.volume('v').read(3 * 65536, back);
        return back[0];
      } finally {
        await opened.close();
      }
    };
    assert.equal(await read(join(work, 'rebuilt')), 0, 'the rebuilt pool lacks the logged flush, as listed');
    assert.equal(await read(join(work, 'crashed')), 0x5a, 'the pool\'s own open replays it, as the loss says');
  } finally {
    rmSync(work, { recursive: true, force: true });
  }
});

test('dump and delta refuse a pool whose flushes are still in the delta log instead of giving the trees\' older state; once rolled up they give the flushed one', async () => {
  const work = mkdtempSync(join(tmpdir(), 'thinbd-dump-log-'));
  try {
    const pool = await Pool.create(join(work, 'live'), { dataSizeBytes: 64 * 65536, blockSizeBytes: 65536, commitIntervalMs: 0 });
    const volume = await pool.createVolume('v', { sizeBytes: 16 * 65536 });
    await pool.snapshot('v', 's');
    await pool.flush();
    await volume.write(3 * 65536, new Uint8Array(4096).fill(0x5a));
    await pool.flush(); // logged: a record, not a rollup
    // The process dies here: a copy of the files is what the disks hold.
    cpSync(join(work, 'live'), join(work, 'crashed'), { recursive: true });
    await pool.close();
    const crashed = join(work, 'crashed');

    await assert.rejects(dumpPool(crashed, new XmlDumpWriter(new StringSink())), (error: unknown) => {
      assert.ok(isThinError(error, 'THIN_LOG_PENDING'), String(error));
      assert.match(error.message, /holds 1 flushed change\(s\) in its delta log that are not in its trees yet .*thinbd pool status --pool .*crashed\)$/);
      assert.doesNotMatch(error.message, /\n/);
      return true;
    });
    await assert.rejects(writePoolDelta(crashed, 'v', 's', new StringSink(), { format: 'xml' }), (error: unknown) => isThinError(error, 'THIN_LOG_PENDING'));

    // A read-write open rolls the log up, as the message says; then both give the flushed state.
    await (await Pool.open(crashed, { commitIntervalMs: 0 })).close();
    const dump = new StringSink();
    await dumpPool(crashed, new XmlDumpWriter(dump));
    assert.match(dump.text, /<device dev_id="1" mapped_blocks="1"/);
    const delta = new StringSink();
    await writePoolDelta(crashed, 'v', 's', delta, { format: 'xml' });
    assert.match(delta.text, /<right_only begin="3" length="1"\/>|<left_only begin="3" length="1"\/>/);
  } finally {
    rmSync(work, { recursive: true, force: true });
  }
});
