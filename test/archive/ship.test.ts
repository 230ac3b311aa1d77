// Shipping a volume between hosts through S3: two pools stand for two hosts. Host A packs a full
// stream and then five incrementals (--delta-from the previous read-only snapshot); host B
// unpacks each into the same volume. After each, B's volume matches A's snapshot byte for byte
// and B wrote little more than what changed.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes, createHash } from 'node:crypto';
import { readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { thinbd, thinbdJson } from '../cli/run-thinbd.ts';
import { startS3Server, type LocalS3Server } from '../io/s3-server.ts';
import { MiB, contentBytes, tempDir } from './helpers.ts';

const dir = tempDir('archive-ship');
const hostA = join(dir.path, 'a');
const hostB = join(dir.path, 'b');
const store = 's3://ship/volumes';
let server: LocalS3Server;

function ok(args: string[]): string {
  const result = thinbd(args, { env: server.env });
  assert.equal(result.code, 0, `thinbd ${args.join(' ')}: ${result.stderr}`);
  return result.stdout;
}

function digest(pool: string, volume: string): string {
  const file = join(dir.path, 'export.img');
  rmSync(file, { force: true });
  ok(['export', '--pool', pool, volume, file]);
  const hash = createHash('sha256').update(readFileSync(file)).digest('hex');
  rmSync(file);
  return hash;
}

before(async () => {
  server = await startS3Server({ buckets: ['ship'] });
  ok(['pool', 'create', '--pool', hostA, '--data-size', '1G']);
  ok(['pool', 'create', '--pool', hostB, '--data-size', '1G']);
  ok(['archive', 'init', '--store', store]);
});

after(async () => {
  await server?.stop();
  dir.remove();
});

test('full + 5 incrementals: the destination matches the source after each, writing only what changed', () => {
  ok(['create', '--pool', hostA, 'vm', '--size', '64M']);
  const image = join(dir.path, 'image');
  writeFileSync(image, contentBytes(24 * MiB, 5));
  ok(['import', '--pool', hostA, 'vm', image, '--offset', '8M']);
  let previous: string | undefined;
  for (let step = 0; step <= 5; step += 1) {
    if (step > 0) {
      // A's volume changes: new data here and there, a discard, a resize on step 3.
      const patch = join(dir.path, 'patch');
      writeFileSync(patch, randomBytes(200 * 1024));
      ok(['import', '--pool', hostA, 'vm', patch, '--offset', `${step * 7}M`]);
      if (step === 3) ok(['resize', '--pool', hostA, 'vm', '--size', '80M']);
    }
    const snapshot = `vm.${step}`;
    ok(['snapshot', '--pool', hostA, 'vm', snapshot, '--read-only']);
    const packed = thinbdJson<{ stream: string; bytesRead: number; bytesStored: number; parent?: string }>([
      'archive', 'pack', '--pool', hostA, snapshot, '--store', store, '--name', snapshot,
      ...(previous === undefined ? [] : ['--delta-from', previous]),
    ], { env: server.env });
    if (step > 0) {
      assert.equal(packed.parent, previous);
      assert.ok(packed.bytesRead < 1 * MiB, `step ${step} read ${packed.bytesRead} bytes`);
    }
    const unpacked = thinbdJson<{ bytesWritten: number; bytesFetched: number; volumeCreated: boolean }>(
      ['archive', 'unpack', '--pool', hostB, '--store', store, snapshot, 'vm'],
      { env: server.env },
    );
    assert.equal(unpacked.volumeCreated, step === 0);
    if (step > 0) {
      assert.ok(unpacked.bytesWritten <= 512 * 1024, `step ${step} wrote ${unpacked.bytesWritten} bytes on B`);
      assert.ok(unpacked.bytesFetched <= 1 * MiB, `step ${step} fetched ${unpacked.bytesFetched} bytes`);
    }
    assert.equal(digest(hostB, 'vm'), digest(hostA, snapshot), `B matches A after step ${step}`);
    previous = snapshot;
  }
  assert.equal(thinbd(['check', '--pool', hostB]).code, 0);
});

test('init under an S3 prefix: an existing store is refused as one, a prefix that holds other objects is refused naming one', () => {
  const again = thinbd(['archive', 'init', '--store', store], { env: server.env });
  assert.equal(again.code, 1);
  assert.match(again.stderr, /An archive store already exists at s3:\/\/ship\/volumes/);
  // The bucket's top holds the store's objects under volumes/, and no store of its own.
  const above = thinbd(['archive', 'init', '--store', 's3://ship'], { env: server.env });
  assert.equal(above.code, 1, above.stderr);
  assert.match(above.stderr, /^thinbd: Cannot create an archive store at s3:\/\/ship.*: objects are there \(volumes\/.*\) and no archive store; name a new or empty prefix$/m);
});
