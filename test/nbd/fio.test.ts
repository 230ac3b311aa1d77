// fio's nbd engine (libnbd) writes with crc32c verification from several jobs at once, one
// connection each, many requests in flight per connection, with periodic FLUSHes; then reads
// everything back and checks every block's checksum.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { requireTools, run, startServer } from './helpers.ts';
import { MemoryExport } from './memory-export.ts';

const MiB = 1024 * 1024;

requireTools('fio');
const disk = new MemoryExport({ name: 'disk', sizeBytes: 128 * MiB });
const running = await startServer([disk]);
after(() => running.close());

interface FioJob {
  error: number;
  write: { io_bytes: number; total_ios: number };
  read: { io_bytes: number };
}

test('fio writes and verifies crc32c from 4 jobs on 4 connections at queue depth 16', async () => {
  let connectionsMax = 0;
  const sampler = setInterval(() => (connectionsMax = Math.max(connectionsMax, running.server.connectionCount)), 5);
  const flushesBefore = disk.counts.flush;
  const started = Date.now();
  const { stdout } = await run('fio', [
    '--name=verify',
    '--ioengine=nbd',
    `--uri=${running.uri('disk')}`,
    '--rw=randwrite',
    '--bsrange=4k-64k',
    '--iodepth=16',
    '--numjobs=4',
    '--size=24m',
    '--offset_increment=32m',
    '--fsync=64',
    '--verify=crc32c',
    '--verify_fatal=1',
    '--do_verify=1',
    // Otherwise fio leaves a local-verify-N-verify.state file per job in the working directory.
    '--verify_state_save=0',
    '--output-format=json',
  ], { timeoutMs: 120_000 });
  clearInterval(sampler);
  const elapsedMs = Date.now() - started;
  const report = JSON.parse(stdout.slice(stdout.indexOf('{'))) as { jobs: FioJob[] };
  assert.equal(report.jobs.length, 4);
  for (const job of report.jobs) {
    assert.equal(job.error, 0);
    assert.equal(job.write.io_bytes, 24 * MiB);
    assert.equal(job.read.io_bytes, 24 * MiB, 'the verify pass read everything back');
  }
  assert.ok(connectionsMax >= 4, `saw ${connectionsMax} connections at once`);
  assert.ok(disk.counts.flush > flushesBefore, 'fsync=64 sent FLUSHes');
  console.log(`fio: 4 jobs x 24 MiB written and verified in ${elapsedMs} ms`);
});
