// thinbd image import | ls | stats
import type { Command } from '@commander-js/extra-typings';
import type { CommandResult, Reporter } from '../report.ts';
import { UsageError, exitCodes, formatTable } from '../report.ts';
import { parseLabels, poolDirectory, poolOption, sizeOption, volumeName } from '../options.ts';
import { withPool } from '../pool-access.ts';
import { formatSize } from '../sizes.ts';
import { catchInterrupts } from '../interrupt.ts';
import { startProgress, type Progress } from '../progress.ts';
import { importImage, removeStaleImports, startParseThreadAhead, type ImageFormat } from '../../image/import.ts';
import { ThinError } from '../../errors.ts';
import { listImages } from '../../image/catalog.ts';
import { imageStats } from '../../image/stats.ts';
import { sourceOpeners } from '../../image/remote.ts';
import { displayUrl, isPathSource } from '../../image/source.ts';
import { DATA_BLOCK_SIZE_BYTES_DEFAULT, DATA_BLOCK_SIZE_BYTES_MAX, DATA_BLOCK_SIZE_BYTES_MIN, VOLUME_SIZE_BYTES_MAX } from '../../constants.ts';
import { escapeControlCharacters } from '../../util/log.ts';

function parseFormat(text: string): ImageFormat {
  if (text !== 'auto' && text !== 'tar' && text !== 'oci') throw new UsageError(`--format: '${text}' is not auto, tar or oci`);
  return text;
}

