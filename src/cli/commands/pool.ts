// thinbd pool create | status
import type { Command } from '@commander-js/extra-typings';
import { Pool } from '../../pool/pool.ts';
import { DATA_BLOCK_SIZE_BYTES_DEFAULT, DATA_SIZE_BYTES_DEFAULT } from '../../constants.ts';
import type { Reporter } from '../report.ts';
import { UsageError } from '../report.ts';
import { poolDirectory, poolOption, sizeOption } from '../options.ts';
import { warnIfExposed, withService } from '../pool-access.ts';
import { formatSize } from '../sizes.ts';
import { DATA_BLOCK_SIZE_BYTES_MAX, DATA_BLOCK_SIZE_BYTES_MIN } from '../../constants.ts';

export function registerPoolCommands(program: Command, reporter: Reporter): void {
  const pool = program.command('pool').description('create a pool or show its state');

  pool
    .command('create')
    .description('create a pool: a directory holding sparse metadata and data files')
    .addOption(poolOption())
    .option('--data-size <size>', 'data space', formatSize(DATA_SIZE_BYTES_DEFAULT))
    .option('--block-size <size>', 'data block size: a power of two, 64k to 1G', formatSize(DATA_BLOCK_SIZE_BYTES_DEFAULT))
    .option('--metadata-size <size>', 'metadata space (default: sized from the data space)')
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
      const created = await Pool.create(dir, { dataSizeBytes, blockSizeBytes, metadataSizeBytes });
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
    });
}
