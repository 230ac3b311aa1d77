// thinbd dump | restore | delta | metadata size — the dm-thin interop tools (src/tools).
import { closeSync, fstatSync, openSync, rmSync, statSync } from 'node:fs';
import type { Command } from '@commander-js/extra-typings';
import type { Reporter } from '../report.ts';
import { UsageError } from '../report.ts';
import { metadataSizeOption, poolDirectory, poolOption, sizeOption, volumeName } from '../options.ts';
import { assertPoolExists, withReadTarget } from '../pool-access.ts';
import { formatSize } from '../sizes.ts';
import { startProgress, type Progress } from '../progress.ts';
import { DescriptorSink, StreamSink, type TextSink } from '../../tools/dump/sink.ts';
import type { DumpVisitor } from '../../tools/dump/events.ts';
import type { RestoreData } from '../../tools/restore.ts';
import { estimateMetadataSize } from '../../tools/metadata-size.ts';
import { openPrivateFile } from '../../io/private.ts';
import { METADATA_BLOCK_SIZE_BYTES, RESTORE_FILE_READ_BYTES, SUPERBLOCK_BLOCK_NRS } from '../../constants.ts';
import { ThinError } from '../../errors.ts';


/** The size of an input file (`-i`), or a one-line error naming it when it is not a file that reads. */
function inputFileBytes(inputPath: string, what: string): number {
  let stats;
  try {
    stats = statSync(inputPath);
    closeSync(openSync(inputPath, 'r'));
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code;
    const reason = code === 'ENOENT' ? 'no such file' : code === 'EACCES' || code === 'EPERM' ? 'permission denied' : (error as Error).message;
    throw new ThinError(code === 'ENOENT' ? 'THIN_NOT_FOUND' : 'THIN_IO', `Cannot read ${inputPath}: ${reason}`, { cause: error });
  }
  if (stats.isDirectory()) throw new ThinError('THIN_INVALID', `Cannot read ${inputPath}: it is a directory, not ${what}`);
  return stats.size;
}

function choice<T extends string>(option: string, text: string, allowed: readonly T[]): T {
  if (!(allowed as readonly string[]).includes(text)) throw new UsageError(`${option}: '${text}' is not one of ${allowed.join(', ')}`);
  return text as T;
}

/**
 * Standard output as a sink: its descriptor written directly when it is a file or a character
 * device (a redirect, /dev/null, a terminal), process.stdout when it is a pipe or a socket, whose
 * writes may have to wait for the reader.
 */
function standardOutputSink(): TextSink {
  const stat = fstatSync(1);
  return stat.isFile() || stat.isCharacterDevice() ? new DescriptorSink(1, 'standard output') : new StreamSink(process.stdout);
}

/** Output to a new file (removed again if the command fails) or to stdout; `work` flushes the sink. */
async function withOutput(file: string | undefined, work: (sink: TextSink) => Promise<void>): Promise<void> {
  if (file === undefined || file === '-') {
    await work(standardOutputSink());
    return;
  }
  const fd = openPrivateFile(file, 'wx');
  let written = false;
  try {
    await work(new DescriptorSink(fd, file));
    written = true;
  } finally {
    closeSync(fd);
    if (!written) rmSync(file, { force: true });
  }
}

