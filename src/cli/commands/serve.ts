// thinbd serve | demo
import { existsSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { Option, type Command } from '@commander-js/extra-typings';
import type { Reporter } from '../report.ts';
import { UsageError } from '../report.ts';
import { poolDirectory, poolOption, volumeName } from '../options.ts';
import { assertPoolExists, poolExposure } from '../pool-access.ts';
import { Logger, LOG_LEVELS, type LogSink } from '../../util/log.ts';
import { notifySystemd } from '../../io/systemd-notify.ts';
import { describeExposure } from '../../io/private.ts';
import { PoolServer, describeAddress, parseListenAddress } from '../../daemon/serve.ts';
import { loadNbdTls, type NbdTls, type NbdTlsMode } from '../../nbd/tls.ts';
import { isThinError } from '../../errors.ts';
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
  tls?: NbdTlsMode;
  tlsCert?: string;
  tlsKey?: string;
  tlsCa?: string;
  tlsPsk?: string;
  export?: string[];
  metrics?: string;
}

/** A file of secrets serve was given, by the option that named it. */
interface SecretFile {
  option: string;
  path: string;
}

/**
 * --tls and its credentials. With credentials and no --tls, TLS is offered (`on`), as nbdkit does
 * once given certificates; `require` must be asked for. Credentials with `--tls off` contradict.
 */
function tlsOptions(options: ServeCommandOptions, log: LogSink): NbdTls | undefined {
  const files = {
    ...(options.tlsCert === undefined ? {} : { certFile: resolve(options.tlsCert) }),
    ...(options.tlsKey === undefined ? {} : { keyFile: resolve(options.tlsKey) }),
    ...(options.tlsCa === undefined ? {} : { caFile: resolve(options.tlsCa) }),
    ...(options.tlsPsk === undefined ? {} : { pskFile: resolve(options.tlsPsk) }),
  };
  const hasCredentials = Object.keys(files).length > 0;
  const mode = options.tls ?? (hasCredentials ? 'on' : 'off');
  if (mode === 'off') {
    if (hasCredentials) throw new UsageError('--tls off with --tls-cert/--tls-key/--tls-ca/--tls-psk: drop the credentials or use --tls on|require');
    return undefined;
  }
  try {
    return loadNbdTls(mode, files, log);
  } catch (error) {
    if (isThinError(error, 'THIN_INVALID')) throw new UsageError(`--tls ${mode}: ${error.message}`);
    throw error;
  }
}

