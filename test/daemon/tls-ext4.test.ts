// A kernel filesystem on a volume served only over TLS: `thinbd serve --tls require --tls-psk`,
// nbdfuse reaching it through nbdkit's nbd plugin as the TLS client (nbdfuse itself refuses
// libnbd's key-file parameter), a loop device, ext4 made, filled, unmounted, e2fsck clean, and
// mounted again with every file unchanged.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { thinbd } from '../cli/run-thinbd.ts';
import { requireTools } from '../nbd/helpers.ts';
import { BLOCK_DEVICE_TOOLS, ext4RoundTrip, withNbdDevice } from '../nbd/block-device.ts';
import { makePsk } from '../nbd/tls-credentials.ts';
import { startServe, type ServeProcess } from './serve-process.ts';

const MiB = 1024 * 1024;
requireTools(...BLOCK_DEVICE_TOOLS, 'nbdkit', 'psktool');
let work: string;
let pool: string;
let psk: string;
let server: ServeProcess;

before(async () => {
  work = mkdtempSync(join(tmpdir(), 'thinbd-tls-ext4-'));
  pool = join(work, 'pool');
  assert.equal(thinbd(['pool', 'create', '--pool', pool, '--data-size', '512M']).code, 0);
  assert.equal(thinbd(['create', '--pool', pool, 'fs', '--size', '128M']).code, 0);
  psk = makePsk(join(work, 'keys.psk'), 'alice');
  server = await startServe(pool, ['--tls', 'require', '--tls-psk', psk]);
});
after(async () => {
  await server?.stop();
  rmSync(work, { recursive: true, force: true });
});

test('ext4 on a TLS-only volume: mkfs, mount, write, unmount, e2fsck clean, remount, checksums match', async () => {
  const throughNbdkit = [
    '--command', 'nbdkit', '-s', '--exit-with-parent', 'nbd',
    'hostname=127.0.0.1', `port=${server.port}`, 'export=fs', 'tls=require', `tls-psk=${psk}`, 'tls-username=alice',
  ];
  const files = [1, 4096, 65537, 3 * MiB + 17].map((sizeBytes, index) => ({ name: `file-${index}`, sizeBytes }));
  await withNbdDevice(throughNbdkit, { sizeBytes: 128 * MiB }, (device) => ext4RoundTrip(device, files, 500));
  assert.match(server.output(), /"event":"nbd\.tls_established".*PSK identity alice/);
});
