// Every command from one table (as thin-provisioning-tools' tests/common/common_args.rs does):
// a missing pool fails with exit 1 naming it, an unknown option is a usage error (exit 2), and
// --json prints JSON that parses. The table must list every command the program defines, so a
// new command is tested here the day it is added.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Command } from '@commander-js/extra-typings';
import { COMMAND_GROUPS, buildProgram } from '../../src/cli/main.ts';
import type { Reporter } from '../../src/cli/report.ts';
import { THINBD, thinbd, type RunResult } from './run-thinbd.ts';
import { tarArchive } from '../image/tar-writer.ts';

interface CommandCase {
  /** The command's words, e.g. ['metadata', 'pack']. */
  command: string[];
  /** Arguments and required options of a well-formed call, `POOL`, `WORK` and `NEW` filled in per case. */
  args: string[];
  /**
   * uses: works on an existing pool, so a missing one is an error naming it; creates: makes the
   * pool (a missing one is what it wants); none: no pool at all.
   */
  pool: 'uses' | 'creates' | 'none';
  /** Extra arguments of a --json call on the shared pool that must print parsable JSON (omit: no --json). */
  json?: string[];
}

const TABLE: CommandCase[] = [
  { command: ['pool', 'create'], args: ['--pool', 'NEW', '--data-size', '64M'], pool: 'creates' },
  { command: ['pool', 'status'], args: ['--pool', 'POOL'], pool: 'uses', json: [] },
  { command: ['pool', 'set'], args: ['--pool', 'POOL', '--low-water', '5%', '--when-full', 'queue:10'], pool: 'uses' },
  { command: ['pool', 'resize'], args: ['--pool', 'POOL', '--data-size', '128M'], pool: 'uses' },
  { command: ['create'], args: ['--pool', 'POOL', 'v2', '--size', '1M'], pool: 'uses' },
  { command: ['snapshot'], args: ['--pool', 'POOL', 'v', 'v-snap'], pool: 'uses' },
  { command: ['remove'], args: ['--pool', 'POOL', 'v'], pool: 'uses' },
  { command: ['resize'], args: ['--pool', 'POOL', 'v', '--size', '2M'], pool: 'uses' },
  { command: ['list'], args: ['--pool', 'POOL'], pool: 'uses', json: [] },
  { command: ['import'], args: ['--pool', 'POOL', 'v', '/dev/null'], pool: 'uses' },
  { command: ['export'], args: ['--pool', 'POOL', 'v', 'WORK/exported.raw'], pool: 'uses' },
  { command: ['serve'], args: ['--pool', 'POOL', '--socket', 'WORK/serve.sock'], pool: 'uses' },
  // demo creates a missing pool and then serves it until stopped: only its command line is checked here.
  { command: ['demo'], args: ['--pool', 'NEW', '--listen', '127.0.0.1:0'], pool: 'creates' },
  { command: ['check'], args: ['--pool', 'POOL'], pool: 'uses', json: [] },
  { command: ['scrub'], args: ['--pool', 'POOL'], pool: 'uses', json: [] },
  { command: ['repair'], args: ['--pool', 'POOL', '-o', 'NEW'], pool: 'uses', json: ['-o', 'NEW'] },
  { command: ['dump'], args: ['--pool', 'POOL'], pool: 'uses' },
  { command: ['restore'], args: ['--pool', 'NEW', '-i', 'WORK/dump.xml', '--data-size', '64M'], pool: 'creates', json: ['--pool', 'NEW', '-i', 'WORK/dump.xml', '--data-size', '64M'] },
  { command: ['delta'], args: ['--pool', 'POOL', 'v', 'v'], pool: 'uses' },
  { command: ['metadata', 'size'], args: ['--data-size', '1G'], pool: 'none', json: ['--data-size', '1G'] },
  { command: ['metadata', 'pack'], args: ['--pool', 'POOL', '-o', 'WORK/packed.bin'], pool: 'uses' },
  { command: ['metadata', 'unpack'], args: ['-i', 'WORK/packed.bin', '--pool', 'NEW'], pool: 'creates' },
  // The archive commands, in an order the --json calls can follow: a store, a stream, its uses.
  { command: ['archive', 'init'], args: ['--store', 'NEW'], pool: 'none', json: ['--store', 'NEW'] },
  { command: ['archive', 'pack'], args: ['--pool', 'POOL', 'v', '--store', 'WORK/store'], pool: 'uses', json: ['v', '--store', 'WORK/store', '--name', 's1'] },
  { command: ['archive', 'list'], args: ['--store', 'WORK/store'], pool: 'none', json: ['--store', 'WORK/store'] },
  { command: ['archive', 'unpack'], args: ['--pool', 'POOL', 's1', 'v-copy', '--store', 'WORK/store'], pool: 'uses', json: ['s1', 'v-copy', '--store', 'WORK/store'] },
  { command: ['archive', 'verify'], args: ['--store', 'WORK/store'], pool: 'none', json: ['--store', 'WORK/store'] },
  { command: ['archive', 'rm'], args: ['s1', '--store', 'WORK/store'], pool: 'none' },
  { command: ['archive', 'gc'], args: ['--store', 'WORK/store'], pool: 'none', json: ['--store', 'WORK/store'] },
  // The image commands: an import of a tar of one file, then the listing; stats over the folder holding it.
  { command: ['image', 'import'], args: ['--pool', 'POOL', 'img', 'WORK/images/one.tar'], pool: 'uses', json: ['img', 'WORK/images/one.tar'] },
  { command: ['image', 'ls'], args: ['--pool', 'POOL'], pool: 'uses', json: [] },
  { command: ['image', 'stats'], args: ['WORK/images'], pool: 'none', json: ['WORK/images'] },
];

