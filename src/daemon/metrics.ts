// `thinbd serve --metrics HOST:PORT`: Prometheus text on GET /metrics, built at scrape time from
// counters the pool and the NBD server keep anyway (so an unscraped server pays for nothing but
// the per-request additions of the export filter). Families, by prefix:
//   thinbd_volume_*  per volume: requests, errors, bytes and latency by command, size
//   thinbd_pool_*    the pool: data and metadata space, low water, mode, commits, rollups, log
//                    records, copy-on-writes, flushes, request errors
//   thinbd_nbd_*     the server: connections, bytes in and out, requests and bytes in flight, TLS
//   thinbd_device_*  the health of the data and metadata files (`pool status` health): I/O errors
//                    by operation, bad ranges and sectors, remapped blocks, spare space (and the
//                    data's spare area written ahead for remaps), the health
//                    state, and I/O latency (a summary with p95 and p99, and min, max, stddev)
import http from 'node:http';
import { METADATA_BLOCK_SIZE_BYTES, METRICS_CONNECTIONS_MAX, METRICS_REQUEST_MS_MAX } from '../constants.ts';
import type { NbdServer } from '../nbd/server.ts';
import { MEASURED_COMMANDS, type NbdExportStats } from '../nbd/export-stats.ts';
import type { Pool, PoolStatus } from '../pool/pool.ts';
import type { DeviceHealth } from '../pool/health.ts';
import { PrometheusPage } from '../util/prometheus.ts';
import type { LogSink } from '../util/log.ts';

export interface MetricsSources {
  poolDir: string;
  pool: Pool;
  nbd: NbdServer;
  exportStats: NbdExportStats;
}

/**
 * Whether the pool is below a low-water mark: the data or metadata space it can still give (free,
 * and what growth may add) is under its mark (pool status `state` low or full, src/pool/space.ts).
 */
export function lowWater(status: PoolStatus): boolean {
  return status.space.data.state !== 'ok' || status.space.metadata.state !== 'ok';
}

