// src/util/native.ts: koffi and @node-rs/crc32 work as their packages' loaders give them, and are
// taken from the prebuilt binaries npm installed for this platform, not through those loaders.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createRequire } from 'node:module';
import { loadCrc32, loadKoffi } from '../../src/util/native.ts';

const require = createRequire(import.meta.url);

/** The directory of package `name` when npm installed it here, else undefined. */
function installed(name: string): string | undefined {
  try {
    return require.resolve(`${name}/package.json`).replace(/\/package\.json$/, '');
  } catch {
    return undefined;
  }
}

test('koffi calls libc as the package loaded through its own loader does', () => {
  const koffi = loadKoffi();
  const getpid = koffi.load('libc.so.6').func('int getpid()') as () => number;
  assert.equal(getpid(), process.pid);
  assert.equal(loadKoffi(), koffi, 'one module, loaded once');
});

test('crc32c and crc32 give the check values of their specifications', () => {
  const { crc32, crc32c } = loadCrc32();
  // The CRC catalogue's "check" value: the CRC of the ASCII bytes "123456789".
  assert.equal(crc32c(Buffer.from('123456789')) >>> 0, 0xe3069283);
  assert.equal(crc32(Buffer.from('123456789')) >>> 0, 0xcbf43926);
});

test('on Linux the prebuilt binaries are loaded directly, and the packages\' loaders are not run', () => {
  loadKoffi();
  loadCrc32();
  const loaded = Object.keys(require.cache);
  const koffiPlatform = installed(`@koromix/koffi-linux-${process.arch}`);
  const crc32Platform = installed(`@node-rs/crc32-linux-${process.arch}-gnu`);
  assert.equal(process.platform, 'linux', 'thinbd runs on Linux');
  assert.ok(koffiPlatform !== undefined && crc32Platform !== undefined, 'npm installs the platform packages of both add-ons on Linux');
  assert.ok(loaded.includes(`${koffiPlatform}/linux_${process.arch}/koffi.node`), 'koffi from its prebuilt binary');
  assert.ok(loaded.some((path) => path.startsWith(`${crc32Platform}/`) && path.endsWith('.node')), 'crc32 from its prebuilt binary');
  assert.deepEqual(
    loaded.filter((path) => /\/node_modules\/(koffi|@node-rs\/crc32)\//.test(path)),
    [],
    'neither package\'s own loader ran',
  );
});
