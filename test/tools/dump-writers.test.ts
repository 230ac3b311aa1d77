// The dump writers against thin_dump 0.9.0 itself: seeded random dm-thin histories go through
// thin_restore and thin_dump; thinbd reads thin_dump's XML and writes it again, and the bytes must
// be thin_dump's (XML and human_readable). Failing seeds are printed.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { writeFileSync } from 'node:fs';
import { readThinXmlString } from '../../src/tools/restore-xml.ts';
import { XmlDumpWriter, encodeVolumeComment } from '../../src/tools/dump/xml.ts';
import { HumanDumpWriter } from '../../src/tools/dump/human.ts';
import { JsonDumpWriter } from '../../src/tools/dump/json.ts';
import { StringSink } from '../../src/tools/dump/sink.ts';
import { EventRecorder, replay, type DumpEvent, type DumpVisitor } from '../../src/tools/dump/events.ts';
import { generateHistory, historyXml, sortedMappings } from './dm-thin-history.ts';
import { Scratch, requireThinTools, runTool, thinRestore, toolOutput } from './thin-tools.ts';

const SEEDS = Array.from({ length: 30 }, (_, index) => 1000 + index);

async function rewrite(xml: string, makeWriter: (sink: StringSink) => DumpVisitor): Promise<string> {
  const sink = new StringSink();
  await readThinXmlString(xml, makeWriter(sink));
  return sink.text;
}

async function writeEvents(events: DumpEvent[], makeWriter: (sink: StringSink) => DumpVisitor): Promise<string> {
  const sink = new StringSink();
  await replay(events, makeWriter(sink));
  return sink.text;
}

test('for 30 seeded random pool histories, the XML writer reproduces thin_dump 0.9.0 byte for byte', async () => {
  requireThinTools();
  const scratch = new Scratch();
  try {
    let mappingLines = 0;
    for (const seed of SEEDS) {
      const model = generateHistory(seed);
      const metadata = thinRestore(scratch, historyXml(model), `seed-${seed}.bin`);
      const expected = toolOutput('thin_dump', [metadata]);
      const ours = await rewrite(expected, (sink) => new XmlDumpWriter(sink));
      assert.equal(ours, expected, `seed ${seed}: XML differs from thin_dump's`);
      mappingLines += expected.split('\n').filter((line) => line.includes('_mapping ')).length;
    }
    assert.ok(mappingLines > 1000, `the histories exercised only ${mappingLines} mapping lines`);
  } finally {
    scratch.remove();
  }
});

test('for the same histories, the human writer reproduces thin_dump -f human_readable byte for byte', async () => {
  requireThinTools();
  const scratch = new Scratch();
  try {
    for (const seed of SEEDS.slice(0, 12)) {
      const metadata = thinRestore(scratch, historyXml(generateHistory(seed)), `seed-${seed}.bin`);
      const xml = toolOutput('thin_dump', [metadata]);
      const expected = toolOutput('thin_dump', ['-f', 'human_readable', metadata]);
      assert.equal(await rewrite(xml, (sink) => new HumanDumpWriter(sink)), expected, `seed ${seed}`);
    }
  } finally {
    scratch.remove();
  }
});

test('what the reader makes of thin_dump output is the modelled pool, block by block', async () => {
  requireThinTools();
  const scratch = new Scratch();
  try {
    for (const seed of SEEDS.slice(0, 12)) {
      const model = generateHistory(seed);
      const metadata = thinRestore(scratch, historyXml(model), `seed-${seed}.bin`);
      const recorder = new EventRecorder();
      await readThinXmlString(toolOutput('thin_dump', [metadata]), recorder);
      const seen = new Map<number, Array<[number, number, number]>>();
      let current: Array<[number, number, number]> = [];
      for (const event of recorder.events) {
        if (event.kind === 'superblockBegin') {
          assert.equal(event.time, model.time);
          assert.equal(event.transaction, model.transaction);
          assert.equal(event.nrDataBlocks, model.nrDataBlocks);
          assert.equal(event.dataBlockSizeSectors, model.dataBlockSizeSectors);
        } else if (event.kind === 'deviceBegin') {
          current = [];
          seen.set(event.devId, current);
          const device = model.devices.get(event.devId);
          assert.ok(device !== undefined, `seed ${seed}: device ${event.devId} is not in the model`);
          assert.deepEqual([event.creationTime, event.snapTime, event.transaction, event.mappedBlocks], [device.creationTime, device.snapTime, device.transaction, device.mappings.size]);
        } else if (event.kind === 'mapping') {
          for (let offset = 0; offset < event.length; offset += 1) current.push([event.originBegin + offset, event.dataBegin + offset, event.time]);
        }
      }
      assert.deepEqual([...seen.keys()].sort((a, b) => a - b), [...model.devices.keys()].sort((a, b) => a - b), `seed ${seed}: devices`);
      for (const [devId, blocks] of seen) {
        const device = model.devices.get(devId)!;
        assert.deepEqual(blocks, sortedMappings(device).map(([block, m]) => [block, m.dataBlock, m.time]), `seed ${seed}: device ${devId}`);
      }
    }
  } finally {
    scratch.remove();
  }
});

