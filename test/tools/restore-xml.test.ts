// The XML reader refuses what could not come from a consistent pool, naming the line and the
// reason; it accepts what thin_restore 0.9.0 accepts of well-formed dumps (comments, an XML
// declaration, unsorted devices and mappings, unknown attributes) and 1.x's def/ref sections.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { writeFileSync } from 'node:fs';
import { Readable } from 'node:stream';
import { readThinXml, readThinXmlString } from '../../src/tools/restore-xml.ts';
import { EventRecorder } from '../../src/tools/dump/events.ts';
import { isThinError } from '../../src/errors.ts';
import { Scratch, requireThinTools, runTool } from './thin-tools.ts';

const SB = '<superblock uuid="" time="1" transaction="2" flags="0" version="2" data_block_size="128" nr_data_blocks="100">';
const DEV = (id: number): string => `  <device dev_id="${id}" mapped_blocks="0" transaction="1" creation_time="0" snap_time="1">`;

function doc(...lines: string[]): string {
  return `${lines.join('\n')}\n`;
}

interface Case {
  name: string;
  xml: string;
  line: number;
  reason: RegExp;
  /** thin_restore 0.9.0 refuses it too (checked when set). */
  thinRestoreRefuses?: boolean;
}

const cases: Case[] = [
  { name: 'invalid XML (a tag left open inside another)', xml: doc(SB, DEV(1), '    <single_mapping origin_block="0" data_block="1" time="0">', '  </device>', '</superblock>'), line: 4, reason: /invalid XML/, thinRestoreRefuses: true },
  { name: 'an unknown element', xml: doc(SB, DEV(1), '    <mapping origin="1"/>', '  </device>', '</superblock>'), line: 3, reason: /unknown element <mapping>/, thinRestoreRefuses: true },
  { name: 'a missing attribute', xml: doc(SB, DEV(1), '    <single_mapping origin_block="0" time="0"/>', '  </device>', '</superblock>'), line: 3, reason: /<single_mapping> lacks the required attribute data_block/, thinRestoreRefuses: true },
  { name: 'a malformed number', xml: doc(SB, DEV(1), '    <range_mapping origin_begin="0" data_begin="0x10" length="2" time="0"/>', '  </device>', '</superblock>'), line: 3, reason: /data_begin="0x10" is not a whole number/ },
  { name: 'a negative number', xml: doc(SB, '  <device dev_id="-1" mapped_blocks="0" transaction="1" creation_time="0" snap_time="1">', '  </device>', '</superblock>'), line: 2, reason: /dev_id="-1" is not a whole number/ },
  { name: 'a dev_id beyond 32 bits', xml: doc(SB, '  <device dev_id="4294967296" mapped_blocks="0" transaction="1" creation_time="0" snap_time="1">', '  </device>', '</superblock>'), line: 2, reason: /dev_id="4294967296" is larger than 4294967295/ },
  { name: 'a block number beyond 2^53', xml: doc(SB, DEV(1), '    <single_mapping origin_block="0" data_block="1" time="0"/>', '    <single_mapping origin_block="9007199254740993" data_block="2" time="0"/>', '  </device>', '</superblock>'), line: 4, reason: /origin_block="9007199254740993" is larger than 9007199254740991/ },
  { name: 'a time beyond 32 bits', xml: doc(SB, DEV(1), '    <range_mapping origin_begin="0" data_begin="1" length="2" time="4294967296"/>', '  </device>', '</superblock>'), line: 3, reason: /time="4294967296" is larger than 4294967295/ },
  { name: 'a range of length 0', xml: doc(SB, DEV(1), '    <range_mapping origin_begin="0" data_begin="0" length="0" time="0"/>', '  </device>', '</superblock>'), line: 3, reason: /length="0"/ },
  { name: 'a mapping past nr_data_blocks', xml: doc(SB, DEV(1), '    <single_mapping origin_block="0" data_block="1" time="0"/>', '    <range_mapping origin_begin="1" data_begin="95" length="10" time="0"/>', '  </device>', '</superblock>'), line: 4, reason: /data blocks \[95, 105\) runs past the end of the data device \(nr_data_blocks="100"\)/, thinRestoreRefuses: true },
  { name: 'a duplicate dev_id', xml: doc(SB, DEV(1), '  </device>', DEV(1), '  </device>', '</superblock>'), line: 4, reason: /duplicate device: dev_id="1"/, thinRestoreRefuses: true },
  { name: 'a duplicate mapping', xml: doc(SB, DEV(1), '    <single_mapping origin_block="5" data_block="1" time="0"/>', '    <single_mapping origin_block="5" data_block="2" time="0"/>', '  </device>', '</superblock>'), line: 4, reason: /device 1: the mapping of virtual block 5 duplicates or overlaps an earlier mapping of block 5/ },
  { name: 'an overlapping range out of order', xml: doc(SB, DEV(3), '    <range_mapping origin_begin="20" data_begin="0" length="10" time="0"/>', '    <single_mapping origin_block="2" data_block="50" time="0"/>', '    <range_mapping origin_begin="10" data_begin="30" length="11" time="0"/>', '  </device>', '</superblock>'), line: 5, reason: /device 3: the mapping of virtual blocks \[10, 21\) duplicates or overlaps an earlier mapping of block 20/ },
  { name: 'a truncated file', xml: doc(SB, DEV(1), '    <single_mapping origin_block="0" data_block="1" time="0"/>'), line: 4, reason: /ends inside <device dev_id="1">, before <\/superblock>: the file is truncated/, thinRestoreRefuses: true },
  { name: 'an empty file', xml: '', line: 1, reason: /holds no <superblock>/ },
  { name: 'a mapping outside a device', xml: doc(SB, '  <single_mapping origin_block="0" data_block="1" time="0"/>', '</superblock>'), line: 2, reason: /<single_mapping> inside <superblock>; mappings belong in a <device>/, thinRestoreRefuses: true },
  { name: 'text between elements', xml: doc(SB, DEV(1), '    hello', '  </device>', '</superblock>'), line: 4, reason: /unexpected text "hello"/ },
  { name: 'a device outside the superblock', xml: doc(DEV(1), '  </device>'), line: 1, reason: /<device> inside the document/ },
  { name: 'a broken thinbd volume comment', xml: doc(SB, DEV(1), '    <!-- thinbd:volume {"name": 3} -->', '  </device>', '</superblock>'), line: 3, reason: /thinbd:volume field "name" is not a non-empty string/ },
  { name: 'a ref to no def', xml: doc(SB, DEV(1), '    <ref name="9"/>', '  </device>', '</superblock>'), line: 3, reason: /<ref name="9"> names no earlier <def>/, thinRestoreRefuses: true },
];

