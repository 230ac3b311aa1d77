// thinbd serve | demo
import { existsSync } from 'node:fs';
import { join, resolve } from 'node:path';
import type { Command } from '@commander-js/extra-typings';
import type { Reporter } from '../report.ts';
import { UsageError } from '../report.ts';
import { poolDirectory, poolOption } from '../options.ts';
import { assertPoolExists, warnIfExposed } from '../pool-access.ts';
import { PoolServer, describeAddress, parseListenAddress } from '../../daemon/serve.ts';
import { METADATA_FILE_NAME, Pool } from '../../pool/pool.ts';
import { readFaultRules } from '../../io/fault-injection.ts';
import { DATA_BLOCK_SIZE_BYTES_DEFAULT, DATA_SIZE_BYTES_DEFAULT, SERVE_HOST_DEFAULT, SERVE_PORT_DEFAULT } from '../../constants.ts';

const DEMO_VOLUME_SIZE_BYTES = 8 * 1024 ** 3;
const DEMO_VOLUME = 'vol0';

interface ServeCommandOptions {
  pool?: string;
  listen?: string[];
  socket?: string[];
  readOnly?: boolean;
}

function listenAddresses(options: ServeCommandOptions): { tcp: Array<{ host: string; port: number }>; unixSockets: string[] } {
  const unixSockets = (options.socket ?? []).map((path) => resolve(path));
  const tcp = (options.listen ?? []).map((text) => {
    const address = parseListenAddress(text);
    if (!address) throw new UsageError(`--listen: '${text}' is not HOST:PORT (e.g. 127.0.0.1:10809 or [::1]:10809)`);
    return address;
  });
  // A Unix socket alone replaces TCP; with neither, the default TCP address.
  if (tcp.length === 0 && unixSockets.length === 0) tcp.push({ host: SERVE_HOST_DEFAULT, port: SERVE_PORT_DEFAULT });
  return { tcp, unixSockets };
}

/**
 * Serves until SIGTERM or SIGINT, then drains, commits and closes. The handlers are installed
 * before `announce` says the server is ready: a supervisor that stops it right after reading that
 * line must get a clean stop, not the default action of the signal.
 */
async function serveUntilSignalled(server: PoolServer, reporter: Reporter, announce: () => void): Promise<void> {
  await new Promise<void>((done) => {
    const stop = (signal: string): void => {
      reporter.note(`thinbd: ${signal}: finishing in-flight requests, committing, closing`);
      process.off('SIGTERM', onTerm);
      process.off('SIGINT', onInt);
      server.stop().then(done, (error: unknown) => {
        reporter.error(`stopping failed: ${error instanceof Error ? error.message : String(error)}`);
        process.exitCode = 1;
        done();
      });
    };
    const onTerm = (): void => stop('SIGTERM');
    const onInt = (): void => stop('SIGINT');
    process.on('SIGTERM', onTerm);
    process.on('SIGINT', onInt);
    announce();
  });
}

function announce(server: PoolServer, poolDir: string, reporter: Reporter): void {
  const where = server.addresses.map(describeAddress).join(' and ');
  reporter.out(`Serving ${server.exportNames.length} volume(s) of pool ${poolDir} on ${where}`);
  warnIfExposed(poolDir, reporter);
  for (const address of server.addresses) {
    if (!('host' in address) || isLoopback(address.host)) continue;
    reporter.note(
      `thinbd: warning: serving on ${describeAddress(address)} without TLS: anyone who can reach that address can read and write every exported volume`,
    );
  }
}

/** 127.0.0.0/8, ::1 and localhost: reachable from this host only. */
function isLoopback(host: string): boolean {
  const bare = host.replace(/^\[|\]$/g, '');
  return bare === 'localhost' || bare === '::1' || /^127\.\d+\.\d+\.\d+$/.test(bare) || /^::ffff:127\./i.test(bare);
}

export function registerServeCommands(program: Command, reporter: Reporter): void {
  program
    .command('serve')
    .description('serve every volume over NBD (one export per volume); other commands then reach the pool through its control socket')
    .addOption(poolOption())
    .option('--listen <host:port...>', `TCP address (default ${SERVE_HOST_DEFAULT}:${SERVE_PORT_DEFAULT} unless --socket is given)`)
    .option('--socket <path...>', 'Unix socket to listen on, instead of or beside TCP')
    .option('--read-only', 'export every volume read-only')
    .option('--inject <file>', 'fault injection for drills and tests: a JSON rules file making sectors of the data or metadata file fail or flip bits (see docs/internals.md)')
    .action(async (options) => {
      const poolDir = poolDirectory(options.pool);
      assertPoolExists(poolDir);
      const addresses = listenAddresses(options);
      // Read (and refused when malformed) before the pool is opened: a bad rules file changes nothing.
      const faultRules = options.inject === undefined ? undefined : readFaultRules(options.inject);
      const server = await PoolServer.start({
        poolDir,
        ...addresses,
        readOnly: Boolean(options.readOnly),
        ...(faultRules !== undefined ? { faultRules } : {}),
        log: (message) => reporter.note(`thinbd serve: ${message}`),
      });
      await serveUntilSignalled(server, reporter, () => announce(server, poolDir, reporter));
    });

  program
    .command('demo')
    .description(`create the pool if missing (16G of sparse data space, one 8G volume ${DEMO_VOLUME}) and serve it`)
    .addOption(poolOption('created when missing'))
    .option('--listen <host:port...>', `TCP address (default ${SERVE_HOST_DEFAULT}:${SERVE_PORT_DEFAULT})`)
    .action(async (options) => {
      const poolDir = poolDirectory(options.pool);
      if (!existsSync(join(poolDir, METADATA_FILE_NAME))) {
        const pool = await Pool.create(poolDir, { dataSizeBytes: DATA_SIZE_BYTES_DEFAULT, blockSizeBytes: DATA_BLOCK_SIZE_BYTES_DEFAULT });
        await pool.createVolume(DEMO_VOLUME, { sizeBytes: DEMO_VOLUME_SIZE_BYTES });
        await pool.close();
        reporter.out(`Created pool ${poolDir} (16G sparse data space) with an 8G volume ${DEMO_VOLUME}`);
      }
      const server = await PoolServer.start({ poolDir, ...listenAddresses({ listen: options.listen }) });
      const tcp = server.addresses.find((address) => 'port' in address);
      const uri = tcp ? describeAddress(tcp) : describeAddress(server.addresses[0]!);
      const name = server.exportNames.includes(DEMO_VOLUME) ? DEMO_VOLUME : (server.exportNames[0] ?? DEMO_VOLUME);
      await serveUntilSignalled(server, reporter, () => {
        announce(server, poolDir, reporter);
        reporter.out('');
        reporter.out('Connect with:');
        reporter.out(`  nbdinfo --list ${uri}`);
        reporter.out(`  qemu-system-x86_64 -m 1G -drive file=${uri}${name},format=raw,if=virtio ...`);
        reporter.out(`  mkdir -p /tmp/nbd && nbdfuse /tmp/nbd/disk ${uri}${name} &   # then: losetup -f --show /tmp/nbd/disk`);
        reporter.out(`  bin/thinbd snapshot --pool ${poolDir} ${name} ${name}-snap   # works while serving`);
        reporter.out('Stop with Ctrl-C (in-flight requests finish and the pool is committed).');
      });
    });
}