test('runs merge as thin_dump merges them: contiguous origin and data with equal time', async () => {
  const events: DumpEvent[] = [
    { kind: 'superblockBegin', uuid: '', time: 2, transaction: 1, flags: 0, version: 2, dataBlockSizeSectors: 128, nrDataBlocks: 100 },
    { kind: 'deviceBegin', devId: 1, mappedBlocks: 7, transaction: 1, creationTime: 0, snapTime: 2 },
    { kind: 'mapping', originBegin: 0, dataBegin: 10, length: 1, time: 0 },
    { kind: 'mapping', originBegin: 1, dataBegin: 11, length: 1, time: 0 },
    { kind: 'mapping', originBegin: 2, dataBegin: 12, length: 1, time: 2 },
    { kind: 'mapping', originBegin: 3, dataBegin: 13, length: 2, time: 2 },
    { kind: 'mapping', originBegin: 5, dataBegin: 20, length: 1, time: 2 },
    { kind: 'mapping', originBegin: 7, dataBegin: 21, length: 1, time: 2 },
    { kind: 'deviceEnd' },
    { kind: 'deviceBegin', devId: 2, mappedBlocks: 0, transaction: 1, creationTime: 2, snapTime: 2 },
    { kind: 'deviceEnd' },
    { kind: 'superblockEnd' },
  ];
  assert.equal(
    await writeEvents(events, (sink) => new XmlDumpWriter(sink)),
    [
      '<superblock uuid="" time="2" transaction="1" flags="0" version="2" data_block_size="128" nr_data_blocks="100">',
      '  <device dev_id="1" mapped_blocks="7" transaction="1" creation_time="0" snap_time="2">',
      '    <range_mapping origin_begin="0" data_begin="10" length="2" time="0"/>',
      '    <range_mapping origin_begin="2" data_begin="12" length="3" time="2"/>',
      '    <single_mapping origin_block="5" data_block="20" time="2"/>',
      '    <single_mapping origin_block="7" data_block="21" time="2"/>',
      '  </device>',
      '  <device dev_id="2" mapped_blocks="0" transaction="1" creation_time="2" snap_time="2">',
      '  </device>',
      '</superblock>',
      '',
    ].join('\n'),
  );
  const json = JSON.parse(await writeEvents(events, (sink) => new JsonDumpWriter(sink))) as {
    superblock: { nrDataBlocks: number };
    devices: Array<{ devId: number; mappings: Array<{ originBegin: number; length: number }> }>;
  };
  assert.equal(json.superblock.nrDataBlocks, 100);
  assert.deepEqual(json.devices.map((d) => [d.devId, d.mappings.map((m) => [m.originBegin, m.length])]), [
    [1, [[0, 2], [2, 3], [5, 1], [7, 1]]],
    [2, []],
  ]);
});