for (const testCase of cases) {
  test(`the reader refuses ${testCase.name}, naming line ${testCase.line}`, async () => {
    await assert.rejects(readThinXmlString(testCase.xml, new EventRecorder()), (error: unknown) => {
      assert.ok(isThinError(error, 'THIN_INVALID'), `not a THIN_INVALID ThinError: ${String(error)}`);
      assert.match(error.message, new RegExp(`^restore: line ${testCase.line}: `), error.message);
      assert.match(error.message, testCase.reason);
      return true;
    });
  });
}

test('a dump of every element in both forms gives the same events cut into pieces at random places', async () => {
  const xml = doc(
    SB,
    '  <def name="d">',
    '    <range_mapping origin_begin="100" data_begin="80" length="3" time="1"/>',
    '  </def>',
    DEV(1),
    '    <!-- thinbd:volume {"name":"v1","sizeBytes":6553600} -->',
    ...Array.from({ length: 30 }, (_, index) => `    <single_mapping origin_block="${index * 2}" data_block="${index}" time="0"/>`),
    '    <range_mapping origin_begin="60" data_begin="30" length="5" time="1"/>',
    "    <single_mapping time='2' data_block='40' origin_block='70' />",
    '    <!-- a comment between mappings -->',
    '    <range_mapping  origin_begin="71" data_begin="41" length="2" time="2"/>',
    '    <ref name="d"/>',
    '    <single_mapping origin_block="1" data_block="50" time="0" extra="ignored"/>',
    '  </device>',
    '  <!-- thinbd:bad-range {"beginSector":7680,"lengthSectors":8,"flags":1} -->',
    '</superblock>',
  );
  const whole = new EventRecorder();
  await readThinXmlString(xml, whole);
  assert.equal(whole.events.filter((event) => event.kind === 'mapping').length, 35);
  const bytes = Buffer.from(xml, 'utf8');
  let seed = 12345;
  const random = (below: number): number => {
    seed = (seed * 1103515245 + 12345) % 2 ** 31;
    return seed % below;
  };
  for (let round = 0; round < 200; round++) {
    const pieces: Buffer[] = [];
    for (let offset = 0; offset < bytes.length; ) {
      const length = 1 + random(round % 2 === 0 ? 12 : 300);
      pieces.push(bytes.subarray(offset, offset + length));
      offset += length;
    }
    const chunked = new EventRecorder();
    await readThinXml(Readable.from(pieces), chunked);
    assert.deepEqual(chunked.events, whole.events, `round ${round}`);
  }
});

test('the refusals name the same line and reason when the input comes in pieces cut anywhere', async () => {
  for (const testCase of cases) {
    const bytes = Buffer.from(testCase.xml, 'utf8');
    for (const chunkBytes of [1, 7, 50]) {
      const pieces: Buffer[] = [];
      for (let offset = 0; offset < bytes.length; offset += chunkBytes) pieces.push(bytes.subarray(offset, offset + chunkBytes));
      await assert.rejects(readThinXml(Readable.from(pieces), new EventRecorder()), (error: unknown) => {
        assert.ok(isThinError(error, 'THIN_INVALID'), `${testCase.name}, chunks of ${chunkBytes}: ${String(error)}`);
        assert.match(error.message, new RegExp(`^restore: line ${testCase.line}: `), `${testCase.name}, chunks of ${chunkBytes}: ${error.message}`);
        assert.match(error.message, testCase.reason);
        return true;
      });
    }
  }
});

