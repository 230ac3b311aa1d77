// thinbd restore: the pool it builds (names, sizes, extents merged whatever the input order), and
// the promise that a failure leaves nothing behind (a kill: nothing the next restore keeps).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { createReadStream, existsSync, mkdirSync, readdirSync, writeFileSync, readFileSync } from 'node:fs';
import { Pool } from '../../src/pool/pool.ts';
import { restorePool } from '../../src/tools/restore.ts';
import { dumpPool } from '../../src/tools/dump/pool-dump.ts';
import { XmlDumpWriter } from '../../src/tools/dump/xml.ts';
import { StringSink } from '../../src/tools/dump/sink.ts';
import { checkPool } from '../../src/tools/check.ts';
import { isThinError } from '../../src/errors.ts';
import { Scratch } from './thin-tools.ts';
import { THINBD, thinbd } from '../cli/run-thinbd.ts';

const BLOCK = 65536;
const SB = (nrDataBlocks: number, time = 3): string =>
  `<superblock uuid="" time="${time}" transaction="9" flags="0" version="2" data_block_size="128" nr_data_blocks="${nrDataBlocks}">`;
const DEV = (id: number, creation = 0, snap = 0): string =>
  `  <device dev_id="${id}" mapped_blocks="0" transaction="1" creation_time="${creation}" snap_time="${snap}">`;

function doc(...lines: string[]): string {
  return `${lines.join('\n')}\n`;
}

async function dumpText(dir: string): Promise<string> {
  const sink = new StringSink();
  await dumpPool(dir, new XmlDumpWriter(sink));
  return sink.text;
}

function leftovers(scratch: Scratch, prefix: string): string[] {
  return readdirSync(scratch.dir).filter((name) => name.startsWith(prefix));
}

test('mappings in any order become the extents of a dump in order: neighbours are joined on both sides', async () => {
  const scratch = new Scratch();
  try {
    const dir = scratch.path('pool');
    await restorePool(
      [
        doc(
          SB(100),
          DEV(4, 1, 2),
          '    <range_mapping origin_begin="10" data_begin="60" length="5" time="1"/>',
          '    <range_mapping origin_begin="0" data_begin="50" length="5" time="1"/>',
          '    <range_mapping origin_begin="5" data_begin="55" length="5" time="1"/>',
          '    <single_mapping origin_block="15" data_block="65" time="1"/>',
          '    <single_mapping origin_block="16" data_block="66" time="2"/>',
          '    <single_mapping origin_block="30" data_block="3" time="0"/>',
          '    <single_mapping origin_block="20" data_block="70" time="2"/>',
          '  </device>',
          '</superblock>',
        ),
      ],
      { dir, data: { sizeBytes: 100 * BLOCK } },
    );
    const lines = (await dumpText(dir)).split('\n').filter((line) => line.includes('_mapping'));
    assert.deepEqual(lines, [
      '    <range_mapping origin_begin="0" data_begin="50" length="16" time="1"/>',
      '    <single_mapping origin_block="16" data_block="66" time="2"/>',
      '    <single_mapping origin_block="20" data_block="70" time="2"/>',
      '    <single_mapping origin_block="30" data_block="3" time="0"/>',
    ]);
    assert.deepEqual((await checkPool(dir)).problems, []);
  } finally {
    scratch.remove();
  }
});

test('unnamed volumes are named by device id and sized to cover their highest mapped block; named ones keep their facts', async () => {
  const scratch = new Scratch();
  try {
    const dir = scratch.path('pool');
    const summary = await restorePool(
      [
        doc(
          SB(100),
          DEV(7),
          '    <single_mapping origin_block="40" data_block="1" time="0"/>',
          '  </device>',
          DEV(8),
          '  </device>',
          DEV(9, 1, 3),
          '    <!-- thinbd:volume {"name":"web","sizeBytes":4000000,"origin":"7","readOnly":true,"labels":{"tier":"gold"},"createdAt":"2020\\u002d01\\u002d02T03:04:05.000Z"} -->',
          '    <single_mapping origin_block="2" data_block="1" time="0"/>',
          '  </device>',
          '</superblock>',
        ),
      ],
      { dir, data: { sizeBytes: 100 * BLOCK } },
    );
    assert.equal(summary.sourceTransaction, 9);
    const pool = await Pool.open(dir, { readOnly: true });
    try {
      const list = pool.list().map(({ createdAt, ...info }) => (info.name === 'web' ? { ...info, createdAt } : info));
      assert.deepEqual(list, [
        { name: '7', id: 7, sizeBytes: 41 * BLOCK, readOnly: false, labels: {} },
        { name: '8', id: 8, sizeBytes: BLOCK, readOnly: false, labels: {} },
        { name: 'web', id: 9, sizeBytes: 4_000_000, readOnly: true, labels: { tier: 'gold' }, origin: '7', originId: 7, createdAt: '2020-01-02T03:04:05.000Z' },
      ]);
      assert.deepEqual(pool.usage().get(9), { mappedBlocks: 1, exclusiveBlocks: 0, sharedBlocks: 1 });
    } finally {
      await pool.close();
    }
    assert.deepEqual((await checkPool(dir)).problems, []);
  } finally {
    scratch.remove();
  }
});

