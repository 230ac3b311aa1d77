// The two native add-ons most commands load, koffi (libc calls: flock for the pool lock, preadv2,
// fallocate) and @node-rs/crc32 (metadata block checksums), taken straight from the prebuilt
// binary npm installs for this platform.
//
// Each package's own loader finds that same binary in JavaScript: koffi's resolves its package's
// export map (which loads Node's ES module resolver), compiles three files and reads the ELF
// header of Node's executable to tell glibc from musl; @node-rs/crc32's reads /usr/bin/ldd for
// the same reason and requires a file that is not there first. That was 4.5 of koffi's 5.3 ms and
// 1.6 of crc32's 2.4 ms, together a tenth of a short command such as `thinbd dump`
// (docs/benchmarks.md, "Command start-up"). The binary is the glibc one: thinbd calls glibc's
// libc.so.6 through koffi in any case. On another platform, or when that binary is not installed
// or does not load, the package's own loader decides, as it did before.
import { createRequire } from 'node:module';
import type koffiModule from 'koffi';
import type * as crc32Module from '@node-rs/crc32';

const require = createRequire(import.meta.url);

/**
 * The module of prebuilt binary `binary` (a package path) on Linux when it loads and has
 * `names` as functions, else the package `fallback` through its own loader.
 */
function prebuiltOr<T>(binary: string, names: readonly string[], fallback: string): T {
  if (process.platform === 'linux') {
    try {
      const loaded = require(binary) as Record<string, unknown>;
      if (names.every((name) => typeof loaded[name] === 'function')) return loaded as T;
    } catch {
      // Not installed where npm puts it for this platform, or not loadable here.
    }
  }
  return require(fallback) as T;
}

/** koffi, as `import koffi from 'koffi'` gives it (what its loader exports is the binary's object). */
export function loadKoffi(): typeof koffiModule {
  const arch = process.arch;
  return prebuiltOr(`@koromix/koffi-linux-${arch}/linux_${arch}/koffi.node`, ['load', 'struct', 'errno'], 'koffi');
}

/** @node-rs/crc32's functions. */
export function loadCrc32(): typeof crc32Module {
  return prebuiltOr(`@node-rs/crc32-linux-${process.arch}-gnu`, ['crc32', 'crc32c'], '@node-rs/crc32');
}
