// The long-running server: owns a pool (its lock held for the server's life), exports every
// volume over NBD, and answers the other `thinbd` commands on the pool's control socket so they
// work on the live pool. Exports follow the volumes: a volume created or snapshotted through the
// control socket is exported at once; a removed one disappears (refused while clients are
// connected unless forced).
import { join } from 'node:path';
import { Pool } from '../pool/pool.ts';
import { NbdServer, type NbdListenAddress } from '../nbd/server.ts';
import { MapExportRegistry } from '../nbd/backend.ts';
import { ThinError } from '../errors.ts';
import { LocalPoolService } from './service.ts';
import { ControlServer, controlSocketPath } from './control.ts';
import { VolumeExport } from './volume-export.ts';
import { SERVE_CLOSE_TIMEOUT_MS } from '../constants.ts';
import { checkPool, type CheckReport } from '../tools/check.ts';
import { FileBlockFile } from '../io/file.ts';
import type { FaultRule } from '../io/fault-injection.ts';
import { DATA_FILE_NAME, METADATA_FILE_NAME } from '../pool/files.ts';

export interface ServeOptions {
  poolDir: string;
  /** TCP addresses to listen on. */
  tcp: Array<{ host: string; port: number }>;
  /** Unix socket paths to listen on. */
  unixSockets: string[];
  /** Export every volume read-only, whatever its own flag. */
  readOnly?: boolean;
  /** Fault injection on the pool's files (`thinbd serve --inject`, io/fault-injection.ts): drills and tests. */
  faultRules?: readonly FaultRule[];
  log?: (message: string) => void;
}

export class PoolServer {
  readonly pool: Pool;
  readonly nbd: NbdServer;
  readonly addresses: NbdListenAddress[];
  readonly #control: ControlServer;
  readonly #registry: MapExportRegistry;
  #stopping: Promise<void> | undefined;

  private constructor(pool: Pool, nbd: NbdServer, registry: MapExportRegistry, control: ControlServer, addresses: NbdListenAddress[]) {
    this.pool = pool;
    this.nbd = nbd;
    this.#registry = registry;
    this.#control = control;
    this.addresses = addresses;
  }

  static async start(options: ServeOptions): Promise<PoolServer> {
    const pool = await Pool.open(options.poolDir, { readOnly: Boolean(options.readOnly), ...(options.faultRules !== undefined ? { faultRules: options.faultRules } : {}) });
    try {
      const registry = new MapExportRegistry();
      const nbd = new NbdServer({ registry, ...(options.log ? { log: options.log } : {}) });
      const syncExports = (): void => {
        const names = new Set<string>();
        for (const info of pool.list()) {
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
            registry.remove(name);
            await nbd.disconnectExport(name);
          },
          afterChange: syncExports,
          check: () => checkLivePool(pool, options.poolDir),
        },
      });
      const addresses: NbdListenAddress[] = [];
      for (const address of options.tcp) addresses.push(await nbd.listen(address));
      for (const path of options.unixSockets) addresses.push(await nbd.listen({ path }));
      const control = await ControlServer.listen(controlSocketPath(options.poolDir), service, options.log);
      return new PoolServer(pool, nbd, registry, control, addresses);
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
      await this.#control.close();
      await this.nbd.close({ timeoutMs: SERVE_CLOSE_TIMEOUT_MS });
      await this.pool.close();
    })();
    return this.#stopping;
  }
}

export function describeAddress(address: NbdListenAddress): string {
  if ('path' in address) return `nbd+unix:///?socket=${address.path}`;
  const host = address.host.includes(':') ? `[${address.host}]` : address.host;
  return `nbd://${host}:${address.port}/`;
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