/** --export NAME (repeatable): the volumes to serve, names checked (PoolServer checks they exist). */
function exportNames(names: string[] | undefined): string[] | undefined {
  if (names === undefined || names.length === 0) return undefined;
  return names.map((name) => volumeName('--export volume name', name));
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
async function serveUntilSignalled(server: PoolServer, log: LogSink, announce: () => void): Promise<void> {
  await new Promise<void>((done) => {
    const stop = (signal: string): void => {
      log({ level: 'info', event: 'serve.stopping', message: `${signal}: finishing in-flight requests, committing, closing`, signal });
      notifySystemd('STOPPING=1\nSTATUS=Finishing in-flight requests, committing, closing');
      process.off('SIGTERM', onTerm);
      process.off('SIGINT', onInt);
      server.stop().then(
        () => {
          const uncommitted = server.closedWithoutCommit;
          if (uncommitted === undefined) log({ level: 'info', event: 'serve.stopped', message: 'stopped: pool committed and closed' });
          else log({ level: 'error', event: 'serve.stopped', message: `stopped: pool closed without a final commit, since ${uncommitted}; run thinbd check` });
          done();
        },
        (error: unknown) => {
          log({ level: 'error', event: 'serve.stop_failed', message: `stopping failed: ${error instanceof Error ? error.message : String(error)}` });
          process.exitCode = 1;
          done();
        },
      );
    };
    const onTerm = (): void => stop('SIGTERM');
    const onInt = (): void => stop('SIGINT');
    process.on('SIGTERM', onTerm);
    process.on('SIGINT', onInt);
    announce();
  });
}

/** The ready line on stdout (what scripts and the tests wait for), then the same as a log event, then warnings. */
function announce(server: PoolServer, poolDir: string, reporter: Reporter, log: LogSink, tlsMode: NbdTlsMode = 'off', secrets: SecretFile[] = []): void {
  const where = server.addresses.map((address) => describeAddress(address, tlsMode)).join(' and ');
  const tls = tlsMode === 'off' ? '' : tlsMode === 'on' ? ' (TLS offered)' : ' (TLS required)';
  const serving = `Serving ${server.exportNames.length} volume(s) of pool ${poolDir} on ${where}${tls}`;
  reporter.out(serving);
  // Type=notify (the systemd unit in systemd/): ready once every listener is open.
  notifySystemd(`READY=1\nSTATUS=${serving}\nMAINPID=${process.pid}`);
  const metrics = server.metricsAddress;
  const metricsUrl = metrics === undefined ? undefined : `http://${metrics.host.includes(':') ? `[${metrics.host}]` : metrics.host}:${metrics.port}/metrics`;
  if (metricsUrl !== undefined) reporter.out(`Metrics on ${metricsUrl}`);
  log({
    level: 'info',
    event: 'serve.started',
    message: serving,
    addresses: server.addresses.map((address) => describeAddress(address, tlsMode)),
    exports: server.exportNames,
    tls: tlsMode,
    ...(metricsUrl === undefined ? {} : { metrics: metricsUrl }),
  });
  const exposure = poolExposure(poolDir);
  if (exposure !== undefined) log({ level: 'warn', event: 'serve.pool_exposed', message: exposure });
  // A TLS private key or PSK file others can read lets them pose as the server or as a client (ssh
  // refuses such a key outright; nbdkit and qemu say nothing): one warning each, as for the pool.
  for (const secret of secrets) {
    const secretExposure = describeExposure([secret.path]);
    if (secretExposure !== undefined) log({ level: 'warn', event: 'serve.secret_exposed', message: `${secret.option}: ${secretExposure}` });
  }
  for (const address of server.addresses) {
    if (!('host' in address) || isLoopback(address.host) || tlsMode === 'require') continue;
    const what = tlsMode === 'off' ? 'without TLS' : 'with TLS offered but not required (--tls require)';
    log({
      level: 'warn',
      event: 'serve.insecure_listener',
      message: `serving on ${describeAddress(address)} ${what}: anyone who can reach that address can read and write every exported volume`,
    });
  }
}

/**
 * The server's logger: --log-format (auto: human lines on a terminal, JSON lines otherwise, as
 * under systemd), --log-level (info: events, never one line per request).
 */
function serveLogger(options: { logLevel?: (typeof LOG_LEVELS)[number]; logFormat?: 'auto' | 'json' | 'human' }, poolDir: string, reporter: Reporter): Logger {
  const format = options.logFormat === undefined || options.logFormat === 'auto' ? (reporter.isTerminal ? 'human' : 'json') : options.logFormat;
  return new Logger({ level: options.logLevel ?? 'info', format, fields: { pool: poolDir }, program: 'thinbd serve' });
}

function logOptions() {
  return [
    new Option('--log-level <level>', 'least severe events logged: error, warn, info (default: refusals, errors and changes of state) or debug (also every connection)').choices(LOG_LEVELS),
    new Option('--log-format <format>', 'log lines on stderr: json, human, or auto (default: human on a terminal, JSON otherwise)').choices(['auto', 'json', 'human'] as const),
  ] as const;
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
    .option('--read-only', 'open the pool read-only: every volume exported read-only, and every change through the control socket refused')
    .option('--metrics <host:port>', 'serve Prometheus metrics over HTTP at http://HOST:PORT/metrics (no TLS: keep it on loopback or a private network)')
    .option('--export <name...>', 'serve only these volumes (repeatable); others, and volumes created later, are not reachable')
    .addOption(new Option('--tls <mode>', 'STARTTLS on the NBD port: off, on (offered) or require (default: on when credentials are given, else off)').choices(['off', 'on', 'require'] as const))
    .option('--tls-cert <file>', 'PEM certificate (chain) the server presents')
    .option('--tls-key <file>', 'PEM private key of --tls-cert')
    .option('--tls-ca <file>', 'PEM CA certificates: clients must present a certificate signed by one of them')
    .option('--tls-psk <file>', "pre-shared keys, nbdkit's format (psktool -u NAME -p FILE): username:hexkey lines; re-read when it changes")
    .addOption(logOptions()[0])
    .addOption(logOptions()[1])
    .option('--inject <file>', 'fault injection for drills and tests: a JSON rules file making sectors of the data or metadata file fail or flip bits (its rules and fields: README, thinbd serve; src/io/fault-injection.ts)')
    .option('--remap-spares <blocks>', 'once the data file refuses a write, keep this many free data blocks written ahead for remaps (at most 16, 1 MiB and 1/16 of the pool; default 0: off)')
    .option('--on-low-water <command>', 'shell command run once each time free data or metadata space falls below its low-water mark (THINBD_POOL, THINBD_EVENT, THINBD_RESOURCE, THINBD_FREE_BYTES, THINBD_USED_BYTES, THINBD_SIZE_BYTES, THINBD_MAX_BYTES and THINBD_LOW_WATER_BYTES in its environment)')
    .action(async (options) => {
      const poolDir = poolDirectory(options.pool);
      assertPoolExists(poolDir);
      const addresses = listenAddresses(options);
      // Read (and refused when malformed) before the pool is opened: a bad rules file changes nothing.
      const faultRules = options.inject === undefined ? undefined : readFaultRules(options.inject);
      const remapSpareBlocks = options.remapSpares === undefined ? undefined : Number(options.remapSpares);
      if (remapSpareBlocks !== undefined && !(/^\d+$/.test(options.remapSpares!) && Number.isSafeInteger(remapSpareBlocks))) {
        throw new UsageError(`--remap-spares: '${options.remapSpares}' is not a block count (0 or more)`);
      }
      const log = serveLogger(options, poolDir, reporter).sink;
      const tls = tlsOptions(options, log);
      const exports = exportNames(options.export);
      const metrics = options.metrics === undefined ? undefined : parseListenAddress(options.metrics);
      if (options.metrics !== undefined && metrics === undefined) {
        throw new UsageError(`--metrics: '${options.metrics}' is not HOST:PORT (e.g. 127.0.0.1:9109)`);
      }
      const server = await PoolServer.start({
        poolDir,
        ...addresses,
        readOnly: Boolean(options.readOnly),
        ...(tls === undefined ? {} : { tls }),
        ...(exports === undefined ? {} : { exports }),
        ...(metrics === undefined ? {} : { metrics }),
        ...(faultRules !== undefined ? { faultRules } : {}),
        ...(remapSpareBlocks !== undefined ? { remapSpareBlocks } : {}),
        log,
        ...(options.onLowWater === undefined ? {} : { onLowWater: options.onLowWater }),
      });
      const secrets: SecretFile[] = [];
      if (options.tlsKey !== undefined) secrets.push({ option: '--tls-key', path: resolve(options.tlsKey) });
      if (options.tlsPsk !== undefined) secrets.push({ option: '--tls-psk', path: resolve(options.tlsPsk) });
      await serveUntilSignalled(server, log, () => announce(server, poolDir, reporter, log, tls?.mode ?? 'off', secrets));
    });

  program
    .command('demo')
    .description(`create the pool if missing (16G of sparse data space, one 8G volume ${DEMO_VOLUME}) and serve it`)
    .addOption(poolOption('created when missing'))
    .option('--listen <host:port...>', `TCP address (default ${SERVE_HOST_DEFAULT}:${SERVE_PORT_DEFAULT})`)
    .addOption(logOptions()[0])
    .addOption(logOptions()[1])
    .action(async (options) => {
      const poolDir = poolDirectory(options.pool);
      const log = serveLogger(options, poolDir, reporter).sink;
      if (!existsSync(join(poolDir, METADATA_FILE_NAME))) {
        const pool = await Pool.create(poolDir, { dataSizeBytes: DATA_SIZE_BYTES_DEFAULT, blockSizeBytes: DATA_BLOCK_SIZE_BYTES_DEFAULT });
        await pool.createVolume(DEMO_VOLUME, { sizeBytes: DEMO_VOLUME_SIZE_BYTES });
        await pool.close();
        reporter.out(`Created pool ${poolDir} (16G sparse data space) with an 8G volume ${DEMO_VOLUME}`);
      }
      const server = await PoolServer.start({ poolDir, ...listenAddresses({ listen: options.listen }), log });
      const tcp = server.addresses.find((address) => 'port' in address);
      const uri = tcp ? describeAddress(tcp) : describeAddress(server.addresses[0]!);
      const name = server.exportNames.includes(DEMO_VOLUME) ? DEMO_VOLUME : (server.exportNames[0] ?? DEMO_VOLUME);
      await serveUntilSignalled(server, log, () => {
        announce(server, poolDir, reporter, log);
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
