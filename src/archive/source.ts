// What pack reads: a volume's size, identity, mappings and bytes. From a pool opened by this
// process (poolSources), or from a generation a served pool pinned for this reader (viewSources:
// docs/format.md "Pinned generations"), whose read-only volumes keep their bytes while clients write.
import type { Pool } from '../pool/pool.ts';
import { DEVICE_FLAG_READ_ONLY } from '../pool/codecs.ts';
import type { PoolView } from '../tools/pool-view.ts';
import type { MappedRun } from '../pool/volume.ts';
import type { Mapping } from '../tools/dump/events.ts';
import type { StreamSource } from './format.ts';

export interface PackSource {
  readonly sizeBytes: number;
  readonly blockSizeBytes: number;
  readonly identity: StreamSource;
  /** The volume's mappings in virtual block order. */
  mappedRuns(): MappedRun[];
  /** Fills target with bytes from offsetBytes (inside mapped runs). */
  read(offsetBytes: number, target: Uint8Array): Promise<void>;
}

/** Pack sources by volume name (THIN_NOT_FOUND for an unknown one). */
export type PackSources = (name: string) => PackSource;

/**
 * How a pack reaches its volumes when it must do more than read them: `identify` answers the
 * checks made before anything is read or snapshotted (THIN_NOT_FOUND for an unknown name), and
 * `read` runs the pack on the sources and the volume name to read (a snapshot taken for it, or
 * the volume itself), given the names of the streams the store holds. A pack refused by those
 * checks leaves no snapshot (pack-snapshot.ts).
 */
export interface PackAccess {
  identify(name: string): StreamSource;
  read<T>(work: (sources: PackSources, volume: string) => Promise<T>, storedStreams: readonly string[]): Promise<T>;
}

/** The volumes of a pool this process opened. */
export function poolSources(pool: Pool): PackSources {
  return (name) => poolVolumeSource(pool, name);
}

/** The volumes of a pinned (or locked) generation, read from the pool's files. */
export function viewSources(view: PoolView): PackSources {
  return (name) => {
    const device = view.device(name);
    const reader = view.volumeReader(device);
    const runs: MappedRun[] = [];
    for (const mapping of view.mappings(device)) runs.push({ virtualBlock: mapping.originBegin, dataBlock: mapping.dataBegin, lengthBlocks: mapping.length });
    return {
      sizeBytes: device.value.sizeBytes,
      blockSizeBytes: view.payload.blockSizeBytes,
      identity: {
        poolId: view.tm.poolId.toString(16).padStart(16, '0'),
        volumeId: device.id,
        volumeName: device.details.name,
        volumeCreatedAt: device.details.createdAt,
        readOnly: (device.value.flags & DEVICE_FLAG_READ_ONLY) !== 0,
      },
      mappedRuns: () => runs,
      read: async (offsetBytes, target) => {
        await reader.read(offsetBytes, target);
      },
    };
  };
}

/** A volume of an open pool as a pack source. */
export function poolVolumeSource(pool: Pool, name: string): PackSource {
  const volume = pool.volume(name);
  const status = pool.status();
  const info = pool.list().find((entry) => entry.id === volume.id)!;
  return {
    sizeBytes: volume.sizeBytes,
    blockSizeBytes: status.blockSizeBytes,
    identity: { poolId: status.poolId, volumeId: volume.id, volumeName: volume.name, volumeCreatedAt: info.createdAt, readOnly: volume.readOnly },
    mappedRuns: () => volume.mappedRuns(),
    read: async (offsetBytes, target) => {
      await volume.read(offsetBytes, target);
    },
  };
}

/** Mapped runs as the delta walker's mappings (times are not compared by it). */
export function* runsAsMappings(runs: MappedRun[]): Generator<Mapping> {
  for (const run of runs) yield { originBegin: run.virtualBlock, dataBegin: run.dataBlock, length: run.lengthBlocks, time: 0 };
}
