// Compact mapping leaves (docs/format.md "Compact leaf", "Compact mapping value"): the narrow
// extent encoding at its limits, its corrupt forms, and a pool whose mappings live in them.
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { isThinError } from '../../src/errors.ts';
import { COMPACT_EXTENT_LENGTH_BLOCKS_MAX, compactExtentCodec } from '../../src/pool/codecs.ts';
import type { Extent } from '../../src/pool/ranges.ts';

const DATA_BLOCK_COUNT = 2 ** 40;
const codec = compactExtentCodec(() => DATA_BLOCK_COUNT);
const BASES_OFFSET = 0;
const VALUE_OFFSET = 16;

function roundTrip(values: Extent[]): Extent[] | undefined {
  const view = new DataView(new ArrayBuffer(16 + 8 * values.length));
  if (!codec.chooseBases(values, view, BASES_OFFSET)) return undefined;
  values.forEach((value, index) => codec.pack(value, view, BASES_OFFSET, VALUE_OFFSET + 8 * index));
  return values.map((_, index) => codec.unpack(view, BASES_OFFSET, VALUE_OFFSET + 8 * index));
}

describe('compact mapping values', () => {
  test('extents at the limits of the narrow fields come back exactly', () => {
    const values: Extent[] = [
      { dataBlock: 5, lengthBlocks: 1, time: 7 },
      { dataBlock: 2 ** 31, lengthBlocks: COMPACT_EXTENT_LENGTH_BLOCKS_MAX, time: 7 + 262_143 },
      { dataBlock: 5 + 0xffff_ffff, lengthBlocks: 3, time: 100 },
    ];
    assert.deepEqual(roundTrip(values), values);
  });

  test('bases are 0 in a pool below 2^31 data blocks, so later mappings fit without new bases', () => {
    const view = new DataView(new ArrayBuffer(16));
    assert.ok(codec.chooseBases([{ dataBlock: 1_000_000, lengthBlocks: 1, time: 0 }], view, 0));
    assert.equal(view.getBigUint64(0, true), 0n);
    assert.ok(codec.fits({ dataBlock: 3, lengthBlocks: 2, time: 200_000 }, view, 0));
  });

  test('values that no bases hold together are refused, so their leaf stays wide', () => {
    assert.equal(roundTrip([{ dataBlock: 0, lengthBlocks: COMPACT_EXTENT_LENGTH_BLOCKS_MAX + 1, time: 0 }]), undefined, 'too long');
    assert.equal(roundTrip([{ dataBlock: 0, lengthBlocks: 1, time: 0 }, { dataBlock: 1, lengthBlocks: 1, time: 262_144 }]), undefined, 'times too far apart');
    assert.equal(roundTrip([{ dataBlock: 0, lengthBlocks: 1, time: 0 }, { dataBlock: 2 ** 32, lengthBlocks: 1, time: 0 }]), undefined, 'data too far apart');
  });

  test('corrupt bases and values are THIN_CORRUPT_NODE errors that name the field', () => {
    const make = (change: (view: DataView) => void): DataView => {
      const view = new DataView(new ArrayBuffer(24));
      assert.ok(codec.chooseBases([{ dataBlock: 9, lengthBlocks: 1, time: 3 }], view, 0));
      codec.pack({ dataBlock: 9, lengthBlocks: 1, time: 3 }, view, 0, VALUE_OFFSET);
      change(view);
      return view;
    };
    const cases: Array<[string, (view: DataView) => void, RegExp]> = [
      ['reserved', (view) => view.setUint32(12, 1, true), /reserved field is not zero/],
      ['data base', (view) => view.setBigUint64(0, 2n ** 60n, true), /data block base is \d+, beyond/],
      [
        'time',
        (view) => {
          view.setUint32(8, 0xffff_ffff, true);
          view.setUint32(VALUE_OFFSET + 4, COMPACT_EXTENT_LENGTH_BLOCKS_MAX, true); // time offset 1, length 1
        },
        /time \d+ is beyond the largest pool time/,
      ],
      ['past the data', (view) => view.setBigUint64(0, BigInt(DATA_BLOCK_COUNT), true), /past the data space/],
    ];
    for (const [what, change, message] of cases) {
      assert.throws(
        () => codec.unpack(make(change), 0, VALUE_OFFSET),
        (error) => isThinError(error, 'THIN_CORRUPT_NODE') && message.test((error as Error).message),
        what,
      );
    }
  });
});

describe('a pool with compact mapping leaves', () => {
  test('scattered writes, overwrites, a snapshot and discards read back after reopening', async () => {
    const { Pool } = await import('../../src/pool/pool.ts');
    const dir = mkdtempSync(join(tmpdir(), 'thinbd-compact-'));
    const blockSizeBytes = 65536;
    try {
      const pool = await Pool.create(join(dir, 'pool'), { dataSizeBytes: 4096 * blockSizeBytes, blockSizeBytes, metadataMirror: false });
      const expected = new Map<number, number>();
      try {
        const volume = await pool.createVolume('v', { sizeBytes: 4096 * blockSizeBytes });
        const buffer = new Uint8Array(512);
        const write = async (block: number, tag: number): Promise<void> => {
          buffer.fill(tag & 0xff);
          await volume.write(block * blockSizeBytes, buffer);
          expected.set(block, tag & 0xff);
        };
        // Blocks in a scrambled order, several leaves' worth of single-block extents.
        for (let index = 0; index < 1500; index++) await write((index * 2731) % 3001, index + 1);
        await pool.flush();
        await pool.snapshot('v', 's');
        for (let index = 0; index < 300; index++) await write((index * 977) % 3001, index + 7);
        await volume.discard(100 * blockSizeBytes, 50 * blockSizeBytes);
        for (let block = 100; block < 150; block++) expected.delete(block);
        await pool.flush();
      } finally {
        await pool.close();
      }
      const again = await Pool.open(join(dir, 'pool'));
      try {
        const volume = again.volume('v');
        const buffer = new Uint8Array(512);
        for (let block = 0; block < 3001; block++) {
          await volume.read(block * blockSizeBytes, buffer);
          assert.equal(buffer[0], expected.get(block) ?? 0, `block ${block}`);
        }
      } finally {
        await again.close();
      }
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
