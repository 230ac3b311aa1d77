// Pack and unpack through the library, byte for byte: a full pack and a chain of incrementals
// after writes, discards and resizes; every stream unpacked into a fresh pool and onto an older
// restored state; sharing kept when a snapshot is restored beside its origin.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import type { Pool } from '../../src/pool/pool.ts';
import { Archive, ChunkReader } from '../../src/archive/archive.ts';
import { InlineChunkDecoder, type ChunkDecoder } from '../../src/archive/chunk-decode.ts';
import { WorkerChunkJobs } from '../../src/archive/chunk-workers.ts';
import { Volume } from '../../src/pool/volume.ts';
import type { ObjectStore } from '../../src/archive/store.ts';
import { ARCHIVE_INLINE_BYTES_MAX, ARCHIVE_READ_RAW_BYTES_MAX, ARCHIVE_UNPACK_WINDOW_BYTES } from '../../src/constants.ts';
import { InlineChunkJobs } from '../../src/archive/chunk-jobs.ts';
import type { ChunkerParams } from '../../src/archive/chunker.ts';
import { packVolume, unpackVolume, listArchive, verifyArchive } from '../../src/archive/commands.ts';
import { listVolumes } from '../../src/tools/list.ts';
import { BLOCK, MiB, contentBytes, createPool, digest, mappedBlocks, readVolume, tempDir } from './helpers.ts';
import { poolSources } from '../../src/archive/source.ts';

const dir = tempDir('archive-roundtrip');
let source: Pool;
let store: string;

before(async () => {
  source = await createPool(join(dir.path, 'source'));
  store = join(dir.path, 'store');
  await (await Archive.init(store, { averageChunkBytes: 16 * 1024, zstdLevel: 3 })).close();
});

after(async () => {
  await source?.close().catch(() => undefined);
  dir.remove();
});

interface State {
  stream: string;
  snapshot: string;
  digest: string;
  sizeBytes: number;
  mapped: number[];
}

const states: State[] = [];

async function packSnapshot(index: number, changes: (volume: ReturnType<Pool['volume']>) => Promise<void>): Promise<State> {
  const volume = source.volume('vol');
  await changes(volume);
  const snapshot = `vol.${index}`;
  await source.snapshot('vol', snapshot, { readOnly: true });
  const previous = states[states.length - 1];
  const result = await packVolume({ store, sources: poolSources(source), volume: snapshot, name: `s${index}`, ...(previous === undefined ? {} : { deltaFrom: previous.snapshot }) });
  assert.equal(result.stream, `s${index}`);
  assert.equal(result.parent, previous?.stream);
  const state = { stream: `s${index}`, snapshot, digest: digest(await readVolume(source, snapshot)), sizeBytes: source.volume(snapshot).sizeBytes, mapped: mappedBlocks(source, snapshot) };
  states.push(state);
  return state;
}

test('a full pack reads only mapped bytes and stores them deduplicated and compressed', async () => {
  const volume = await source.createVolume('vol', { sizeBytes: 40 * MiB + 1000 });
  await volume.write(0, contentBytes(6 * MiB, 1));
  await volume.write(10 * MiB, contentBytes(2 * MiB, 2));
  await volume.write(20 * MiB, contentBytes(2 * MiB, 2)); // the same bytes again: deduplicated
  await volume.write(40 * MiB, contentBytes(1000, 3)); // the partial last block
  await packSnapshot(0, async () => {});
  const listing = await listArchive({ store });
  const stream = listing.streams.find((entry) => entry.name === 's0')!;
  assert.equal(stream.mappedBytes, 10 * MiB + 1000);
  assert.equal(stream.bytesRead, 10 * MiB + 1000, 'holes are never read');
  assert.ok(stream.bytesNew < 9 * MiB, `the repeated 2 MiB is stored once (${stream.bytesNew} new)`);
  assert.ok(stream.bytesStored < stream.bytesNew * 0.8, `compressed (${stream.bytesStored} of ${stream.bytesNew})`);
});

