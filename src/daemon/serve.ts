// The long-running server: owns a pool (its lock held for the server's life), exports every
// volume over NBD, and answers the other `thinbd` commands on the pool's control socket so they
// work on the live pool. Exports follow the volumes: a volume created or snapshotted through the
// control socket is exported at once; a removed one disappears (refused while clients are
// connected unless forced).
import { join } from 'node:path';
import { Pool } from '../pool/pool.ts';
import type { HealthState } from '../pool/health.ts';
import { NbdServer, type NbdListenAddress } from '../nbd/server.ts';
import type { NbdTls, NbdTlsMode } from '../nbd/tls.ts';
import { MapExportRegistry } from '../nbd/backend.ts';
import { ThinError } from '../errors.ts';
import { LocalPoolService } from './service.ts';
import { ControlServer, controlSocketPath } from './control.ts';
import { VolumeExport } from './volume-export.ts';
import { SERVE_CLOSE_TIMEOUT_MS, SERVE_STATE_CHECK_MS } from '../constants.ts';
import { NbdExportStats } from '../nbd/export-stats.ts';
import { MetricsServer } from './metrics.ts';
import type { LogSink } from '../util/log.ts';
import { checkPool, type CheckReport } from '../tools/check.ts';
import { isHiddenVolume } from '../tools/list.ts';
import { FileBlockFile } from '../io/file.ts';
import type { FaultRule } from '../io/fault-injection.ts';
import { DATA_FILE_NAME, METADATA_FILE_NAME } from '../pool/files.ts';
import { spaceEventHandler } from './space-events.ts';

export interface ServeOptions {
  poolDir: string;
  /** TCP addresses to listen on. */
  tcp: Array<{ host: string; port: number }>;
  /** Unix socket paths to listen on. */
  unixSockets: string[];
  /** Export every volume read-only, whatever its own flag. */
  readOnly?: boolean;
  /**
   * Serve only these volumes (each must exist at start). Others, and volumes created later under
   * other names, are never reachable over NBD; the control socket still manages the whole pool.
   */
  exports?: string[];
  /** STARTTLS on the NBD listeners (nbd/tls.ts). */
  tls?: NbdTls;
  /** Serve Prometheus metrics over HTTP here (metrics.ts); port 0 picks a free one. */
  metrics?: { host: string; port: number };
  /** Fault injection on the pool's files (`thinbd serve --inject`, io/fault-injection.ts): drills and tests. */
  faultRules?: readonly FaultRule[];
  /** Data blocks kept written ahead for remaps (`thinbd serve --remap-spares`, pool/spare-area.ts). */
  remapSpareBlocks?: number;
  log?: LogSink;
  /** Shell command run at each low-water event (space-events.ts). */
  onLowWater?: string;
}

export class PoolServer {
  readonly pool: Pool;
  readonly nbd: NbdServer;
  readonly addresses: NbdListenAddress[];
  readonly #control: ControlServer;
  readonly #registry: MapExportRegistry;
  readonly #metrics: MetricsServer | undefined;
  readonly #stateWatch: PoolStateWatch;
  #stopping: Promise<void> | undefined;
  #closedWithoutCommit: string | undefined;

  private constructor(
    pool: Pool,
    nbd: NbdServer,
    registry: MapExportRegistry,
    control: ControlServer,
    addresses: NbdListenAddress[],
    metrics: MetricsServer | undefined,
    log: LogSink | undefined,
  ) {
    this.pool = pool;
    this.nbd = nbd;
    this.#registry = registry;
    this.#control = control;
    this.addresses = addresses;
    this.#metrics = metrics;
    this.#stateWatch = watchPoolState(pool, log);
  }

  /**
   * After stop(): why the pool was closed without a final commit (a pool in needs-check commits
   * nothing more: changes not flushed before its failure are gone), or undefined when it committed
   * or had nothing to commit.
   */
  get closedWithoutCommit(): string | undefined {
    return this.#closedWithoutCommit;
  }

  /** Where metrics are served, when they are. */
  get metricsAddress(): { host: string; port: number } | undefined {
    return this.#metrics?.address;
  }

