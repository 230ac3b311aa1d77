// thinbd pool create | status | set | resize
import type { Command } from '@commander-js/extra-typings';
import { Pool } from '../../pool/pool.ts';
import { DATA_BLOCK_SIZE_BYTES_DEFAULT, DATA_SIZE_BYTES_DEFAULT } from '../../constants.ts';
import type { Reporter } from '../report.ts';
import { UsageError } from '../report.ts';
import { metadataSizeOption, poolDirectory, poolOption, sizeOption } from '../options.ts';
import { warnIfExposed, withService } from '../pool-access.ts';
import { formatSize } from '../sizes.ts';
import type { PoolHealth } from '../../pool/health.ts';
import type { LatencySummary } from '../../io/latency.ts';
import { spaceChange, spaceOptions, type SpaceOptionValues } from '../space-options.ts';
import type { PoolStatus, SpaceReport, SpaceSettings } from '../../pool/pool.ts';
import { DATA_BLOCK_SIZE_BYTES_MAX, DATA_BLOCK_SIZE_BYTES_MIN } from '../../constants.ts';

/** The health section of `pool status` (pool/health.ts): per device its state and rule, errors, bad ranges, remaps, spare and latency. */
function healthLines(health: PoolHealth): string[] {
  const latency = (name: string, summary: LatencySummary): string =>
    summary.count === 0
      ? `  ${name.padEnd(6)} no operations`
      : `  ${name.padEnd(6)} ${summary.count} ops, avg ${summary.avgMs.toFixed(3)} min ${summary.minMs.toFixed(3)} max ${summary.maxMs.toFixed(3)} ` +
        `p95 ${summary.p95Ms.toFixed(3)} p99 ${summary.p99Ms.toFixed(3)} stddev ${summary.stddevMs.toFixed(3)} ms`;
  const lines: string[] = [];
  for (const [name, device] of [['data', health.data], ['metadata', health.metadata]] as const) {
    lines.push(`${name} health: ${device.state} (${device.rule})`);
    lines.push(`  I/O errors: ${device.ioErrors.read} read, ${device.ioErrors.write} write, ${device.ioErrors.sync} sync since open`);
    lines.push(`  bad ranges: ${device.badRanges} (${device.badSectors} sectors); ${name === 'data' ? 'remapped blocks' : 'copies rewritten'}: ${device.remappedBlocks}; spare: ${device.spareBlocks} blocks`);
    if ('spareArea' in device && device.spareArea.blocks + device.spareArea.written > 0) {
      lines.push(`  spare area: ${device.spareArea.blocks} block(s) written ahead for remaps; ${device.spareArea.taken} remap(s) took one, ${device.spareArea.written} written since open`);
    }
    if ('copies' in device) lines.push(`  copies: ${device.copies}${device.degradedBlocks > 0 ? `, ${device.degradedBlocks} block(s) with a bad copy` : ''}`);
    lines.push(latency('read', device.latencyMs.read), latency('write', device.latencyMs.write), latency('sync', device.latencyMs.sync));
  }
  return lines;
}

