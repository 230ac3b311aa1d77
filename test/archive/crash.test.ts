// A pack killed at any moment leaves the store consistent: the half-written stream is not listed,
// verify finds nothing wrong, a re-run uploads only what is missing and completes, and gc
// reclaims what a killed pack left. Against a directory and an S3 bucket (s3rver on 127.0.0.1).
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { once } from 'node:events';
import { spawn } from 'node:child_process';
import { THINBD, thinbd, thinbdJson } from '../cli/run-thinbd.ts';
import { CreateMultipartUploadCommand, ListMultipartUploadsCommand, UploadPartCommand } from '@aws-sdk/client-s3';
import { openObjectStore } from '../../src/archive/open-store.ts';
import { S3Bucket } from '../../src/io/s3.ts';
import { startS3Server, type LocalS3Server } from '../io/s3-server.ts';
import { MiB, tempDir } from './helpers.ts';

const dir = tempDir('archive-crash');
const pool = join(dir.path, 'pool');
let server: LocalS3Server;
const env = (): Record<string, string> => server.env;

function ok(args: string[]): string {
  const result = thinbd(args, { env: env() });
  assert.equal(result.code, 0, `thinbd ${args.join(' ')}: ${result.stderr}`);
  return result.stdout;
}

before(async () => {
  server = await startS3Server({ buckets: ['crash', 'crash-no-upload-listing'] });
  Object.assign(process.env, server.env);
  ok(['pool', 'create', '--pool', pool, '--data-size', '1G']);
  const image = join(dir.path, 'image');
  // Incompressible, so the volume fills several 16 MiB pack objects.
  writeFileSync(image, randomBytes(72 * MiB));
  ok(['import', '--pool', pool, 'vol', image]);
  ok(['snapshot', '--pool', pool, 'vol', 'snap', '--read-only']);
});

after(async () => {
  await server?.stop();
  dir.remove();
});

async function packCount(store: string): Promise<number> {
  const objects = await openObjectStore(store);
  try {
    let count = 0;
    for await (const _ of objects.list('packs/')) count += 1;
    return count;
  } finally {
    await objects.close();
  }
}

/** Starts a pack and kills it (SIGKILL) once `packs` pack objects exist, or after `delayMs`. */
async function killedPack(store: string, name: string, when: { packs?: number; delayMs?: number }): Promise<void> {
  const child = spawn(process.execPath, [THINBD, 'archive', 'pack', '--pool', pool, 'snap', '--store', store, '--name', name], {
    env: { ...process.env, ...env() },
    stdio: 'ignore',
  });
  const exited = once(child, 'exit');
  try {
    if (when.delayMs !== undefined) await new Promise((resolve) => setTimeout(resolve, when.delayMs));
    for (let poll = 0; when.packs !== undefined && poll < 3000; poll += 1) {
      if (child.exitCode !== null || (await packCount(store)) >= when.packs) break;
      await new Promise((resolve) => setTimeout(resolve, 10));
    }
  } finally {
    child.kill('SIGKILL');
    await exited;
  }
}

function streams(store: string): string[] {
  return thinbdJson<{ streams: Array<{ name: string }> }>(['archive', 'list', '--store', store], { env: env() }).streams.map((stream) => stream.name);
}

function assertConsistent(store: string, name: string): void {
  const listed = streams(store);
  const report = thinbd(['archive', 'verify', '--store', store, '--json'], { env: env() });
  assert.equal(report.code, 0, `verify after a kill: ${report.stdout} ${report.stderr}`);
  if (listed.includes(name)) {
    // The kill came after the commit: the stream is whole.
    const volume = `check-${name}`;
    ok(['archive', 'unpack', '--pool', pool, '--store', store, name, volume]);
    assert.equal(thinbd(['delta', '--pool', pool, 'snap', volume]).code, 0);
    ok(['remove', '--pool', pool, volume]);
  }
}

