// What `thinbd list` reports for each volume: its identity and its space, counted as thin_ls
// counts it (a data block referenced by more than one volume's mappings is shared).
import type { Pool } from '../pool/pool.ts';

export interface VolumeListing {
  name: string;
  id: number;
  sizeBytes: number;
  mappedBytes: number;
  exclusiveBytes: number;
  sharedBytes: number;
  origin: string | null;
  readOnly: boolean;
  createdAt: string;
  labels: Record<string, string>;
}

export function listVolumes(pool: Pool): VolumeListing[] {
  const blockSizeBytes = pool.status().blockSizeBytes;
  const usage = pool.usage();
  return pool.list().map((info) => {
    const counts = usage.get(info.id) ?? { mappedBlocks: 0, exclusiveBlocks: 0, sharedBlocks: 0 };
    return {
      name: info.name,
      id: info.id,
      sizeBytes: info.sizeBytes,
      mappedBytes: counts.mappedBlocks * blockSizeBytes,
      exclusiveBytes: counts.exclusiveBlocks * blockSizeBytes,
      sharedBytes: counts.sharedBlocks * blockSizeBytes,
      origin: info.origin ?? null,
      readOnly: info.readOnly,
      createdAt: info.createdAt,
      labels: info.labels ?? {},
    };
  });
}