export function registerPoolCommands(program: Command, reporter: Reporter): void {
  const pool = program.command('pool').description('create a pool, show its state, change its space settings or grow it');

  const create = pool
    .command('create')
    .description('create a pool: a directory holding sparse metadata and data files')
    .addOption(poolOption())
    .option('--data-size <size>', 'data space', formatSize(DATA_SIZE_BYTES_DEFAULT))
    .option('--block-size <size>', 'data block size: a power of two, 64k to 1G', formatSize(DATA_BLOCK_SIZE_BYTES_DEFAULT))
    .option('--metadata-size <size>', 'metadata space (default: sized from the data space)')
    .option('--no-metadata-mirror', 'keep one copy of the metadata, not two (only on a device that is itself redundant: one bad sector can then lose the pool)');
  for (const option of spaceOptions(false)) create.addOption(option);
  create.action(async (options) => {
      const dir = poolDirectory(options.pool);
      const blockSizeBytes = sizeOption('--block-size', options.blockSize);
      if (
        blockSizeBytes < DATA_BLOCK_SIZE_BYTES_MIN ||
        blockSizeBytes > DATA_BLOCK_SIZE_BYTES_MAX ||
        (blockSizeBytes & (blockSizeBytes - 1)) !== 0
      ) {
        throw new UsageError(`--block-size: ${options.blockSize} is not a power of two from 64k to 1G`);
      }
      const dataSizeBytes = sizeOption('--data-size', options.dataSize);
      if (dataSizeBytes < blockSizeBytes) {
        throw new UsageError(`--data-size: ${options.dataSize} is smaller than one block (${formatSize(blockSizeBytes)})`);
      }
      const metadataSizeBytes =
        options.metadataSize === undefined ? undefined : metadataSizeOption(options.metadataSize);
      const space = spaceChange(options as SpaceOptionValues, false) as SpaceSettings;
      const created = await Pool.create(dir, { dataSizeBytes, blockSizeBytes, metadataSizeBytes, metadataMirror: options.metadataMirror, space });
      const status = created.status();
      await created.close();
      reporter.out(
        `Created pool ${dir}: ${formatSize(status.dataBlockCount * status.blockSizeBytes)} of data in ` +
          `${formatSize(status.blockSizeBytes)} blocks`,
      );
    });

  pool
    .command('status')
    .description('show the pool: space, metadata, transaction, mode and I/O counters')
    .addOption(poolOption())
    .option('--json', 'print JSON')
    .action(async (options) => {
      const dir = poolDirectory(options.pool);
      // Opened for writing so `mode` is the pool's own (a read-only open reports 'read-only'); nothing is written.
      const status = await withService(dir, 'write', (service) => service.status());
      warnIfExposed(dir, reporter);
      if (options.json) {
        reporter.json(status);
        return;
      }
      const dataBytes = status.dataBlockCount * status.blockSizeBytes;
      const usedBytes = status.dataBlocksUsed * status.blockSizeBytes;
      const percent = (used: number, total: number) => (total === 0 ? '0' : ((100 * used) / total).toFixed(1));
      reporter.out(`pool:        ${dir}`);
      reporter.out(`mode:        ${status.mode}`);
      reporter.out(`block size:  ${formatSize(status.blockSizeBytes)}`);
      reporter.out(
        `data:        ${formatSize(usedBytes)} of ${formatSize(dataBytes)} used ` +
          `(${status.dataBlocksUsed}/${status.dataBlockCount} blocks, ${percent(status.dataBlocksUsed, status.dataBlockCount)}%)`,
      );
      reporter.out(
        `metadata:    ${status.metadataBlocksUsed}/${status.metadataBlockCount} blocks ` +
          `(${percent(status.metadataBlocksUsed, status.metadataBlockCount)}%)`,
      );
      reporter.out(`volumes:     ${status.volumeCount}`);
      reporter.out(`transaction: ${status.transactionId}`);
      for (const line of spaceLines(status)) reporter.out(line);
      for (const line of healthLines(status.health)) reporter.out(line);
    });

  const set = pool
    .command('set')
    .description('change the space settings stored in the pool (live on a served pool); `default` puts one back')
    .addOption(poolOption());
  for (const option of spaceOptions(true)) set.addOption(option);
  set.action(async (options) => {
    const change = spaceChange(options as SpaceOptionValues, true);
    if (Object.keys(change).length === 0) throw new UsageError('pool set: give at least one setting (see --help)');
    const dir = poolDirectory(options.pool);
    const settings = await withService(dir, 'write', (service) => service.setSpace({ change }));
    reporter.out(`Space settings of pool ${dir}: ${describeSettings(settings)}`);
  });

  pool
    .command('resize')
    .description('grow the data and/or metadata file now (live on a served pool); a pool never shrinks')
    .addOption(poolOption())
    .option('--data-size <size>', 'new data space')
    .option('--metadata-size <size>', 'new metadata space')
    .action(async (options) => {
      const dataSizeBytes = options.dataSize === undefined ? undefined : sizeOption('--data-size', options.dataSize);
      const metadataSizeBytes = options.metadataSize === undefined ? undefined : metadataSizeOption(options.metadataSize);
      if (dataSizeBytes === undefined && metadataSizeBytes === undefined) throw new UsageError('pool resize: give --data-size and/or --metadata-size');
      const dir = poolDirectory(options.pool);
      const status = await withService(dir, 'write', async (service) => {
        await service.resizePool({ ...(dataSizeBytes === undefined ? {} : { dataSizeBytes }), ...(metadataSizeBytes === undefined ? {} : { metadataSizeBytes }) });
        return service.status();
      });
      reporter.out(
        `Pool ${dir}: ${formatSize(status.space.data.sizeBytes)} of data, ${formatSize(status.space.metadata.sizeBytes)} of metadata`,
      );
    });
}

/** The settings as `pool set` takes them; defaults named as such. */
function describeSettings(settings: SpaceSettings): string {
  const mark = (value: SpaceSettings['lowWater']): string =>
    value === undefined ? 'default' : value === 'off' ? 'off' : 'percent' in value ? `${value.percent}%` : formatSize(value.bytes);
  const size = (bytes: number | undefined): string => (bytes === undefined ? 'default' : formatSize(bytes));
  const whenFull = settings.whenFull === undefined ? 'default' : settings.whenFull === 'error' ? 'error' : `queue:${settings.whenFull.queueSeconds}`;
  const onOff = (value: boolean | undefined): string => (value === undefined ? 'default' : value ? 'on' : 'off');
  return (
    `low-water ${mark(settings.lowWater)}, metadata-low-water ${mark(settings.metadataLowWater)}, data-max ${size(settings.dataMaxBytes)}, ` +
    `metadata-max ${size(settings.metadataMaxBytes)}, grow-step ${size(settings.growStepBytes)}, when-full ${whenFull}, ` +
    `auto-grow ${onOff(settings.autoGrow)}, punch ${onOff(settings.punchHoles)}`
  );
}

function spaceLines(status: PoolStatus): string[] {
  const { space } = status;
  const resource = (report: SpaceReport): string =>
    `${report.state}: ${formatSize(report.freeBytes)} can still be given, low-water mark ${formatSize(report.lowWaterBytes)}, ` +
    `file ${formatSize(report.sizeBytes)}${report.canGrow ? ` (grows to ${formatSize(report.maxBytes)}; grew ${report.grows} times)` : ' (fixed size)'}`;
  const lines = [`data space:  ${resource(space.data)}`, `meta space:  ${resource(space.metadata)}`, `settings:    ${describeSettings(space.settings)}`];
  if (space.host !== undefined) {
    lines.push(`host fs:     ${formatSize(space.host.freeBytes)} free of ${formatSize(space.host.sizeBytes)}, ${formatSize(space.host.marginBytes)} left to others`);
  }
  lines.push(
    `given back:  ${formatSize(space.punchedBytes)} in ${space.punchCalls} punches${space.punching ? '' : ' (off)'}; ` +
      `writes waiting for space: ${space.writesWaiting} now, ${space.writesWaited} since open`,
  );
  return lines;
}
