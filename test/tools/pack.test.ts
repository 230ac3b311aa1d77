// metadata pack / unpack: every live metadata block comes back bit for bit, the image is at least
// ten times smaller than the metadata file, and a damaged image is refused without leaving
// metadata behind.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, openSync, readSync, closeSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { Pool } from '../../src/pool/pool.ts';
import { packMetadata, unpackMetadata } from '../../src/tools/pack.ts';
import { PoolView } from '../../src/tools/pool-view.ts';
import { dumpPool } from '../../src/tools/dump/pool-dump.ts';
import { XmlDumpWriter } from '../../src/tools/dump/xml.ts';
import { StringSink } from '../../src/tools/dump/sink.ts';
import { checkPool } from '../../src/tools/check.ts';
import { isThinError } from '../../src/errors.ts';
import { METADATA_BLOCK_SIZE_BYTES } from '../../src/constants.ts';
import { Rng } from '../sim/rng.ts';
import { Scratch } from './thin-tools.ts';

const BLOCK = 65536;

async function busyPool(dir: string, seed: number): Promise<void> {
  const rng = new Rng(seed);
  const pool = await Pool.create(dir, { dataSizeBytes: 256 * 1024 * 1024, blockSizeBytes: BLOCK });
  try {
    const base = await pool.createVolume('base', { sizeBytes: 3000 * BLOCK, labels: { seed: String(seed) } });
    // Scattered single blocks: many extents, many leaves.
    for (let index = 0; index < 1500; index += 1) await base.write(rng.int(3000) * BLOCK, rng.bytes(512));
    await pool.flush();
    await pool.snapshot('base', 'snap');
    const snap = pool.volume('snap');
    for (let index = 0; index < 300; index += 1) await snap.write(rng.int(3000) * BLOCK, rng.bytes(512));
    await pool.snapshot('snap', 'snap2', { readOnly: true });
    await base.discard(100 * BLOCK, 400 * BLOCK);
  } finally {
    await pool.close();
  }
}

async function dumpText(dir: string): Promise<string> {
  const sink = new StringSink();
  await dumpPool(dir, new XmlDumpWriter(sink));
  return sink.text;
}

function readBlock(path: string, blockNr: number): Buffer {
  const buffer = Buffer.alloc(METADATA_BLOCK_SIZE_BYTES);
  const fd = openSync(path, 'r');
  try {
    readSync(fd, buffer, 0, METADATA_BLOCK_SIZE_BYTES, blockNr * METADATA_BLOCK_SIZE_BYTES);
  } finally {
    closeSync(fd);
  }
  return buffer;
}

test('unpack gives back every live metadata block bit for bit, a pool that checks clean and dumps the same', async () => {
  const scratch = new Scratch();
  try {
    const dir = scratch.path('pool');
    await busyPool(dir, 1);
    const image = scratch.path('pool.pack');
    const progress: Array<[number, number]> = [];
    const packed = await packMetadata(dir, image, { onProgress: (done, total) => progress.push([done, total]) });
    assert.deepEqual(progress.at(-1), [packed.liveBlockCount, packed.liveBlockCount], 'the progress bar ends at the live block count');
    assert.ok(progress.every(([done, total]) => done <= total), JSON.stringify(progress));
    const copy = scratch.path('copy');
    const unpacked = await unpackMetadata(image, copy, { dataPath: `${dir}/data` });
    assert.equal(unpacked.liveBlockCount, packed.liveBlockCount);
    assert.equal(unpacked.data, 'linked');

    const view = await PoolView.open(dir);
    const live: number[] = [];
    try {
      for (let blockNr = 0; blockNr < view.tm.metadataBlockCount; blockNr += 1) if (view.tm.refCount(blockNr) > 0) live.push(blockNr);
    } finally {
      await view.close();
    }
    assert.equal(live.length, packed.liveBlockCount);
    for (const blockNr of live) {
      assert.ok(readBlock(`${dir}/metadata`, blockNr).equals(readBlock(`${copy}/metadata`, blockNr)), `metadata block ${blockNr}`);
    }
    assert.deepEqual((await checkPool(copy)).problems, []);
    assert.equal(await dumpText(copy), await dumpText(dir));

    // At least ten times smaller than the metadata file, counting only the bytes it occupies on disk.
    const occupiedBytes = statSync(`${dir}/metadata`).blocks * 512;
    assert.ok(packed.packedBytes * 10 <= occupiedBytes, `packed ${packed.packedBytes} bytes, metadata occupies ${occupiedBytes}`);
    assert.equal(packed.packedBytes, statSync(image).size);
  } finally {
    scratch.remove();
  }
});

test('unpack without data creates a sparse data file of the packed size; a directory holding metadata is refused', async () => {
  const scratch = new Scratch();
  try {
    const dir = scratch.path('pool');
    await busyPool(dir, 2);
    const image = scratch.path('pool.pack');
    await packMetadata(dir, image);
    const copy = scratch.path('copy');
    assert.equal((await unpackMetadata(image, copy)).data, 'created');
    assert.equal(statSync(`${copy}/data`).size, statSync(`${dir}/data`).size);
    await assert.rejects(unpackMetadata(image, copy), { code: 'THIN_EXISTS' });
    await assert.rejects(packMetadata(dir, image), { code: 'THIN_EXISTS', message: `Cannot create ${image}: it already exists (thinbd does not overwrite it; remove it or name another file)` });
  } finally {
    scratch.remove();
  }
});

test('a damaged image is refused and leaves no metadata, no data file and no directory behind', async () => {
  const scratch = new Scratch();
  try {
    const dir = scratch.path('pool');
    await busyPool(dir, 3);
    const image = scratch.path('pool.pack');
    await packMetadata(dir, image);
    const bytes = readFileSync(image);
    const damaged: Array<[string, Buffer, RegExp]> = [
      ['truncated', bytes.subarray(0, Math.floor(bytes.length / 2)), /damaged or cut short|ends before its trailer/],
      // A flip inside the deflate data is not always damage: a back reference to a different run of
      // zeros decodes to the same bytes. A flip in the stream's Adler-32 always is.
      ['a flipped checksum byte', Buffer.concat([bytes.subarray(0, bytes.length - 1), Buffer.from([bytes[bytes.length - 1]! ^ 0x40])]), /damaged or cut short: incorrect data check/],
      ['bad magic', Buffer.concat([Buffer.from('NOTAPACK'), bytes.subarray(8)]), /not a thinbd metadata pack/],
      ['a header only', bytes.subarray(0, 20), /shorter than the pack header/],
      // F-PACK-4: the inflater stops at the end of its stream; what follows must not pass unseen.
      ['a byte after the compressed records', Buffer.concat([bytes, Buffer.from([0x78])]), /^unpack: .*: 1 byte\(s\) follow the compressed records$/],
      // A header whose data size the packed superblock disagrees with would make a data file the pool refuses.
      ['a data size of 0 in the header', Buffer.concat([bytes.subarray(0, 24), Buffer.alloc(8), bytes.subarray(32)]), /^unpack: .*: the header records 0 bytes of data, the packed pool \d+$/],
    ];
    for (const [what, content, reason] of damaged) {
      const path = scratch.path(`${what}.pack`);
      writeFileSync(path, content);
      const target = scratch.path(`copy-${what}`);
      await assert.rejects(unpackMetadata(path, target), (error: unknown) => {
        assert.ok(isThinError(error, 'THIN_INVALID'), `${what}: ${String(error)}`);
        assert.match(error.message, reason, what);
        return true;
      });
      assert.equal(existsSync(target), false, `${what}: the directory is gone`);
    }
  } finally {
    scratch.remove();
  }
});
