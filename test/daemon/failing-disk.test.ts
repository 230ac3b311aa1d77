// The real server on failing disks (`thinbd serve --inject`, io/fault-injection.ts): sectors of the
// data file start refusing writes while fio writes with crc32c verification over NBD and while an
// ext4 filesystem on nbdfuse + a loop device is filled; one metadata copy fails reads and writes.
// fio verifies every byte, ext4 mounts and fscks clean with its files, `pool status` shows the
// remaps and bad ranges, and after the server stops the pool checks clean, keeps its bad ranges,
// and a scrub finds nothing more.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { METADATA_BLOCK_COUNT_MIN } from '../../src/constants.ts';
import type { PoolStatus } from '../../src/pool/pool.ts';
import type { ScrubReport } from '../../src/pool/pool.ts';
import { requireTools, run } from '../nbd/helpers.ts';
import { BLOCK_DEVICE_TOOLS, ext4RoundTrip, withNbdDevice } from '../nbd/block-device.ts';
import { thinbd } from '../cli/run-thinbd.ts';
import { startServe, type ServeProcess } from './serve-process.ts';

requireTools('fio', ...BLOCK_DEVICE_TOOLS);

const MiB = 1024 * 1024;
const FS_BYTES = 128 * MiB;
const METADATA_BLOCKS = 65_536; // --metadata-size 256M: the mirror starts at this block
let work: string;
let pool: string;
let server: ServeProcess;

/** Scattered write-refusing runs of 8 sectors over the first 192 MiB of the data file, live after 2000 I/Os. */
function rules(): object {
  const list: object[] = [];
  let state = 12345;
  const next = (): number => (state = (state * 1103515245 + 12345) % 2 ** 31);
  for (let index = 0; index < 24; index++) {
    const beginSector = (next() % (192 * 2048)) & ~7;
    list.push({ file: 'data', op: 'write', beginSector, sectorCount: 8, afterIos: 2000 });
  }
  // One copy of each metadata block at a time: the first copy's tree area fails reads until
  // rewritten, the second copy of other blocks refuses writes (recorded as bad metadata ranges).
  // The two areas do not overlap: a block failing in both copies is lost to any mirror (an
  // overlap made the live scrub lose blocks in some runs).
  list.push({ file: 'metadata', op: 'read', beginSector: 65 * 8, endSector: 1000 * 8, healOnWrite: true });
  list.push({ file: 'metadata', op: 'write', beginSector: (METADATA_BLOCKS + 1000) * 8, endSector: (METADATA_BLOCKS + 4000) * 8, afterIos: 100 });
  return { rules: list };
}

before(async () => {
  assert.ok(METADATA_BLOCKS >= METADATA_BLOCK_COUNT_MIN);
  work = mkdtempSync(join(tmpdir(), 'thinbd-failing-'));
  pool = join(work, 'pool');
  assert.equal(thinbd(['pool', 'create', '--pool', pool, '--data-size', '1G', '--metadata-size', '256M']).code, 0);
  assert.equal(thinbd(['create', '--pool', pool, 'disk', '--size', '128M']).code, 0);
  assert.equal(thinbd(['create', '--pool', pool, 'fs', '--size', String(FS_BYTES)]).code, 0);
  writeFileSync(join(work, 'rules.json'), JSON.stringify(rules()));
  server = await startServe(pool, ['--inject', join(work, 'rules.json'), '--remap-spares', '16']);
});

after(async () => {
  await server?.stop();
  rmSync(work, { recursive: true, force: true });
});

function status(): PoolStatus {
  const result = thinbd(['pool', 'status', '--pool', pool, '--json']);
  assert.equal(result.code, 0, result.stderr);
  return JSON.parse(result.stdout) as PoolStatus;
}

interface FioJob {
  error: number;
  write: { io_bytes: number };
  read: { io_bytes: number };
}

