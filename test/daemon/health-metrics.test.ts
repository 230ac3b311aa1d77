// The failing-disk health in `thinbd serve --metrics` (thinbd_device_*): scraped from the real
// server with `--inject`, before and after fio writes over a data block that refuses writes. The
// figures must agree with `thinbd pool status` (the same health) and move the way the fault says:
// write errors on the data file, one bad range, the block moved, degraded, latency counted.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { PoolStatus } from '../../src/pool/pool.ts';
import { requireTools, run } from '../nbd/helpers.ts';
import { thinbd } from '../cli/run-thinbd.ts';
import { startServe, type ServeProcess } from './serve-process.ts';

requireTools('fio');
const SECTORS_PER_BLOCK = (64 * 1024) / 512;
let work: string;
let pool: string;
let server: ServeProcess;
let metricsUrl: string;

before(async () => {
  work = mkdtempSync(join(tmpdir(), 'thinbd-health-metrics-'));
  pool = join(work, 'pool');
  assert.equal(thinbd(['pool', 'create', '--pool', pool, '--data-size', '64M', '--block-size', '64K']).code, 0);
  assert.equal(thinbd(['create', '--pool', pool, 'disk', '--size', '16M']).code, 0);
  // Data block 2 refuses writes at three of its sectors: the write that first lands there is moved.
  const rules = { rules: [{ file: 'data', op: 'write', beginSector: 2 * SECTORS_PER_BLOCK + 5, sectorCount: 3 }] };
  writeFileSync(join(work, 'rules.json'), JSON.stringify(rules));
  server = await startServe(pool, ['--metrics', '127.0.0.1:0', '--inject', join(work, 'rules.json')]);
  // The metrics line follows the ready line, maybe in a later chunk of output.
  metricsUrl = (await server.waitForOutput(/Metrics on (http:\/\/127\.0\.0\.1:\d+\/metrics)/))[1]!;
});
after(async () => {
  await server?.stop();
  rmSync(work, { recursive: true, force: true });
});

interface Scrape {
  samples: Map<string, number>;
  types: Map<string, string>;
}

async function scrape(): Promise<Scrape> {
  const response = await fetch(metricsUrl);
  assert.equal(response.status, 200);
  const samples = new Map<string, number>();
  const types = new Map<string, string>();
  for (const line of (await response.text()).split('\n')) {
    const type = /^# TYPE (\S+) (\S+)$/.exec(line);
    if (type !== null) types.set(type[1]!, type[2]!);
    if (line === '' || line.startsWith('#')) continue;
    const space = line.lastIndexOf(' ');
    samples.set(line.slice(0, space), Number(line.slice(space + 1)));
  }
  return { samples, types };
}

function sample(scraped: Scrape, name: string, labels: Record<string, string>): number {
  const key = `${name}{${Object.entries({ pool, ...labels }).map(([label, value]) => `${label}="${value}"`).join(',')}}`;
  const value = scraped.samples.get(key);
  assert.notEqual(value, undefined, `${key} is exported`);
  return value!;
}

function status(): PoolStatus {
  const result = thinbd(['pool', 'status', '--pool', pool, '--json']);
  assert.equal(result.code, 0, result.stderr);
  return JSON.parse(result.stdout) as PoolStatus;
}

