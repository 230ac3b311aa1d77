// FastCDC chunking: bounds, determinism, resynchronisation after an insertion, and cut points
// pinned (they are part of the store format: a change would stop new packs deduplicating against
// old ones).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { Chunker, chunkerParams } from '../../src/archive/chunker.ts';
import { InlineChunkJobs, chunkAndHash } from '../../src/archive/chunk-jobs.ts';
import { WorkerChunkJobs } from '../../src/archive/chunk-workers.ts';
import { CHUNK_FLAG_ZSTD } from '../../src/archive/format.ts';
import { refsByRange } from '../../src/archive/pack.ts';

/** Deterministic pseudo-random bytes (xorshift32). */
function pseudoRandom(lengthBytes: number, seed: number): Uint8Array {
  const bytes = new Uint8Array(lengthBytes);
  let state = seed >>> 0 || 1;
  for (let index = 0; index < lengthBytes; index += 1) {
    state ^= state << 13;
    state >>>= 0;
    state ^= state >>> 17;
    state ^= state << 5;
    state >>>= 0;
    bytes[index] = state & 0xff;
  }
  return bytes;
}

const chunker = new Chunker(chunkerParams(64 * 1024));

test('chunks stay within min and max, and the mean is near the average', () => {
  const data = pseudoRandom(16 * 1024 * 1024, 7);
  const lengths = chunker.lengths(data);
  assert.equal(lengths.reduce((a, b) => a + b, 0), data.length);
  for (const length of lengths.slice(0, -1)) {
    assert.ok(length >= 16 * 1024 && length <= 256 * 1024, `a chunk of ${length} bytes`);
  }
  const mean = data.length / lengths.length;
  assert.ok(mean > 48 * 1024 && mean < 96 * 1024, `mean chunk ${mean}`);
});

test('the same bytes are cut at the same places', () => {
  const data = pseudoRandom(2 * 1024 * 1024, 11);
  assert.deepEqual(chunker.lengths(data), chunker.lengths(Uint8Array.from(data)));
});

test('after an insertion the cuts fall back into step, so later chunks deduplicate', () => {
  const data = pseudoRandom(4 * 1024 * 1024, 3);
  const shifted = new Uint8Array(data.length + 1000);
  shifted.set(data.subarray(0, 500_000));
  shifted.set(pseudoRandom(1000, 99), 500_000);
  shifted.set(data.subarray(500_000), 501_000);
  const hashes = (bytes: Uint8Array) => {
    const result = new Set<string>();
    let begin = 0;
    for (const length of chunker.lengths(bytes)) {
      result.add(createHash('sha256').update(bytes.subarray(begin, begin + length)).digest('hex'));
      begin += length;
    }
    return result;
  };
  const before = hashes(data);
  const after = hashes(shifted);
  const shared = [...after].filter((hash) => before.has(hash)).length;
  assert.ok(shared >= after.size - 3, `${shared} of ${after.size} chunks shared`);
});

test('without the final flag a range too short to hold a cut asks for more bytes', () => {
  const data = pseudoRandom(300 * 1024, 5);
  assert.equal(chunker.cut(data, 0, 10 * 1024, false), -1);
  assert.equal(chunker.cut(data, 0, 10 * 1024, true), 10 * 1024);
  const cut = chunker.cut(data, 0, data.length, false);
  assert.ok(cut > 0 && cut <= 256 * 1024);
  // Zeros never satisfy the mask: a run of them is cut at the maximum.
  assert.equal(chunker.cut(new Uint8Array(300 * 1024), 0, 300 * 1024, false), 256 * 1024);
});

test('cut points are pinned (store format F-AR-CDC-1)', () => {
  const data = pseudoRandom(1024 * 1024, 1234);
  const lengths = chunker.lengths(data);
  const digest = createHash('sha256').update(lengths.join(',')).digest('hex').slice(0, 16);
  assert.equal(`${lengths.length}:${digest}`, PINNED);
});

const PINNED = '14:77114761ea96fff0';

/**
 * The chunker's rule one byte at a time, as docs/format.md states it (F-AR-CDC-1, F-AR-CDC-2): the
 * gear table from SHA-256, no cut before min, the stricter mask below the average, the looser one
 * from it, a forced cut at max.
 */
const REFERENCE_GEAR = Array.from({ length: 256 }, (_, index) => createHash('sha256').update(`thinbd gear ${index}`).digest().readInt32BE(0));