for (const kind of ['directory', 's3'] as const) {
  describe(`a killed pack (${kind} store)`, () => {
    let store: string;
    before(() => {
      store = kind === 'directory' ? join(dir.path, 'store') : 's3://crash/store';
      ok(['archive', 'init', '--store', store]);
    });

    test('killed after its first pack object: not listed, store verifies; the re-run uploads only the rest', async () => {
      await killedPack(store, 'full', { packs: 1 });
      assert.deepEqual(streams(store), []);
      const left = await packCount(store);
      assert.ok(left >= 1, 'the killed pack left packs behind');
      assertConsistent(store, 'full');
      const rerun = thinbdJson<{ bytesNew: number; bytesRead: number; mappedBytes: number }>(['archive', 'pack', '--pool', pool, 'snap', '--store', store, '--name', 'full'], { env: env() });
      assert.equal(rerun.bytesRead, rerun.mappedBytes);
      assert.ok(rerun.bytesNew <= rerun.mappedBytes - left * 15 * MiB, `the re-run stored ${rerun.bytesNew} new bytes; ${left} packs were already there`);
      assert.deepEqual(streams(store), ['full']);
      assertConsistent(store, 'full');
    });

    test('killed at other moments, the store stays consistent; gc reclaims what no stream needs', async () => {
      for (const [index, delayMs] of [0, 150, 400, 900].entries()) {
        await killedPack(store, `k${index}`, { delayMs });
        assertConsistent(store, `k${index}`);
      }
      for (const name of streams(store)) ok(['archive', 'rm', '--store', store, name]);
      const emptied = thinbdJson<{ bytesAfter: number; packsDeleted: number }>(['archive', 'gc', '--store', store], { env: env() });
      assert.equal(emptied.bytesAfter, 0, 'no stream: nothing kept');
      await killedPack(store, 'orphan', { packs: 1 });
      assert.deepEqual(streams(store), []);
      assert.ok((await packCount(store)) >= 1);
      const gc = thinbdJson<{ bytesAfter: number; packsDeleted: number }>(['archive', 'gc', '--store', store], { env: env() });
      assert.equal(gc.bytesAfter, 0, "the killed pack's packs are reclaimed");
      assert.ok(gc.packsDeleted >= 1);
      assert.equal(await packCount(store), 0);
      if (kind === 's3') assert.deepEqual(await unfinishedUploads(), [], 'no multipart upload of a killed pack is left');
    });

    if (kind === 's3') {
      test("gc aborts the multipart uploads killed packs left unfinished under the store's own keys, and only those", async () => {
        const bucket = await S3Bucket.connect('s3://crash', { endpoint: server.endpoint });
        try {
          const keys = ['store/packs/ab/abcdef', 'store/streams/unrelated-upload', 'store/notes/of-someone-else', 'elsewhere/packs/ab/abcdef'];
          for (const Key of keys) {
            const { UploadId } = await bucket.client.send(new CreateMultipartUploadCommand({ Bucket: 'crash', Key }));
            await bucket.client.send(new UploadPartCommand({ Bucket: 'crash', Key, UploadId, PartNumber: 1, Body: randomBytes(1024) }));
          }
          assert.deepEqual(await unfinishedUploads(), [...keys].sort());
          const gc = thinbdJson<{ temporariesRemoved: number }>(['archive', 'gc', '--store', store], { env: env() });
          assert.equal(gc.temporariesRemoved, 2);
          assert.deepEqual(await unfinishedUploads(), ['elsewhere/packs/ab/abcdef', 'store/notes/of-someone-else']);
          const again = thinbd(['archive', 'gc', '--store', store], { env: env() });
          assert.equal(again.code, 0, again.stderr);
          assert.doesNotMatch(again.stdout, /unfinished/);
        } finally {
          bucket.close();
        }
      });

      test('gc with credentials that may not list multipart uploads still reclaims packs, and says what it left', async () => {
        const refusing = 's3://crash-no-upload-listing/store';
        ok(['archive', 'init', '--store', refusing]);
        await killedPack(refusing, 'orphan', { packs: 1 });
        const gc = thinbd(['archive', 'gc', '--store', refusing, '--json'], { env: env() });
        assert.equal(gc.code, 0, gc.stderr);
        assert.equal((JSON.parse(gc.stdout) as { bytesAfter: number }).bytesAfter, 0);
        assert.match(gc.stderr, /warning: unfinished writes of killed packs were not dropped \(.*AccessDenied.*\); an S3 lifecycle rule/);
      });
    }
  });
}

/** Keys of the multipart uploads begun in the test bucket and not completed or aborted. */
async function unfinishedUploads(): Promise<string[]> {
  const bucket = await S3Bucket.connect('s3://crash', { endpoint: server.endpoint });
  try {
    const reply = await bucket.client.send(new ListMultipartUploadsCommand({ Bucket: 'crash' }));
    return (reply.Uploads ?? []).map((upload) => upload.Key!).sort();
  } finally {
    bucket.close();
  }
}
