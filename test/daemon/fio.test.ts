// fio's nbd engine against the real server and pool: 4 jobs on 4 connections write with crc32c
// verification into a volume and into a snapshot of a snapshot, with FLUSHes; all pass
// verification, a read-only snapshot taken between keeps exactly its contents, and check is clean.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { requireTools, run } from '../nbd/helpers.ts';
import { thinbd } from '../cli/run-thinbd.ts';
import { startServe, type ServeProcess } from './serve-process.ts';

requireTools('fio');
const MiB = 1024 * 1024;
let work: string;
let pool: string;
let server: ServeProcess;

before(async () => {
  work = mkdtempSync(join(tmpdir(), 'thinbd-fio-'));
  pool = join(work, 'pool');
  assert.equal(thinbd(['pool', 'create', '--pool', pool, '--data-size', '1G']).code, 0);
  assert.equal(thinbd(['create', '--pool', pool, 'disk', '--size', '128M']).code, 0);
  server = await startServe(pool);
});
after(async () => {
  await server?.stop();
  rmSync(work, { recursive: true, force: true });
});

interface FioJob {
  error: number;
  write: { io_bytes: number };
  read: { io_bytes: number };
}

async function fioVerify(exportName: string, seed: number): Promise<void> {
  const { stdout } = await run('fio', [
    '--name=verify', '--ioengine=nbd', `--uri=${server.uri(exportName)}`,
    '--rw=randwrite', '--bsrange=4k-64k', '--iodepth=16', '--numjobs=4', '--size=16m', '--offset_increment=32m',
    '--fsync=64', '--verify=crc32c', '--verify_fatal=1', '--do_verify=1', '--verify_state_save=0',
    `--randseed=${seed}`, '--output-format=json',
  ], { timeoutMs: 180_000 });
  const report = JSON.parse(stdout.slice(stdout.indexOf('{'))) as { jobs: FioJob[] };
  assert.equal(report.jobs.length, 4);
  for (const job of report.jobs) {
    assert.equal(job.error, 0);
    assert.equal(job.write.io_bytes, 16 * MiB);
    assert.equal(job.read.io_bytes, 16 * MiB, 'the verify pass read everything back');
  }
}

test('fio verifies crc32c on a volume and a snapshot of its snapshot over 4 connections each; the snapshot between is unchanged; check is clean', async () => {
  await fioVerify('disk', 1);
  const before = await run('qemu-img', ['convert', '-f', 'raw', '-O', 'raw', server.uri('disk'), join(work, 'before.raw')]);
  assert.equal(before.code, 0);
  assert.equal(thinbd(['snapshot', '--pool', pool, 'disk', 'frozen', '--read-only']).code, 0);
  assert.equal(thinbd(['snapshot', '--pool', pool, 'frozen', 'scratch']).code, 0);
  await fioVerify('scratch', 2); // a snapshot of a snapshot, written
  await fioVerify('disk', 3); // the origin, written again
  const frozen = await run('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', join(work, 'before.raw'), server.uri('frozen')], { allowFailure: true });
  assert.equal(frozen.code, 0, `the read-only snapshot changed: ${frozen.stdout}`);
  const origin = await run('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', join(work, 'before.raw'), server.uri('disk')], { allowFailure: true });
  assert.equal(origin.code, 1, 'the origin differs after its second fio run');
  const check = thinbd(['check', '--pool', pool]);
  assert.equal(check.code, 0, check.stdout + check.stderr);
});