function referenceCut(params: { minBytes: number; averageBytes: number; maxBytes: number }, data: Uint8Array, begin: number, end: number, final: boolean): number {
  const bits = Math.log2(params.averageBytes);
  const mask = (maskBits: number) => ~((1 << (32 - maskBits)) - 1) | 0;
  const available = end - begin;
  if (available <= params.minBytes) return final || available === params.maxBytes ? end : -1;
  const limit = begin + Math.min(available, params.maxBytes);
  let hash = 0;
  for (let position = begin + params.minBytes; position < limit; position += 1) {
    hash = ((hash << 1) + REFERENCE_GEAR[data[position]!]!) | 0;
    const sizeAfter = position + 1 - begin;
    if ((hash & mask(sizeAfter <= params.averageBytes ? bits + 2 : bits - 2)) === 0) return position + 1;
  }
  return limit - begin === params.maxBytes || final ? limit : -1;
}

test('the unrolled loop cuts where the one-byte rule does, at every alignment of begin and end', () => {
  // Small chunks, so that many cuts (and both loops' tails) are exercised.
  const params = chunkerParams(256);
  const small = new Chunker(params);
  const data = pseudoRandom(64 * 1024, 21);
  let cuts = 0;
  for (let begin = 0; begin < 2048; begin += 1) {
    for (const end of [begin + params.minBytes + (begin % 13), begin + params.averageBytes + (begin % 9), begin + params.maxBytes - (begin % 7), begin + 4096]) {
      for (const final of [false, true]) {
        assert.equal(small.cut(data, begin, end, final), referenceCut(params, data, begin, end, final), `begin ${begin}, end ${end}, final ${final}`);
        cuts += 1;
      }
    }
  }
  // And whole ranges at the default size.
  const large = pseudoRandom(4 * 1024 * 1024, 22);
  const defaults = chunkerParams(64 * 1024);
  for (let begin = 0; begin < large.length; ) {
    const end = chunker.cut(large, begin, large.length, true);
    assert.equal(end, referenceCut(defaults, large, begin, large.length, true));
    begin = end;
    cuts += 1;
  }
  assert.ok(cuts > 16_000);
});

test('worker threads chunk and compress a job in shared memory where it lies, as this thread does', async () => {
  const params = chunkerParams(16 * 1024);
  const bytes = new Uint8Array(5 * 1024 * 1024);
  for (let at = 0; at < bytes.length; at += 32) bytes.set(createHash('sha256').update(String(at >> 12)).digest(), at);
  // 2.5 MiB that do not compress: the chunks of a frame wholly inside it are stored raw, as views of the job.
  bytes.set(pseudoRandom(2.5 * 1024 * 1024, 77), 1024 * 1024);
  const inline = new InlineChunkJobs(params, 3);
  const workers = new WorkerChunkJobs(params, 3, 2);
  try {
    const expected = await inline.chunk(bytes.slice());
    const everyChunk = Array.from(expected.result.lengths, (_, index) => index);
    const expectedStored = await inline.compress(expected.id, everyChunk, new Uint8Array(new SharedArrayBuffer(bytes.length)));
    assert.ok(expectedStored.some((chunk) => chunk.flags === 0) && expectedStored.some((chunk) => chunk.flags === CHUNK_FLAG_ZSTD), 'chunks stored raw and compressed');
    // Adjacent chunks share frames; every chunk is in one piece, in order.
    assert.ok(expectedStored.some((piece) => piece.chunks.length > 8), 'frames of several chunks');
    assert.deepEqual(
      expectedStored.flatMap((piece) => piece.chunks.map((chunk) => chunk.position)),
      everyChunk,
    );
    assert.ok(expectedStored.every((piece) => piece.flags === CHUNK_FLAG_ZSTD || piece.chunks.length === 1), 'a raw piece is one chunk');
    const shared = new Uint8Array(new SharedArrayBuffer(bytes.length));
    shared.set(bytes);
    const { id, result } = await workers.chunk(shared);
    assert.deepEqual(result.lengths, expected.result.lengths);
    assert.deepEqual(result.hashes, expected.result.hashes);
    const out = new Uint8Array(new SharedArrayBuffer(bytes.length));
    const stored = await workers.compress(id, everyChunk, out);
    assert.ok(stored.every((chunk) => chunk.stored.buffer === (chunk.flags === 0 ? shared.buffer : out.buffer)), 'frames in the output buffer, raw chunks where they lie');
    assert.deepEqual(stored.map((chunk) => Buffer.from(chunk.stored).toString('hex')), expectedStored.map((chunk) => Buffer.from(chunk.stored).toString('hex')));
    assert.ok(Buffer.from(shared).equals(bytes));
  } finally {
    await workers.close();
    await inline.close();
  }
});

