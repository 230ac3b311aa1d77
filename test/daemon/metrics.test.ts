// `thinbd serve --metrics`: Prometheus text scraped while fio runs, and the counters moved by
// exactly the I/O fio did (requests, bytes, flushes, copy-on-writes after a snapshot).
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { connect, type Socket } from 'node:net';
import { join } from 'node:path';
import { METRICS_CONNECTIONS_MAX } from '../../src/constants.ts';
import { requireTools, run } from '../nbd/helpers.ts';
import { thinbd } from '../cli/run-thinbd.ts';
import { NbdTestClient } from '../nbd/client.ts';
import { NBD_CMD_READ, NBD_CMD_TRIM, NBD_CMD_WRITE, NBD_CMD_WRITE_ZEROES, NBD_EINVAL, NBD_ENOSPC } from '../../src/nbd/protocol.ts';
import { startServe, type ServeProcess } from './serve-process.ts';

requireTools('fio');
const MiB = 1024 * 1024;
let work: string;
let pool: string;
let server: ServeProcess;
let metricsUrl: string;

before(async () => {
  work = mkdtempSync(join(tmpdir(), 'thinbd-metrics-'));
  pool = join(work, 'pool');
  assert.equal(thinbd(['pool', 'create', '--pool', pool, '--data-size', '256M', '--block-size', '64K']).code, 0);
  assert.equal(thinbd(['create', '--pool', pool, 'disk', '--size', '64M']).code, 0);
  server = await startServe(pool, ['--metrics', '127.0.0.1:0']);
  // The metrics line follows the ready line, maybe in a later chunk of output.
  metricsUrl = (await server.waitForOutput(/Metrics on (http:\/\/127\.0\.0\.1:\d+\/metrics)/))[1]!;
});
after(async () => {
  await server?.stop();
  rmSync(work, { recursive: true, force: true });
});

/** Samples of one scrape by `name{labels}` as written (labels in the server's order). */
async function scrape(): Promise<Map<string, number>> {
  const response = await fetch(metricsUrl);
  assert.equal(response.status, 200);
  assert.match(response.headers.get('content-type') ?? '', /^text\/plain; version=0\.0\.4/);
  const samples = new Map<string, number>();
  for (const line of (await response.text()).split('\n')) {
    if (line === '' || line.startsWith('#')) continue;
    const space = line.lastIndexOf(' ');
    samples.set(line.slice(0, space), Number(line.slice(space + 1)));
  }
  return samples;
}

function volumeSample(samples: Map<string, number>, name: string, command: string): number {
  return samples.get(`${name}{pool="${pool}",volume="disk",command="${command}"}`) ?? 0;
}

function poolSample(samples: Map<string, number>, name: string): number {
  const value = samples.get(`${name}{pool="${pool}"}`);
  assert.notEqual(value, undefined, `${name} is exported`);
  return value!;
}

interface FioCounts {
  read: { total_ios: number; io_bytes: number };
  write: { total_ios: number; io_bytes: number };
  sync: { total_ios: number };
}

/** Runs one fio job on the volume; returns what fio says it did. */
async function fio(args: string[]): Promise<FioCounts> {
  const { stdout } = await run('fio', ['--name=m', '--ioengine=nbd', `--uri=${server.uri('disk')}`, '--output-format=json', ...args], { timeoutMs: 180_000 });
  const report = JSON.parse(stdout.slice(stdout.indexOf('{'))) as { jobs: Array<FioCounts & { error: number }> };
  assert.equal(report.jobs[0]!.error, 0);
  return report.jobs[0]!;
}

