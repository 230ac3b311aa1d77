// thinbd import | export
import type { Command } from '@commander-js/extra-typings';
import type { Reporter } from '../report.ts';
import { poolDirectory, poolOption, sizeOption, volumeName } from '../options.ts';
import { withPool } from '../pool-access.ts';
import { formatSize } from '../sizes.ts';
import { startProgress, type Progress } from '../progress.ts';
import { exportRaw, importRaw } from '../../tools/transfer.ts';
import { ThinError } from '../../errors.ts';


function progressReporter(label: string): { onProgress: (done: number, total: number | undefined) => void; stop: () => void } {
  let progress: Progress | undefined;
  return {
    onProgress: (done, total) => {
      if (total === undefined) return;
      progress ??= startProgress(label, total, { bytes: true });
      progress.update(done);
    },
    stop: () => progress?.stop(),
  };
}

export function registerTransferCommands(program: Command, reporter: Reporter): void {
  program
    .command('import')
    .description('copy a raw image (a file, or - for stdin) into a volume, creating it when absent')
    .argument('<name>', 'volume name')
    .argument('<file>', 'raw image file, or - for standard input')
    .addOption(poolOption())
    .option('--offset <size>', 'where in the volume the image starts', '0')
    .action(async (nameText, file, options) => {
      const name = volumeName('volume name', nameText);
      const offsetBytes = sizeOption('--offset', options.offset);
      const progress = progressReporter(`import ${name}`);
      const source = file === '-' ? { stream: process.stdin } : { path: file };
      // Ctrl-C or SIGTERM stops the import cleanly: a volume it created is removed again.
      const interrupted = new AbortController();
      const onSignal = (signal: NodeJS.Signals): void => {
        interrupted.abort(new ThinError('THIN_INTERRUPTED', `Import into ${name} interrupted by ${signal}`));
      };
      process.once('SIGINT', onSignal).once('SIGTERM', onSignal);
      const result = await withPool(poolDirectory(options.pool), 'write', (pool) =>
        importRaw(pool, name, source, { offsetBytes, onProgress: progress.onProgress, signal: interrupted.signal }),
      ).finally(() => {
        process.off('SIGINT', onSignal).off('SIGTERM', onSignal);
        progress.stop();
      });
      reporter.out(
        `Imported ${formatSize(result.bytesRead)} into ${result.volumeCreated ? 'new ' : ''}volume ${name} ` +
          `(${formatSize(result.bytesWritten)} written, the rest zeros left unmapped)`,
      );
    });

  program
    .command('export')
    .description('write a volume to a raw image file (unmapped ranges stay holes), or - for stdout')
    .argument('<name>', 'volume name')
    .argument('<file>', 'raw image file to write, or - for standard output')
    .addOption(poolOption())
    .action(async (nameText, file, options) => {
      const name = volumeName('volume name', nameText);
      const progress = progressReporter(`export ${name}`);
      const target = file === '-' ? { stream: process.stdout } : { path: file };
      const result = await withPool(poolDirectory(options.pool), 'read', (pool) =>
        exportRaw(pool, name, target, progress.onProgress),
      ).finally(progress.stop);
      if (file !== '-') reporter.out(`Exported volume ${name} (${formatSize(result.sizeBytes)}) to ${file}`);
    });
}