export function renderMetrics(sources: MetricsSources): string {
  const page = new PrometheusPage();
  const status = sources.pool.status();
  const pool = { pool: sources.poolDir };

  page.family('thinbd_volume_size_bytes', 'gauge', 'Size of each volume served.');
  for (const info of sources.pool.list()) page.sample('thinbd_volume_size_bytes', info.sizeBytes, { ...pool, volume: info.name });
  page.family('thinbd_volume_requests_total', 'counter', 'Requests each volume answered, by NBD command (read, write, flush, trim, zero, block_status, cache).');
  page.family('thinbd_volume_request_errors_total', 'counter', 'Requests each volume failed, by NBD command.');
  page.family('thinbd_volume_bytes_total', 'counter', 'Bytes each volume read or wrote (read, write) or covered (trim, zero), by command.');
  page.family('thinbd_volume_request_duration_seconds', 'histogram', 'Time each volume took to answer a request, by NBD command.');
  // A counter: the errors of removed volumes stay in it.
  let requestErrors = sources.exportStats.forgottenErrorCount;
  const exports = [...sources.exportStats.entries()].sort(([a], [b]) => a.localeCompare(b));
  for (const [volume, stats] of exports) {
    for (const command of MEASURED_COMMANDS) {
      const labels = { ...pool, volume, command };
      page.sample('thinbd_volume_requests_total', stats.requests[command], labels);
      page.sample('thinbd_volume_request_errors_total', stats.errors[command], labels);
      requestErrors += stats.errors[command];
      if (command === 'read' || command === 'write' || command === 'trim' || command === 'zero') {
        page.sample('thinbd_volume_bytes_total', stats.bytes[command], labels);
      }
    }
  }
  for (const [volume, stats] of exports) {
    for (const command of MEASURED_COMMANDS) {
      if (stats.latency[command].count > 0) page.histogram('thinbd_volume_request_duration_seconds', stats.latency[command], { ...pool, volume, command });
    }
  }

  const dataBytes = (blocks: number) => blocks * status.blockSizeBytes;
  const metadataBytes = (blocks: number) => blocks * METADATA_BLOCK_SIZE_BYTES;
  const gauges: Array<[string, string, number]> = [
    ['thinbd_pool_data_size_bytes', 'Data space of the pool.', dataBytes(status.dataBlockCount)],
    ['thinbd_pool_data_used_bytes', 'Data space mapped by some volume.', dataBytes(status.dataBlocksUsed)],
    ['thinbd_pool_data_free_bytes', 'Data space free.', dataBytes(status.dataBlockCount - status.dataBlocksUsed)],
    ['thinbd_pool_metadata_size_bytes', 'Metadata space of the pool.', metadataBytes(status.metadataBlockCount)],
    ['thinbd_pool_metadata_used_bytes', 'Metadata space in use.', metadataBytes(status.metadataBlocksUsed)],
    ['thinbd_pool_metadata_free_bytes', 'Metadata space free.', metadataBytes(status.metadataBlockCount - status.metadataBlocksUsed)],
    [
      'thinbd_pool_low_water',
      '1 while the data or metadata space the pool can still give (growth included) is below its low-water mark, else 0.',
      lowWater(status) ? 1 : 0,
    ],
    ['thinbd_pool_volumes', 'Volumes in the pool (served or not).', status.volumeCount],
    ['thinbd_pool_log_blocks_used', 'Delta log blocks holding records not yet rolled up.', status.counters.logBlocksUsed],
    ['thinbd_pool_pinned_generations', 'Generations pinned for readers (dump, archive pack of a live pool).', status.pinnedGenerations.length],
    ['thinbd_pool_transaction_id', 'Transaction id of the last commit.', status.transactionId],
  ];
  for (const [name, help, value] of gauges) page.family(name, 'gauge', help).sample(name, value, pool);
  page.family('thinbd_pool_mode', 'gauge', 'The pool mode: 1 for the current one (read-write, read-only, needs-check).');
  for (const mode of ['read-write', 'read-only', 'needs-check'] as const) page.sample('thinbd_pool_mode', status.mode === mode ? 1 : 0, { ...pool, mode });

  const counters: Array<[string, string, number]> = [
    ['thinbd_pool_commits_total', 'Full commits (superblock generations written) since the server started.', status.counters.commits],
    ['thinbd_pool_rollups_total', 'Commits that folded the delta log into the trees.', status.counters.rollups],
    ['thinbd_pool_log_records_total', 'Delta log records written.', status.counters.logRecordsWritten],
    ['thinbd_pool_copy_on_writes_total', 'Writes to a block shared with a snapshot that copied it first.', status.counters.copyOnWrites],
    ['thinbd_pool_flushes_total', 'Flushes asked of the pool (FLUSH and FUA).', status.counters.flushes],
    ['thinbd_pool_syncs_total', 'fdatasync calls on the pool files.', status.counters.syncs],
    ['thinbd_pool_data_written_bytes_total', 'Bytes written to the data file.', status.counters.dataBytesWritten],
    ['thinbd_pool_metadata_blocks_written_total', 'Metadata blocks written (tree nodes, space maps, superblocks, log records).', status.counters.metadataBlocksWritten],
    ['thinbd_pool_request_errors_total', 'Requests failed by any volume (an I/O error, no space, read-only).', requestErrors],
  ];
  for (const [name, help, value] of counters) page.family(name, 'counter', help).sample(name, value, pool);

  const nbd = sources.nbd;
  const server: Array<[string, 'gauge' | 'counter', string, number]> = [
    ['thinbd_nbd_connections', 'gauge', 'NBD connections open (handshake or transmission).', nbd.connectionCount],
    ['thinbd_nbd_connections_accepted_total', 'counter', 'NBD connections accepted.', nbd.stats.connectionsAccepted],
    ['thinbd_nbd_connections_refused_total', 'counter', 'NBD connections refused (server full or closing).', nbd.stats.connectionsRefused],
    ['thinbd_nbd_received_bytes_total', 'counter', 'Bytes received from NBD clients (after TLS decryption).', nbd.stats.bytesReceived],
    ['thinbd_nbd_sent_bytes_total', 'counter', 'Bytes sent to NBD clients (before TLS encryption).', nbd.stats.bytesSent],
    ['thinbd_nbd_requests_in_flight', 'gauge', 'NBD requests received and not yet answered.', nbd.requestsInFlight],
    ['thinbd_nbd_bytes_in_flight', 'gauge', 'Payload bytes held for requests in flight.', nbd.bytesInFlight],
    ['thinbd_nbd_tls_handshakes_total', 'counter', 'TLS handshakes completed.', nbd.stats.tlsHandshakes],
    ['thinbd_nbd_tls_failures_total', 'counter', 'TLS handshakes that failed (wrong key, untrusted certificate, client gave up).', nbd.stats.tlsFailures],
  ];
  for (const [name, type, help, value] of server) page.family(name, type, help).sample(name, value, pool);
  renderHealth(page, status, pool);
  return page.toString();
}