test('fio verifies every byte over NBD while data sectors go bad under it, and ext4 on the same pool mounts and fscks clean', async (t) => {
  const { stdout } = await run('fio', [
    '--name=verify', '--ioengine=nbd', `--uri=${server.uri('disk')}`,
    '--rw=randwrite', '--bsrange=4k-64k', '--iodepth=16', '--numjobs=4', '--size=24m', '--offset_increment=32m',
    '--fsync=64', '--verify=crc32c', '--verify_fatal=1', '--do_verify=1', '--verify_state_save=0',
    '--randseed=7', '--output-format=json',
  ], { timeoutMs: 300_000 });
  const report = JSON.parse(stdout.slice(stdout.indexOf('{'))) as { jobs: FioJob[] };
  for (const job of report.jobs) {
    assert.equal(job.error, 0);
    assert.equal(job.read.io_bytes, 24 * MiB, 'the verify pass read everything back');
  }

  // ext4 through nbdfuse and a loop device.
  const files = Array.from({ length: 24 }, (_, index) => ({ name: `f${index}`, sizeBytes: [4096, 70_000, 1 * MiB + 7, 3 * MiB][index % 4]! }));
  await withNbdDevice(server.uri('fs'), { sizeBytes: FS_BYTES }, (device) => ext4RoundTrip(device, files, 0));

  const health = status().health;
  assert.ok(health.data.remaps.remaps + health.data.remaps.targetsRefused > 0, `writes were moved off bad sectors: ${JSON.stringify(health.data.remaps)}`);
  assert.ok(health.data.badRanges > 0);
  // Once the data file refused a write, the server keeps free blocks written ahead for its remaps.
  assert.ok(health.data.spareArea.written > 0, `spare blocks were written ahead: ${JSON.stringify(health.data.spareArea)}`);
  assert.notEqual(health.data.state, 'ok');
  assert.ok(health.metadata.mirror!.copyReadErrors > 0, 'metadata reads were served from the other copy');
  assert.ok(health.metadata.badRanges > 0, 'a metadata copy refusing writes is recorded');
  const human = thinbd(['pool', 'status', '--pool', pool]);
  assert.match(human.stdout, /data health: (degraded|failing) \(H-/);
  assert.match(human.stdout, /remapped blocks: \d+/);
  assert.match(human.stdout, /spare area: \d+ block\(s\) written ahead for remaps/);
  // A scrub of the live pool, through the control socket, beside the server's own I/O: every
  // metadata copy that fails is mended from the other, and no block is lost (blocks the pool has
  // not written yet are passed over, test/pool/failing-disks.test.ts).
  const live = thinbd(['scrub', '--pool', pool, '--rate', '1000', '--json']);
  assert.equal(live.code, 0, `${live.stdout}${live.stderr}`);
  const liveReport = JSON.parse(live.stdout) as ScrubReport;
  assert.deepEqual(liveReport.metadata.blocksLost, []);
  assert.deepEqual(liveReport.data.unreadable, [], 'no data place is unreadable: the faults refuse writes only');
  assert.ok(liveReport.data.blocksRead > 0 && liveReport.metadata.blocksRead > 0);
  const dataBadRanges = status().health.data.badRanges;
  t.diagnostic(
    `data: ${health.data.remaps.remaps} in-place writes remapped, ${health.data.remaps.targetsRefused} new blocks passed over, ` +
      `${health.data.badRanges} bad ranges (${health.data.badSectors} sectors), state ${health.data.state}; metadata: ` +
      `${health.metadata.mirror!.copyReadErrors} copy reads failed, ${health.metadata.mirror!.repairs} copies rewritten, ${health.metadata.badRanges} bad ranges, state ${health.metadata.state}`,
  );

  // Stopped: the pool checks clean, its bad ranges are on disk, and a scrub (no faults now) finds nothing unreadable.
  assert.equal(await server.stop(), 0, server.output());
  const check = thinbd(['check', '--pool', pool]);
  assert.equal(check.code, 0, `${check.stdout}${check.stderr}`);
  assert.equal(status().health.data.badRanges, dataBadRanges, 'bad ranges are durable');
  const scrub = thinbd(['scrub', '--pool', pool, '--rate', '1000', '--json']);
  assert.equal(scrub.code, 0, scrub.stderr);
  const scrubbed = JSON.parse(scrub.stdout) as ScrubReport;
  assert.deepEqual(scrubbed.data.unreadable, []);
  assert.deepEqual(scrubbed.metadata.blocksLost, []);
  assert.ok(scrubbed.data.blocksRead > 0);
});