/** The health figures of one device as scraped, beside pool status's. */
function assertAgrees(scraped: Scrape, health: PoolStatus['health'], blockSizeBytes: number): void {
  for (const device of ['data', 'metadata'] as const) {
    const figures = health[device];
    const labels = { device };
    assert.equal(sample(scraped, 'thinbd_device_bad_ranges', labels), figures.badRanges, `${device} bad ranges`);
    assert.equal(sample(scraped, 'thinbd_device_bad_sectors', labels), figures.badSectors, `${device} bad sectors`);
    assert.equal(sample(scraped, 'thinbd_device_remapped_blocks', labels), figures.remappedBlocks, `${device} remapped blocks`);
    for (const op of ['read', 'write', 'sync'] as const) {
      assert.equal(sample(scraped, 'thinbd_device_io_errors_total', { device, op }), figures.ioErrors[op], `${device} ${op} errors`);
    }
    const level = { ok: 0, degraded: 1, failing: 2 }[figures.state];
    assert.equal(sample(scraped, 'thinbd_device_health_level', labels), level, `${device} health level (${figures.rule})`);
    for (const state of ['ok', 'degraded', 'failing']) {
      assert.equal(sample(scraped, 'thinbd_device_health', { device, state }), figures.state === state ? 1 : 0, `${device} health ${state}`);
    }
  }
  assert.equal(sample(scraped, 'thinbd_device_spare_bytes', { device: 'data' }), health.data.spareBlocks * blockSizeBytes);
  assert.equal(sample(scraped, 'thinbd_device_spare_area_bytes', { device: 'data' }), health.data.spareArea.blocks * blockSizeBytes);
}

test('device health is scraped as pool status reports it, and moves when a data block refuses a write', async () => {
  const first = await scrape();
  const before = status();
  for (const name of ['thinbd_device_io_errors_total', 'thinbd_device_bad_ranges', 'thinbd_device_health_level', 'thinbd_device_spare_bytes']) {
    assert.ok(first.types.has(name), `${name} has a TYPE line`);
  }
  assert.equal(first.types.get('thinbd_device_io_latency_seconds'), 'summary');
  assert.equal(before.health.data.state, 'ok');
  assertAgrees(first, before.health, before.blockSizeBytes);

  // 1 MiB of 64 KiB writes from the start: the volume's first blocks take data blocks 0.., and block 2 refuses.
  const { stdout } = await run('fio', [
    '--name=w', '--ioengine=nbd', `--uri=${server.uri('disk')}`, '--rw=write', '--bs=64k', '--size=1m', '--fsync=16', '--output-format=json',
  ], { timeoutMs: 120_000 });
  const report = JSON.parse(stdout.slice(stdout.indexOf('{'))) as { jobs: Array<{ error: number }> };
  assert.equal(report.jobs[0]!.error, 0, 'fio saw no error: the refused write was moved');

  const second = await scrape();
  const after = status();
  assert.equal(after.health.data.state, 'degraded', after.health.data.rule);
  assert.equal(after.health.data.badRanges, 1);
  assert.ok(after.health.data.ioErrors.write >= 1);
  assertAgrees(second, after.health, after.blockSizeBytes);
  assert.ok(sample(second, 'thinbd_device_io_errors_total', { device: 'data', op: 'write' }) > sample(first, 'thinbd_device_io_errors_total', { device: 'data', op: 'write' }));
  assert.equal(sample(second, 'thinbd_device_health', { device: 'metadata', state: 'ok' }), 1, 'the metadata file stays healthy');
  // Latency: the writes and syncs fio caused are counted, and the summary holds together.
  for (const op of ['write', 'sync'] as const) {
    const labels = { device: 'data', op };
    const count = sample(second, 'thinbd_device_io_latency_seconds_count', labels);
    assert.ok(count > sample(first, 'thinbd_device_io_latency_seconds_count', labels), `data ${op}s are counted`);
    const p95 = sample(second, 'thinbd_device_io_latency_seconds', { ...labels, quantile: '0.95' });
    const p99 = sample(second, 'thinbd_device_io_latency_seconds', { ...labels, quantile: '0.99' });
    const min = sample(second, 'thinbd_device_io_latency_min_seconds', labels);
    const max = sample(second, 'thinbd_device_io_latency_max_seconds', labels);
    const average = sample(second, 'thinbd_device_io_latency_seconds_sum', labels) / count;
    assert.ok(min > 0 && min <= average && average <= max && p95 <= p99 && p99 <= max * 1.05, `data ${op} latency: min ${min} avg ${average} p95 ${p95} p99 ${p99} max ${max}`);
    assert.ok(sample(second, 'thinbd_device_io_latency_stddev_seconds', labels) >= 0);
  }
});
