// SHA-256 of chunks on libuv's pool (OpenSSL's SHA256 from the node binary, through koffi) gives the
// hashes node:crypto gives, for empty chunks, many more chunks than it keeps in flight and
// several jobs at once; the fallback on the calling thread gives the same; and InlineChunkJobs
// returns the same chunks and hashes with either.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash, randomFillSync } from 'node:crypto';
import { PoolChunkHasher, ThreadChunkHasher, chunkHasher, loadPoolSha256, POOL_HASHES_IN_FLIGHT_MAX, type ChunkHasher } from '../../src/archive/chunk-hasher.ts';
import { InlineChunkJobs } from '../../src/archive/chunk-jobs.ts';
import { chunkerParams } from '../../src/archive/chunker.ts';

/** Each chunk's SHA-256 by node:crypto, end to end. */
function expectedHashes(data: Uint8Array, lengths: Uint32Array): Buffer {
  const hashes: Buffer[] = [];
  let begin = 0;
  for (const length of lengths) {
    hashes.push(createHash('sha256').update(data.subarray(begin, begin + length)).digest());
    begin += length;
  }
  return Buffer.concat(hashes);
}

/** Lengths that add up to at most `total`: empty ones, one-byte ones and up to 70 KiB. */
function someLengths(count: number, seed: number): Uint32Array {
  const lengths = new Uint32Array(count);
  let state = seed;
  for (let index = 0; index < count; index += 1) {
    state = (Math.imul(state, 1103515245) + 12345) >>> 0;
    lengths[index] = index % 7 === 3 ? 0 : index % 11 === 5 ? 1 : state % (70 * 1024);
  }
  return lengths;
}

const sum = (lengths: Uint32Array) => lengths.reduce((total, length) => total + length, 0);

test('the node binary running the tests exports OpenSSL\'s SHA256 and koffi calls it: the pool hasher is the one used', () => {
  // On Linux x64 with Node 20 and Node 24 (the suite's two), OpenSSL is linked into node and its
  // symbols are exported for add-ons; a Node built with a shared libcrypto finds it there.
  assert.ok(loadPoolSha256() !== undefined);
  assert.ok(chunkHasher() instanceof PoolChunkHasher);
});

for (const [name, make] of [
  ['on libuv\'s pool', () => new PoolChunkHasher(loadPoolSha256()!)],
  ['on the pool, one call in flight', () => new PoolChunkHasher(loadPoolSha256()!, 1)],
  ['on this thread (the fallback)', () => new ThreadChunkHasher()],
] as Array<[string, () => ChunkHasher]>) {
  test(`hashes ${name} are node:crypto's, for empty chunks, many more chunks than are in flight and jobs at once`, async () => {
    const hasher = make();
    // Several jobs at once, in shared memory as pack's are, one of them of empty chunks only.
    const jobs = [someLengths(300, 1), someLengths(40, 2), new Uint32Array([0, 0, 0]), someLengths(8 * POOL_HASHES_IN_FLIGHT_MAX + 1, 3), new Uint32Array(0)].map((lengths) => {
      const data = new Uint8Array(new SharedArrayBuffer(Math.max(1, sum(lengths) + 5)));
      randomFillSync(data);
      return { data: data.subarray(0, sum(lengths)), lengths, hashes: new Uint8Array(lengths.length * 32) };
    });
    await Promise.all(jobs.map((job) => hasher.hash(job.data, job.lengths, job.hashes)));
    for (const job of jobs) assert.ok(Buffer.from(job.hashes).equals(expectedHashes(job.data, job.lengths)));
    assert.ok(Buffer.from(jobs[2]!.hashes.subarray(0, 32)).equals(createHash('sha256').digest()), 'the hash of nothing');
  });
}

test('a call koffi refuses is hashed on this thread; a failed call rejects its job, and the hasher takes the next', async () => {
  const real = loadPoolSha256()!;
  let calls = 0;
  // Every third call refused as koffi refuses one when its asynchronous calls are all taken.
  const refusing = Object.assign((data: Uint8Array, length: number, digest: Uint8Array) => real(data, length, digest), {
    async(data: Uint8Array, length: number, digest: Uint8Array, done: (error: unknown) => void) {
      calls += 1;
      if (calls % 3 === 0) throw new Error('Too many asynchronous calls are running');
      real.async(data, length, digest, done);
    },
  });
  const lengths = someLengths(50, 9);
  const data = randomFillSync(new Uint8Array(sum(lengths)));
  const hashes = new Uint8Array(lengths.length * 32);
  await new PoolChunkHasher(refusing).hash(data, lengths, hashes);
  assert.ok(Buffer.from(hashes).equals(expectedHashes(data, lengths)));

  const failing = Object.assign(() => undefined, {
    async(_data: Uint8Array, _length: number, _digest: Uint8Array, done: (error: unknown) => void) {
      setImmediate(() => done(new Error('the call failed')));
    },
  });
  const hasher = new PoolChunkHasher(failing);
  await assert.rejects(hasher.hash(data, lengths, new Uint8Array(lengths.length * 32)), /the call failed/);
  // The hasher goes on with the next job: every call it had in flight came back.
  await assert.rejects(hasher.hash(data, lengths.subarray(0, 3), new Uint8Array(3 * 32)), /the call failed/);
});

test('InlineChunkJobs cuts and hashes a job as it does with hashes on this thread, and compresses it the same', async () => {
  const params = chunkerParams(16 * 1024);
  const data = new Uint8Array(new SharedArrayBuffer(3 * 1024 * 1024 + 7));
  randomFillSync(data.subarray(0, 1024 * 1024));
  for (let at = 1024 * 1024; at + 32 <= data.length; at += 32) data.set(createHash('sha256').update(String(at >> 12)).digest(), at);
  const rangeEnds = [300 * 1024 + 1, 2 * 1024 * 1024, data.length];
  const pool = new InlineChunkJobs(params, 3, new PoolChunkHasher(loadPoolSha256()!));
  const here = new InlineChunkJobs(params, 3, new ThreadChunkHasher());
  const results = [];
  for (const jobs of [pool, here]) {
    const { id, result } = await jobs.chunk(data, rangeEnds);
    const everyChunk = Array.from(result.lengths, (_, index) => index);
    const pieces = await jobs.compress(id, everyChunk, new Uint8Array(new SharedArrayBuffer(data.length)));
    results.push({ lengths: [...result.lengths], hashes: Buffer.from(result.hashes), stored: pieces.map((piece) => Buffer.from(piece.stored).toString('hex')) });
  }
  assert.ok(results[0]!.lengths.length > 50, `${results[0]!.lengths.length} chunks`);
  assert.ok(results[0]!.hashes.equals(expectedHashes(data, Uint32Array.from(results[0]!.lengths))));
  assert.deepEqual(results[0], results[1]);
});