let work: string;
let pool: string;
let fresh = 0;
before(() => {
  work = mkdtempSync(join(tmpdir(), 'thinbd-commands-'));
  pool = join(work, 'pool');
  mkdirSync(join(work, 'images'));
  writeFileSync(join(work, 'images', 'one.tar'), tarArchive([{ path: 'etc/', type: 'dir' }, { path: 'etc/hostname', data: 'box\n' }]));
  for (const args of [
    ['pool', 'create', '--pool', pool, '--data-size', '64M'],
    ['create', '--pool', pool, 'v', '--size', '1M'],
    ['dump', '--pool', pool, '-o', join(work, 'dump.xml')],
    ['archive', 'init', '--store', join(work, 'store')],
  ]) {
    const result = thinbd(args);
    assert.equal(result.code, 0, `${args.join(' ')}: ${result.stderr}`);
  }
});
after(() => rmSync(work, { recursive: true, force: true }));

/** The case's arguments with POOL, WORK and NEW (a directory that does not exist yet) filled in. */
function fill(args: string[], poolDir: string): string[] {
  const fresher = join(work, `new-${(fresh += 1)}`);
  return args.map((arg) => arg.replace('POOL', poolDir).replace('WORK', work).replace('NEW', fresher));
}

/** Runs thinbd without blocking the test's event loop, so the cases run a few at a time. */
function run(args: string[]): Promise<RunResult> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [THINBD, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (chunk: Buffer) => (stdout += chunk.toString()));
    child.stderr.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
    const timer = setTimeout(() => child.kill('SIGKILL'), 60_000);
    child.on('error', reject);
    child.on('close', (code) => {
      clearTimeout(timer);
      resolve({ code, stdout, stderr });
    });
  });
}

async function inBatches<T>(items: T[], work: (item: T) => Promise<void>, width = 4): Promise<void> {
  for (let index = 0; index < items.length; index += width) await Promise.all(items.slice(index, index + width).map(work));
}

function leafCommands(command: Command, prefix: string[] = []): Array<{ words: string[]; options: string[] }> {
  const subcommands = command.commands as Command[];
  if (subcommands.length === 0) return [{ words: prefix, options: command.options.map((option) => option.long ?? '') }];
  return subcommands.flatMap((sub) => leafCommands(sub, [...prefix, sub.name()]));
}

