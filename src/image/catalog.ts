// thinbd image ls: the image volumes in a pool (what imports made), with what they hold and the
// space they take, exclusive and shared (with layer volumes and other images) as `list` counts it.
//
// Snapshots copy their origin's labels, so an image's labels alone do not make a volume an image: a
// machine (a writable snapshot of an image) carries them too. An import records the image's own
// volume id in its labels (IMAGE_LABELS.volumeId); a snapshot has another id, a rename keeps it.
import type { Pool } from '../pool/pool.ts';
import { listVolumes, type VolumeListing } from '../tools/list.ts';
import { IMAGE_LABELS } from './import.ts';

export interface ImageListing {
  name: string;
  source: string;
  digest: string;
  format: string;
  tags: string[];
  layers: number;
  files: number;
  fileBytes: number;
  sizeBytes: number;
  mappedBytes: number;
  exclusiveBytes: number;
  sharedBytes: number;
  /** The layer volume the image was started from, when it shares layers with an earlier import. */
  origin: string | null;
  /** Snapshots taken of the image (machines, mostly) that are still in the pool; not the layer volumes its import kept. */
  snapshots: number;
  createdAt: string;
}

/**
 * Whether a volume is an image an import made: read-only, and its labels name its own id. An image
 * from before that label (no id recorded) passes when read-only: a machine is writable.
 */
export function isImageVolume(volume: Pick<VolumeListing, 'id' | 'readOnly' | 'labels'>): boolean {
  if (!volume.readOnly || volume.labels[IMAGE_LABELS.format] === undefined) return false;
  const recorded = volume.labels[IMAGE_LABELS.volumeId];
  return recorded === undefined || recorded === String(volume.id);
}

export function listImages(pool: Pool): ImageListing[] {
  const volumes = listVolumes(pool);
  const snapshotsOf = new Map<number, number>();
  for (const volume of volumes) {
    // A layer volume is the import's own snapshot, a cache of the layers for later imports: not one
    // of the image's machines, which is what the count is for (before removing an image, say).
    if (volume.originId === null || volume.labels[IMAGE_LABELS.layerChain] !== undefined) continue;
    snapshotsOf.set(volume.originId, (snapshotsOf.get(volume.originId) ?? 0) + 1);
  }
  return volumes
    .filter((volume) => isImageVolume(volume))
    .map((volume) => {
      const labels = volume.labels;
      const tags = labels[IMAGE_LABELS.tags];
      return {
        name: volume.name,
        source: labels[IMAGE_LABELS.source] ?? '',
        digest: labels[IMAGE_LABELS.digest] ?? '',
        format: labels[IMAGE_LABELS.format] ?? '',
        tags: tags === undefined || tags === '' ? [] : tags.split(','),
        layers: Number(labels[IMAGE_LABELS.layers] ?? 0),
        files: Number(labels[IMAGE_LABELS.files] ?? 0),
        fileBytes: Number(labels[IMAGE_LABELS.bytes] ?? 0),
        sizeBytes: volume.sizeBytes,
        mappedBytes: volume.mappedBytes,
        exclusiveBytes: volume.exclusiveBytes,
        sharedBytes: volume.sharedBytes,
        origin: volume.origin,
        snapshots: snapshotsOf.get(volume.id) ?? 0,
        createdAt: volume.createdAt,
      };
    });
}
