// `thinbd archive unpack`: a stream into a volume of a pool.
//
// All or nothing. The stream's root and segments are read and every chunk it needs is located in
// the store before the pool is touched; then the data goes into a work volume `NAME.unpacking`
// (a new volume, or a writable snapshot of an existing NAME, so it starts out sharing NAME's
// blocks), and only when every chunk has arrived intact does the work volume take NAME's place
// (NAME removed, the work volume renamed, in one commit). A damaged chunk found on the way, a
// failure or a kill leaves NAME as it was. The work volume carries the label
// UNPACK_TARGET_LABEL = NAME from the change that makes it, so a volume left by a kill is known
// for what it is and removed by the next unpack to NAME; a volume of that name without the label
// (a user's) is never removed: the unpack stops and says so.
//
// Into an existing volume only what differs is written: for each chunk, the bytes already there
// are hashed, and a chunk whose hash matches is neither fetched nor written; a chunk that differs
// is fetched, and only its blocks whose bytes differ (or are unmapped) are written. Ranges the
// stream leaves unmapped are discarded. So restoring a snapshot beside its origin (unpacking into
// a snapshot of the origin) keeps every unchanged block shared, and a volume kept current by a
// chain of incrementals is written only where the chain changed it. A new volume gets exactly the
// stream's provisioned ranges (rounded out to whole blocks where the target pool's blocks are
// larger than those of the pool the stream came from: any block size unpacks into any other).
import { ThinError, assert, isThinError } from '../errors.ts';
import { VOLUME_NAME_LENGTH_MAX, ARCHIVE_FRAME_RAW_BYTES_MAX, ARCHIVE_UNPACK_WINDOW_BYTES, ARCHIVE_UNPACK_HELD_BLOCK_BYTES_MAX, ARCHIVE_UNPACK_WINDOWS_AHEAD, TRANSFER_CHUNK_BYTES, TRANSFER_WRITES_IN_FLIGHT_MAX } from '../constants.ts';
import type { Pool } from '../pool/pool.ts';
import { DIRECT_ALIGN_BYTES, alignedSharedBytes } from '../io/aligned.ts';
import { ChunkReader, type Archive } from './archive.ts';
import type { ChunkDecoder } from './chunk-decode.ts';
import { hashHex, sha256, type ChunkRef, type Segment, type StreamRoot } from './format.ts';
import { coveredBy, mappedByteRanges } from './pack.ts';

/** A window's buffer: a window, and the rest of the frame its last chunk is in (pages are touched only as far as windows fill them). */
const WINDOW_BUFFER_BYTES = ARCHIVE_UNPACK_WINDOW_BYTES + ARCHIVE_FRAME_RAW_BYTES_MAX;

export interface UnpackOptions {
  /** Stream bytes handled so far, of the stream's mapped bytes. */
  onProgress?: (doneBytes: number, totalBytes: number) => void;
  onNote?: (line: string) => void;
  /** Where chunks are decompressed and checked (default: this thread; the CLI uses worker threads). */
  decoder?: ChunkDecoder;
}

export interface UnpackResult {
  stream: string;
  volume: string;
  volumeCreated: boolean;
  sizeBytes: number;
  mappedBytes: number;
  /** Bytes written to the volume. */
  bytesWritten: number;
  /** Bytes of the volume's mapped ranges discarded (unmapped in the stream). */
  bytesDiscarded: number;
  /** Raw bytes of chunks fetched from the store. */
  bytesFetched: number;
  /** Stream bytes the volume already held (neither fetched nor written). */
  bytesUnchanged: number;
  elapsedMs: number;
}

/** The label that marks a work volume as an unpack's, with the target's full name as its value. */
export const UNPACK_TARGET_LABEL = 'thinbd.unpack.target';

/**
 * The work volume's name for a target: `NAME.unpacking`, or for a name too long for that, its
 * start, a hash of the whole name and `.unpacking` (long names that differ only past the cut get
 * different work volumes).
 */
export function workVolumeName(name: string): string {
  const suffix = '.unpacking';
  if (name.length + suffix.length <= VOLUME_NAME_LENGTH_MAX) return `${name}${suffix}`;
  const tag = `.${hashHex(sha256(new TextEncoder().encode(name))).slice(0, 16)}`;
  return `${name.slice(0, VOLUME_NAME_LENGTH_MAX - tag.length - suffix.length)}${tag}${suffix}`;
}