test('a job whose worker is ended before it replies fails with the worker named, it does not wait forever', async () => {
  const workers = new WorkerChunkJobs(chunkerParams(16 * 1024), 3, 1);
  // Sent while the worker is still starting, then the workers are ended: no reply can come.
  const pending = workers.chunk(new Uint8Array(new SharedArrayBuffer(8 * 1024 * 1024)));
  await workers.close();
  await assert.rejects(pending, /chunk worker stopped \(exit code \d+\)/);
});

test('jobs sent while the workers start are done on this thread (hereUntilReady), those after on the workers, all as this thread does them', async () => {
  const params = chunkerParams(16 * 1024);
  const bytes = new Uint8Array(new SharedArrayBuffer(3 * 1024 * 1024));
  bytes.set(pseudoRandom(1024 * 1024, 5), 0);
  for (let at = 1024 * 1024; at < bytes.length; at += 32) bytes.set(createHash('sha256').update(String(at >> 12)).digest(), at);
  const rangeEnds = [700 * 1024 + 3, 2 * 1024 * 1024, bytes.length];
  const inline = new InlineChunkJobs(params, 3);
  const workers = new WorkerChunkJobs(params, 3, 2, { hereUntilReady: true });
  const storedHex = (pieces: Awaited<ReturnType<InlineChunkJobs['compress']>>) => pieces.map((piece) => `${piece.flags}:${piece.chunks.map((chunk) => chunk.position).join(',')}:${Buffer.from(piece.stored).toString('hex')}`);
  try {
    const expected = await inline.chunk(bytes, rangeEnds);
    const everyChunk = Array.from(expected.result.lengths, (_, index) => index);
    const expectedStored = storedHex(await inline.compress(expected.id, everyChunk, new Uint8Array(new SharedArrayBuffer(bytes.length))));
    /** A job on `workers`, checked against this thread's; whether it was done here. */
    const check = async (): Promise<boolean> => {
      const here = workers.jobsHere;
      // The worker (or this thread) is picked before chunk returns; started flags only go from 0 to 1.
      const pending = workers.chunk(bytes, rangeEnds);
      const noneStarted = workers.startedWorkers === 0;
      const { id, result } = await pending;
      assert.deepEqual(result.lengths, expected.result.lengths);
      assert.deepEqual(result.hashes, expected.result.hashes);
      assert.deepEqual(storedHex(await workers.compress(id, everyChunk, new Uint8Array(new SharedArrayBuffer(bytes.length)))), expectedStored);
      const doneHere = workers.jobsHere === here + 1;
      if (noneStarted) assert.ok(doneHere, 'a job sent before any worker started was done on this thread');
      return doneHere;
    };
    // At once: no worker has started yet (each takes tens of milliseconds), so these are done here.
    await check();
    await check();
    while (workers.startedWorkers < 2) await new Promise((resolve) => setTimeout(resolve, 5));
    // Then on the workers.
    const onWorkers = await Promise.all([check(), check(), check()]);
    assert.deepEqual(onWorkers, [false, false, false], 'jobs sent once the workers started went to them');
  } finally {
    await workers.close();
    await inline.close();
  }
});

