// The package's front door for library users: `import { Pool } from 'thinbd'` works from the
// built package (dist/, what npm installs) and a volume written through it reads back.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

test('the built package exports Pool, and a snapshot keeps what was written before it', async () => {
  const thinbd = await import('thinbd');
  const dir = mkdtempSync(join(tmpdir(), 'thinbd-index-'));
  try {
    const pool = await thinbd.Pool.create(join(dir, 'pool'), { dataSizeBytes: 64 * 2 ** 20, blockSizeBytes: 65536 });
    const volume = await pool.createVolume('vm1', { sizeBytes: 2 ** 20 });
    await volume.write(4096, new Uint8Array(4096).fill(7));
    await pool.snapshot('vm1', 'vm1-snap', { readOnly: true });
    await volume.write(4096, new Uint8Array(4096).fill(9));
    await pool.flush();
    const snapshotBytes = new Uint8Array(4096);
    await pool.volume('vm1-snap').read(4096, snapshotBytes);
    assert.ok(snapshotBytes.every((byte) => byte === 7));
    await pool.close();
    const report = await thinbd.checkPool(join(dir, 'pool'));
    assert.equal(report.ok, true, JSON.stringify(report.problems));
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
