// The README's command table against the program: a user who reads only the README must find every
// option a command takes in its row, find no option there that the command refuses, and read the
// defaults `thinbd help` prints. The space settings are listed once, in their own table.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import type { Command, Option } from '@commander-js/extra-typings';
import { buildProgram } from '../../src/cli/main.ts';
import type { Reporter } from '../../src/cli/report.ts';

const readme = readFileSync(join(resolve(import.meta.dirname, '..', '..'), 'README.md'), 'utf8');
const silent: Reporter = { out: () => undefined, json: () => undefined, note: () => undefined, error: () => undefined, isTerminal: false };

/** Options a text names: `--long-name` and `-o`. */
function optionsNamed(text: string): Set<string> {
  return new Set([...text.matchAll(/(?<![\w-])(--[a-z][a-z0-9-]*|-[a-zA-Z])(?![\w-])/g)].map((match) => match[1]!));
}

/** The space settings' table: its first column. */
const spaceSettings = new Set(
  readme
    .split('\n')
    .filter((line) => line.startsWith('| `--'))
    .flatMap((line) => [...optionsNamed(line.split('|')[1]!)]),
);

/** Each README table row of a command: its synopsis (what `thinbd WORDS` takes) and the whole row. */
function readmeRows(program: Command): Map<string, { synopsis: string; row: string }> {
  const rows = new Map<string, { synopsis: string; row: string }>();
  for (const line of readme.split('\n').filter((entry) => entry.startsWith('| `thinbd '))) {
    const firstCell = line.split(' | ')[0]!.slice(2);
    for (const synopsis of firstCell.split(' / ')) {
      const words: string[] = [];
      let command: Command = program;
      for (const token of synopsis.replaceAll('`', '').split(' ').slice(1)) {
        const sub = (command.commands as Command[]).find((candidate) => candidate.name() === token);
        if (sub === undefined) break;
        words.push(token);
        command = sub;
      }
      rows.set(words.join(' '), { synopsis: synopsis.replace(/\[space settings\]/, [...spaceSettings].join(' ')), row: line });
    }
  }
  return rows;
}

function leafCommands(command: Command, prefix: string[] = []): Array<{ words: string; command: Command }> {
  const subcommands = command.commands as Command[];
  if (subcommands.length === 0) return [{ words: prefix.join(' '), command }];
  return subcommands.flatMap((sub) => leafCommands(sub, [...prefix, sub.name()]));
}

/** The names an option is given by: its long form and its short one. */
function names(option: Option): string[] {
  return [option.long, option.short].filter((name): name is string => name !== undefined);
}

test('every command has a row in the README, its synopsis names only options the command takes, and the row names every one', async () => {
  const program = await buildProgram(silent);
  const rows = readmeRows(program);
  // `--endpoint` is stated once for every archive command, in archive init's row.
  const archiveEndpoint = rows.get('archive init')!.row.includes('every archive command takes `--endpoint URL`');
  const problems: string[] = [];
  for (const { words, command } of leafCommands(program).filter((leaf) => leaf.words !== 'help')) {
    const row = rows.get(words);
    if (row === undefined) {
      problems.push(`thinbd ${words} has no row in the README's command table`);
      continue;
    }
    const taken = new Set((command.options as Option[]).flatMap(names));
    for (const named of optionsNamed(row.synopsis)) if (!taken.has(named)) problems.push(`the README's thinbd ${words} names ${named}, which it does not take`);
    const stated = new Set([...optionsNamed(row.row), ...spaceSettings]);
    for (const option of (command.options as Option[]).filter((entry) => entry.long !== '--help')) {
      if (option.long === '--endpoint' && words.startsWith('archive ') && archiveEndpoint) continue;
      if (!names(option).some((name) => stated.has(name))) problems.push(`thinbd ${words} takes ${option.long}, which its README row does not name`);
    }
  }
  assert.deepEqual(problems, []);
});

test('the defaults the README states are the ones the commands take', async () => {
  const program = await buildProgram(silent);
  const option = (words: string, long: string): Option => {
    const command = leafCommands(program).find((leaf) => leaf.words === words)!.command;
    return (command.options as Option[]).find((entry) => entry.long === long)!;
  };
  assert.match(readme, /at most `--rate` megabytes per second \(default 64\)/);
  assert.equal(option('scrub', '--rate').defaultValue, '64', 'scrub --rate: 64 MB/s');
  assert.match(readme, /Block size: a power of two from 64k to 1G \(default 64k\)\. Data size default 16G\./);
  assert.equal(option('pool create', '--block-size').defaultValue, '64K');
  assert.equal(option('pool create', '--data-size').defaultValue, '16G');
  assert.match(readme, /Defaults: 64k average chunks, zstd level 2/);
  assert.equal(option('archive init', '--chunk-size').defaultValue, String(64 * 1024));
  assert.equal(option('archive init', '--level').defaultValue, '2');
  assert.match(readme, /in a pool of `--block-size` \(default 64k\)/);
  assert.equal(option('image stats', '--block-size').defaultValue, '64K');
});

test("every variable the --on-low-water command gets is named in serve's help and in the README", async () => {
  const hookSource = readFileSync(join(resolve(import.meta.dirname, '..', '..'), 'src', 'daemon', 'space-events.ts'), 'utf8');
  const variables = [...hookSource.matchAll(/^\s+(THINBD_[A-Z_]+): /gm)].map((match) => match[1]!);
  assert.ok(variables.length >= 8, `the hook's environment as space-events.ts sets it: ${variables.join(' ')}`);
  const serve = leafCommands(await buildProgram(silent)).find((leaf) => leaf.words === 'serve')!.command;
  const help = (serve.options as Option[]).find((entry) => entry.long === '--on-low-water')!.description;
  for (const variable of variables) {
    assert.ok(help.includes(variable), `thinbd help serve, --on-low-water: ${variable}`);
    assert.ok(readme.includes(`\`${variable}\``), `README: ${variable}`);
  }
});

test('the commands the README says need no --pool are the ones that take none', async () => {
  assert.match(readme, /\(`metadata size`, `image stats` and the\n`archive` commands but `pack` and `unpack` need none\)/);
  const withoutPool = leafCommands(await buildProgram(silent))
    .filter((leaf) => leaf.words !== 'help' && !(leaf.command.options as Option[]).some((option) => option.long === '--pool'))
    .map((leaf) => leaf.words);
  assert.deepEqual(withoutPool.sort(), ['archive gc', 'archive init', 'archive list', 'archive rm', 'archive verify', 'image stats', 'metadata size']);
});
