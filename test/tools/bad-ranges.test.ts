// A pool's bad data ranges survive every path that rebuilds or moves its metadata: dump → restore
// (XML, in a comment thin_restore 0.9.0 accepts), repair into a new directory, check --repair in
// place, and metadata pack → unpack. After each, the ranges are the same, check is clean, and
// filling the pool never allocates a bad block. A malformed bad-range comment is refused naming
// the line, and nothing is created.
import { describe, test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { closeSync, existsSync, fstatSync, openSync, readFileSync, writeFileSync, writeSync } from 'node:fs';
import path from 'node:path';
import { METADATA_BLOCK_SIZE_BYTES } from '../../src/constants.ts';
import { isThinError } from '../../src/errors.ts';
import type { FaultRule } from '../../src/io/fault-injection.ts';
import { Pool } from '../../src/pool/pool.ts';
import { BadRangeFlag } from '../../src/pool/bad-ranges.ts';
import { checkPool } from '../../src/tools/check.ts';
import { dumpPool } from '../../src/tools/dump/pool-dump.ts';
import { XmlDumpWriter } from '../../src/tools/dump/xml.ts';
import { JsonDumpWriter } from '../../src/tools/dump/json.ts';
import { HumanDumpWriter } from '../../src/tools/dump/human.ts';
import { StringSink } from '../../src/tools/dump/sink.ts';
import type { DumpBadRange } from '../../src/tools/dump/events.ts';
import { PoolView } from '../../src/tools/pool-view.ts';
import { restorePool } from '../../src/tools/restore.ts';
import { repairPool, repairPoolInPlace } from '../../src/tools/repair.ts';
import { packMetadata, unpackMetadata } from '../../src/tools/pack.ts';
import { Scratch, requireThinTools, runTool } from './thin-tools.ts';
import { thinbd, thinbdJson } from '../cli/run-thinbd.ts';

const BLOCK = 64 * 1024;
const SECTORS_PER_BLOCK = BLOCK / 512;
const DATA_BLOCKS = 16;
/** Data block 0 refuses writes at sectors 3..4: the first write lands there and is moved. */
const WRITE_BAD: FaultRule = { file: 'data', op: 'write', beginSector: 3, endSector: 5 };
/** Data block 5 cannot read sector 10: the block stays mapped, its range is recorded. */
const READ_BAD: FaultRule = { file: 'data', op: 'read', beginSector: 5 * SECTORS_PER_BLOCK + 10, endSector: 5 * SECTORS_PER_BLOCK + 11 };

async function badRangesOf(dir: string): Promise<DumpBadRange[]> {
  const view = await PoolView.open(dir);
  try {
    return [...view.badDataRanges()];
  } finally {
    await view.close();
  }
}

/** A pool whose data file has a block that refuses writes and one with an unreadable sector. */
async function makeFailingPool(dir: string): Promise<DumpBadRange[]> {
  const pool = await Pool.create(dir, { dataSizeBytes: DATA_BLOCKS * BLOCK, blockSizeBytes: BLOCK, faultRules: [WRITE_BAD, READ_BAD] });
  const volume = await pool.createVolume('v', { sizeBytes: 8 * BLOCK });
  for (let block = 0; block < 7; block++) await volume.write(block * BLOCK, new Uint8Array(BLOCK).fill(block + 1));
  await pool.flush();
  let unreadable = 0;
  for (let block = 0; block < 7; block++) {
    try {
      await volume.read(block * BLOCK, new Uint8Array(BLOCK));
    } catch (error) {
      assert.ok(isThinError(error, 'THIN_IO'), String(error));
      unreadable += 1;
    }
  }
  assert.equal(unreadable, 1, 'one block has an unreadable sector');
  await pool.flush();
  await pool.close();
  const ranges = await badRangesOf(dir);
  assert.deepEqual(
    ranges.map((range) => [range.beginSector, range.lengthSectors]),
    [[3, 2], [5 * SECTORS_PER_BLOCK + 10, 1]],
    'the pool recorded both ranges',
  );
  assert.ok((ranges[0]!.flags & BadRangeFlag.writeError) !== 0 && (ranges[1]!.flags & BadRangeFlag.readError) !== 0);
  return ranges;
}

/** Overwrites a metadata block in both copies of the mirror (its second half): damage the mirror cannot mend. */
function smash(dir: string, blockNr: number): void {
  const fd = openSync(path.join(dir, 'metadata'), 'r+');
  try {
    const mirrorOffsetBytes = fstatSync(fd).size / 2;
    for (const base of [0, mirrorOffsetBytes]) writeSync(fd, Buffer.alloc(METADATA_BLOCK_SIZE_BYTES, 0x5a), 0, METADATA_BLOCK_SIZE_BYTES, base + blockNr * METADATA_BLOCK_SIZE_BYTES);
  } finally {
    closeSync(fd);
  }
}

async function dumpText(dir: string, format: 'xml' | 'json' | 'human'): Promise<string> {
  const sink = new StringSink();
  const writer = format === 'xml' ? new XmlDumpWriter(sink) : format === 'json' ? new JsonDumpWriter(sink) : new HumanDumpWriter(sink);
  const summary = await dumpPool(dir, writer);
  assert.equal(summary.badRangeCount, 2);
  return sink.text;
}

/** Check is clean, the ranges are `expected`, and filling every free block never lands on a bad one. */
async function assertCarried(dir: string, expected: DumpBadRange[], what: string): Promise<void> {
  assert.deepEqual(await badRangesOf(dir), expected, `${what}: the bad ranges`);
  const report = await checkPool(dir);
  assert.deepEqual(report.problems, [], `${what}: check is clean`);
  assert.equal(report.stats.badRanges.data, expected.length, `${what}: check counts the ranges`);
  const pool = await Pool.open(dir);
  try {
    assert.equal(pool.status().health.data.badRanges, expected.length, `${what}: pool status shows the ranges`);
    const fill = await pool.createVolume('fill', { sizeBytes: DATA_BLOCKS * BLOCK });
    let written = 0;
    for (let block = 0; block < DATA_BLOCKS; block++) {
      try {
        await fill.write(block * BLOCK, new Uint8Array(BLOCK).fill(0xee));
        written += 1;
      } catch (error) {
        assert.ok(isThinError(error, 'THIN_NO_SPACE'), `${what}: only space runs out, not ${String(error)}`);
        break;
      }
    }
    const badBlocks = new Set(expected.map((range) => Math.floor(range.beginSector / SECTORS_PER_BLOCK)));
    const used = [...fill.mappedRuns()].flatMap((run) => Array.from({ length: run.lengthBlocks }, (_, index) => run.dataBlock + index));
    assert.equal(used.length, written);
    assert.ok(written > 0, `${what}: the fill wrote something`);
    for (const block of used) assert.ok(!badBlocks.has(block), `${what}: data block ${block} is bad and was allocated`);
    await pool.flush();
  } finally {
    await pool.close();
  }
}

describe('bad data ranges through dump, restore, repair and metadata pack', () => {
  const scratch = new Scratch();
  const source = scratch.path('source');
  let ranges: DumpBadRange[] = [];
  before(async () => {
    ranges = await makeFailingPool(source);
  });
  after(() => scratch.remove());

  test('every dump format lists them; the XML carries them in comments thin_restore 0.9.0 accepts', async () => {
    requireThinTools();
    const xml = await dumpText(source, 'xml');
    assert.match(xml, /  <!-- thinbd:bad-range \{"beginSector":3,"lengthSectors":2,"flags":\d+\} -->\n  <!-- thinbd:bad-range \{"beginSector":650,"lengthSectors":1,"flags":1\} -->\n<\/superblock>\n$/);
    const input = scratch.path('dump.xml');
    writeFileSync(input, xml);
    const restored = runTool('thin_restore', ['-i', input, '-o', scratch.zeroedFile('kernel-meta.bin', 8 * 2 ** 20)]);
    assert.equal(restored.status, 0, `thin_restore refused the dump: ${restored.stderr}`);

    const json = JSON.parse(await dumpText(source, 'json')) as { devices: unknown[]; badRanges: DumpBadRange[] };
    assert.deepEqual(json.badRanges, ranges);
    assert.equal(json.devices.length, 1);
    const human = await dumpText(source, 'human');
    assert.match(human, /^bad data sectors: \(3\.\.4\), write error/m);
    assert.match(human, /^bad data sectors: \(650\.\.650\), read error\nend superblock\n$/m);
  });

  test('restore records them again over the same data', async () => {
    const xml = await dumpText(source, 'xml');
    const target = scratch.path('restored');
    const summary = await restorePool([xml], { dir: target, data: { path: path.join(source, 'data') } });
    assert.equal(summary.badRangeCount, 2);
    assert.equal(summary.input.badRangeCount, 2);
    await assertCarried(target, ranges, 'restore');
  });

  test('repair into a new directory carries them', async () => {
    const target = scratch.path('repaired');
    const report = await repairPool(source, target);
    assert.deepEqual(report.lost, []);
    assert.equal(report.badRangeCount, 2);
    await assertCarried(target, ranges, 'repair');
  });

  test('repair names the bad ranges under an unreadable node of the bad-range tree as lost', async () => {
    const damaged = scratch.path('damaged');
    await restorePool([await dumpText(source, 'xml')], { dir: damaged, data: { sizeBytes: DATA_BLOCKS * BLOCK } });
    const view = await PoolView.open(damaged);
    const root = view.payload.badRangeRoot ?? 0;
    await view.close();
    assert.notEqual(root, 0);
    smash(damaged, root);
    const target = scratch.path('repaired-damaged');
    const report = await repairPool(damaged, target);
    assert.ok(
      report.lost.some((loss) => /bad-range tree/.test(`${loss.where}: ${loss.message}`)),
      `a loss names the bad-range tree: ${JSON.stringify(report.lost)}`,
    );
    assert.equal(report.badRangeCount, 0);
    assert.deepEqual((await checkPool(target)).problems, []);
  });

  test('repair in place (check --repair) carries them', async () => {
    const copy = scratch.path('in-place');
    const restored = await restorePool([await dumpText(source, 'xml')], { dir: copy, data: { sizeBytes: DATA_BLOCKS * BLOCK } });
    assert.equal(restored.badRangeCount, 2);
    const report = await repairPoolInPlace(copy);
    assert.deepEqual(report.lost, []);
    assert.equal(report.badRangeCount, 2);
    assert.ok(existsSync(report.savedMetadataPath), 'the old metadata is kept');
    await assertCarried(copy, ranges, 'repair in place');
  });

  test('metadata pack and unpack carry them', async () => {
    const packed = scratch.path('meta.pack');
    await packMetadata(source, packed);
    const target = scratch.path('unpacked');
    await unpackMetadata(packed, target, { dataPath: path.join(source, 'data') });
    await assertCarried(target, ranges, 'metadata unpack');
  });

  test('thinbd dump | thinbd restore through the command line keeps them, and pool status shows them', () => {
    const dumpFile = scratch.path('cli-dump.xml');
    const dumped = thinbd(['dump', '--pool', source, '-o', dumpFile]);
    assert.equal(dumped.code, 0, dumped.stderr);
    assert.match(readFileSync(dumpFile, 'utf8'), /thinbd:bad-range/);
    const target = scratch.path('cli-restored');
    const restored = thinbd(['restore', '--pool', target, '-i', dumpFile, '--data-size', String(DATA_BLOCKS * BLOCK)]);
    assert.equal(restored.code, 0, restored.stderr);
    assert.match(restored.stdout, /2 bad data range\(s\) kept out of use/);
    const status = thinbdJson<{ health: { data: { badRanges: number } } }>(['pool', 'status', '--pool', target]);
    assert.equal(status.health.data.badRanges, 2);
  });

  test('a malformed bad-range comment is refused naming its line, and no pool is made', async () => {
    const xml = await dumpText(source, 'xml');
    const cases: Array<[string, string, RegExp]> = [
      ['crossing a block', '{"beginSector":120,"lengthSectors":16,"flags":1}', /line \d+: thinbd:bad-range of sectors \[120, 136\): it crosses the end of data block 0/],
      ['past the data', `{"beginSector":${DATA_BLOCKS * SECTORS_PER_BLOCK},"lengthSectors":1,"flags":1}`, /past the data device's 16 blocks/],
      ['no error flag', '{"beginSector":3000,"lengthSectors":1,"flags":4}', /flags 4 are not a read error/],
      ['unknown flag', '{"beginSector":3000,"lengthSectors":1,"flags":9}', /flags 9 are not a read error/],
      ['overlapping', '{"beginSector":650,"lengthSectors":1,"flags":1}', /overlaps or comes before/],
      ['not numbers', '{"beginSector":"3","lengthSectors":1,"flags":1}', /field "beginSector" is not a whole number/],
      ['not JSON', '{beginSector', /does not hold a JSON object/],
    ];
    for (const [what, json, expected] of cases) {
      const broken = xml.replace('</superblock>', `  <!-- thinbd:bad-range ${json} -->\n</superblock>`);
      const target = scratch.path(`broken-${what.replace(/ /g, '-')}`);
      await assert.rejects(restorePool([broken], { dir: target, data: { sizeBytes: DATA_BLOCKS * BLOCK } }), (error: unknown) => {
        assert.ok(isThinError(error, 'THIN_INVALID'), `${what}: ${String(error)}`);
        assert.match((error as Error).message, expected, what);
        return true;
      });
      assert.ok(!existsSync(path.join(target, 'metadata')), `${what}: no pool is left behind`);
    }
    const inDevice = xml.replace('  </device>', '    <!-- thinbd:bad-range {"beginSector":3000,"lengthSectors":1,"flags":1} -->\n  </device>');
    await assert.rejects(restorePool([inDevice], { dir: scratch.path('broken-in-device'), data: { sizeBytes: DATA_BLOCKS * BLOCK } }), /inside <device dev_id="1">; bad ranges belong directly in <superblock>/);
  });
});
