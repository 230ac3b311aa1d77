// image ls lists images, not the machines made from them; the source label names a local file absolutely.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { patternBytes, tempDir } from '../nbd/helpers.ts';
import { thinbd } from '../cli/run-thinbd.ts';
import { Pool } from '../../src/pool/pool.ts';
import { tarArchive, type TarSpec } from './tar-writer.ts';

let work: { path: string; remove(): void };

before(() => {
  work = tempDir('image-catalog');
});

after(() => work?.remove());

let pools = 0;
function newPool(blockSize = '64k'): string {
  const pool = path.join(work.path, `pool-${pools++}`);
  const created = thinbd(['pool', 'create', '--pool', pool, '--data-size', '1G', '--block-size', blockSize]);
  assert.equal(created.code, 0, created.stderr);
  return pool;
}

interface Listed {
  name: string;
  source: string;
  digest: string;
  snapshots: number;
}

function imageLs(pool: string): Listed[] {
  const result = thinbd(['image', 'ls', '--pool', pool, '--json']);
  assert.equal(result.code, 0, result.stderr);
  return JSON.parse(result.stdout) as Listed[];
}

const FLAT: TarSpec[] = [
  { path: 'etc/', type: 'dir' },
  { path: 'etc/hello', data: 'hello\n' },
  { path: 'usr/lib/big', data: patternBytes(300 * 1024 + 5, 1) },
];

test('image ls lists the images only: not a machine (a writable snapshot) or a read-only copy, though they carry its labels; an image keeps its place when renamed', async () => {
  const pool = newPool();
  fs.writeFileSync(path.join(work.path, 'flat.tar'), tarArchive(FLAT));
  // A relative path, as typed in a shell: the label names the file wherever image ls runs.
  const imported = thinbd(['image', 'import', '--pool', pool, 'flat', 'flat.tar'], { cwd: work.path });
  assert.equal(imported.code, 0, imported.stderr);
  const [image] = imageLs(pool);
  assert.ok(path.isAbsolute(image!.source), `source ${image!.source}`);
  assert.equal(fs.realpathSync(image!.source), fs.realpathSync(path.join(work.path, 'flat.tar')));

  assert.equal(thinbd(['snapshot', '--pool', pool, 'flat', 'machine-42']).code, 0);
  assert.equal(thinbd(['snapshot', '--pool', pool, '--read-only', 'flat', 'flat-copy']).code, 0);
  assert.equal(thinbd(['snapshot', '--pool', pool, 'machine-42', 'machine-42-backup']).code, 0);
  const listed = imageLs(pool);
  assert.deepEqual(listed.map((entry) => [entry.name, entry.snapshots]), [['flat', 2]]);
  const text = thinbd(['image', 'ls', '--pool', pool]);
  assert.match(text.stdout, /SNAPSHOTS/);
  assert.doesNotMatch(text.stdout, /machine-42|flat-copy/);

  // No command renames a volume; the library does (lvrename).
  const opened = await Pool.open(pool);
  try {
    await opened.renameVolume('flat', 'base');
    await opened.flush();
  } finally {
    await opened.close();
  }
  assert.deepEqual(imageLs(pool).map((entry) => entry.name), ['base']);
});