test('a restore that fails half way leaves neither the pool nor its temporary directory', async () => {
  const scratch = new Scratch();
  try {
    const lines = [SB(10_000), DEV(1)];
    for (let block = 0; block < 3000; block += 1) lines.push(`    <single_mapping origin_block="${block}" data_block="${block * 3}" time="0"/>`);
    lines.push('    <single_mapping origin_block="5000" data_block="10000" time="0"/>', '  </device>', '</superblock>');
    const dir = scratch.path('pool');
    await assert.rejects(restorePool([doc(...lines)], { dir, data: { sizeBytes: 10_000 * BLOCK } }), (error: unknown) => {
      assert.ok(isThinError(error, 'THIN_INVALID'));
      assert.match(error.message, /^restore: line 3003: mapping to data block 10000 runs past the end of the data device/);
      return true;
    });
    assert.deepEqual(leftovers(scratch, 'pool'), []);
  } finally {
    scratch.remove();
  }
});

test('what the XML cannot give a pool is refused by name, and nothing is left behind', async () => {
  const scratch = new Scratch();
  try {
    const dir = scratch.path('pool');
    const cases: Array<[string, string, RegExp]> = [
      ['clashing names', doc(SB(10), DEV(7), '  </device>', DEV(8), '    <!-- thinbd:volume {"name":"7"} -->', '  </device>', '</superblock>'), /devices 7 and 8 would both be named 7/],
      ['a size short of the mappings', doc(SB(10), DEV(1), '    <!-- thinbd:volume {"name":"a","sizeBytes":65536} -->', '    <single_mapping origin_block="1" data_block="1" time="0"/>', '  </device>', '</superblock>'), /size of 65536 bytes does not cover its highest mapped block 1/],
      ['a block size thinbd cannot use', doc(SB(10).replace('data_block_size="128"', 'data_block_size="100"'), '</superblock>'), /data_block_size="100" sectors .* is not a power of two from 64 KiB to 1 GiB/],
      ['a block size dm-thin takes but thinbd cannot use', doc(SB(10).replace('data_block_size="128"', 'data_block_size="384"'), '</superblock>'), /data_block_size="384" sectors \(196608 bytes\) is not a power of two from 64 KiB to 1 GiB, as thinbd requires \(dm-thin also takes other multiples of 64 KiB/],
      ['a snapshot taken before its creation', doc(SB(10), DEV(1, 2, 1), '  </device>', '</superblock>'), /snap_time="1" is before creation_time="2"/],
      ['an invalid name', doc(SB(10), DEV(1), '    <!-- thinbd:volume {"name":"a b"} -->', '  </device>', '</superblock>'), /device 1: volume name "a b"/],
    ];
    for (const [what, xml, reason] of cases) {
      await assert.rejects(restorePool([xml], { dir, data: { sizeBytes: 10 * BLOCK } }), (error: unknown) => {
        assert.ok(isThinError(error, 'THIN_INVALID'), `${what}: ${String(error)}`);
        assert.match(error.message, reason, what);
        return true;
      });
      assert.deepEqual(leftovers(scratch, 'pool'), [], what);
    }
    // Too little data for nr_data_blocks.
    const small = scratch.zeroedFile('small-data', 5 * BLOCK);
    await assert.rejects(restorePool([doc(SB(10), '</superblock>')], { dir, data: { path: small } }), /holds 327680 bytes, less than the 10 blocks/);
    await assert.rejects(restorePool([doc(SB(10), '</superblock>')], { dir, data: { sizeBytes: 5 * BLOCK } }), /holds 5 blocks of 65536 bytes; the dump has nr_data_blocks="10"/);
    assert.deepEqual(leftovers(scratch, 'pool'), []);
    assert.ok(existsSync(small), 'a failed restore never removes the data it was given');
  } finally {
    scratch.remove();
  }
});

test('a restore killed half way leaves its temporary directory, which the next restore of that directory removes; a running one\'s is kept', async () => {
  const scratch = new Scratch();
  try {
    const dir = scratch.path('pool');
    const lines = [SB(10_000), DEV(1)];
    for (let block = 0; block < 3000; block += 1) lines.push(`    <single_mapping origin_block="${block}" data_block="${block * 3}" time="0"/>`);
    lines.push('  </device>', '</superblock>');
    const xml = doc(...lines);
    // Killed with half its input read: the build directory is there, the pool is not.
    const child = spawn(process.execPath, [THINBD, 'restore', '--pool', dir, '-i', '-', '--data-size', String(10_000 * BLOCK)], { stdio: ['pipe', 'ignore', 'pipe'] });
    const exited = once(child, 'exit');
    child.stdin.write(xml.slice(0, xml.length / 2));
    while (leftovers(scratch, 'pool.tmp-').length === 0 && child.exitCode === null) await new Promise((resolve) => setTimeout(resolve, 10));
    child.kill('SIGKILL');
    const [, signal] = (await exited) as [number | null, NodeJS.Signals | null];
    assert.equal(signal, 'SIGKILL', 'the restore ended before it was killed');
    const left = leftovers(scratch, 'pool');
    assert.equal(left.length, 1, `a killed restore leaves its build directory alone: ${left.join(', ')}`);
    assert.match(left[0]!, new RegExp(`^pool\\.tmp-${child.pid}-[0-9a-f]{8}$`));
    // One of a process that still runs (this one) is not touched.
    const running = scratch.path(`pool.tmp-${process.pid}-0123abcd`);
    mkdirSync(running);
    const again = thinbd(['restore', '--pool', dir, '-i', '-', '--data-size', String(10_000 * BLOCK)], { input: xml });
    assert.equal(again.code, 0, again.stderr);
    assert.deepEqual(leftovers(scratch, 'pool').sort(), ['pool', `pool.tmp-${process.pid}-0123abcd`]);
    assert.deepEqual((await checkPool(dir)).problems, []);
  } finally {
    scratch.remove();
  }
});

test('restore refuses to overwrite a pool, and the pool is untouched', async () => {
  const scratch = new Scratch();
  try {
    const dir = scratch.path('pool');
    await restorePool([doc(SB(10), DEV(1), '  </device>', '</superblock>')], { dir, data: { sizeBytes: 10 * BLOCK } });
    const before = readFileSync(`${dir}/metadata`);
    await assert.rejects(restorePool([doc(SB(10), '</superblock>')], { dir, data: { sizeBytes: 10 * BLOCK } }), { code: 'THIN_EXISTS' });
    assert.ok(readFileSync(`${dir}/metadata`).equals(before));
    assert.deepEqual(leftovers(scratch, 'pool'), ['pool']);
  } finally {
    scratch.remove();
  }
});

test('a thin-provisioning-tools 1.x dump with shared sections restores with each sharing volume holding the runs', async () => {
  const scratch = new Scratch();
  try {
    const dir = scratch.path('pool');
    await restorePool(
      [doc(SB(100), '  <def name="12">', '    <range_mapping origin_begin="0" data_begin="20" length="8" time="0"/>', '  </def>', DEV(1, 0, 1), '    <ref name="12"/>', '  </device>', DEV(2, 1, 1), '    <ref name="12"/>', '    <single_mapping origin_block="9" data_block="40" time="1"/>', '  </device>', '</superblock>')],
      { dir, data: { sizeBytes: 100 * BLOCK } },
    );
    const pool = await Pool.open(dir, { readOnly: true });
    try {
      assert.deepEqual([...pool.usage().entries()], [
        [1, { mappedBlocks: 8, exclusiveBlocks: 0, sharedBlocks: 8 }],
        [2, { mappedBlocks: 9, exclusiveBlocks: 1, sharedBlocks: 8 }],
      ]);
    } finally {
      await pool.close();
    }
    assert.deepEqual((await checkPool(dir)).problems, []);
  } finally {
    scratch.remove();
  }
});

test('a restore larger than the dirty-metadata limit commits along the way, streams from a file, and checks clean', async () => {
  const scratch = new Scratch();
  try {
    // Enough extents that the mapping trees' leaves (335 to a full compact leaf, as restore fills
    // them) outnumber METADATA_DIRTY_BLOCKS_SOFT_MAX.
    const perDevice = 750_000;
    const lines = [SB(2 * perDevice + 10, 1)];
    for (const devId of [1, 2]) {
      lines.push(DEV(devId, 0, 1));
      // Every other data block: no two mappings join, so every mapping is its own extent.
      for (let block = 0; block < perDevice; block += 1) lines.push(`    <single_mapping origin_block="${block}" data_block="${2 * block + devId - 1}" time="0"/>`);
      lines.push('  </device>');
    }
    lines.push('</superblock>');
    const xmlPath = scratch.path('big.xml');
    writeFileSync(xmlPath, `${lines.join('\n')}\n`);
    const dir = scratch.path('pool');
    const summary = await restorePool(createReadStream(xmlPath), { dir, data: { sizeBytes: (2 * perDevice + 10) * BLOCK } });
    assert.equal(summary.mappedBlockCount, 2 * perDevice);
    const report = await checkPool(dir);
    assert.deepEqual(report.problems, []);
    assert.ok(report.stats.transactionId > 1, `one commit only (transaction ${report.stats.transactionId})`);
    assert.equal(report.stats.mappingEntries, 2 * perDevice);
  } finally {
    scratch.remove();
  }
});

test('a volume of many leaves in mixed layouts, with mappings out of order, restores to the extents given and checks clean', async () => {
  const scratch = new Scratch();
  try {
    // Mappings as [origin, data, length, time]: scattered singles in order (compact leaves), a
    // long range (too long for a compact leaf: the leaf turns wide), more singles, then singles
    // below them (out of order: into the finished tree), one of which continues an extent.
    const mappings: Array<[number, number, number, number]> = [];
    for (let index = 0; index < 3000; index++) mappings.push([2 * index, (index * 7919) % 100_000, 1, index % 3]);
    mappings.push([6000, 100_000, 20_000, 1]);
    for (let index = 0; index < 400; index++) mappings.push([26_000 + 2 * index, 120_000 + 3 * index, 1, 2]);
    for (let index = 0; index < 50; index++) mappings.push([2 * index * 37 + 1, 125_000 + index, 1, 0]);
    mappings.push([26_001, 120_001, 1, 2]); // continues the extent at 26,000 (data 120,000, time 2)
    // A full compact leaf and 5 more: the last leaf takes half of the one before.
    const evenOut = Array.from({ length: 340 }, (_, index): [number, number, number, number] => [3 * index, 128_000 + index * 2, 1, 0]);
    const line = ([origin, data, length, time]: [number, number, number, number]): string =>
      length === 1
        ? `    <single_mapping origin_block="${origin}" data_block="${data}" time="${time}"/>`
        : `    <range_mapping origin_begin="${origin}" data_begin="${data}" length="${length}" time="${time}"/>`;
    const dir = scratch.path('pool');
    await restorePool(
      [doc(SB(130_000), DEV(1, 0, 3), ...mappings.map(line), '  </device>', DEV(2, 0, 3), line([5, 7, 1, 0]), '  </device>', DEV(3, 0, 3), '  </device>', DEV(4, 0, 3), ...evenOut.map(line), '  </device>', '</superblock>')],
      { dir, data: { sizeBytes: 130_000 * BLOCK } },
    );
    // What a dump must say: the mappings in origin order, neighbours that continue each other joined.
    const expected: Array<[number, number, number, number]> = [];
    for (const mapping of [...mappings].sort((a, b) => a[0] - b[0])) {
      const last = expected[expected.length - 1];
      if (last !== undefined && last[0] + last[2] === mapping[0] && last[1] + last[2] === mapping[1] && last[3] === mapping[3]) last[2] += mapping[2];
      else expected.push([...mapping]);
    }
    const text = await dumpText(dir);
    const devices = text.split('</device>');
    assert.deepEqual(devices[0]!.split('\n').filter((l) => l.includes('_mapping')), expected.map(line));
    assert.deepEqual(devices[1]!.split('\n').filter((l) => l.includes('_mapping')), [line([5, 7, 1, 0])]);
    assert.deepEqual(devices[2]!.split('\n').filter((l) => l.includes('_mapping')), []);
    assert.deepEqual(devices[3]!.split('\n').filter((l) => l.includes('_mapping')), evenOut.map(line));
    const report = await checkPool(dir);
    assert.deepEqual(report.problems, []);
    assert.equal(report.stats.mappingEntries, expected.length + 1 + evenOut.length);
  } finally {
    scratch.remove();
  }
});