/**
 * Removes the work volume a killed unpack into `name` left; THIN_EXISTS if a volume has the work
 * name without the mark of an unpack into `name` (a user's own, or one an older thinbd left
 * unmarked): it is not ours to remove.
 */
async function removeLeftover(pool: Pool, name: string, work: string, onNote?: (line: string) => void): Promise<void> {
  const found = pool.list().find((info) => info.name === work);
  if (found === undefined) return;
  if (found.labels[UNPACK_TARGET_LABEL] !== name) {
    throw new ThinError(
      'THIN_EXISTS',
      `Cannot unpack into ${name}: volume ${work} exists and was not made by an unpack into ${name}; rename it, or remove it ('thinbd remove ${work}') if it is not needed`,
    );
  }
  onNote?.(`removing ${work}, left by an unpack into ${name} that did not finish`);
  await pool.removeVolume(work);
}

/** The work volumes of the unpacks running in this process, by pool: never taken for leftovers. */
const runningWork = new WeakMap<Pool, Set<string>>();

/**
 * Removes the work volumes that killed unpacks into other targets left: marked with a target
 * whose work name they have, and not the work volume of an unpack this process runs. Only the
 * next unpack into that target removed one before, and a target never unpacked into again kept
 * its half-written blocks for good. The pool is this process's (the pool lock), so an unpack
 * that is not running here is not running.
 */
async function removeOtherLeftovers(pool: Pool, name: string, onNote?: (line: string) => void): Promise<void> {
  const running = runningWork.get(pool);
  for (const info of pool.list()) {
    const target = info.labels[UNPACK_TARGET_LABEL];
    if (target === undefined || target === name || info.name !== workVolumeName(target) || running?.has(info.name)) continue;
    onNote?.(`removing ${info.name}, left by an unpack into ${target} that did not finish`);
    await pool.removeVolume(info.name);
  }
}

interface Range {
  begin: number;
  end: number;
}

function describeChunk(root: StreamRoot, ref: ChunkRef, offsetBytes: number): string {
  return `stream ${root.name}, chunk ${hashHex(ref.hash)} at offset ${offsetBytes}`;
}

/** Reads every segment and locates every chunk the stream needs: THIN_CORRUPT_ARCHIVE on the first that is missing. */
async function checkStreamComplete(archive: Archive, reader: ChunkReader, root: StreamRoot): Promise<void> {
  for (const ref of root.segments) {
    const segment = await archive.readSegment(reader, root, ref);
    for (const run of segment.runs) {
      let offset = run.beginBytes;
      for (const chunk of run.chunks) {
        reader.locate(chunk, describeChunk(root, chunk, offset));
        offset += chunk.rawBytes;
      }
    }
  }
}

/** Parts of `ranges` (sorted, disjoint) that `holes` (sorted, disjoint) do not cover. */
function subtract(ranges: Range[], covered: Range[]): Range[] {
  const result: Range[] = [];
  let at = 0;
  for (const range of ranges) {
    let position = range.begin;
    while (at < covered.length && covered[at]!.end <= position) at += 1;
    for (let scan = at; scan < covered.length && covered[scan]!.begin < range.end; scan += 1) {
      const hole = covered[scan]!;
      if (hole.begin > position) result.push({ begin: position, end: hole.begin });
      position = Math.max(position, hole.end);
    }
    if (position < range.end) result.push({ begin: position, end: range.end });
  }
  return result;
}

/**
 * Unpacks stream `root` into volume `name` of `pool` (created when absent). The caller holds a
 * shared store lock and the pool open for writing.
 */
export async function unpackStream(archive: Archive, root: StreamRoot, pool: Pool, name: string, options: UnpackOptions = {}): Promise<UnpackResult> {
  const work = workVolumeName(name);
  let running = runningWork.get(pool);
  if (running === undefined) runningWork.set(pool, (running = new Set()));
  running.add(work);
  try {
    return await unpackStreamRunning(archive, root, pool, name, work, options);
  } finally {
    running.delete(work);
  }
}

