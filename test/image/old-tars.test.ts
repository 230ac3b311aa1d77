// Entries as old tars (V7, early BSD) wrote them, which GNU tar still reads: a directory as a regular
// entry (type '0' or NUL) whose name ends in '/'. And GNU tar's volume label header, which is no file.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { requireTools, tempDir } from '../nbd/helpers.ts';
import { thinbd } from '../cli/run-thinbd.ts';
import { sh } from './helpers.ts';
import { tarEntry } from './tar-writer.ts';

requireTools('debugfs', 'e2fsck');

let work: { path: string; remove(): void };
let pool: string;

before(() => {
  work = tempDir('image-old-tars');
  pool = path.join(work.path, 'pool');
  assert.equal(thinbd(['pool', 'create', '--pool', pool, '--data-size', '512M']).code, 0);
});

after(() => work?.remove());

/** A header block with another type flag (and its checksum made right again). */
function withTypeFlag(block: Buffer, flag: number): Buffer {
  const header = Buffer.from(block);
  header[156] = flag;
  header.write('        ', 148, 'latin1');
  let sum = 0;
  for (const byte of header.subarray(0, 512)) sum += byte;
  header.write(`${sum.toString(8).padStart(6, '0')}\0 `, 148, 'latin1');
  return header;
}

test("a regular entry (type '0' or NUL) whose name ends in '/' is a directory, as GNU tar reads old tars", () => {
  const archive = Buffer.concat([
    tarEntry({ path: 'old/', mode: 0o750, mtime: 1_000_000_000 }),
    withTypeFlag(tarEntry({ path: 'nul/', mode: 0o711 }), 0),
    tarEntry({ path: 'old/f', data: 'in an old directory' }),
    tarEntry({ path: 'nul/g', data: 'in another' }),
    Buffer.alloc(1024),
  ]);
  const file = path.join(work.path, 'old.tar');
  fs.writeFileSync(file, archive);
  // GNU tar agrees: it lists both as directories.
  assert.match(sh('tar', ['-tvf', file]).stdout, /^drwxr-x--- .* old\/\n/m);
  const result = thinbd(['image', 'import', '--pool', pool, 'old', file]);
  assert.equal(result.code, 0, result.stderr);
  const raw = path.join(work.path, 'old.raw');
  assert.equal(thinbd(['export', '--pool', pool, 'old', raw]).code, 0);
  assert.equal(sh('e2fsck', ['-fn', raw], { allowFailure: true }).code, 0);
  const stat = (name: string): string => sh('debugfs', ['-R', `stat /${name}`, raw]).stdout;
  assert.match(stat('old'), /Type: directory +Mode: +0750/);
  assert.match(stat('nul'), /Type: directory +Mode: +0711/);
  assert.equal(sh('debugfs', ['-R', 'cat /old/f', raw]).stdout, 'in an old directory');
  assert.equal(sh('debugfs', ['-R', 'cat /nul/g', raw]).stdout, 'in another');
});

test("a GNU volume label (tar -V, type 'V') is skipped as tar -x skips it, from a file and from a stream", () => {
  const tree = path.join(work.path, 'labelled');
  fs.mkdirSync(tree);
  fs.writeFileSync(path.join(tree, 'f'), 'after the label');
  const file = path.join(work.path, 'labelled.tar');
  sh('tar', ['--format=gnu', '-V', 'backup 1', '-cf', file, '-C', tree, 'f']);
  assert.match(sh('tar', ['-tvf', file]).stdout, /^V.* backup 1--Volume Header--\n/);
  for (const [name, source, input] of [['labelled', file, undefined], ['labelled-stream', '-', fs.readFileSync(file)]] as const) {
    const result = thinbd(['image', 'import', '--pool', pool, name, source], input === undefined ? {} : { input });
    assert.equal(result.code, 0, result.stderr);
    const raw = path.join(work.path, `${name}.raw`);
    assert.equal(thinbd(['export', '--pool', pool, name, raw]).code, 0);
    assert.equal(sh('e2fsck', ['-fn', raw], { allowFailure: true }).code, 0);
    assert.equal(sh('debugfs', ['-R', 'cat /f', raw]).stdout, 'after the label');
    assert.deepEqual(sh('debugfs', ['-R', 'ls -p /', raw]).stdout.split('\n').filter((line) => line !== '').map((line) => line.split('/')[5]).sort(), ['.', '..', 'f', 'lost+found']);
    fs.rmSync(raw);
  }
});
