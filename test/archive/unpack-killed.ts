// Child of unpack.test.ts: unpacks stream argv[4] of store argv[3] into volume argv[5] of pool
// argv[2], and kills itself (SIGKILL) once the first window is written and committed: what a kill
// in the middle of an unpack leaves on disk.
import { Pool } from '../../src/pool/pool.ts';
import { unpackVolume } from '../../src/archive/commands.ts';

const [dir, store, stream, volume] = process.argv.slice(2) as [string, string, string, string];
const pool = await Pool.open(dir, { commitIntervalMs: 0 });
await unpackVolume({
  store,
  pool,
  stream,
  volume,
  onProgress: () => {
    void pool.flush().then(() => process.kill(process.pid, 'SIGKILL'));
  },
});
process.exit(3); // the unpack ended before the kill: the test says so
