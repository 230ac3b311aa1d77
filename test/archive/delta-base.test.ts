// `pack --delta-from` when the base stream is damaged: the error names the base's segment and says
// that a full pack does not read the base stream, and a full pack then works.
import { after, test } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { Archive } from '../../src/archive/archive.ts';
import { packVolume, unpackVolume } from '../../src/archive/commands.ts';
import { packKey } from '../../src/archive/format.ts';
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