async function unpackStreamRunning(archive: Archive, root: StreamRoot, pool: Pool, name: string, work: string, options: UnpackOptions): Promise<UnpackResult> {
  const startMs = performance.now();
  // The target pool's block size, which may differ from the stream's (root.blockSizeBytes): the
  // stream's runs are byte ranges, written into whatever blocks hold them (a block larger than the
  // stream's is provisioned whole, the rest reading zeros), and whatever the target maps outside
  // them is discarded, which zeroes the part of a block it covers.
  const bs = pool.status().blockSizeBytes;
  const loaded = await archive.loadIndex();
  const reader = new ChunkReader(archive.store, loaded.index, options.decoder);
  await checkStreamComplete(archive, reader, root);

  const existing = pool.list().find((info) => info.name === name);
  if (existing?.readOnly === true) throw new ThinError('THIN_READ_ONLY', `Volume ${name} is read-only; unpack into a writable volume or a new name`);
  await removeLeftover(pool, name, work, options.onNote);
  await removeOtherLeftovers(pool, name, options.onNote);
  // Marked in the change that makes it: no kill can leave an unmarked work volume behind.
  const mark = { [UNPACK_TARGET_LABEL]: name };
  const volume =
    existing === undefined
      ? await pool.createVolume(work, { sizeBytes: root.sizeBytes, labels: mark })
      : await pool.snapshot(name, work, { labels: mark });
  const result: UnpackResult = {
    stream: root.name,
    volume: name,
    volumeCreated: existing === undefined,
    sizeBytes: root.sizeBytes,
    mappedBytes: root.stats.mappedBytes,
    bytesWritten: 0,
    bytesDiscarded: 0,
    bytesFetched: 0,
    bytesUnchanged: 0,
    elapsedMs: 0,
  };
  try {
    if (volume.sizeBytes > root.sizeBytes) {
      // What the shrink drops is discarded too.
      for (const range of mappedByteRanges(volume.mappedRuns(), bs, volume.sizeBytes)) result.bytesDiscarded += Math.max(0, range.end - Math.max(range.begin, root.sizeBytes));
    }
    if (volume.sizeBytes !== root.sizeBytes) await pool.resizeVolume(work, root.sizeBytes);
    const targetMapped = existing === undefined ? [] : mappedByteRanges(volume.mappedRuns(), bs, root.sizeBytes);
    const streamMapped: Range[] = [];
    const buffers = new Array<Uint8Array | undefined>(ARCHIVE_UNPACK_WINDOWS_AHEAD + 1).fill(undefined);
    /**
     * Bytes of a block that writeWhole holds back until the next window brings the rest of it;
     * blocks past ARCHIVE_UNPACK_HELD_BLOCK_BYTES_MAX are not held (memory stays at the windows).
     */
    const holdsBlocks = existing === undefined && bs <= ARCHIVE_UNPACK_HELD_BLOCK_BYTES_MAX;
    const partial = { beginBytes: 0, lengthBytes: 0, bytes: new Uint8Array(holdsBlocks ? bs : 0) };
    let doneBytes = 0;
    for (const ref of root.segments) {
      const segment = await archive.readSegment(reader, root, ref);
      for (const run of segment.runs) streamMapped.push({ begin: run.beginBytes, end: run.beginBytes + run.lengthBytes });
      await writeSegment(segment);
    }
    // Ranges mapped in the target that the stream leaves unmapped. Part of a block (a stream from
    // a pool of smaller blocks) is zeroed in place, so only where it is not zeros already: a
    // volume restored before is not written (nor unshared from its snapshots) again.
    for (const range of subtract(targetMapped, joinRanges(streamMapped))) {
      for (const piece of blockAlignedPieces(range, bs, root.sizeBytes)) {
        if (!piece.whole && (await readsZeros(piece))) continue;
        await volume.discard(piece.begin, piece.end - piece.begin);
        result.bytesDiscarded += piece.end - piece.begin;
      }
    }
    await pool.flush();
    // An existing target takes the work volume's blocks and keeps its id, labels and snapshots;
    // a new one is the work volume renamed, without the mark.
    if (existing !== undefined) await pool.replaceVolumeContents(name, work);
    else await pool.updateVolume(work, { name, labels: {} });
    await pool.flush();
    result.elapsedMs = Math.round(performance.now() - startMs);
    return result;

    /** Whether `range` of the work volume reads zeros (read a piece at a time: blocks go up to 1 GiB). */
    async function readsZeros(range: Range): Promise<boolean> {
      const bytes = Buffer.alloc(Math.min(TRANSFER_CHUNK_BYTES, range.end - range.begin));
      const zeros = Buffer.alloc(bytes.length);
      for (let at = range.begin; at < range.end; at += bytes.length) {
        const length = Math.min(bytes.length, range.end - at);
        await volume.read(at, bytes.subarray(0, length));
        if (!bytes.subarray(0, length).equals(zeros.subarray(0, length))) return false;
      }
      return true;
    }

    async function writeSegment(segment: Segment): Promise<void> {
      // Windows: consecutive chunks of a run, up to ARCHIVE_UNPACK_WINDOW_BYTES each.
      const windows: Array<{ begin: number; refs: ChunkRef[]; bytes: number; endsRun: boolean }> = [];
      for (const run of segment.runs) {
        let chunkAt = 0;
        let offset = run.beginBytes;
        while (chunkAt < run.chunks.length) {
          const refs: ChunkRef[] = [];
          let windowBytes = 0;
          // A window that would end inside a frame takes the frame's other chunks too (up to a
          // frame's worth more): a frame is decompressed once, not once per window.
          const fits = (next: ChunkRef) =>
            refs.length === 0 ||
            windowBytes + next.rawBytes <= ARCHIVE_UNPACK_WINDOW_BYTES ||
            (windowBytes + next.rawBytes <= WINDOW_BUFFER_BYTES && reader.sameFrame(refs[refs.length - 1]!, next));
          while (chunkAt < run.chunks.length && fits(run.chunks[chunkAt]!)) {
            refs.push(run.chunks[chunkAt]!);
            windowBytes += run.chunks[chunkAt]!.rawBytes;
            chunkAt += 1;
          }
          windows.push({ begin: offset, refs, bytes: windowBytes, endsRun: chunkAt === run.chunks.length });
          offset += windowBytes;
        }
      }
      // Into a new volume the next ARCHIVE_UNPACK_WINDOWS_AHEAD windows are fetched while this one
      // is written: window k lives in buffer k mod (ahead + 1), free again once k is written.
      const fetched: Array<Promise<Uint8Array>> = [];
      const fetchAt = (position: number): void => {
        const window = windows[position];
        if (window === undefined) return;
        const fetch = fetchWindow(window.begin, window.refs, window.bytes, position % buffers.length);
        fetch.catch(() => undefined); // its error is met when it is awaited
        fetched.push(fetch);
      };
      if (existing === undefined) for (let position = 0; position < ARCHIVE_UNPACK_WINDOWS_AHEAD; position++) fetchAt(position);
      for (const [position, window] of windows.entries()) {
        if (existing === undefined) {
          const data = await fetched.shift()!;
          fetchAt(position + ARCHIVE_UNPACK_WINDOWS_AHEAD);
          await writeWhole(window.begin, data, window.endsRun);
        } else {
          await writeWindow(window.begin, window.refs);
        }
        doneBytes += window.bytes;
        options.onProgress?.(doneBytes, root.stats.mappedBytes);
      }
    }

    function offsetsOf(windowBegin: number, refs: ChunkRef[]): number[] {
      const offsets: number[] = [];
      let at = windowBegin;
      for (const ref of refs) {
        offsets.push(at);
        at += ref.rawBytes;
      }
      return offsets;
    }

    /** A window's chunks, fetched, checked and laid end to end in buffer `slot` (reused: no page faults, no garbage). */
    async function fetchWindow(windowBegin: number, refs: ChunkRef[], windowBytes: number, slot: number): Promise<Uint8Array> {
      const offsets = offsetsOf(windowBegin, refs);
      // Shared memory, so a decoder on a worker thread writes the chunks straight into it; placed
      // so that block boundaries of the volume fall on 4 KiB boundaries of memory, where the pool's
      // data file takes whole blocks around the page cache (io/file.ts).
      buffers[slot] ??= alignedSharedBytes(WINDOW_BUFFER_BYTES + DIRECT_ALIGN_BYTES);
      const skew = windowBegin % DIRECT_ALIGN_BYTES;
      const window = buffers[slot].subarray(skew, skew + windowBytes);
      await reader.read(refs, (position) => describeChunk(root, refs[position]!, offsets[position]!), 0, window);
      result.bytesFetched += windowBytes;
      return window;
    }

    /**
     * Writes a window into the new volume in whole blocks, up to TRANSFER_CHUNK_BYTES at a time,
     * several in flight. Windows end where chunks end, anywhere in a block, and a write of part of
     * an unmapped block provisions it block by block (zeroing the rest, then writing the rest
     * again): so the window's last partial block waits in `partial` for the next window of the run,
     * and the run's end writes what is left. Blocks too large to hold are written as they come.
     */
    async function writeWhole(windowBegin: number, data: Uint8Array, endsRun: boolean): Promise<void> {
      let position = windowBegin;
      const end = windowBegin + data.length;
      if (!holdsBlocks) {
        await writePieces(windowBegin, data, windowBegin);
        result.bytesWritten += data.length;
        return;
      }
      const take = (upTo: number) => {
        if (partial.lengthBytes === 0) partial.beginBytes = position;
        assert(partial.beginBytes + partial.lengthBytes === position, 'a partial block not followed by its window');
        partial.bytes.set(data.subarray(position - windowBegin, upTo - windowBegin), partial.lengthBytes);
        partial.lengthBytes += upTo - position;
        position = upTo;
      };
      // The block begun before this window, or a run that begins inside a block.
      if (position % bs !== 0) {
        take(Math.min(end, (Math.floor(position / bs) + 1) * bs));
        if ((partial.beginBytes + partial.lengthBytes) % bs === 0) await writePartial();
      }
      const wholeEnd = Math.max(position, Math.floor(end / bs) * bs);
      await writePieces(windowBegin, data.subarray(0, wholeEnd - windowBegin), position);
      position = wholeEnd;
      if (position < end) take(end);
      if (endsRun) await writePartial();
      result.bytesWritten += data.length;
    }

    /** Writes data (a window's bytes from windowBegin) from `from` to its end, TRANSFER_CHUNK_BYTES at a time, several in flight. */
    async function writePieces(windowBegin: number, data: Uint8Array, from: number): Promise<void> {
      const end = windowBegin + data.length;
      const writes: Promise<void>[] = [];
      for (let position = from; position < end; ) {
        const pieceEnd = Math.min(end, position + TRANSFER_CHUNK_BYTES);
        const write = volume.write(position, data.subarray(position - windowBegin, pieceEnd - windowBegin));
        write.catch(() => undefined); // met by the await below
        writes.push(write);
        if (writes.length >= TRANSFER_WRITES_IN_FLIGHT_MAX) await writes.shift();
        position = pieceEnd;
      }
      await Promise.all(writes);
    }

    /** Writes the partial block held back by writeWhole (if any). */
    async function writePartial(): Promise<void> {
      if (partial.lengthBytes === 0) return;
      await volume.write(partial.beginBytes, partial.bytes.subarray(0, partial.lengthBytes));
      partial.lengthBytes = 0;
    }

    async function writeWindow(windowBegin: number, refs: ChunkRef[]): Promise<void> {
      const offsets = offsetsOf(windowBegin, refs);
      const windowBytes = refs.reduce((sum, ref) => sum + ref.rawBytes, 0);
      const describe = (position: number) => describeChunk(root, refs[position]!, offsets[position]!);
      const current = new Uint8Array(windowBytes);
      await volume.read(windowBegin, current);
      const needed: number[] = [];
      refs.forEach((ref, position) => {
        const begin = offsets[position]!;
        const end = begin + ref.rawBytes;
        const mapped = coveredBy(targetMapped, Math.floor(begin / bs) * bs, Math.min(Math.ceil(end / bs) * bs, root.sizeBytes));
        const here = current.subarray(begin - windowBegin, end - windowBegin);
        if (mapped && Buffer.compare(sha256(here), ref.hash) === 0) result.bytesUnchanged += ref.rawBytes;
        else needed.push(position);
      });
      if (needed.length === 0) return;
      const chunks = await reader.read(
        needed.map((position) => refs[position]!),
        (index) => describe(needed[index]!),
      );
      // Write each block piece of a fetched chunk whose bytes differ from the volume's or whose block is unmapped.
      for (const [index, position] of needed.entries()) {
        const chunk = chunks[index]!;
        const chunkBegin = offsets[position]!;
        result.bytesFetched += chunk.length;
        let pieceBegin = chunkBegin;
        let pending: Range | undefined;
        while (pieceBegin < chunkBegin + chunk.length) {
          const pieceEnd = Math.min((Math.floor(pieceBegin / bs) + 1) * bs, chunkBegin + chunk.length);
          const wanted = chunk.subarray(pieceBegin - chunkBegin, pieceEnd - chunkBegin);
          const blockBegin = Math.floor(pieceBegin / bs) * bs;
          const mapped = coveredBy(targetMapped, blockBegin, Math.min(blockBegin + bs, root.sizeBytes));
          const differs = !mapped || Buffer.compare(wanted, current.subarray(pieceBegin - windowBegin, pieceEnd - windowBegin)) !== 0;
          if (differs) {
            if (pending !== undefined && pending.end === pieceBegin) pending.end = pieceEnd;
            else {
              if (pending !== undefined) await writePiece(pending, chunk, chunkBegin);
              pending = { begin: pieceBegin, end: pieceEnd };
            }
          }
          pieceBegin = pieceEnd;
        }
        if (pending !== undefined) await writePiece(pending, chunk, chunkBegin);
      }
    }

    async function writePiece(piece: Range, chunk: Uint8Array, chunkBegin: number): Promise<void> {
      assert(piece.end > piece.begin, 'an empty piece');
      await volume.write(piece.begin, chunk.subarray(piece.begin - chunkBegin, piece.end - chunkBegin));
      result.bytesWritten += piece.end - piece.begin;
    }
  } catch (error) {
    // The target was not touched: drop the work volume and keep the first error.
    await pool.removeVolume(work).catch((cleanup: unknown) => {
      if (!isThinError(cleanup, 'THIN_NOT_FOUND')) options.onNote?.(`could not remove ${work}: ${(cleanup as Error).message}`);
    });
    await pool.flush().catch(() => undefined);
    if (isThinError(error, 'THIN_NO_SPACE')) {
      throw new ThinError(
        'THIN_NO_SPACE',
        `Unpacking stream ${root.name} into ${name} ran out of data space after writing ${mebibytes(result.bytesWritten)} (the stream maps ${mebibytes(root.stats.mappedBytes)}): ${(error as Error).message} ${name} and the pool are as they were; grow the pool (thinbd pool resize --data-size) or free space, and unpack again`,
        { cause: error },
      );
    }
    throw error;
  }
}