test('incrementals after writes, discards and resizes read only what changed', async () => {
  await packSnapshot(1, async (volume) => {
    await volume.write(3 * MiB + 100, contentBytes(300_000, 11));
    await volume.discard(10 * MiB, 1 * MiB);
  });
  await packSnapshot(2, async () => {
    await source.resizeVolume('vol', 48 * MiB);
    await source.volume('vol').write(45 * MiB, contentBytes(2 * MiB, 12));
  });
  await packSnapshot(3, async () => {
    await source.resizeVolume('vol', 30 * MiB + 12345);
    await source.volume('vol').write(5 * BLOCK, contentBytes(BLOCK, 13));
  });
  await packSnapshot(4, async () => {}); // nothing changed
  const listing = await listArchive({ store });
  const read = (name: string) => listing.streams.find((entry) => entry.name === name)!.bytesRead;
  assert.ok(read('s1') < 1 * MiB, `s1 read ${read('s1')}`);
  assert.ok(read('s2') <= 2 * MiB + 256 * 1024, `s2 read ${read('s2')}`);
  assert.ok(read('s3') < 512 * 1024, `s3 read ${read('s3')}`);
  assert.equal(read('s4'), 0, 'an unchanged snapshot reads nothing');
  assert.equal(listing.streams.find((entry) => entry.name === 's4')!.bytesStored < 4096, true, 'and stores only its root segments');
  assert.deepEqual((await verifyArchive({ store })).problems, []);
});

test('every stream unpacks into a fresh pool byte for byte, with its own mapped blocks', async () => {
  const target = await createPool(join(dir.path, 'fresh'));
  try {
    for (const state of states) {
      const result = await unpackVolume({ store, pool: target, stream: state.stream, volume: `r-${state.stream}` });
      assert.equal(result.volumeCreated, true);
      assert.equal(digest(await readVolume(target, `r-${state.stream}`)), state.digest, state.stream);
      assert.equal(target.volume(`r-${state.stream}`).sizeBytes, state.sizeBytes);
      assert.deepEqual(mappedBlocks(target, `r-${state.stream}`), state.mapped, `${state.stream}: only provisioned ranges are written`);
    }
  } finally {
    await target.close();
  }
});

test('each stream unpacked onto an older restored state writes only what differs and matches exactly; the volume keeps its id and snapshots', async () => {
  const target = await createPool(join(dir.path, 'older'));
  try {
    await unpackVolume({ store, pool: target, stream: 's0', volume: 'r' });
    const id = target.volume('r').id;
    await target.snapshot('r', 'r.s0', { readOnly: true });
    for (const state of states.slice(1)) {
      const result = await unpackVolume({ store, pool: target, stream: state.stream, volume: 'r' });
      assert.equal(result.volumeCreated, false);
      assert.equal(digest(await readVolume(target, 'r')), state.digest, state.stream);
      assert.deepEqual(mappedBlocks(target, 'r'), state.mapped, `${state.stream}: mappings match the stream's`);
      assert.ok(result.bytesWritten <= 3 * MiB, `${state.stream} wrote ${result.bytesWritten}`);
    }
    // Back to the oldest state, then forward again: any order works.
    await unpackVolume({ store, pool: target, stream: 's0', volume: 'r' });
    assert.equal(digest(await readVolume(target, 'r')), states[0]!.digest);
    // The same volume throughout (an unpack onto it replaces its blocks, not the volume): its
    // snapshot still names it as origin and keeps s0's bytes.
    assert.equal(target.volume('r').id, id);
    const snapshot = target.list().find((info) => info.name === 'r.s0')!;
    assert.equal(snapshot.originId, id);
    assert.equal(snapshot.origin, 'r');
    assert.equal(digest(await readVolume(target, 'r.s0')), states[0]!.digest);
    assert.ok(!target.list().some((info) => info.name.endsWith('.unpacking')), 'no work volume left behind');
  } finally {
    await target.close();
  }
});