// Each command loads the library it runs when it runs (the group registers five commands, and
// loading all their libraries was a large part of a short dump's or restore's time).
export function registerToolCommands(program: Command, reporter: Reporter): void {
  program
    .command('dump')
    .description("write the pool's metadata as thin_dump XML (what thin_restore reads), JSON or thin_dump's human format")
    .addOption(poolOption())
    .option('-o, --output <file>', 'write to a new file instead of standard output')
    .option('--format <format>', 'xml, json or human', 'xml')
    .action(async (options) => {
      const dir = poolDirectory(options.pool);
      const format = choice('--format', options.format, ['xml', 'json', 'human'] as const);
      assertPoolExists(dir);
      let progress: Progress | undefined;
      const [{ dumpPool }, { XmlDumpWriter }, { JsonDumpWriter }, { HumanDumpWriter }] = await Promise.all([
        import('../../tools/dump/pool-dump.ts'),
        import('../../tools/dump/xml.ts'),
        import('../../tools/dump/json.ts'),
        import('../../tools/dump/human.ts'),
      ]);
      await withReadTarget(dir, (target) => withOutput(options.output, async (sink) => {
        const writer: DumpVisitor =
          format === 'xml' ? new XmlDumpWriter(sink) : format === 'json' ? new JsonDumpWriter(sink) : new HumanDumpWriter(sink);
        const summary = await dumpPool(target, writer, {
          onProgress: (done, total) => {
            if (options.output === undefined) return; // the bar would mix with the dump on a terminal
            progress ??= startProgress('dump', total);
            progress.update(done);
          },
        }).finally(() => progress?.stop());
        await sink.flush();
        for (const warning of summary.warnings) reporter.note(`warning: ${warning}`);
      }));
    });

  program
    .command('restore')
    .description('build a new pool from thin_dump XML (a kernel pool or a thinbd dump) over existing data or a new data file')
    .addOption(poolOption('must not exist yet (or be empty)'))
    .requiredOption('-i, --input <file>', 'thin_dump XML, or - for standard input')
    .option('--data <path>', 'existing data file or block device to use in place (data block n at n × block size)')
    .option('--data-size <size>', 'size of a new sparse data file instead')
    .option('--metadata-size <size>', 'size of the new metadata file (sparse)')
    .option('--json', 'print the summary as JSON')
    .action(async (options) => {
      const dir = poolDirectory(options.pool);
      if ((options.data === undefined) === (options.dataSize === undefined)) {
        throw new UsageError('restore needs exactly one of --data PATH (reuse existing data) and --data-size SIZE (new data file)');
      }
      const data: RestoreData = options.data !== undefined ? { path: options.data } : { sizeBytes: sizeOption('--data-size', options.dataSize!) };
      const metadataSizeBytes = options.metadataSize === undefined ? undefined : metadataSizeOption(options.metadataSize);
      let input: AsyncIterable<string | Uint8Array>;
      let progress: Progress | undefined;
      if (options.input === '-') {
        input = process.stdin;
      } else {
        const inputPath = options.input;
        const totalBytes = inputFileBytes(inputPath, 'a thin_dump XML file');
        // Loaded here, not with the group: it loads zlib, streams and worker threads, which the
        // group's other commands (a short dump) would pay for without using.
        const { FileChunks } = await import('../../image/source.ts');
        progress = startProgress('restore', totalBytes, { bytes: true });
        const shown = progress;
        // Two buffers, reused: the reader is done with a chunk before it asks for the next (a
        // fresh buffer per chunk cost a page fault per 4 KiB of the input).
        input = (async function* chunks() {
          const fd = openSync(inputPath, 'r');
          let doneBytes = 0;
          const source = new FileChunks(fd, 0, totalBytes, {
            chunkBytes: RESTORE_FILE_READ_BYTES,
            reuse: true,
            onBytes: (bytes) => {
              doneBytes += bytes.length;
              shown.update(doneBytes);
            },
          });
          try {
            for (let chunk = await source.next(); chunk !== undefined; chunk = await source.next()) yield chunk;
          } finally {
            await source.close();
            closeSync(fd);
          }
        })();
      }
      const { restorePool } = await import('../../tools/restore.ts');
      const summary = await restorePool(input, { dir, data, ...(metadataSizeBytes === undefined ? {} : { metadataSizeBytes }) }).finally(() => progress?.stop());
      for (const warning of summary.warnings) reporter.note(`warning: ${warning}`);
      if (options.json) {
        reporter.json(summary);
        return;
      }
      reporter.out(
        `Restored ${summary.volumes.length} volume(s), ${summary.mappedBlockCount} mapped block(s) of ${formatSize(summary.blockSizeBytes)}` +
          `${summary.badRangeCount === 0 ? '' : `, ${summary.badRangeCount} bad data range(s) kept out of use`}, into ${dir}`,
      );
    });

  program
    .command('delta')
    .description("the runs where two volumes' mappings are the same, different or on one side only (thin_delta's output)")
    .argument('<a>', 'left volume (name, or dm-thin device id)')
    .argument('<b>', 'right volume (name, or dm-thin device id)')
    .addOption(poolOption())
    .option('--format <format>', 'xml or json', 'xml')
    .option('--verbose', "list every step with its data blocks (thin_delta --verbose)")
    .action(async (leftText, rightText, options) => {
      // A name or a dm-thin device id (digits), which is also a valid name: refused before the pool is opened.
      const left = volumeName('volume name', leftText);
      const right = volumeName('volume name', rightText);
      const dir = poolDirectory(options.pool);
      const format = choice('--format', options.format, ['xml', 'json'] as const);
      assertPoolExists(dir);
      const sink = standardOutputSink();
      const { writePoolDelta } = await import('../../tools/delta.ts');
      await withReadTarget(dir, (target) => writePoolDelta(target, left, right, sink, { format, verbose: options.verbose === true }));
      await sink.flush();
    });

  program
    .command('repair')
    .description('rebuild a consistent pool in a new directory from whatever metadata is readable, listing what was lost')
    .addOption(poolOption())
    .requiredOption('-o, --output <dir>', 'the new pool directory (its data is a link to the damaged pool\'s data)')
    .option('--block-size <size>', 'the data block size, needed only when no superblock copy is readable (the trees are then found by scanning)')
    .option('--json', 'print the report as JSON')
    .action(async (options) => {
      const dir = poolDirectory(options.pool);
      assertPoolExists(dir);
      const blockSizeBytes = options.blockSize === undefined ? undefined : sizeOption('--block-size', options.blockSize);
      const { repairPool } = await import('../../tools/repair.ts');
      const report = await repairPool(dir, poolDirectory(options.output), blockSizeBytes === undefined ? {} : { blockSizeBytes });
      if (options.json) {
        reporter.json(report);
        return;
      }
      for (const loss of report.lost) reporter.out(`lost: ${loss.where}: ${loss.message}`);
      reporter.out(
        `Repaired ${dir} into ${report.dir}: ${report.volumes.length} volume(s), ${report.mappedBlockCount} mapped block(s)` +
          `${report.badRangeCount === 0 ? '' : `, ${report.badRangeCount} bad data range(s) kept`}` +
          (report.lost.length === 0 ? ', nothing lost' : `, ${report.lost.length} loss(es) listed above`),
      );
    });

  const metadata = program.command('metadata').description('metadata tools: size, pack, unpack');
  metadata
    .command('size')
    .description("estimate the metadata a pool needs, for thinbd's format and (for comparison) dm-thin's")
    .requiredOption('--data-size <size>', 'data space of the pool')
    .option('--block-size <size>', 'data block size', '64k')
    .option('--volumes <n>', 'volumes and snapshots the pool will hold at most', '1')
    .option('--json', 'print JSON')
    .action((options) => {
      const dataSizeBytes = sizeOption('--data-size', options.dataSize);
      const blockSizeBytes = sizeOption('--block-size', options.blockSize);
      if (!/^\d+$/.test(options.volumes) || Number(options.volumes) < 1) throw new UsageError(`--volumes: '${options.volumes}' is not a whole number of at least 1`);
      if ((blockSizeBytes & (blockSizeBytes - 1)) !== 0 || blockSizeBytes < 512) throw new UsageError(`--block-size: ${options.blockSize} is not a power of two`);
      if (dataSizeBytes <= blockSizeBytes) throw new UsageError(`--data-size: ${options.dataSize} must be larger than the block size`);
      const estimate = estimateMetadataSize({ dataSizeBytes, blockSizeBytes, volumeCount: Number(options.volumes) });
      if (options.json) {
        reporter.json(estimate);
        return;
      }
      const { metadataBytes, recommendedMetadataBytes, smallestFileBytes } = estimate.thinbd;
      const worst = `${formatSize(metadataBytes)} (${metadataBytes} bytes) at worst, every block its own mapping`;
      if (recommendedMetadataBytes > metadataBytes) {
        // The smallest metadata file is larger than small pools need: say why the advice exceeds the worst case.
        const lastSuperblockCopyBytes = Math.max(...SUPERBLOCK_BLOCK_NRS) * METADATA_BLOCK_SIZE_BYTES;
        reporter.out(
          `thinbd:  use --metadata-size ${formatSize(recommendedMetadataBytes)}: the metadata takes ${worst}, and ` +
            `${formatSize(smallestFileBytes)} is the smallest metadata file (its last superblock copy sits at ${formatSize(lastSuperblockCopyBytes)}; the file is sparse, so only blocks in use take space)`,
        );
      } else {
        reporter.out(`thinbd:  use --metadata-size ${formatSize(recommendedMetadataBytes)}: the metadata takes ${worst}`);
      }
      reporter.out(`dm-thin: ${formatSize(estimate.dmThin.metadataBytes)} (${estimate.dmThin.metadataBytes} bytes), as thin_metadata_size estimates it`);
    });

  metadata
    .command('pack')
    .description("write a compressed image of the pool's live metadata blocks")
    .addOption(poolOption())
    .requiredOption('-o, --output <file>', 'the image to write (must not exist)')
    .action(async (options) => {
      const dir = poolDirectory(options.pool);
      assertPoolExists(dir);
      let progress: Progress | undefined;
      const { packMetadata } = await import('../../tools/pack.ts');
      const summary = await withReadTarget(dir, (target) =>
        packMetadata(target, options.output, {
          onProgress: (done, total) => {
            progress ??= startProgress('pack', total);
            progress.update(done);
          },
        }),
      ).finally(() => progress?.stop());
      reporter.out(`Packed ${summary.liveBlockCount} live metadata blocks of ${summary.metadataBlockCount} into ${options.output} (${formatSize(summary.packedBytes)})`);
    });

  metadata
    .command('unpack')
    .description('write a packed metadata image back as the metadata of a pool directory')
    .requiredOption('-i, --input <file>', 'the image written by metadata pack')
    .addOption(poolOption('must hold no metadata (a data file there is used)'))
    .option('--data <path>', 'data file or device to link when the directory has none (default: a new sparse file)')
    .action(async (options) => {
      const dir = poolDirectory(options.pool);
      inputFileBytes(options.input, 'a metadata pack');
      const { unpackMetadata } = await import('../../tools/pack.ts');
      const summary = await unpackMetadata(options.input, dir, options.data === undefined ? {} : { dataPath: options.data });
      reporter.out(`Unpacked ${summary.liveBlockCount} metadata blocks into ${dir} (data: ${summary.data})`);
    });
}