  static async start(options: ServeOptions): Promise<PoolServer> {
    const pool = await Pool.open(options.poolDir, {
      readOnly: Boolean(options.readOnly),
      ...(options.faultRules !== undefined ? { faultRules: options.faultRules } : {}),
      ...(options.remapSpareBlocks !== undefined ? { remapSpareBlocks: options.remapSpareBlocks } : {}),
    });
    try {
      pool.onSpaceEvent(spaceEventHandler({ poolDir: options.poolDir, ...(options.onLowWater === undefined ? {} : { onLowWater: options.onLowWater }), log: options.log ?? (() => {}) }));
      const chosen = options.exports === undefined ? undefined : new Set(options.exports);
      if (chosen !== undefined) {
        const existing = new Set(pool.list().map((info) => info.name));
        const missing = [...chosen].filter((name) => !existing.has(name));
        if (missing.length > 0) {
          throw new ThinError('THIN_NOT_FOUND', `--export names no volume of this pool: ${missing.join(', ')}`);
        }
      }
      const registry = new MapExportRegistry();
      // Volumes being removed, by how many removals are under way: never exported again meanwhile,
      // though they are still in the pool while their clients drain (another command's
      // syncExports would otherwise let a new client in, to be left on a removed volume).
      const removing = new Map<string, number>();
      const removed = (name: string): void => {
        const count = (removing.get(name) ?? 0) - 1;
        if (count > 0) removing.set(name, count);
        else removing.delete(name);
      };
      const exportStats = options.metrics === undefined ? undefined : new NbdExportStats();
      const nbd = new NbdServer({
        registry,
        ...(exportStats === undefined ? {} : { filters: [exportStats.filter] }),
        ...(options.log ? { log: options.log } : {}),
        ...(options.tls === undefined ? {} : { tls: options.tls }),
      });
      const syncExports = (): void => {
        const names = new Set<string>();
        for (const info of pool.list()) {
          // thinbd's own volumes (the image block index) are served only when named.
          if (chosen === undefined ? isHiddenVolume(info.labels) : !chosen.has(info.name)) continue;
          if (removing.has(info.name)) continue;
          names.add(info.name);
          const existing = registry.get(info.name);
          if (existing) continue;
          registry.add(
            new VolumeExport(pool.volume(info.name), {
              readOnly: Boolean(options.readOnly),
              description: info.origin ? `thinbd snapshot of ${info.origin}` : 'thinbd volume',
            }),
          );
        }
        for (const exported of registry.list()) {
          if (!names.has(exported.name)) registry.remove(exported.name);
        }
      };
      syncExports();
      const service = new LocalPoolService(pool, {
        closePool: false,
        hooks: {
          beforeRemove: async (name, force) => {
            const connected = nbd.connectionsTo(name).length;
            if (connected > 0 && !force) {
              throw new ThinError(
                'THIN_BUSY',
                `Volume ${name} has ${connected} NBD client(s) connected; disconnect them or use --force`,
              );
            }
            // No new connections first, then the connected ones are drained and closed.
            removing.set(name, (removing.get(name) ?? 0) + 1);
            try {
              registry.remove(name);
              await nbd.disconnectExport(name, { timeoutMs: SERVE_CLOSE_TIMEOUT_MS });
            } catch (error) {
              removed(name); // the removal does not go on: afterRemove will not come
              throw error;
            }
            exportStats?.forget(name);
          },
          afterRemove: removed,
          afterChange: syncExports,
          check: () => checkLivePool(pool, options.poolDir),
        },
      });
      const addresses: NbdListenAddress[] = [];
      for (const address of options.tcp) addresses.push(await nbd.listen(address));
      for (const path of options.unixSockets) addresses.push(await nbd.listen({ path }));
      const metrics =
        options.metrics === undefined || exportStats === undefined
          ? undefined
          : await MetricsServer.listen(options.metrics, { poolDir: options.poolDir, pool, nbd, exportStats }, options.log);
      let control: ControlServer;
      try {
        control = await ControlServer.listen(controlSocketPath(options.poolDir), service, options.log);
      } catch (error) {
        await metrics?.close();
        throw error;
      }
      return new PoolServer(pool, nbd, registry, control, addresses, metrics, options.log);
    } catch (error) {
      await pool.close().catch(() => undefined);
      throw error;
    }
  }

  get exportNames(): string[] {
    return this.#registry.list().map((exported) => exported.name);
  }

  /** Stops accepting, finishes in-flight requests, commits and closes the pool. */
  stop(): Promise<void> {
    this.#stopping ??= (async () => {
      clearInterval(this.#stateWatch.timer);
      // A write queued for space would otherwise hold its connection until the drain timed out.
      this.pool.stopWaitingForSpace();
      await this.#metrics?.close();
      await this.#control.close();
      await this.nbd.close({ timeoutMs: SERVE_CLOSE_TIMEOUT_MS });
      // A change of mode or health since the last look is logged before the server says it stopped.
      this.#stateWatch.check();
      const { mode, modeReason } = this.pool.status();
      if (mode === 'needs-check') this.#closedWithoutCommit = `the pool needs a check: ${modeReason ?? 'unknown reason'}`;
      await this.pool.close();
    })();
    return this.#stopping;
  }
}