test('counters scraped during fio only grow, and afterwards moved by exactly the I/O fio did', async () => {
  const base = await scrape();
  let written: FioCounts | undefined;
  const seen: number[] = [];
  let scraping = true;
  const scraper = (async () => {
    while (scraping) {
      seen.push(volumeSample(await scrape(), 'thinbd_volume_requests_total', 'write'));
      await new Promise((resolve) => setTimeout(resolve, 20));
    }
  })();
  try {
    // 8 MiB of 4 KiB random writes, each block once (fio's random map), with FLUSHes.
    written = await fio(['--rw=randwrite', '--bs=4k', '--size=8m', '--iodepth=16', '--fsync=256']);
  } finally {
    scraping = false;
    await scraper;
  }
  assert.ok(seen.length >= 2, `scraped ${seen.length} times during fio`);
  for (let index = 1; index < seen.length; index++) assert.ok(seen[index]! >= seen[index - 1]!, `write count went down: ${seen.join(', ')}`);

  const read = await fio(['--rw=read', '--bs=64k', '--size=4m', '--iodepth=4']);
  const after = await scrape();
  assert.ok(written !== undefined);
  assert.equal(written.write.total_ios, 2048);
  assert.ok(written.sync.total_ios > 0, 'fio flushed');
  const delta = (name: string, command: string) => volumeSample(after, name, command) - volumeSample(base, name, command);
  assert.equal(delta('thinbd_volume_requests_total', 'write'), written.write.total_ios);
  assert.equal(delta('thinbd_volume_bytes_total', 'write'), written.write.io_bytes);
  assert.equal(delta('thinbd_volume_requests_total', 'flush'), written.sync.total_ios);
  assert.equal(delta('thinbd_volume_requests_total', 'read'), read.read.total_ios);
  assert.equal(delta('thinbd_volume_bytes_total', 'read'), read.read.io_bytes);
  assert.equal(read.read.io_bytes, 4 * MiB);
  assert.equal(delta('thinbd_volume_request_errors_total', 'write'), 0);
  assert.equal(delta('thinbd_volume_request_duration_seconds_count', 'write'), 2048);
  assert.equal(after.get(`thinbd_volume_request_duration_seconds_bucket{pool="${pool}",volume="disk",command="write",le="+Inf"}`), volumeSample(after, 'thinbd_volume_requests_total', 'write'));
  // Every request's 28-byte header and every written byte arrived; every read byte left.
  const requests = written.write.total_ios + written.sync.total_ios + read.read.total_ios;
  assert.ok(poolSample(after, 'thinbd_nbd_received_bytes_total') - poolSample(base, 'thinbd_nbd_received_bytes_total') >= 8 * MiB + requests * 28);
  assert.ok(poolSample(after, 'thinbd_nbd_sent_bytes_total') - poolSample(base, 'thinbd_nbd_sent_bytes_total') >= 4 * MiB);
  assert.equal(poolSample(after, 'thinbd_pool_data_used_bytes') - poolSample(base, 'thinbd_pool_data_used_bytes'), 8 * MiB);
  assert.ok(poolSample(after, 'thinbd_pool_flushes_total') - poolSample(base, 'thinbd_pool_flushes_total') >= written.sync.total_ios);
  assert.ok(poolSample(after, 'thinbd_nbd_connections_accepted_total') - poolSample(base, 'thinbd_nbd_connections_accepted_total') >= 2);
  assert.equal(poolSample(after, 'thinbd_nbd_connections'), 0);
  assert.equal(poolSample(after, 'thinbd_nbd_requests_in_flight'), 0);
  assert.equal(poolSample(after, 'thinbd_pool_copy_on_writes_total'), 0);
});

test('after a snapshot, rewriting the volume counts one copy-on-write per shared 64 KiB block', async () => {
  assert.equal(thinbd(['snapshot', '--pool', pool, 'disk', 'disk-snap']).code, 0);
  const base = await scrape();
  await fio(['--rw=randwrite', '--bs=4k', '--size=8m', '--iodepth=16']);
  const after = await scrape();
  // 8 MiB of the volume was mapped and is now shared: 128 blocks, each copied once.
  assert.equal(poolSample(after, 'thinbd_pool_copy_on_writes_total') - poolSample(base, 'thinbd_pool_copy_on_writes_total'), 128);
  assert.equal(after.get(`thinbd_volume_size_bytes{pool="${pool}",volume="disk-snap"}`), 64 * MiB);
  assert.equal(poolSample(after, 'thinbd_pool_volumes'), 2);
  assert.equal(after.get(`thinbd_pool_mode{pool="${pool}",mode="read-write"}`), 1);
  assert.equal(poolSample(after, 'thinbd_pool_low_water'), 0);
});