test('a snapshot restored beside its origin shares every unchanged block with it', async () => {
  // The source's current volume is s4's state; restore s0 into a snapshot of it.
  await source.snapshot('vol', 'restored');
  const result = await unpackVolume({ store, pool: source, stream: 's0', volume: 'restored' });
  assert.equal(digest(await readVolume(source, 'restored')), states[0]!.digest);
  const listing = listVolumes(source).find((entry) => entry.name === 'restored')!;
  const written = Math.ceil(result.bytesWritten / BLOCK);
  assert.ok(listing.exclusiveBytes <= (written + 2) * BLOCK, `only rewritten blocks are exclusive (${listing.exclusiveBytes} bytes; ${result.bytesWritten} written)`);
  assert.ok(listing.sharedBytes >= listing.mappedBytes - (written + 2) * BLOCK, `the rest is shared (${listing.sharedBytes} of ${listing.mappedBytes})`);
  assert.ok(result.bytesUnchanged > 5 * MiB, 'most of the stream was already there');
});

test('a read of many chunks is cut into decode jobs of ARCHIVE_READ_RAW_BYTES_MAX at most, so every worker decodes at once', async () => {
  const archive = await Archive.open(store);
  try {
    const { index } = await archive.loadIndex();
    const calls: number[] = [];
    const inline = new InlineChunkDecoder();
    const counting: ChunkDecoder = {
      decode(bytes, items, targets) {
        calls.push(items.reduce((sum, item) => sum + item.rawBytes, 0));
        return inline.decode(bytes, items, targets);
      },
    };
    const reader = new ChunkReader(archive.store, index, counting);
    const root = await archive.readStream('s0');
    const segment = await archive.readSegment(new ChunkReader(archive.store, index), root, root.segments[0]!);
    const first = segment.runs[0]!;
    const refs = first.chunks;
    const raw = refs.reduce((sum, ref) => sum + ref.rawBytes, 0);
    assert.ok(raw > ARCHIVE_READ_RAW_BYTES_MAX, `the first run holds ${raw} bytes`);
    const chunks = await reader.read(refs, (position) => `chunk ${position}`);
    assert.ok(calls.length >= Math.ceil(raw / ARCHIVE_READ_RAW_BYTES_MAX), `${calls.length} decode jobs for ${raw} bytes`);
    for (const bytes of calls) assert.ok(bytes <= ARCHIVE_READ_RAW_BYTES_MAX, `a job of ${bytes} bytes`);
    const joined = Buffer.concat(chunks);
    assert.ok(joined.equals(Buffer.from(contentBytes(6 * MiB, 1)).subarray(0, joined.length)), 'the chunks are the volume bytes, in order');
  } finally {
    await archive.close();
  }
});