const HEALTH_LEVELS = { ok: 0, degraded: 1, failing: 2 } as const;

/** The thinbd_device_* families: `pool status`'s health of each file, labelled device="data|metadata". */
function renderHealth(page: PrometheusPage, status: PoolStatus, pool: { pool: string }): void {
  const devices: Array<[string, DeviceHealth, number]> = [
    ['data', status.health.data, status.blockSizeBytes],
    ['metadata', status.health.metadata, METADATA_BLOCK_SIZE_BYTES],
  ];
  page.family('thinbd_device_io_errors_total', 'counter', 'Failed reads, writes and syncs of the pool file since the server started (retries and the narrowing of a failed request included).');
  for (const [device, health] of devices) {
    for (const op of ['read', 'write', 'sync'] as const) page.sample('thinbd_device_io_errors_total', health.ioErrors[op], { ...pool, device, op });
  }
  const gauges: Array<[string, string, (health: DeviceHealth, blockBytes: number) => number]> = [
    ['thinbd_device_bad_ranges', 'Bad ranges recorded in the metadata (durable; never allocated again).', (health) => health.badRanges],
    ['thinbd_device_bad_sectors', '512-byte sectors the bad ranges cover.', (health) => health.badSectors],
    [
      'thinbd_device_remapped_blocks',
      'Data: blocks whose data was moved off bad sectors. Metadata: copies rewritten from a good copy since the server started.',
      (health) => health.remappedBlocks,
    ],
    ['thinbd_device_spare_bytes', 'Space a remap (data) or a new metadata block can still take.', (health, blockBytes) => health.spareBlocks * blockBytes],
    ['thinbd_device_health_level', 'The health state as a number: 0 ok, 1 degraded, 2 failing (the rule is in thinbd pool status).', (health) => HEALTH_LEVELS[health.state]],
  ];
  for (const [name, help, value] of gauges) {
    page.family(name, 'gauge', help);
    for (const [device, health, blockBytes] of devices) page.sample(name, value(health, blockBytes), { ...pool, device });
  }
  page.family('thinbd_device_spare_area_bytes', 'gauge', 'Data: of the spare space, the free blocks kept written ahead for remaps (once the data file has refused a write).');
  page.sample('thinbd_device_spare_area_bytes', status.health.data.spareArea.blocks * status.blockSizeBytes, { ...pool, device: 'data' });
  page.family('thinbd_device_health', 'gauge', 'The health state: 1 for the current one (ok, degraded, failing).');
  for (const [device, health] of devices) {
    for (const state of ['ok', 'degraded', 'failing'] as const) page.sample('thinbd_device_health', health.state === state ? 1 : 0, { ...pool, device, state });
  }
  page.family('thinbd_device_io_latency_seconds', 'summary', 'Latency of reads, writes and syncs of the pool file since the server started.');
  for (const [device, health] of devices) {
    for (const op of ['read', 'write', 'sync'] as const) {
      const latency = health.latencyMs[op];
      const labels = { ...pool, device, op };
      page.sample('thinbd_device_io_latency_seconds', latency.p95Ms / 1000, { ...labels, quantile: '0.95' });
      page.sample('thinbd_device_io_latency_seconds', latency.p99Ms / 1000, { ...labels, quantile: '0.99' });
      page.sample('thinbd_device_io_latency_seconds_sum', (latency.avgMs * latency.count) / 1000, labels);
      page.sample('thinbd_device_io_latency_seconds_count', latency.count, labels);
    }
  }
  const spread: Array<[string, string, 'minMs' | 'maxMs' | 'stddevMs']> = [
    ['thinbd_device_io_latency_min_seconds', 'Shortest read, write or sync of the pool file since the server started.', 'minMs'],
    ['thinbd_device_io_latency_max_seconds', 'Longest read, write or sync of the pool file since the server started.', 'maxMs'],
    ['thinbd_device_io_latency_stddev_seconds', 'Standard deviation of the latency of reads, writes or syncs of the pool file.', 'stddevMs'],
  ];
  for (const [name, help, field] of spread) {
    page.family(name, 'gauge', help);
    for (const [device, health] of devices) {
      for (const op of ['read', 'write', 'sync'] as const) page.sample(name, health.latencyMs[op][field] / 1000, { ...pool, device, op });
    }
  }
}

