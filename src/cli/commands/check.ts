// thinbd check
import type { Command } from '@commander-js/extra-typings';
import { exitCodes, type CommandResult, type Reporter } from '../report.ts';
import { poolDirectory, poolOption } from '../options.ts';
import { assertPoolExists, liveService } from '../pool-access.ts';
import { startProgress, type Progress } from '../progress.ts';
import { checkPool, type CheckReport } from '../../tools/check.ts';
import { checkAndRepairPool } from '../../tools/repair.ts';
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
