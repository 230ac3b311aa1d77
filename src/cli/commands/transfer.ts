// thinbd import | export
import type { Command } from '@commander-js/extra-typings';
import type { Reporter } from '../report.ts';
import { poolDirectory, poolOption, sizeOption, volumeName } from '../options.ts';
import { assertPoolExists, liveService, withPinnedView, withPool } from '../pool-access.ts';
import { formatSize } from '../sizes.ts';
import { catchInterrupts } from '../interrupt.ts';
import { startProgress, type Progress } from '../progress.ts';
import { exportRaw, importRaw } from '../../tools/transfer.ts';
import type { VolumeReader } from '../../tools/pool-view.ts';
import type { PoolService } from '../../daemon/service.ts';
import { randomBytes } from 'node:crypto';
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
      // Ctrl-C, SIGTERM or SIGHUP stops the import cleanly: a volume it created is removed again.
      const interrupted = catchInterrupts((signal) => `Import into ${name} interrupted by ${signal}`);
      const result = await withPool(poolDirectory(options.pool), 'write', (pool) =>
        importRaw(pool, name, source, { offsetBytes, onProgress: progress.onProgress, signal: interrupted.signal }),
      ).finally(() => {
        interrupted.release();
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
    .option('--snapshot', 'on a served pool: export a read-only snapshot taken for the export and removed after it (a volume in use)')
    .action(async (nameText, file, options) => {
      const name = volumeName('volume name', nameText);
      const dir = poolDirectory(options.pool);
      assertPoolExists(dir);
      const progress = progressReporter(`export ${name}`);
      const target = file === '-' ? { stream: process.stdout } : { path: file };
      // Ctrl-C, SIGTERM or SIGHUP stops the export cleanly: the snapshot --snapshot took is removed.
      const interrupted = catchInterrupts((signal) => `Export of ${name} interrupted by ${signal}`);
      const live = await liveService(dir);
      const result = await (
        live === undefined
          ? withPool(dir, 'read', (pool) => exportRaw(pool.volume(name), target, progress.onProgress, interrupted.signal), reporter)
          : exportServed(dir, live, name, options.snapshot === true, (volume) => exportRaw(volume, target, progress.onProgress, interrupted.signal))
      ).finally(() => {
        interrupted.release();
        progress.stop();
      });
      if (file !== '-') reporter.out(`Exported volume ${name} (${formatSize(result.sizeBytes)}) to ${file}`);
    });
}

/**
 * Export from a pool `thinbd serve` owns: the volume is read from a generation the server pins
 * (docs/format.md "Pinned generations") beside it. Only a read-only volume keeps its bytes while
 * clients write, so a writable one is exported through a read-only snapshot taken for the export
 * (`--snapshot`) and removed after it, whatever happens.
 */
async function exportServed<T>(dir: string, live: PoolService, name: string, snapshot: boolean, work: (volume: VolumeReader) => Promise<T>): Promise<T> {
  try {
    let source = name;
    if (snapshot) {
      source = `export-${process.pid}-${randomBytes(4).toString('hex')}`;
      await live.snapshot({ source: name, name: source, readOnly: true });
    }
    try {
      return await withPinnedView(dir, live, async (view) => {
        const device = view.device(source);
        const volume = view.volumeReader(device);
        if (!volume.readOnly) {
          throw new ThinError(
            'THIN_BUSY',
            `Volume ${name} is writable and pool ${dir} is being served, so its bytes may change during the export; ` +
              'add --snapshot to export a read-only snapshot of it, or export a read-only snapshot',
          );
        }
        return await work(volume);
      });
    } finally {
      if (source !== name) await live.removeVolume({ name: source, force: true });
    }
  } finally {
    await live.close();
  }
}
