// What a new user ran into (issue 11), through the real `thinbd` executable: each test failed
// before its fix.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { closeSync, existsSync, mkdirSync, mkdtempSync, openSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { spawn, spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import type { VolumeListing } from '../../src/tools/list.ts';
import { THINBD, thinbd, thinbdJson } from './run-thinbd.ts';

const K = 1024;
const M = 1024 * K;

let work: string;
before(() => {
  work = mkdtempSync(join(tmpdir(), 'thinbd-new-user-'));
});
after(() => {
  rmSync(work, { recursive: true, force: true });
});

function freshPool(name: string): string {
  const dir = join(work, name);
  const result = thinbd(['pool', 'create', '--pool', dir, '--data-size', '256M']);
  assert.equal(result.code, 0, result.stderr);
  return dir;
}

function ok(args: string[]): string {
  const result = thinbd(args);
  assert.equal(result.code, 0, `thinbd ${args.join(' ')}: ${result.stderr}`);
  return result.stdout;
}

function listing(dir: string): VolumeListing[] {
  return thinbdJson<VolumeListing[]>(['list', '--pool', dir]);
}

test('shrinking a volume needs --allow-shrink: without it, exit 2 and nothing changes; growing needs nothing', () => {
  const dir = freshPool('shrink');
  ok(['create', '--pool', dir, 'vol0', '--size', '4M']);
  const image = join(work, 'shrink.img');
  writeFileSync(image, randomBytes(4 * M));
  ok(['import', '--pool', dir, 'vol0', image]);

  const refused = thinbd(['resize', '--pool', dir, 'vol0', '--size', '1M']);
  assert.equal(refused.code, 2, refused.stderr);
  assert.match(refused.stderr, /--allow-shrink/);
  assert.equal(refused.stderr.trim().split('\n').length, 1, 'one clear line');
  const [unchanged] = listing(dir);
  assert.equal(unchanged?.sizeBytes, 4 * M);
  assert.equal(unchanged?.mappedBytes, 4 * M);

  ok(['resize', '--pool', dir, 'vol0', '--size', '8M']);
  assert.equal(listing(dir)[0]?.sizeBytes, 8 * M);
  ok(['resize', '--pool', dir, 'vol0', '--size', '1M', '--allow-shrink']);
  const [shrunk] = listing(dir);
  assert.equal(shrunk?.sizeBytes, 1 * M);
  assert.equal(shrunk?.mappedBytes, 1 * M);
});

test('an import that cannot read its source is refused before a volume is created, naming the file', () => {
  const dir = freshPool('import-refused');
  const directory = join(work, 'a-directory');
  mkdirSync(directory);
  const aFile = join(work, 'a-file');
  writeFileSync(aFile, randomBytes(64 * K));
  const cases: Array<[string, RegExp]> = [
    [directory, /a-directory.*is a directory/],
    [join(work, 'missing.img'), /missing\.img.*no such file/],
    [join(aFile, 'inside'), /a-file\/inside.*not a directory/],
  ];
  for (const [source, message] of cases) {
    const result = thinbd(['import', '--pool', dir, 'vol9', source]);
    assert.equal(result.code, 1, `${source}: ${result.stderr}`);
    assert.match(result.stderr, message);
    assert.equal(result.stderr.trim().split('\n').length, 1, 'one clear line');
    assert.deepEqual(listing(dir), [], `no volume left behind after importing ${source}`);
  }
  ok(['check', '--pool', dir]);
});

test('an import that runs out of space midway removes the volume it created', () => {
  const dir = join(work, 'import-nospace');
  // A pool that may not grow (file-backed pools grow by themselves up to the host's free space).
  ok(['pool', 'create', '--pool', dir, '--data-size', '2M', '--data-max', '2M']);
  const image = join(work, 'nospace.img');
  writeFileSync(image, randomBytes(4 * M));
  const result = thinbd(['import', '--pool', dir, 'vol9', image]);
  assert.equal(result.code, 1, result.stderr);
  assert.match(result.stderr, /No free data block/);
  assert.deepEqual(listing(dir), []);
  const status = thinbdJson<{ dataBlocksUsed: number }>(['pool', 'status', '--pool', dir]);
  assert.equal(status.dataBlocksUsed, 0, 'the blocks it wrote are free again');
  ok(['check', '--pool', dir]);
});