const silent: Reporter = { out: () => undefined, json: () => undefined, note: () => undefined, error: () => undefined, isTerminal: false };

test('the table lists every command, and says which take --pool and --json', async () => {
  const leaves = leafCommands(await buildProgram(silent));
  assert.deepEqual(leaves.map((leaf) => leaf.words.join(' ')).sort(), TABLE.map((row) => row.command.join(' ')).sort());
  for (const leaf of leaves) {
    const row = TABLE.find((entry) => entry.command.join(' ') === leaf.words.join(' '))!;
    assert.equal(leaf.options.includes('--pool'), row.pool !== 'none', `${leaf.words.join(' ')}: --pool`);
    assert.equal(leaf.options.includes('--json'), row.json !== undefined, `${leaf.words.join(' ')}: --json`);
  }
});

test('a command line loads only its own group of commands, and each group registers the commands it names', async () => {
  const all = (await buildProgram(silent)).commands.map((command) => command.name());
  assert.deepEqual(all, COMMAND_GROUPS.flatMap((group) => group.commands), 'the groups in help order, each command once');
  for (const group of COMMAND_GROUPS) {
    for (const name of group.commands) {
      const program = await buildProgram(silent, undefined, [name, '--help']);
      assert.deepEqual(program.commands.map((command) => command.name()), group.commands, `thinbd ${name}`);
    }
  }
  assert.equal((await buildProgram(silent, undefined, ['--version'])).commands.length, all.length, 'no command named: all of them');
  assert.equal((await buildProgram(silent, undefined, ['no-such-command'])).commands.length, all.length, 'an unknown command: all, for the suggestion');
});

test('every command that uses a pool fails with exit 1 naming a missing one, and leaves nothing there', async () => {
  await inBatches(
    TABLE.filter((row) => row.pool === 'uses'),
    async (row) => {
      const missing = join(work, `missing-${row.command.join('-')}`);
      const result = await run([...row.command, ...fill(row.args, missing)]);
      const what = `thinbd ${row.command.join(' ')}`;
      assert.equal(result.code, 1, `${what}: ${result.stdout}${result.stderr}`);
      assert.match(result.stderr, new RegExp(`^thinbd: No pool at ${missing.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')} `, 'm'), what);
      assert.equal(result.stderr.trim().split('\n').length, 1, `${what}: one line on stderr`);
      assert.equal(existsSync(missing), false, `${what} made ${missing}`);
    },
  );
});

test('every command refuses an unknown option with exit 2 and names it', async () => {
  await inBatches(TABLE, async (row) => {
    const result = await run([...row.command, ...fill(row.args, pool), '--no-such-option']);
    const what = `thinbd ${row.command.join(' ')}`;
    assert.equal(result.code, 2, `${what}: ${result.stdout}${result.stderr}`);
    assert.match(result.stderr, /--no-such-option/, what);
  });
});

test('every command names an unknown option before any missing argument or required option', async () => {
  await inBatches(TABLE, async (row) => {
    const result = await run([...row.command, '--no-such-option']);
    const what = `thinbd ${row.command.join(' ')} --no-such-option`;
    assert.equal(result.code, 2, `${what}: ${result.stdout}${result.stderr}`);
    assert.match(result.stderr, /unknown option '--no-such-option'/, what);
  });
});

test('every command with --json prints JSON that parses', async () => {
  for (const row of TABLE.filter((entry) => entry.json !== undefined)) {
    const args = row.pool === 'uses' ? [...fill(['--pool', 'POOL'], pool), ...fill(row.json!, pool)] : fill(row.json!, pool);
    const result = await run([...row.command, ...args, '--json']);
    const what = `thinbd ${row.command.join(' ')} --json`;
    assert.equal(result.code, 0, `${what}: ${result.stderr}`);
    assert.doesNotThrow(() => JSON.parse(result.stdout), `${what} printed: ${result.stdout.slice(0, 200)}`);
  }
});