test('volume names, sizes and labels travel in a comment thin_restore 0.9.0 accepts and ignores, and come back through the reader', async () => {
  requireThinTools();
  const volume = {
    name: 'vm--1-',
    sizeBytes: 10 * 2 ** 20,
    origin: 'base.img',
    readOnly: true,
    labels: { owner: 'ops -- team', 'note': 'café <&> "quoted" -->' },
    createdAt: '2026-11-21T12:00:00.000Z',
  };
  const comment = encodeVolumeComment(volume);
  assert.ok(!comment.includes('--') && !comment.endsWith('-') && /^[\x20-\x7e]*$/.test(comment), comment);
  const events: DumpEvent[] = [
    { kind: 'superblockBegin', uuid: '', time: 1, transaction: 3, flags: 0, version: 2, dataBlockSizeSectors: 128, nrDataBlocks: 64 },
    { kind: 'deviceBegin', devId: 7, mappedBlocks: 3, transaction: 1, creationTime: 0, snapTime: 1, volume },
    { kind: 'mapping', originBegin: 0, dataBegin: 5, length: 3, time: 0 },
    { kind: 'deviceEnd' },
    { kind: 'deviceBegin', devId: 8, mappedBlocks: 0, transaction: 1, creationTime: 1, snapTime: 1, volume: { name: 'empty', sizeBytes: 65536 } },
    { kind: 'deviceEnd' },
    { kind: 'superblockEnd' },
  ];
  const ours = await writeEvents(events, (sink) => new XmlDumpWriter(sink));
  assert.match(ours, /\n {4}<!-- thinbd:volume \{"name":"vm\\u002d\\u002d1\\u002d",/);

  const scratch = new Scratch();
  try {
    const metadata = thinRestore(scratch, ours);
    const check = runTool('thin_check', [metadata]);
    assert.equal(check.status, 0, check.stderr);
    const dumped = toolOutput('thin_dump', [metadata]);
    assert.equal(dumped, ours.split('\n').filter((line) => !line.includes('<!--')).join('\n'), 'thin_dump shows the pool without the comments');
  } finally {
    scratch.remove();
  }
  const recorder = new EventRecorder();
  await readThinXmlString(ours, recorder);
  assert.deepEqual(recorder.events, events);
});

test('the XML writer streams through a file sink and ends with the closing tag', async () => {
  const { StreamSink } = await import('../../src/tools/dump/sink.ts');
  const { createWriteStream, readFileSync } = await import('node:fs');
  const scratch = new Scratch();
  try {
    const path = scratch.path('big.xml');
    const stream = createWriteStream(path);
    const sink = new StreamSink(stream);
    const writer = new XmlDumpWriter(sink);
    const events: DumpEvent[] = [{ kind: 'superblockBegin', uuid: '', time: 0, transaction: 0, flags: 0, version: 2, dataBlockSizeSectors: 128, nrDataBlocks: 1e6 }];
    events.push({ kind: 'deviceBegin', devId: 1, mappedBlocks: 100_000, transaction: 0, creationTime: 0, snapTime: 0 });
    for (let block = 0; block < 100_000; block += 1) events.push({ kind: 'mapping', originBegin: block, dataBegin: block * 2, length: 1, time: 0 });
    events.push({ kind: 'deviceEnd' }, { kind: 'superblockEnd' });
    await replay(events, writer);
    await sink.flush();
    await new Promise<void>((resolve) => stream.end(resolve));
    const text = readFileSync(path, 'utf8');
    assert.equal(text.split('\n').length, 100_000 + 5);
    assert.ok(text.endsWith('  </device>\n</superblock>\n'));
    writeFileSync(path, '');
  } finally {
    scratch.remove();
  }
});

test('through a descriptor sink, the XML writer writes to a file exactly what it writes into a string', async () => {
  const { DescriptorSink } = await import('../../src/tools/dump/sink.ts');
  const { closeSync, openSync, readFileSync } = await import('node:fs');
  const scratch = new Scratch();
  try {
    // Enough lines for several output pieces, a volume comment (text, not bytes) between mappings.
    const events: DumpEvent[] = [{ kind: 'superblockBegin', uuid: '', time: 0, transaction: 0, flags: 0, version: 2, dataBlockSizeSectors: 128, nrDataBlocks: 1e6 }];
    for (const devId of [1, 2]) {
      events.push({ kind: 'deviceBegin', devId, mappedBlocks: 50_000, transaction: 0, creationTime: 0, snapTime: 0, volume: { name: `vol-${devId}`, sizeBytes: 2 ** 36, readOnly: false, createdAt: '2026-12-07T00:00:00.000Z' } });
      for (let block = 0; block < 50_000; block += 1) events.push({ kind: 'mapping', originBegin: block, dataBegin: block * 2 + devId, length: 1, time: 0 });
      events.push({ kind: 'deviceEnd' });
    }
    events.push({ kind: 'superblockEnd' });
    const path = scratch.path('descriptor.xml');
    const fd = openSync(path, 'wx');
    const sink = new DescriptorSink(fd, path);
    await replay(events, new XmlDumpWriter(sink));
    await sink.flush();
    closeSync(fd);
    assert.equal(readFileSync(path, 'latin1'), await writeEvents(events, (stringSink) => new XmlDumpWriter(stringSink)));
  } finally {
    scratch.remove();
  }
});

test('a descriptor sink that cannot write says where it could not write', async () => {
  const { DescriptorSink } = await import('../../src/tools/dump/sink.ts');
  const { closeSync, openSync } = await import('node:fs');
  // /dev/full refuses every write with ENOSPC.
  const fd = openSync('/dev/full', 'w');
  try {
    const sink = new DescriptorSink(fd, 'the output file');
    sink.write('<superblock/>\n');
    await assert.rejects(sink.flush(), (error: Error) => error.name === 'ThinError' && /^Cannot write to the output file: ENOSPC/.test(error.message));
  } finally {
    closeSync(fd);
  }
});

test('thin_restore 0.9.0 ignores extra attributes and comments but refuses unknown elements (why thinbd uses a comment)', () => {
  requireThinTools();
  const scratch = new Scratch();
  try {
    const head = '<superblock uuid="" time="0" transaction="1" flags="0" version="2" data_block_size="128" nr_data_blocks="16"';
    const device = '  <device dev_id="1" mapped_blocks="0" transaction="1" creation_time="0" snap_time="0"';
    const restore = (xml: string): number | null => {
      const input = scratch.path('probe.xml');
      writeFileSync(input, xml);
      return runTool('thin_restore', ['-i', input, '-o', scratch.zeroedFile('probe.bin', 8 * 2 ** 20)]).status;
    };
    assert.equal(restore(`${head} name="x">\n${device} name="vm1" size_bytes="65536">\n  </device>\n</superblock>\n`), 0, 'extra attributes');
    assert.equal(restore(`<!-- a -->\n${head}>\n  <!-- b -->\n${device}>\n    <!-- c -->\n  </device>\n</superblock>\n`), 0, 'comments');
    assert.equal(restore(`${head}>\n${device}>\n    <volume name="vm1"/>\n  </device>\n</superblock>\n`), 1, 'an unknown element');
  } finally {
    scratch.remove();
  }
});
