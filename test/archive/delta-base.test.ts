// `pack --delta-from` when the base stream is damaged: the error names the base's segment and says
// that a full pack does not read the base stream, and a full pack then works. A damaged stream that
// is not the base does not stop it, and chunks of the base that the store lost are read again.
import { after, test } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { Archive } from '../../src/archive/archive.ts';
import { packVolume, unpackVolume, verifyArchive } from '../../src/archive/commands.ts';
import { packKey, streamKey } from '../../src/archive/format.ts';
import { poolSources } from '../../src/archive/source.ts';
import { isThinError } from '../../src/errors.ts';
import { MiB, contentBytes, createPool, digest, readVolume, tempDir } from './helpers.ts';

const dir = tempDir('archive-delta-base');

after(() => dir.remove());

test('a base stream whose segment is missing: --delta-from says a full pack does not read it, and a full pack works', async () => {
  const pool = await createPool(join(dir.path, 'pool'));
  try {
    const store = join(dir.path, 'store');
    await (await Archive.init(store, { averageChunkBytes: 16 * 1024, zstdLevel: 3 })).close();
    const volume = await pool.createVolume('vol', { sizeBytes: 4 * MiB });
    await volume.write(0, contentBytes(2 * MiB, 1));
    await pool.snapshot('vol', 'vol.0', { readOnly: true });
    await packVolume({ store, sources: poolSources(pool), volume: 'vol.0', name: 's0' });
    await volume.write(MiB, contentBytes(MiB, 2));
    await pool.snapshot('vol', 'vol.1', { readOnly: true });

    // Delete the pack that holds s0's first segment.
    const archive = await Archive.open(store);
    try {
      const root = await archive.readStream('s0');
      const location = (await archive.loadIndex()).index.get(root.segments[0]!.hash)!;
      await archive.store.delete(packKey(location.packId));
    } finally {
      await archive.close();
    }

    await assert.rejects(
      packVolume({ store, sources: poolSources(pool), volume: 'vol.1', name: 's1', deltaFrom: 'vol.0' }),
      (error: Error) =>
        isThinError(error, 'THIN_CORRUPT_ARCHIVE') &&
        /^--delta-from: stream s0, segment 0 \(chunk [0-9a-f]{64}\): missing from the store \(no pack holds it\); a full pack \(without --delta-from\) does not read stream s0$/.test(error.message),
    );
    await packVolume({ store, sources: poolSources(pool), volume: 'vol.1', name: 's1' });
    await unpackVolume({ store, pool, stream: 's1', volume: 'restored' });
    assert.equal(digest(await readVolume(pool, 'restored')), digest(await readVolume(pool, 'vol.1')));
  } finally {
    await pool.close();
  }
});

test('a damaged stream root that is not the base does not stop --delta-from; with no intact base the error names it', async () => {
  const pool = await createPool(join(dir.path, 'pool-damaged-root'));
  try {
    const store = join(dir.path, 'store-damaged-root');
    await (await Archive.init(store, { averageChunkBytes: 16 * 1024, zstdLevel: 3 })).close();
    const volume = await pool.createVolume('vol', { sizeBytes: 4 * MiB });
    await volume.write(0, contentBytes(2 * MiB, 3));
    await pool.snapshot('vol', 'vol.0', { readOnly: true });
    await packVolume({ store, sources: poolSources(pool), volume: 'vol.0', name: 's0' });
    await packVolume({ store, sources: poolSources(pool), volume: 'vol', name: 'other' });
    await volume.write(MiB, contentBytes(MiB, 4));
    await pool.snapshot('vol', 'vol.1', { readOnly: true });
    const archive = await Archive.open(store);
    try {
      const root = await archive.store.get(streamKey('other'));
      await archive.store.delete(streamKey('other'));
      await archive.store.put(streamKey('other'), root.subarray(0, 100));
    } finally {
      await archive.close();
    }

    const packed = await packVolume({ store, sources: poolSources(pool), volume: 'vol.1', name: 's1', deltaFrom: 'vol.0' });
    assert.equal(packed.parent, 's0');
    assert.ok(packed.bytesRead < 2 * MiB, `read ${packed.bytesRead} bytes: the unchanged blocks came from s0`);
    await unpackVolume({ store, pool, stream: 's1', volume: 'restored' });
    assert.equal(digest(await readVolume(pool, 'restored')), digest(await readVolume(pool, 'vol.1')));

    await pool.snapshot('vol', 'vol.2', { readOnly: true });
    await assert.rejects(
      packVolume({ store, sources: poolSources(pool), volume: 'vol', name: 's2', deltaFrom: 'vol.2' }),
      (error: Error) => isThinError(error, 'THIN_NOT_FOUND') && /no stream in .* was packed from this volume; pack it first \(stream other is damaged: 'thinbd archive verify' names it\)$/.test(error.message),
    );
  } finally {
    await pool.close();
  }
});

test('a base stream whose data chunks are missing: --delta-from reads those bytes again, and the new stream is whole', async () => {
  const pool = await createPool(join(dir.path, 'pool-lost-chunks'));
  try {
    const store = join(dir.path, 'store-lost-chunks');
    await (await Archive.init(store, { averageChunkBytes: 16 * 1024, zstdLevel: 3 })).close();
    const volume = await pool.createVolume('vol', { sizeBytes: 64 * MiB });
    await volume.write(0, contentBytes(48 * MiB, 5)); // two packs at least
    await pool.snapshot('vol', 'vol.0', { readOnly: true });
    await packVolume({ store, sources: poolSources(pool), volume: 'vol.0', name: 's0' });
    await volume.write(MiB, contentBytes(MiB, 6));
    await pool.snapshot('vol', 'vol.1', { readOnly: true });

    // Delete a pack of s0's data (not the one that holds its segment).
    const archive = await Archive.open(store);
    let lostBytes = 0;
    try {
      const loaded = await archive.loadIndex();
      const segmentPack = loaded.index.get((await archive.readStream('s0')).segments[0]!.hash)!.packId;
      const lost = [...loaded.packSizes.keys()].find((packId) => packId !== segmentPack)!;
      for (const { location } of loaded.index.entries()) if (location.packId === lost) lostBytes += location.rawBytes;
      await archive.store.delete(packKey(lost));
    } finally {
      await archive.close();
    }
    assert.ok(lostBytes > 0);

    const packed = await packVolume({ store, sources: poolSources(pool), volume: 'vol.1', name: 's1', deltaFrom: 'vol.0' });
    assert.ok(packed.bytesRead >= lostBytes, `read ${packed.bytesRead} bytes, at least the ${lostBytes} the store lost`);
    const report = await verifyArchive({ store, stream: 's1' });
    assert.deepEqual(report.problems, []);
    await unpackVolume({ store, pool, stream: 's1', volume: 'restored' });
    assert.equal(digest(await readVolume(pool, 'restored')), digest(await readVolume(pool, 'vol.1')));
  } finally {
    await pool.close();
  }
});
