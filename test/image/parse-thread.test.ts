// The parsing thread opens a flat tar again by its path (parse-worker.ts): it parses the file only
// if it is still the one the import opened, so a file replaced meanwhile fails by name, writing nothing.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { tempDir } from '../nbd/helpers.ts';
import { isThinError } from '../../src/errors.ts';
import { parseOnThread, type ParseOptions } from '../../src/image/parse-thread.ts';
import { tarArchive } from './tar-writer.ts';

let work: { path: string; remove(): void };
before(() => {
  work = tempDir('parse-thread');
});
after(() => work?.remove());

function options(file: ParseOptions['file']): ParseOptions {
  return {
    file,
    description: file.path,
    compression: 'none',
    beginBlock: 1024,
    limitBlock: 2 ** 20,
    limitReason: 'test',
    alignBytes: 64 * 1024,
    writesInFlight: 2,
    filesystem: { uuid: new Uint8Array(16).fill(1), hashSeed: new Uint32Array(4).fill(2), nowSeconds: 1_765_000_000, label: 'test' },
    bufferBytes: 64 * 1024,
    buffersMax: 4,
  };
}

test('the parsing thread refuses a source replaced after the import opened it, by name, and writes nothing', async () => {
  const source = path.join(work.path, 'image.tar');
  fs.writeFileSync(source, tarArchive([{ path: 'etc/', type: 'dir' }, { path: 'etc/hostname', data: 'box\n' }]));
  const { dev, ino } = fs.statSync(source, { bigint: true });
  const other = path.join(work.path, 'other.tar');
  fs.copyFileSync(source, other);
  fs.renameSync(other, source);
  let writes = 0;
  const host = { write: async () => void writes++ };
  await assert.rejects(parseOnThread(options({ path: source, dev, ino }), host), (error) => {
    assert.ok(isThinError(error, 'THIN_IO'));
    assert.equal(error.message, `Cannot read ${source}: it is no longer the file being imported (it was replaced meanwhile)`);
    return true;
  });
  assert.equal(writes, 0);
  // The file the import would open now parses.
  const current = fs.statSync(source, { bigint: true });
  const result = await parseOnThread(options({ path: source, dev: current.dev, ino: current.ino }), host);
  assert.ok(writes > 0, 'the file system was written');
  assert.deepEqual([result.summary.files, result.summary.directories], [1, 3], 'etc/hostname; the root, lost+found and etc');
});