function mebibytes(bytes: number): string {
  return `${(bytes / (1024 * 1024)).toFixed(1)} MiB`;
}

/** `range` cut at block edges into a part of its first block, whole blocks, and a part of its last (`whole`: blocks, or up to the volume's end). */
function blockAlignedPieces(range: Range, blockSizeBytes: number, volumeBytes: number): Array<Range & { whole: boolean }> {
  const pieces: Array<Range & { whole: boolean }> = [];
  const wholeBegin = Math.ceil(range.begin / blockSizeBytes) * blockSizeBytes;
  const wholeEnd = range.end === volumeBytes ? range.end : Math.floor(range.end / blockSizeBytes) * blockSizeBytes;
  if (wholeBegin >= wholeEnd) return [{ ...range, whole: false }];
  if (range.begin < wholeBegin) pieces.push({ begin: range.begin, end: wholeBegin, whole: false });
  pieces.push({ begin: wholeBegin, end: wholeEnd, whole: true });
  if (wholeEnd < range.end) pieces.push({ begin: wholeEnd, end: range.end, whole: false });
  return pieces;
}

function joinRanges(ranges: Range[]): Range[] {
  const joined: Range[] = [];
  for (const range of ranges) {
    const last = joined[joined.length - 1];
    if (last !== undefined && last.end === range.begin) last.end = range.end;
    else joined.push({ ...range });
  }
  return joined;
}