export function registerImageCommands(program: Command, reporter: Reporter, result: CommandResult): void {
  const image = program.command('image').description('container images as read-only ext4 volumes');

  image
    .command('import')
    .description('turn a tar, docker save or OCI archive (file, -, http(s):// or s3://) into a read-only ext4 volume')
    .argument('<name>', 'volume name')
    .argument('<source>', 'archive: a file, - for standard input, an http(s):// URL or s3://BUCKET/KEY')
    .addOption(poolOption())
    .option('--size <size>', 'volume size (default: what the image needs, plus as much again and at least 1G free)')
    .option('--format <format>', 'auto, tar (a root file system) or oci (docker save / OCI layout)', 'auto')
    .option('--label <key=value...>', 'labels kept with the volume', [] as string[])
    .option('--endpoint <url>', 'S3-compatible endpoint for s3:// sources (default $AWS_ENDPOINT_URL_S3, then $AWS_ENDPOINT_URL, then AWS)')
    .option('--json', 'print a JSON summary')
    .action(async (nameText, source, options) => {
      const name = volumeName('volume name', nameText);
      const sizeBytes = options.size === undefined ? undefined : sizeOption('--size', options.size);
      if (sizeBytes !== undefined && (sizeBytes < 1 || sizeBytes > VOLUME_SIZE_BYTES_MAX)) throw new UsageError(`--size: ${options.size} is out of range`);
      const format = parseFormat(options.format);
      const labels = parseLabels(options.label);
      let progress: Progress | undefined;
      // Ctrl-C, SIGTERM or SIGHUP stops the import cleanly: the volume it was building is removed.
      const interrupted = catchInterrupts((signal) => `Import of ${isPathSource(source) ? source : displayUrl(source)} into ${name} interrupted by ${signal}`);
      // The thread that will parse a local tar starts loading now, while the pool and the source open.
      const parseThread = startParseThreadAhead(source, format);
      const directory = poolDirectory(options.pool);
      const result = await withPool(directory, 'write', async (pool) => {
        // A killed import left its temporary volume: this one holds the pool alone, so every such volume is a leftover.
        const stale = await removeStaleImports(pool, name);
        for (const removed of stale.removed) reporter.note(`Removed ${removed}, left by an import that did not finish`);
        for (const kept of stale.leftAlone) {
          reporter.note(`Left ${kept} alone: named like a temporary volume of this import, but not marked as one (if it is a leftover, thinbd remove --pool ${directory} ${kept} removes it)`);
        }
        return await importImage(pool, name, source, {
          ...(sizeBytes === undefined ? {} : { sizeBytes }),
          format,
          labels,
          signal: interrupted.signal,
          parseThread,
          openers: sourceOpeners({ ...(options.endpoint === undefined ? {} : { endpoint: options.endpoint }) }),
          onProgress: (done, total) => {
            if (total === undefined) return;
            progress ??= startProgress(`image ${name}`, total, { bytes: true });
            progress.update(done);
          },
        });
      }).finally(async () => {
        interrupted.release();
        progress?.stop();
        await parseThread?.close();
      });
      if (options.json) {
        reporter.json(result);
        return;
      }
      const shared = result.layers.filter((layer) => layer.shared).length;
      reporter.out(
        `Imported ${result.source} into read-only volume ${name} (${formatSize(result.sizeBytes)}): ${result.files} files, ` +
          `${formatSize(result.fileBytes)} in ${result.seconds.toFixed(2)}s; ${formatSize(result.dataBytesWritten)} data and ` +
          `${formatSize(result.metadataBytesWritten)} metadata written` +
          (result.dataBytesShared > 0 ? `, ${formatSize(result.dataBytesShared)} of data shared with blocks already in the pool` : '') +
          (result.layers.length > 0 ? `; ${result.layers.length} layers, ${shared} shared with images already in the pool` : ''),
      );
    });

  image
    .command('ls')
    .description('list the images in the pool (not their snapshots) with their source, digest, files, bytes and snapshot count')
    .addOption(poolOption())
    .option('--json', 'print JSON')
    .action(async (options) => {
      const images = await withPool(poolDirectory(options.pool), 'read', async (pool) => listImages(pool));
      if (options.json) {
        reporter.json(images);
        return;
      }
      const rows = images.map((item) => [
        item.name,
        item.digest.slice(0, 'sha256:'.length + 12),
        item.format,
        String(item.files),
        formatSize(item.fileBytes),
        formatSize(item.sizeBytes),
        formatSize(item.exclusiveBytes),
        formatSize(item.sharedBytes),
        String(item.snapshots),
        item.source,
      ]);
      const header = ['NAME', 'DIGEST', 'FORMAT', 'FILES', 'BYTES', 'SIZE', 'EXCLUSIVE', 'SHARED', 'SNAPSHOTS', 'SOURCE'];
      for (const line of formatTable(header, rows)) reporter.out(line);
    });

  image
    .command('stats')
    .description('sizes of the images in a directory or under an s3://BUCKET/PREFIX (before sizing a pool)')
    .argument('<source>', 'a directory or s3://BUCKET/PREFIX')
    .option('--top <n>', 'how many of the largest to list', '10')
    .option('--deep', 'also read each image: files, unpacked bytes and the pool space it would take')
    .option('--block-size <size>', 'with --deep: the block size of the pool to count for', formatSize(DATA_BLOCK_SIZE_BYTES_DEFAULT))
    .option('--endpoint <url>', 'S3-compatible endpoint (default $AWS_ENDPOINT_URL_S3, then $AWS_ENDPOINT_URL, then AWS)')
    .option('--json', 'print JSON')
    .action(async (source, options) => {
      const top = Number(options.top);
      if (!Number.isSafeInteger(top) || top < 0) throw new UsageError(`--top: '${options.top}' is not a count`);
      const poolBlockSizeBytes = sizeOption('--block-size', options.blockSize);
      if (poolBlockSizeBytes < DATA_BLOCK_SIZE_BYTES_MIN || poolBlockSizeBytes > DATA_BLOCK_SIZE_BYTES_MAX || (poolBlockSizeBytes & (poolBlockSizeBytes - 1)) !== 0) {
        throw new UsageError(`--block-size: ${options.blockSize} is not a power of two from 64k to 1G`);
      }
      const endpoint = options.endpoint === undefined ? {} : { endpoint: options.endpoint };
      const stats = await imageStats(source, { top, deep: Boolean(options.deep), poolBlockSizeBytes, openers: sourceOpeners(endpoint), ...endpoint });
      // Images deep could not read: the figures leave them out, so the command did not do all it was asked.
      if (stats.errors.length > 0) result.exitCode = exitCodes.failure;
      if (options.json) {
        reporter.json(stats);
        return;
      }
      reporter.out(
        `${stats.count} images, ${formatSize(stats.totalBytes)} in all: min ${formatSize(stats.minBytes)}, max ${formatSize(stats.maxBytes)}, average ${formatSize(stats.averageBytes)}` +
          (stats.skipped > 0 ? ` (${stats.skipped} other files skipped: not tar, gzip or zstd archives)` : ''),
      );
      if (stats.files !== undefined) {
        reporter.out(`${stats.files} files, ${formatSize(stats.fileBytes ?? 0)} unpacked; importing each alone would take ${formatSize(stats.poolBytes ?? 0)} of pool space`);
      }
      const rows = stats.largest.map((item) => [
        item.key,
        formatSize(item.sizeBytes),
        ...(options.deep ? [item.files === undefined ? '-' : String(item.files), item.fileBytes === undefined ? '-' : formatSize(item.fileBytes), item.poolBytes === undefined ? '-' : formatSize(item.poolBytes)] : []),
      ]);
      const header = ['KEY', 'SIZE', ...(options.deep ? ['FILES', 'UNPACKED', 'POOL'] : [])];
      if (rows.length > 0) for (const line of formatTable(header, rows)) reporter.out(line);
      // An empty listing is most often a mistyped prefix: say so where a script's output is not read.
      if (stats.count === 0 && stats.skipped === 0) reporter.note(`thinbd: note: nothing under ${escapeControlCharacters(stats.source)}: no images, no other files`);
      for (const error of stats.errors) reporter.note(escapeControlCharacters(`${error.key}: ${error.message}`));
      if (stats.errors.length > 0) reporter.note(`${stats.errors.length} of ${stats.count} images could not be read: the figures above leave them out`);
    });
}
