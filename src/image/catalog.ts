// thinbd image ls: the image volumes in a pool (those an import labelled), with what they hold and
// the space they take, exclusive and shared (with layer volumes and other images) as `list` counts it.
import type { Pool } from '../pool/pool.ts';
import { listVolumes } from '../tools/list.ts';
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
  createdAt: string;
}

export function listImages(pool: Pool): ImageListing[] {
  return listVolumes(pool)
    .filter((volume) => volume.labels[IMAGE_LABELS.format] !== undefined)
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
        createdAt: volume.createdAt,
      };
    });
}