test('chunks are read through a few reused shared buffers and decoded by worker threads where they lie', async () => {
  const archive = await Archive.open(store);
  const workers = new WorkerChunkJobs(archive.config.chunking, archive.config.compression.level, 2);
  try {
    const { index } = await archive.loadIndex();
    const reads: Array<{ into: Uint8Array | undefined; result: Uint8Array }> = [];
    const counting: ObjectStore = Object.create(archive.store) as ObjectStore;
    counting.getRange = async (key, beginBytes, endBytes, into) => {
      const result = await archive.store.getRange(key, beginBytes, endBytes, into);
      reads.push({ into, result });
      return result;
    };
    const reader = new ChunkReader(counting, index, workers);
    const root = await archive.readStream('s0');
    const segment = await archive.readSegment(new ChunkReader(archive.store, index), root, root.segments[0]!);
    const refs = segment.runs[0]!.chunks;
    const expected = Buffer.concat(await new ChunkReader(archive.store, index).read(refs, (position) => `chunk ${position}`));
    for (let round = 0; round < 3; round += 1) {
      const chunks = await reader.read(refs, (position) => `chunk ${position}`);
      assert.ok(Buffer.concat(chunks).equals(expected), `round ${round}: the chunks decoded on the workers are the store's`);
    }
    const buffers = new Set(reads.map((read) => read.into?.buffer));
    assert.ok(reads.length >= 6, `${reads.length} ranged reads`);
    assert.ok(reads.every((read) => read.into !== undefined && read.into.buffer instanceof SharedArrayBuffer && read.result.buffer === read.into.buffer), 'every read lands in a shared buffer of the reader');
    assert.equal(buffers.size, reads.length / 3, 'the second and third rounds reuse the buffers of the first');
    // A buffer is sized to its read (a power of two from 64 KiB), not the largest read's size.
    for (const read of reads) {
      assert.ok(read.into!.length <= Math.max(64 * 1024, 2 * read.result.length), `a buffer of ${read.into!.length} bytes for a read of ${read.result.length}`);
    }
  } finally {
    await workers.close();
    await archive.close();
  }
});

test('unpack into a new volume writes whole blocks, even where its windows end inside a block; a small pack starts no workers', async () => {
  // One mapped run longer than a window, from a block that is not a multiple of the pack's job
  // size (jobs end in cuts): windows end where chunks end, anywhere in a block.
  const runBegin = 3 * BLOCK;
  const runBytes = ARCHIVE_UNPACK_WINDOW_BYTES + 5 * MiB + 12345;
  const sizeBytes = runBegin + runBytes;
  const volume = await source.createVolume('long', { sizeBytes });
  await volume.write(runBegin, contentBytes(runBytes, 21));
  await source.snapshot('long', 'long.0', { readOnly: true });
  // More to read than its inlineBytesMax: the pack uses the jobs it is given (worker threads in the
  // CLI); a small one, within the default ARCHIVE_INLINE_BYTES_MAX, does its work on this thread
  // and starts none.
  const made: string[] = [];
  const makeJobs = (name: string) => (params: ChunkerParams, level: number) => {
    made.push(name);
    return new InlineChunkJobs(params, level);
  };
  await packVolume({ store, sources: poolSources(source), volume: 'long.0', name: 'long', makeJobs: makeJobs('long'), inlineBytesMax: MiB });
  await source.volume('long').write(BLOCK, contentBytes(BLOCK, 22));
  await source.snapshot('long', 'long.1', { readOnly: true });
  const small = await packVolume({ store, sources: poolSources(source), volume: 'long.1', name: 'long.1', deltaFrom: 'long.0', makeJobs: makeJobs('long.1') });
  assert.ok(small.bytesRead > 0 && small.bytesRead <= ARCHIVE_INLINE_BYTES_MAX, `the incremental read ${small.bytesRead} bytes`);
  assert.deepEqual(made, ['long'], 'jobs made for the large pack only');
  const target = await createPool(join(dir.path, 'blocks'));
  const writes: Array<{ offsetBytes: number; lengthBytes: number }> = [];
  const write = Volume.prototype.write;
  Volume.prototype.write = function (this: Volume, offsetBytes: number, source: Uint8Array, ...rest) {
    if (this.name.endsWith('.unpacking')) writes.push({ offsetBytes, lengthBytes: source.length });
    return write.call(this, offsetBytes, source, ...rest);
  } as typeof write;
  try {
    await unpackVolume({ store, pool: target, stream: 'long', volume: 'long' });
  } finally {
    Volume.prototype.write = write;
  }
  try {
    assert.equal(digest(await readVolume(target, 'long')), digest(await readVolume(source, 'long.0')));
    assert.equal(writes.reduce((sum, entry) => sum + entry.lengthBytes, 0), runBytes, 'every byte written once');
    for (const { offsetBytes, lengthBytes } of writes) {
      assert.equal(offsetBytes % BLOCK, 0, `a write at ${offsetBytes} begins a block`);
      assert.ok(lengthBytes % BLOCK === 0 || offsetBytes + lengthBytes === sizeBytes, `a write of ${lengthBytes} bytes at ${offsetBytes} ends a block or the volume`);
    }
  } finally {
    await target.close();
  }
});

