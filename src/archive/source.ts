// What pack reads: a volume's size, identity, mappings and bytes. From a pool opened by this
// process (poolVolumeSource); a served pool's volumes are read the same way through whatever
// gives their mappings and bytes.
import type { Pool } from '../pool/pool.ts';
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
