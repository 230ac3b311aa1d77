// The read-only snapshot a pack reads a writable volume through, named as its stream: on a served
// pool always (clients write while the pack reads), on a pool this process opened only with
// --keep-snapshot (the pool lock keeps the volume still; the snapshot stays to be the --delta-from
// of the next pack).
//
// The pack marks the snapshot with PACK_SNAPSHOT_LABEL (its stream, host and pid) for as long as
// it runs: a pack that fails removes it; one that succeeds removes it, or with --keep-snapshot
// keeps it without the mark. So a marked volume is the snapshot of a pack that is running or was
// killed. The next pack of that stream name (the store has none of that name yet: packVolume
// checks it first) removes it when that pack's process is gone, as unpack removes what a killed
// unpack left; a volume of that name without the mark is someone's own and is refused, never
// removed. A stream named by default (VOLUME.<UTC time>) is never packed under that name again,
// so the next pack of a writable volume also removes every other snapshot a pack on this host
// left: marked with the volume's own name, by a process that is gone, for a stream the store
// does not hold. Labels live in the volume's details block (docs/format.md "Volume details block"), so
// the mark needs no format change.
import os from 'node:os';
import { ThinError, isThinError } from '../errors.ts';
import type { StreamSource } from './format.ts';
import { processAlive } from '../util/process.ts';
import type { PackAccess, PackSources } from './source.ts';

/** The label a pack's snapshot carries while the pack runs: JSON { stream, host, pid }. */
export const PACK_SNAPSHOT_LABEL = 'thinbd.archive.pack';

/** What a pack's snapshot needs of a pool: a PoolService (served, or on a pool this process opened). */
export interface SnapshotPool {
  snapshot(request: { source: string; name: string; readOnly?: boolean; labels?: Record<string, string> }): Promise<unknown>;
  setLabels(request: { name: string; labels: Record<string, string> }): Promise<void>;
  removeVolume(request: { name: string; force?: boolean }): Promise<void>;
}

/** A volume as the pool lists it (VolumeListing and VolumeInfo are ones). */
export interface ListedVolume {
  name: string;
  readOnly: boolean;
  labels?: Record<string, string>;
}

interface PackMark {
  stream: string;
  host: string;
  pid: number;
}

export interface SnapshotAccessOptions {
  pool: SnapshotPool;
  /** The pool's volumes, listed before the pack. */
  volumes: readonly ListedVolume[];
  /** PackAccess.identify. */
  identify: (name: string) => StreamSource;
  volume: string;
  stream: string;
  /** Keep the snapshot after a pack that succeeded (--keep-snapshot). */
  keep: boolean;
  onNote: (line: string) => void;
  /** The pool's volumes once the snapshot is taken (a view pinned after it, or the open pool). */
  withSources: <T>(work: (sources: PackSources) => Promise<T>) => Promise<T>;
}

/** A writable volume packed through its snapshot (a read-only one as it is). */
export function snapshotAccess(options: SnapshotAccessOptions): PackAccess {
  const { volume, stream, keep, onNote } = options;
  return {
    identify: options.identify,
    read: async (work, storedStreams) => {
      const listed = options.volumes.find((entry) => entry.name === volume);
      if (listed === undefined) throw new ThinError('THIN_NOT_FOUND', `No volume named ${volume}`);
      if (listed.readOnly) {
        if (keep) onNote(`${volume} is read-only: packed as it is, with no snapshot to keep`);
        return options.withSources((sources) => work(sources, volume));
      }
      await removeLeftover(options.pool, options.volumes, stream, onNote);
      await removeOtherLeftovers(options.pool, options.volumes, stream, storedStreams, onNote);
      const mark: PackMark = { stream, host: os.hostname(), pid: process.pid };
      await options.pool.snapshot({ source: volume, name: stream, readOnly: true, labels: { [PACK_SNAPSHOT_LABEL]: JSON.stringify(mark) } }).catch((error: unknown) => {
        if (!isThinError(error, 'THIN_READ_ONLY')) throw error;
        throw new ThinError(
          'THIN_READ_ONLY',
          `${volume} is writable, and a pack reads a writable volume through a read-only snapshot it takes, which this pool cannot (${(error as Error).message}): pack a read-only snapshot of ${volume} instead, or open the pool writable`,
          { cause: error },
        );
      });
      onNote(`packing ${volume} through its read-only snapshot ${stream}${keep ? ' (kept)' : ''}`);
      let result: Awaited<ReturnType<typeof work>>;
      try {
        result = await options.withSources((sources) => work(sources, stream));
      } catch (error) {
        await options.pool.removeVolume({ name: stream, force: true }).catch((removal: unknown) => {
          onNote(`could not remove ${stream} (${removal instanceof Error ? removal.message : String(removal)}); the next pack named ${stream} removes it`);
        });
        throw error;
      }
      // The snapshot has the volume's labels and the mark.
      if (keep) await options.pool.setLabels({ name: stream, labels: withoutMark(listed.labels ?? {}) });
      else await options.pool.removeVolume({ name: stream, force: true });
      return result;
    },
  };
}