test('an incremental of many small changes over several segments gathers them into few jobs and unpacks byte for byte', async () => {
  // 4 KiB chunks: segments of 64 MiB, so this volume has three.
  const segmentStore = join(dir.path, 'segments-store');
  await (await Archive.init(segmentStore, { averageChunkBytes: 4 * 1024, zstdLevel: 3 })).close();
  const pool = await createPool(join(dir.path, 'segments'));
  try {
    const volume = await pool.createVolume('seg', { sizeBytes: 160 * MiB });
    for (const [at, seed] of [[0, 31], [62 * MiB, 32], [128 * MiB, 33]] as const) await volume.write(at, contentBytes(4 * MiB, seed));
    await pool.snapshot('seg', 'seg.0', { readOnly: true });
    await packVolume({ store: segmentStore, sources: poolSources(pool), volume: 'seg.0', name: 'seg0' });
    // Small writes in each mapped region (one across the boundary of segments 0 and 1) and in holes.
    let seed = 100;
    for (const region of [0, 62 * MiB, 128 * MiB]) {
      for (let write = 0; write < 12; write += 1) await volume.write(region + write * 320 * 1024 + 4096 * (write % 5), contentBytes(8 * 1024 + 512 * write, (seed += 1)));
    }
    await volume.write(64 * MiB - 5000, contentBytes(10_000, (seed += 1)));
    await volume.write(100 * MiB, contentBytes(BLOCK, (seed += 1)));
    await pool.snapshot('seg', 'seg.1', { readOnly: true });
    // A small incremental does its work on this thread: its jobs are seen through InlineChunkJobs.
    const rangesPerJob: number[] = [];
    const chunk = InlineChunkJobs.prototype.chunk;
    InlineChunkJobs.prototype.chunk = function (this: InlineChunkJobs, data: Uint8Array, rangeEnds?: number[]) {
      rangesPerJob.push(rangeEnds?.length ?? 1);
      return chunk.call(this, data, rangeEnds);
    };
    let result: Awaited<ReturnType<typeof packVolume>>;
    try {
      result = await packVolume({ store: segmentStore, sources: poolSources(pool), volume: 'seg.1', name: 'seg1', deltaFrom: 'seg.0' });
    } finally {
      InlineChunkJobs.prototype.chunk = chunk;
    }
    assert.ok(result.bytesRead < 4 * MiB, `read ${result.bytesRead} bytes`);
    // 38 changed places, their reads gathered into a job or two (a segment's end starts none).
    assert.ok(rangesPerJob.length <= 3 && rangesPerJob.reduce((a, b) => a + b, 0) >= 30, `ranges per job: ${rangesPerJob.join(', ')}`);
    const archive = await Archive.open(segmentStore);
    const root = await archive.readStream('seg1').finally(() => archive.close());
    assert.equal(root.segments.length, 3);
    assert.deepEqual((await verifyArchive({ store: segmentStore })).problems, []);
    const target = await createPool(join(dir.path, 'segments-target'));
    try {
      await unpackVolume({ store: segmentStore, pool: target, stream: 'seg1', volume: 'seg' });
      assert.equal(digest(await readVolume(target, 'seg')), digest(await readVolume(pool, 'seg.1')));
      await unpackVolume({ store: segmentStore, pool: target, stream: 'seg0', volume: 'seg0' });
      assert.equal(digest(await readVolume(target, 'seg0')), digest(await readVolume(pool, 'seg.0')));
    } finally {
      await target.close();
    }
  } finally {
    await pool.close();
  }
});
