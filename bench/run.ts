// npm run bench [-- NAME...]: runs the named benchmarks (all when none is named).
import { flushBenchmark } from './flush.ts';
import { snapshotBenchmark } from './snapshot.ts';
import { toolsBenchmark } from './tools.ts';

const benchmarks: Record<string, (args: string[]) => Promise<void>> = {
  snapshot: snapshotBenchmark,
  tools: toolsBenchmark,
  flush: flushBenchmark,
};

const names = process.argv.slice(2).filter((arg) => !arg.startsWith('-'));
const flags = process.argv.slice(2).filter((arg) => arg.startsWith('-'));
const chosen = names.length > 0 ? names : Object.keys(benchmarks);
for (const name of chosen) {
  const run = benchmarks[name];
  if (!run) {
    console.error(`bench: no benchmark named '${name}' (have: ${Object.keys(benchmarks).join(', ')})`);
    process.exit(2);
  }
  await run(flags);
}