interface PoolStateWatch {
  readonly timer: NodeJS.Timeout;
  /** Looks now (the timer looks every SERVE_STATE_CHECK_MS). */
  check(): void;
}

interface DeviceSeen {
  state: HealthState;
  /** The rule's id (`H-DEG-1`): its figures change with every error, the id only with the verdict. */
  ruleId: string;
  badRanges: number;
}

/**
 * Logs each change of the pool's mode once (read-only when out of metadata space, needs-check
 * after a failed commit), and of each file's health (pool/health.ts): its state or the rule behind
 * it, or new bad ranges recorded, one line per device and look. So a disk that starts failing is
 * in the log even while every error is worked around (remapped, served from the other copy) and
 * no client sees one; a pool opened with bad ranges or a bad state says so at start. Space has its
 * own events (space-events.ts), raised as it changes.
 */
function watchPoolState(pool: Pool, log: LogSink | undefined): PoolStateWatch {
  let lastMode = pool.status().mode;
  const healthy: DeviceSeen = { state: 'ok', ruleId: 'H-OK', badRanges: 0 };
  const lastHealth: Record<'data' | 'metadata', DeviceSeen> = { data: healthy, metadata: healthy };
  const check = (): void => {
    let status;
    try {
      status = pool.status();
    } catch {
      return; // closing
    }
    if (status.mode !== lastMode) {
      const reason = status.modeReason === undefined ? '' : `: ${status.modeReason}`;
      log?.({ level: status.mode === 'read-write' ? 'info' : 'error', event: 'pool.mode_changed', message: `pool mode changed from ${lastMode} to ${status.mode}${reason}`, mode: status.mode });
    }
    lastMode = status.mode;
    for (const device of ['data', 'metadata'] as const) {
      const health = status.health[device];
      const before = lastHealth[device];
      const seen: DeviceSeen = { state: health.state, ruleId: health.rule.split(':', 1)[0]!, badRanges: health.badRanges };
      lastHealth[device] = seen;
      if (seen.state === before.state && seen.ruleId === before.ruleId && seen.badRanges <= before.badRanges) continue;
      const path = device === 'data' ? status.dataPath : status.metadataPath;
      const newRanges = seen.badRanges - before.badRanges;
      const was = seen.state === before.state ? '' : ` (was ${before.state})`;
      const ranges = newRanges > 0 ? `; ${newRanges} new bad range(s) recorded` : '';
      log?.({
        level: seen.state === 'failing' ? 'error' : seen.state === 'degraded' ? 'warn' : 'info',
        event: 'pool.device_health',
        message: `${device} file ${path}: health ${seen.state}${was}: ${health.rule}${ranges}`,
        device,
        state: seen.state,
        badRanges: seen.badRanges,
      });
    }
  };
  check();
  const timer = setInterval(check, SERVE_STATE_CHECK_MS);
  timer.unref();
  return { timer, check };
}

/** The address as an NBD URI; `nbds` when TLS is required there (libnbd's scheme for TLS). */
export function describeAddress(address: NbdListenAddress, tls: NbdTlsMode = 'off'): string {
  const scheme = tls === 'require' ? 'nbds' : 'nbd';
  if ('path' in address) return `${scheme}+unix:///?socket=${address.path}`;
  const host = address.host.includes(':') ? `[${address.host}]` : address.host;
  return `${scheme}://${host}:${address.port}/`;
}

/** Parses HOST:PORT (IPv6 as [::1]:PORT); returns undefined when malformed. */
export function parseListenAddress(text: string): { host: string; port: number } | undefined {
  const match = /^(?:\[([^\]]+)\]|([^:]+)):(\d{1,5})$/.exec(text);
  if (!match) return undefined;
  const port = Number(match[3]);
  if (port > 65535) return undefined;
  return { host: match[1] ?? match[2] ?? '', port };
}

/**
 * Checks a pool this process serves: commits, then checks the committed state through separate
 * read-only handles while commits are held back, so the checked generation cannot be overwritten
 * under the checker. Clients' reads and writes go on; their flushes wait for the check.
 */
async function checkLivePool(pool: Pool, poolDir: string): Promise<CheckReport> {
  return pool.withCommitsHeld(async () => {
    const metadata = await FileBlockFile.open(join(poolDir, METADATA_FILE_NAME), { readOnly: true });
    const data = await FileBlockFile.open(join(poolDir, DATA_FILE_NAME), { readOnly: true });
    try {
      return await checkPool({ metadata, data });
    } finally {
      await metadata.close();
      await data.close();
    }
  });
}
