// Makes one damaged pool of the corpus by hand, to look at with the CLI:
//   node --import tsx test/tools/corpus/make.ts ENTRY DIR
// builds the base pool in DIR (which must not exist), damages it as ENTRY does, and prints what
// check must report and what repair must keep. Without arguments it lists the entries.
import { buildBasePool, layoutOf } from './base.ts';
import { corpus } from './index.ts';

const [name, dir] = process.argv.slice(2);
const entry = corpus.find((candidate) => candidate.name === name);
if (entry === undefined || dir === undefined) {
  console.error('usage: make.ts ENTRY DIR; entries:');
  for (const candidate of corpus) console.error(`  ${candidate.name}: ${candidate.description}`);
  process.exit(2);
}
await buildBasePool(dir);
const damage = await entry.damage(dir, await layoutOf(dir));
console.log(`${dir}: ${entry.description}`);
console.log(`check must exit ${damage.checkExitCode ?? 1} and report: ${damage.problems.map(String).join(', ') || 'nothing'}`);
if (damage.refusal !== undefined) console.log(`repair must refuse: ${String(damage.refusal)}`);
else console.log(`repair must keep: ${JSON.stringify(damage.fates ?? {})} (volumes not named: whole)`);
