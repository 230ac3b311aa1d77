// thinbd pool create | status
import type { Command } from '@commander-js/extra-typings';
import { Pool } from '../../pool/pool.ts';
import { DATA_BLOCK_SIZE_BYTES_DEFAULT, DATA_SIZE_BYTES_DEFAULT } from '../../constants.ts';
import type { Reporter } from '../report.ts';
import { UsageError } from '../report.ts';
import { poolDirectory, poolOption, sizeOption } from '../options.ts';
import { warnIfExposed, withService } from '../pool-access.ts';
import { formatSize } from '../sizes.ts';
import type { PoolHealth } from '../../pool/health.ts';
import type { LatencySummary } from '../../io/latency.ts';
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
    if ('copies' in device) lines.push(`  copies: ${device.copies}${device.degradedBlocks > 0 ? `, ${device.degradedBlocks} block(s) with a bad copy` : ''}`);
    lines.push(latency('read', device.latencyMs.read), latency('write', device.latencyMs.write), latency('sync', device.latencyMs.sync));
  }
  return lines;
}

export function registerPoolCommands(program: Command, reporter: Reporter): void {
  const pool = program.command('pool').description('create a pool or show its state');

  pool
    .command('create')
    .description('create a pool: a directory holding sparse metadata and data files')
    .addOption(poolOption())
    .option('--data-size <size>', 'data space', formatSize(DATA_SIZE_BYTES_DEFAULT))
    .option('--block-size <size>', 'data block size: a power of two, 64k to 1G', formatSize(DATA_BLOCK_SIZE_BYTES_DEFAULT))
    .option('--metadata-size <size>', 'metadata space (default: sized from the data space)')
    .option('--no-metadata-mirror', 'keep one copy of the metadata, not two (only on a device that is itself redundant: one bad sector can then lose the pool)')
    .action(async (options) => {
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
        options.metadataSize === undefined ? undefined : sizeOption('--metadata-size', options.metadataSize);
      const created = await Pool.create(dir, { dataSizeBytes, blockSizeBytes, metadataSizeBytes, metadataMirror: options.metadataMirror });
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
      for (const line of healthLines(status.health)) reporter.out(line);
    });
}