function withoutMark(labels: Record<string, string>): Record<string, string> {
  return Object.fromEntries(Object.entries(labels).filter(([key]) => key !== PACK_SNAPSHOT_LABEL));
}

/** The mark of a pack's snapshot, or undefined (no mark, or not one a pack wrote). */
function markOf(volume: ListedVolume): PackMark | undefined {
  const text = volume.labels?.[PACK_SNAPSHOT_LABEL];
  if (text === undefined) return undefined;
  let mark: Partial<PackMark>;
  try {
    mark = JSON.parse(text) as Partial<PackMark>;
  } catch {
    return undefined;
  }
  const whole = typeof mark === 'object' && mark !== null && typeof mark.stream === 'string' && typeof mark.host === 'string' && Number.isSafeInteger(mark.pid);
  return whole ? (mark as PackMark) : undefined;
}

/**
 * Removes the volume named `stream` when a pack of that stream took it and did not finish; refuses
 * any other volume of that name. The store has no stream named `stream` (the caller checked).
 */
async function removeLeftover(pool: SnapshotPool, volumes: readonly ListedVolume[], stream: string, onNote: (line: string) => void): Promise<void> {
  const existing = volumes.find((entry) => entry.name === stream);
  if (existing === undefined) return;
  const mark = markOf(existing);
  if (mark === undefined || mark.stream !== stream || !existing.readOnly) {
    throw new ThinError(
      'THIN_EXISTS',
      `A volume named ${stream} already exists and is not a snapshot left by a pack; a writable volume is packed through a read-only snapshot named as the stream: choose another --name, or remove that volume`,
    );
  }
  if (mark.host === os.hostname() && mark.pid !== process.pid && processAlive(mark.pid)) {
    throw new ThinError(
      'THIN_BUSY',
      `Volume ${stream} is the snapshot of a pack of ${stream} still running (pid ${mark.pid}): wait for it, or choose another --name; if no such pack runs, remove the volume ('thinbd remove ${stream}')`,
    );
  }
  onNote(`removing ${stream}, left by a pack that did not finish`);
  await pool.removeVolume({ name: stream, force: true });
}

/**
 * Removes the snapshots that packs of other streams on this host took and did not finish (their
 * process is gone, the store has no such stream): a killed pack of a stream named by default
 * leaves one that no later pack is named after.
 */
async function removeOtherLeftovers(
  pool: SnapshotPool,
  volumes: readonly ListedVolume[],
  stream: string,
  storedStreams: readonly string[],
  onNote: (line: string) => void,
): Promise<void> {
  const stored = new Set(storedStreams);
  for (const volume of volumes) {
    const mark = markOf(volume);
    if (mark === undefined || volume.name === stream || mark.stream !== volume.name || !volume.readOnly || stored.has(volume.name)) continue;
    if (mark.host !== os.hostname() || mark.pid === process.pid || processAlive(mark.pid)) continue;
    onNote(`removing ${volume.name}, left by a pack of it that did not finish`);
    await pool.removeVolume({ name: volume.name, force: true });
  }
}