/** The HTTP endpoint: GET /metrics (and / for a browser); anything else is 404. */
export class MetricsServer {
  readonly #server: http.Server;
  readonly address: { host: string; port: number };

  private constructor(server: http.Server, address: { host: string; port: number }) {
    this.#server = server;
    this.address = address;
  }

  static async listen(address: { host: string; port: number }, sources: MetricsSources, log?: LogSink): Promise<MetricsServer> {
    const server = http.createServer({ requestTimeout: METRICS_REQUEST_MS_MAX, headersTimeout: METRICS_REQUEST_MS_MAX, connectionsCheckingInterval: METRICS_REQUEST_MS_MAX / 10 }, (request, response) => {
      const path = (request.url ?? '/').split('?')[0];
      if (request.method !== 'GET' && request.method !== 'HEAD') {
        response.writeHead(405, { allow: 'GET, HEAD' }).end();
        return;
      }
      if (path !== '/metrics' && path !== '/') {
        response.writeHead(404, { 'content-type': 'text/plain' }).end('Not found: metrics are at /metrics\n');
        return;
      }
      let body: string;
      try {
        body = renderMetrics(sources);
      } catch (error) {
        // A closed or failed pool: say so rather than serve a partial page.
        log?.({ level: 'error', event: 'metrics.scrape_failed', message: `metrics scrape failed: ${error instanceof Error ? error.message : String(error)}` });
        response.writeHead(503, { 'content-type': 'text/plain' }).end('metrics unavailable\n');
        return;
      }
      response.writeHead(200, { 'content-type': 'text/plain; version=0.0.4; charset=utf-8' });
      response.end(request.method === 'HEAD' ? undefined : body);
    });
    // A scraper keeps its connection alive between scrapes; do not let it hold shutdown up.
    server.keepAliveTimeout = 5_000;
    server.maxConnections = METRICS_CONNECTIONS_MAX;
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(address.port, address.host, () => {
        server.off('error', reject);
        resolve();
      });
    });
    server.on('error', (error) => log?.({ level: 'error', event: 'metrics.listener_error', message: `metrics listener error: ${error.message}` }));
    const bound = server.address();
    const port = bound !== null && typeof bound === 'object' ? bound.port : address.port;
    return new MetricsServer(server, { host: address.host, port });
  }

  close(): Promise<void> {
    return new Promise((resolve) => {
      this.#server.close(() => resolve());
      this.#server.closeAllConnections();
    });
  }
}