test('an import interrupted by SIGINT removes the volume it created', async () => {
  const dir = freshPool('import-interrupted');
  const child = spawn(process.execPath, [THINBD, 'import', '--pool', dir, 'vol9', '-'], { stdio: ['pipe', 'pipe', 'pipe'] });
  let stderr = '';
  child.stderr.setEncoding('utf8').on('data', (text: string) => (stderr += text));
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) =>
    child.on('exit', (code, signal) => resolve({ code, signal })),
  );
  // Once 2 MiB more than a pipe holds have been taken from the pipe, the import is past creating
  // its volume and inside the copy loop.
  const block = randomBytes(64 * K);
  for (let written = 0; written < 2 * M; written += block.length) {
    await new Promise<void>((resolve, reject) => child.stdin.write(block, (error) => (error ? reject(error) : resolve())));
  }
  child.kill('SIGINT');
  const { code } = await exited;
  child.stdin.destroy();
  assert.equal(code, 1, stderr);
  assert.match(stderr, /interrupted by SIGINT/);
  assert.deepEqual(listing(dir), []);
  ok(['check', '--pool', dir]);
});

/** thin_dump XML of one device with `mappings` single mappings, origin block 2i on data block `dataStride` × i. */
function writeSingleMappingsXml(path: string, mappings: number, dataStride: number): void {
  const lines = ['<superblock uuid="" time="0" transaction="1" flags="0" version="2" data_block_size="128" nr_data_blocks="100000">'];
  lines.push(`  <device dev_id="1" mapped_blocks="${mappings}" transaction="0" creation_time="0" snap_time="0">`);
  for (let block = 0; block < mappings; block += 1) lines.push(`    <single_mapping origin_block="${2 * block}" data_block="${dataStride * block}" time="0"/>`);
  lines.push('  </device>', '</superblock>', '');
  writeFileSync(path, lines.join('\n'));
}

test('a reader that closes standard output early ends the command quietly with 141', () => {
  // Enough mappings that the dump cannot fit in the pipe before head exits.
  const xml = join(work, 'many.xml');
  writeSingleMappingsXml(xml, 40000, 2);
  const dir = join(work, 'epipe');
  ok(['restore', '--pool', dir, '-i', xml, '--data-size', '8G']);
  for (const command of [['dump'], ['dump', '--format', 'human'], ['dump', '--format', 'json'], ['export', '1', '-']]) {
    const args = [...command.slice(0, 1), '--pool', dir, ...command.slice(1)].map((arg) => JSON.stringify(arg)).join(' ');
    const result = spawnSync('bash', ['-c', `${JSON.stringify(process.execPath)} ${JSON.stringify(THINBD)} ${args} | head -c 100 >/dev/null; echo "\${PIPESTATUS[0]}"`], {
      encoding: 'utf8',
    });
    assert.equal(result.stderr, '', `thinbd ${command.join(' ')} | head says nothing on stderr`);
    assert.equal(result.stdout.trim(), '141', `thinbd ${command.join(' ')} | head exits 141`);
  }
});

test('dump writes the same bytes to a pipe, a file standard output is redirected to, and -o; a full disk is one line and exit 1', () => {
  const dir = join(work, 'outputs');
  const xml = join(work, 'outputs.xml');
  writeSingleMappingsXml(xml, 20000, 3);
  ok(['restore', '--pool', dir, '-i', xml, '--data-size', '8G']);
  for (const format of ['xml', 'json', 'human']) {
    const piped = ok(['dump', '--pool', dir, '--format', format]);
    assert.ok(piped.length > 20000 * 20, `the ${format} dump holds every mapping`);
    const redirected = join(work, `redirected.${format}`);
    const fd = openSync(redirected, 'wx');
    const result = spawnSync(process.execPath, [THINBD, 'dump', '--pool', dir, '--format', format], { stdio: ['ignore', fd, 'pipe'], encoding: 'utf8' });
    closeSync(fd);
    assert.equal(result.status, 0, result.stderr);
    assert.equal(readFileSync(redirected, 'utf8'), piped, `${format}: standard output redirected to a file`);
    const named = join(work, `named.${format}`);
    ok(['dump', '--pool', dir, '--format', format, '-o', named]);
    assert.equal(readFileSync(named, 'utf8'), piped, `${format}: -o`);
  }
  // /dev/full refuses every write with ENOSPC.
  const full = openSync('/dev/full', 'w');
  const result = spawnSync(process.execPath, [THINBD, 'dump', '--pool', dir], { stdio: ['ignore', full, 'pipe'], encoding: 'utf8' });
  closeSync(full);
  assert.equal(result.status, 1);
  assert.equal(result.stderr, 'thinbd: Cannot write to standard output: ENOSPC: no space left on device, write\n');
});

