// thinbd check
import type { Command } from '@commander-js/extra-typings';
import type { Reporter } from '../report.ts';
import { poolDirectory } from '../options.ts';
import { assertPoolExists, liveService } from '../pool-access.ts';
import { checkPool } from '../../tools/check.ts';
import { ThinError } from '../../errors.ts';

export function registerCheckCommand(program: Command, reporter: Reporter): void {
  program
    .command('check')
    .description('verify checksums, trees, reference counts and volume details; exit 1 on any problem')
    .option('--pool <dir>', 'pool directory (default $THINBD_POOL, then ./pool)')
    .option('--json', 'print JSON')
    .action(async (options) => {
      const dir = poolDirectory(options.pool);
      assertPoolExists(dir);
      const live = await liveService(dir);
      const report = live ? await live.check().finally(() => live.close()) : await checkPool(dir);
      if (options.json) {
        reporter.json(report);
      } else {
        for (const problem of report.problems) reporter.out(`${problem.where}: ${problem.message}`);
        reporter.out(report.ok ? `Pool ${dir} is clean` : `Pool ${dir}: ${report.problems.length} problem(s) found`);
      }
      if (!report.ok) {
        throw new ThinError('THIN_CORRUPT_BLOCK', `check found ${report.problems.length} problem(s) in ${dir}`);
      }
    });
}