test('thinbd_pool_request_errors_total keeps the errors of a volume that was removed', async () => {
  // An error the volume itself answers: a write past the end it has since it was shrunk under
  // a connected client (which still has the old size).
  assert.equal(thinbd(['create', '--pool', pool, 'failing', '--size', '2M']).code, 0);
  const client = await NbdTestClient.connect({ port: server.port });
  await client.handshake('failing');
  assert.equal(thinbd(['resize', '--pool', pool, 'failing', '--size', '1M', '--allow-shrink']).code, 0);
  const base = await scrape();
  const reply = await client.call(NBD_CMD_WRITE, { offsetBytes: 1.5 * MiB, data: Buffer.alloc(4096, 1) });
  assert.notEqual(reply.error, 0);
  client.close();
  const failed = await scrape();
  assert.equal(failed.get(`thinbd_volume_request_errors_total{pool="${pool}",volume="failing",command="write"}`), 1);
  assert.equal(poolSample(failed, 'thinbd_pool_request_errors_total') - poolSample(base, 'thinbd_pool_request_errors_total'), 1);
  assert.equal(thinbd(['remove', '--pool', pool, 'failing', '--force']).code, 0);
  const removed = await scrape();
  assert.equal(removed.get(`thinbd_volume_request_errors_total{pool="${pool}",volume="failing",command="write"}`), undefined, 'a removed volume is no longer shown');
  assert.equal(poolSample(removed, 'thinbd_pool_request_errors_total'), poolSample(failed, 'thinbd_pool_request_errors_total'), 'the pool counter did not go down');
});

test('past the end of a volume shrunk under a connected client: writes and write-zeroes answer ENOSPC, reads and trims EINVAL (as past any end)', async () => {
  assert.equal(thinbd(['create', '--pool', pool, 'shrunk', '--size', '2M']).code, 0);
  const client = await NbdTestClient.connect({ port: server.port });
  try {
    await client.handshake('shrunk');
    assert.equal(thinbd(['resize', '--pool', pool, 'shrunk', '--size', '1M', '--allow-shrink']).code, 0);
    const at = { offsetBytes: 1.5 * 1024 * 1024 };
    assert.equal((await client.call(NBD_CMD_WRITE, { ...at, data: Buffer.alloc(4096, 1) })).error, NBD_ENOSPC);
    assert.equal((await client.call(NBD_CMD_WRITE_ZEROES, { ...at, lengthBytes: 4096 })).error, NBD_ENOSPC);
    assert.equal((await client.call(NBD_CMD_READ, { ...at, lengthBytes: 4096 })).error, NBD_EINVAL);
    assert.equal((await client.call(NBD_CMD_TRIM, { ...at, lengthBytes: 4096 })).error, NBD_EINVAL);
    // Within the new end the volume still works.
    assert.equal((await client.call(NBD_CMD_WRITE, { offsetBytes: 0, data: Buffer.alloc(4096, 2) })).error, 0);
  } finally {
    client.close();
  }
});

test('the metrics endpoint holds at most METRICS_CONNECTIONS_MAX connections, cuts off one that never finishes its request, and scrapes again after', async () => {
  const { port } = new URL(metricsUrl);
  let closedCount = 0;
  let timedOut = 0;
  const closed = new Set<Socket>();
  let wake: () => void = () => {};
  const until = async (ready: () => boolean): Promise<void> => {
    while (!ready()) await new Promise<void>((resolve) => (wake = resolve));
  };
  for (let index = 0; index < 100; index++) {
    const socket = connect(Number(port), '127.0.0.1');
    socket.on('error', () => {});
    let answer = '';
    socket.setEncoding('utf8').on('data', (text: string) => (answer += text));
    socket.on('close', () => {
      if (answer.startsWith('HTTP/1.1 408 ')) timedOut++;
      closed.add(socket);
      closedCount++;
      wake();
    });
    // Half a request line, never finished: a slow client holding its slot.
    socket.on('connect', () => socket.write('GET /metr'));
  }
  await until(() => closedCount === 100);
  assert.equal(closed.size, 100);
  // Only the connections the endpoint took (fewer while a scraper's kept-alive ones hold slots)
  // waited for the time limit and were told 408; the rest were refused at once.
  assert.ok(timedOut >= 1 && timedOut <= METRICS_CONNECTIONS_MAX, `${timedOut} connections were held`);
  assert.ok((await scrape()).size > 0);
});