test('workers left unclosed by a caller that failed before its first job do not keep the process alive', () => {
  // A child process makes the jobs (its workers start at once) and returns without close():
  // it must exit by itself.
  const source = `
    import { WorkerChunkJobs } from ${JSON.stringify(new URL('../../src/archive/chunk-workers.ts', import.meta.url).href)};
    import { chunkerParams } from ${JSON.stringify(new URL('../../src/archive/chunker.ts', import.meta.url).href)};
    new WorkerChunkJobs(chunkerParams(16 * 1024), 3, 2);
  `;
  const result = spawnSync(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', source], { encoding: 'utf8', timeout: 60_000 });
  assert.equal(result.signal, null, `the process was still running after 60 s: ${result.stderr}`);
  assert.equal(result.status, 0, result.stderr);
});

test('a job of several ranges cuts each range as a job of its own, on this thread and on workers, and no frame spans two ranges', async () => {
  const params = chunkerParams(16 * 1024);
  // Ranges of very different sizes (one shorter than a minimum chunk, one empty), end to end in one job.
  const ranges = [compressible(200 * 1024 + 5, 30), repeated(3), compressible(300 * 1024, 31), new Uint8Array(0), pseudoRandom(7 * 1024, 32), compressible(600 * 1024 + 3, 33)];
  const rangeEnds: number[] = [];
  for (const range of ranges) rangeEnds.push((rangeEnds[rangeEnds.length - 1] ?? 0) + range.length);
  const joined = new Uint8Array(new SharedArrayBuffer(rangeEnds[rangeEnds.length - 1]!));
  ranges.forEach((range, index) => joined.set(range, index === 0 ? 0 : rangeEnds[index - 1]));

  // Each range alone, as its own job.
  const alone = new Chunker(params);
  const expectedLengths = ranges.flatMap((range) => alone.lengths(range));
  const expectedHashes = Buffer.concat(ranges.flatMap((range) => {
    const hashes: Buffer[] = [];
    let begin = 0;
    for (const length of alone.lengths(range)) {
      hashes.push(createHash('sha256').update(range.subarray(begin, begin + length)).digest());
      begin += length;
    }
    return hashes;
  }));
  // The first chunk of each range that has any.
  const rangeFirsts = new Set<number>();
  let first = 0;
  for (const range of ranges) {
    if (range.length > 0) rangeFirsts.add(first);
    first += alone.lengths(range).length;
  }

  const inline = new InlineChunkJobs(params, 3);
  const workers = new WorkerChunkJobs(params, 3, 2);
  try {
    for (const jobs of [inline, workers]) {
      const { id, result } = await jobs.chunk(joined, rangeEnds);
      assert.deepEqual(Array.from(result.lengths), expectedLengths);
      assert.ok(Buffer.from(result.hashes).equals(expectedHashes));
      const everyChunk = Array.from(result.lengths, (_, index) => index);
      const pieces = await jobs.compress(id, everyChunk, new Uint8Array(new SharedArrayBuffer(joined.length)));
      assert.deepEqual(pieces.flatMap((piece) => piece.chunks.map((chunk) => chunk.position)), everyChunk);
      assert.ok(pieces.some((piece) => piece.chunks.length > 1), 'frames of several chunks');
      for (const piece of pieces) {
        assert.ok(piece.chunks.slice(1).every((chunk) => !rangeFirsts.has(chunk.position)), `a frame that runs into the next range (${piece.chunks.map((chunk) => chunk.position).join(', ')})`);
      }
    }
  } finally {
    await workers.close();
    await inline.close();
  }
});

test('range ends computed from volume offsets past 2^31 cut as small integers do; an end that is not a whole byte offset is refused', () => {
  const data = pseudoRandom(700 * 1024, 41);
  // As pack computes them: differences of volume offsets held as doubles.
  const far = 2 ** 31 + 4096;
  const ends = [far + 300 * 1024 - far, far + 700 * 1024 - far];
  const plain = chunkAndHash(chunker, data, [300 * 1024, 700 * 1024]);
  const computed = chunkAndHash(chunker, data, ends);
  assert.deepEqual([...computed.lengths], [...plain.lengths]);
  assert.deepEqual(Buffer.from(computed.hashes), Buffer.from(plain.hashes));
  assert.deepEqual([...computed.rangeFirsts], [...plain.rangeFirsts]);
  assert.throws(() => chunkAndHash(chunker, data, [300 * 1024 + 0.5, 700 * 1024]), /range ends/);
});

test('warming the chunker up leaves its cuts as they were', () => {
  const data = pseudoRandom(2 * 1024 * 1024 + 7, 41);
  const before = new Chunker(chunkerParams(64 * 1024)).lengths(data);
  Chunker.warmUp();
  Chunker.warmUp();
  assert.deepEqual(new Chunker(chunkerParams(64 * 1024)).lengths(data), before);
});

test('refsByRange splits a job\'s chunks at the ends of its ranges, and refuses a chunk across one', () => {
  const ref = (rawBytes: number) => ({ hash: new Uint8Array(32), rawBytes });
  const refs = [ref(10), ref(5), ref(7), ref(1)];
  assert.deepEqual(refsByRange(refs, [15, 15, 22, 23]).map((range) => range.map((chunk) => chunk.rawBytes)), [[10, 5], [], [7], [1]]);
  assert.throws(() => refsByRange(refs, [12, 23]), /a chunk across the end of a range/);
  assert.throws(() => refsByRange(refs, [15]), /chunks beyond the last range/);
});

/** Bytes that compress (text with a little noise). */
function compressible(lengthBytes: number, seed: number): Uint8Array {
  const noise = pseudoRandom(lengthBytes, seed);
  const bytes = new Uint8Array(lengthBytes);
  for (let index = 0; index < lengthBytes; index += 1) bytes[index] = index % 64 === 0 ? noise[index]! : 97 + ((index >> 3) % 26);
  return bytes;
}

function repeated(lengthBytes: number): Uint8Array {
  return new Uint8Array(lengthBytes).fill(120);
}
