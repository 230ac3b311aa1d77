// thinbd check | scrub
import type { Command } from '@commander-js/extra-typings';
import { UsageError, exitCodes, type CommandResult, type Reporter } from '../report.ts';
import { poolDirectory, poolOption } from '../options.ts';
import { assertPoolExists, liveService, withService } from '../pool-access.ts';
import { SCRUB_RATE_BYTES_PER_SECOND_DEFAULT } from '../../constants.ts';
import type { ScrubReport } from '../../pool/pool.ts';
import { startProgress, type Progress } from '../progress.ts';
import { checkPool, type CheckReport } from '../../tools/check.ts';
import { ThinError } from '../../errors.ts';

/** Problems found are the command's answer, not its failure: it prints them and sets exit code 1 (result). */
export function registerCheckCommand(program: Command, reporter: Reporter, result: CommandResult): void {
  program
    .command('check')
    .description('verify checksums, trees, reference counts and volume details; exit 1 on any problem')
    .addOption(poolOption())
    .option('--json', 'print JSON')
    .option('--repair', 'when problems are found, rebuild the pool in place from what is readable (the old metadata is kept as metadata.bad-<time>) and list what was lost')
    .action(async (options) => {
      const dir = poolDirectory(options.pool);
      assertPoolExists(dir);
      const live = await liveService(dir);
      if (live && options.repair) {
        await live.close();
        throw new ThinError('THIN_BUSY', `Pool ${dir} is being served by 'thinbd serve'; stop the server before check --repair`);
      }
      let progress: Progress | undefined;
      const onProgress = (done: number, total: number): void => {
        progress ??= startProgress('check', total);
        progress.update(done);
      };
      const printProblems = (report: CheckReport): void => {
        for (const warning of report.warnings) reporter.note(`warning: ${warning.where}: ${warning.message}`);
        for (const problem of report.problems) reporter.out(`${problem.where}: ${problem.message}`);
      };
      if (options.repair) {
        // Repair (restore's writer, the XML reader) is loaded only for --repair: a plain check starts faster.
        const { checkAndRepairPool } = await import('../../tools/repair.ts');
        const repaired = await checkAndRepairPool(dir, { onProgress }).finally(() => progress?.stop());
        if (options.json) {
          reporter.json(repaired);
        } else {
          printProblems(repaired.check);
          if (repaired.repair === undefined) {
            reporter.out(`Pool ${dir} is clean; nothing to repair`);
          } else {
            for (const loss of repaired.repair.lost) reporter.out(`lost: ${loss.where}: ${loss.message}`);
            reporter.out(
              `Repaired ${dir} in place (${repaired.check.problems.length} problem(s) found; ` +
                (repaired.repair.lost.length === 0 ? 'nothing lost' : `${repaired.repair.lost.length} loss(es) listed above`) +
                `); the damaged metadata is kept as ${repaired.repair.savedMetadataPath}`,
            );
            if (repaired.after !== undefined && !repaired.after.ok) printProblems(repaired.after);
          }
        }
        if (!repaired.ok) {
          reporter.error(`the repaired pool ${dir} still has ${repaired.after?.problems.length ?? 0} problem(s)`);
          result.exitCode = exitCodes.failure;
        }
        return;
      }
      const report = live ? await live.check().finally(() => live.close()) : await checkPool(dir, { onProgress }).finally(() => progress?.stop());
      if (options.json) {
        reporter.json(report);
      } else {
        printProblems(report);
        reporter.out(report.ok ? `Pool ${dir} is clean` : `Pool ${dir}: ${report.problems.length} problem(s) found`);
      }
      if (!report.ok) {
        reporter.error(`check found ${report.problems.length} problem(s) in ${dir}`);
        result.exitCode = exitCodes.failure;
      }
    });
}

const BYTES_PER_MB = 1_000_000;

/** The lines `thinbd scrub` prints: what was read, what was mended, what is lost. */
function scrubLines(dir: string, report: ScrubReport): string[] {
  const { metadata, data } = report;
  const lines = [
    `metadata: ${metadata.blocksRead} blocks read${metadata.single ? ' (one copy: nothing to compare)' : ' in both copies'}` +
      `${metadata.blocksBeingWritten > 0 ? ` (${metadata.blocksBeingWritten} not written yet by the live pool passed over)` : ''}; ` +
      `${metadata.copiesBad} bad cop${metadata.copiesBad === 1 ? 'y' : 'ies'}, ${metadata.copiesRewritten} rewritten from the good one`,
    `data:     ${data.blocksRead} blocks read (${(data.bytesRead / BYTES_PER_MB).toFixed(1)} MB), ${data.blocksKnownBad} with known bad ranges passed over, ` +
      `${data.readsRecovered} read(s) recovered on retry, ${data.unreadable.length} unreadable range(s) found` +
      `${data.knownUnreadable.length > 0 ? `, ${data.knownUnreadable.length} found before and still mapped` : ''}`,
  ];
  for (const lost of metadata.blocksLost) lines.push(`lost: metadata block ${lost.blockNr}: ${lost.problems.join('; ')}`);
  for (const blockNr of metadata.unreadableBlocks) lines.push(`unreadable: metadata block ${blockNr} (one copy only)`);
  for (const range of data.unreadable) {
    lines.push(`unreadable: data block ${range.dataBlock}, sectors [${range.beginSector}, ${range.endSector}) (recorded as a bad range; reads there fail with EIO until a write covers them)`);
  }
  for (const range of data.knownUnreadable) {
    lines.push(`unreadable: data block ${range.dataBlock}, sectors [${range.beginSector}, ${range.endSector}) (recorded before and still mapped; reads there fail with EIO until a write covers them)`);
  }
  lines.push(`Pool ${dir}: ${report.badRanges} bad range(s) recorded${report.stopped ? '; the scrub stopped early (the pool closed)' : ''}, ${(report.durationMs / 1000).toFixed(1)} s`);
  return lines;
}

/** Something found that is lost or unreadable is the answer, with exit code 1; mended copies are not. */
export function registerScrubCommand(program: Command, reporter: Reporter, result: CommandResult): void {
  program
    .command('scrub')
    .description('read every metadata block (both copies, mending a bad one from the good) and every data block in use, recording unreadable sectors; works on a served pool; exit 1 when something is unreadable')
    .addOption(poolOption())
    .option('--rate <MB/s>', 'read at most this many megabytes (10^6 bytes) per second', String(SCRUB_RATE_BYTES_PER_SECOND_DEFAULT / BYTES_PER_MB))
    .option('--json', 'print JSON')
    .action(async (options) => {
      const dir = poolDirectory(options.pool);
      const rateMb = Number(options.rate);
      if (!(Number.isFinite(rateMb) && rateMb > 0)) throw new UsageError(`--rate: '${options.rate}' is not a positive number of MB/s`);
      const report = await withService(dir, 'write', (service) => service.scrub({ rateBytesPerSecond: rateMb * BYTES_PER_MB }));
      if (options.json) reporter.json(report);
      else for (const line of scrubLines(dir, report)) reporter.out(line);
      const lost = report.metadata.blocksLost.length + report.metadata.unreadableBlocks.length + report.data.unreadable.length + report.data.knownUnreadable.length;
      if (lost > 0) {
        reporter.error(`scrub found ${lost} unreadable or lost place(s) in ${dir}`);
        result.exitCode = exitCodes.failure;
      }
    });
}
