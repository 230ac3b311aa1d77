// checkPool (src/tools/check.ts) over a simulated pool's files, as lists of sentences.
import type { PoolFiles } from '../../src/pool/pool.ts';
import { checkPool } from '../../src/tools/check.ts';

export interface CheckFindings {
  /** What is wrong: must be empty after any recovery. */
  problems: string[];
  /** What a crash or a damaged copy leaves and open copes with (a torn superblock copy, a fall back). */
  warnings: string[];
}

export async function checkSimPool(files: PoolFiles): Promise<CheckFindings> {
  const report = await checkPool(files);
  return {
    problems: report.problems.map((problem) => `${problem.where}: ${problem.message}`),
    warnings: report.warnings.map((warning) => `${warning.where}: ${warning.message}`),
  };
}