test('thin_restore 0.9.0 refuses the cases marked as refused by it too (the reader is at least as strict)', () => {
  requireThinTools();
  const scratch = new Scratch();
  try {
    for (const testCase of cases.filter((c) => c.thinRestoreRefuses === true)) {
      const input = scratch.path('case.xml');
      writeFileSync(input, testCase.xml);
      const result = runTool('thin_restore', ['-i', input, '-o', scratch.zeroedFile('case.bin', 8 * 2 ** 20)]);
      assert.notEqual(result.status, 0, `thin_restore accepted ${testCase.name}`);
    }
  } finally {
    scratch.remove();
  }
});

test('the reader takes what thin_restore takes: a declaration, comments, unknown attributes, unsorted input, a self-closed device', async () => {
  const recorder = new EventRecorder();
  const summary = await readThinXmlString(
    doc(
      '<?xml version="1.0" encoding="UTF-8"?>',
      '<!-- made by hand -->',
      SB.replace('>', ' extra="yes">'),
      '  <device dev_id="9" mapped_blocks="0" transaction="1" creation_time="0" snap_time="1"/>',
      DEV(2),
      '    <single_mapping origin_block="7" data_block="7" time="0" colour="red"/>',
      '    <!-- a comment between mappings -->',
      '    <range_mapping origin_begin="0" data_begin="90" length="7" time="1"/>',
      '  </device>',
      '</superblock>',
    ),
    recorder,
  );
  assert.deepEqual(summary, { deviceCount: 2, mappingCount: 2, mappedBlockCount: 8, badRangeCount: 0, lineCount: 11 });
  assert.deepEqual(
    recorder.events.map((e) => e.kind),
    ['superblockBegin', 'deviceBegin', 'deviceEnd', 'deviceBegin', 'mapping', 'mapping', 'deviceEnd', 'superblockEnd'],
  );
});

test('optional superblock attributes default as in 0.9.0: flags 0, version 1', async () => {
  const recorder = new EventRecorder();
  await readThinXmlString('<superblock uuid="x" time="0" transaction="0" data_block_size="128" nr_data_blocks="0" metadata_snap="17"></superblock>', recorder);
  assert.deepEqual(recorder.events[0], {
    kind: 'superblockBegin', uuid: 'x', time: 0, transaction: 0, flags: 0, version: 1, dataBlockSizeSectors: 128, nrDataBlocks: 0, metadataSnap: 17,
  });
});

test('1.x shared sections are expanded where a device refers to them', async () => {
  const recorder = new EventRecorder();
  await readThinXmlString(
    doc(
      SB,
      '  <def name="44">',
      '    <range_mapping origin_begin="0" data_begin="10" length="4" time="0"/>',
      '  </def>',
      DEV(1),
      '    <ref name="44"/>',
      '    <single_mapping origin_block="4" data_block="60" time="1"/>',
      '  </device>',
      DEV(2),
      '    <ref name="44"/>',
      '  </device>',
      '</superblock>',
    ),
    recorder,
  );
  const mappings = recorder.events.filter((e) => e.kind === 'mapping').map((e) => [e.originBegin, e.dataBegin, e.length]);
  assert.deepEqual(mappings, [[0, 10, 4], [4, 60, 1], [0, 10, 4]]);
});

test('the reader streams: chunks split anywhere, even inside a multi-byte character, give the same events', async () => {
  const xml = doc(
    SB,
    DEV(1),
    '    <!-- thinbd:volume {"name":"v","labels":{"city":"Zürich ✓"}} -->',
    ...Array.from({ length: 500 }, (_, index) => `    <single_mapping origin_block="${index * 2}" data_block="${index % 100}" time="0"/>`),
    '  </device>',
    '</superblock>',
  ).replace('nr_data_blocks="100"', 'nr_data_blocks="1000"');
  const whole = new EventRecorder();
  await readThinXmlString(xml, whole);
  const bytes = Buffer.from(xml, 'utf8');
  for (const chunkBytes of [1, 7, 4096]) {
    const pieces: Buffer[] = [];
    for (let offset = 0; offset < bytes.length; offset += chunkBytes) pieces.push(bytes.subarray(offset, offset + chunkBytes));
    const chunked = new EventRecorder();
    await readThinXml(Readable.from(pieces), chunked);
    assert.deepEqual(chunked.events, whole.events, `chunks of ${chunkBytes} bytes`);
  }
  const device = whole.events[1];
  assert.ok(device?.kind === 'deviceBegin');
  assert.deepEqual(device.volume, { name: 'v', labels: { city: 'Zürich ✓' } });
});