test('an output file that exists or has no directory is one line naming it and exit 1, and an existing file is left as it was', () => {
  const dir = freshPool('outputs-refused');
  const existing = join(work, 'existing.xml');
  writeFileSync(existing, 'keep me\n');
  for (const args of [['dump', '--pool', dir, '-o', existing], ['metadata', 'pack', '--pool', dir, '-o', existing]]) {
    const result = thinbd(args);
    assert.equal(result.code, 1, `${args.join(' ')}: ${result.stderr}`);
    assert.equal(result.stderr, `thinbd: Cannot create ${existing}: it already exists (thinbd does not overwrite it; remove it or name another file)\n`);
    assert.equal(readFileSync(existing, 'utf8'), 'keep me\n');
  }
  const nowhere = join(work, 'no-such-directory', 'dump.xml');
  const result = thinbd(['dump', '--pool', dir, '-o', nowhere]);
  assert.equal(result.code, 1);
  assert.equal(result.stderr, `thinbd: Cannot create ${nowhere}: its directory does not exist\n`);
});

test('a directory that holds no pool is left untouched by every command', () => {
  const notAPool = join(work, 'notapool');
  mkdirSync(notAPool);
  writeFileSync(join(notAPool, 'metadata'), 'a file that happens to be called metadata');
  const commands = [
    ['list'],
    ['pool', 'status'],
    ['check'],
    ['dump'],
    ['create', 'v', '--size', '1M'],
    ['snapshot', 'a', 'b'],
    ['remove', 'a'],
    ['resize', 'a', '--size', '1M'],
    ['import', 'a', join(work, 'nowhere.img')],
    ['export', 'a', join(work, 'nowhere.out')],
    ['delta', 'a', 'b'],
    ['metadata', 'pack', '-o', join(work, 'nowhere.pack')],
  ];
  for (const command of commands) {
    const result = thinbd([...command, '--pool', notAPool]);
    assert.equal(result.code, 1, `thinbd ${command.join(' ')}: ${result.stderr}`);
    assert.match(result.stderr, /No pool at .*notapool \(no data file there\)/, command.join(' '));
    assert.deepEqual(readdirSync(notAPool), ['metadata'], `thinbd ${command.join(' ')} created nothing`);
  }
  assert.equal(existsSync(join(work, 'nowhere.pack')), false);
});

test('metadata size gives one figure to use and says why it exceeds the worst case', () => {
  const small = ok(['metadata', 'size', '--data-size', '2G', '--block-size', '128k']);
  assert.match(small, /^thinbd: +use --metadata-size 68M: the metadata takes 748K \(\d+ bytes\) at worst.*68M is the smallest metadata file \(its last superblock copy sits at 64M/m);
  const large = ok(['metadata', 'size', '--data-size', '2T']);
  assert.match(large, /^thinbd: +use --metadata-size 899M: the metadata takes 899M \(\d+ bytes\) at worst, every block its own mapping$/m);
});

test("restore then dump gives thin_dump's transaction ids back; volumes made later carry the pool's", () => {
  const xml = join(work, 'lvm.xml');
  writeFileSync(
    xml,
    [
      '<superblock uuid="" time="4" transaction="36" flags="0" version="2" data_block_size="128" nr_data_blocks="1000">',
      '  <device dev_id="1" mapped_blocks="2" transaction="35" creation_time="0" snap_time="3">',
      '    <range_mapping origin_begin="0" data_begin="10" length="2" time="0"/>',
      '  </device>',
      '  <device dev_id="7" mapped_blocks="0" transaction="36" creation_time="4" snap_time="4">',
      '  </device>',
      '</superblock>',
      '',
    ].join('\n'),
  );
  const dir = join(work, 'lvm');
  ok(['restore', '--pool', dir, '-i', xml, '--data-size', `${1000 * 64}k`]);
  const dumped = ok(['dump', '--pool', dir]);
  assert.match(dumped, /^<superblock uuid="" time="4" transaction="36" flags="0" version="2" data_block_size="128" nr_data_blocks="1000">$/m);
  assert.match(dumped, /^ {2}<device dev_id="1" mapped_blocks="2" transaction="35" creation_time="0" snap_time="3">$/m);
  assert.match(dumped, /^ {2}<device dev_id="7" mapped_blocks="0" transaction="36" creation_time="4" snap_time="4">$/m);

  // thinbd's own commits move its generation, never dm-thin's transaction id.
  ok(['create', '--pool', dir, 'new', '--size', '1M']);
  const status = thinbdJson<{ transactionId: number }>(['pool', 'status', '--pool', dir]);
  const again = ok(['dump', '--pool', dir]);
  assert.match(again, /^<superblock [^>]*transaction="36"/m);
  assert.match(again, /^ {2}<device dev_id="8" mapped_blocks="0" transaction="36" /m);
  assert.notEqual(status.transactionId, 36);
});
