// exportRaw: a volume to a raw file (holes stay holes) or to a stream (holes as zeros).
import { after, test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { openSync, readSync, closeSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { PassThrough } from 'node:stream';
import { Pool } from '../../src/pool/pool.ts';
import { exportRaw } from '../../src/tools/transfer.ts';
import { tempDir } from '../archive/helpers.ts';

const MiB = 1024 * 1024;
const GiB = 1024 * MiB;
const dir = tempDir('tools-transfer');
after(() => dir.remove());

/** Bytes that differ in every 4 KiB, so a chunk written from the wrong buffer shows. */
function pattern(lengthBytes: number, seed: number): Uint8Array {
  const bytes = new Uint8Array(lengthBytes);
  const view = new DataView(bytes.buffer);
  for (let at = 0; at < lengthBytes; at += 4) view.setUint32(at, Math.imul(at + 1, 2654435761) ^ seed);
  return bytes;
}

async function sparseVolume(name: string, sizeBytes: number, pieces: Array<[number, Uint8Array]>) {
  const pool = await Pool.create(join(dir.path, name), { dataSizeBytes: 256 * MiB, blockSizeBytes: 64 * 1024, commitIntervalMs: 0 });
  const volume = await pool.createVolume('v', { sizeBytes });
  for (const [offset, bytes] of pieces) await volume.write(offset, bytes);
  return { pool, volume };
}

function readAt(path: string, offset: number, length: number): Uint8Array {
  const fd = openSync(path, 'r');
  try {
    const bytes = new Uint8Array(length);
    assert.equal(readSync(fd, bytes, 0, length, offset), length);
    return bytes;
  } finally {
    closeSync(fd);
  }
}

test('into a file, a hole of any length is passed over in one step and stays a hole; the mapped bytes are exact', async () => {
  const a = pattern(3 * MiB + 4096, 1);
  const b = pattern(2 * MiB, 2);
  const { pool, volume } = await sparseVolume('file', 64 * GiB, [[0, a], [40 * GiB + 65536, b]]);
  try {
    const path = join(dir.path, 'v.raw');
    const steps: number[] = [];
    const result = await exportRaw(volume, { path }, (done) => steps.push(done));
    assert.equal(statSync(path).size, 64 * GiB);
    assert.ok(statSync(path).blocks * 512 < 16 * MiB, `the file is sparse (${statSync(path).blocks * 512} bytes allocated)`);
    // The mapped ranges, in 1 MiB chunks, and one step per hole: 62 GiB of holes were 63,000 steps.
    assert.ok(steps.length < 20, `${steps.length} progress steps`);
    assert.equal(steps[steps.length - 1], 64 * GiB);
    assert.deepEqual(readAt(path, 0, a.length), a);
    assert.deepEqual(readAt(path, 40 * GiB + 65536, b.length), b);
    assert.deepEqual(readAt(path, 20 * GiB, 4096), new Uint8Array(4096));
    assert.equal(result.bytesWritten, 3 * MiB + 64 * 1024 + 2 * MiB, 'the mapped blocks, no holes');
  } finally {
    await pool.close();
  }
});

test('into a stream, holes are zeros and every mapped chunk keeps its own bytes while the stream queues them', async () => {
  const a = pattern(5 * MiB, 3);
  const { pool, volume } = await sparseVolume('stream', 12 * MiB, [[MiB, a], [9 * MiB, pattern(MiB, 4)]]);
  try {
    const wanted = new Uint8Array(12 * MiB);
    wanted.set(a, MiB);
    wanted.set(pattern(MiB, 4), 9 * MiB);
    // A stream that queues: nothing is read from it until the export has written everything.
    const stream = new PassThrough({ highWaterMark: 64 * MiB });
    const result = await exportRaw(volume, { stream });
    stream.end();
    const hash = createHash('sha256');
    for await (const chunk of stream) hash.update(chunk as Buffer);
    assert.equal(hash.digest('hex'), createHash('sha256').update(wanted).digest('hex'));
    assert.equal(result.bytesWritten, 12 * MiB);
  } finally {
    await pool.close();
  }
});
