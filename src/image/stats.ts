// thinbd image stats: the images in a directory or under an S3 prefix, as hosts look at a bucket
// before sizing pools: how many, how large in all, the smallest, the largest, the average, the top
// N with their keys. With `deep`, each image is read as an import would read it (nothing written):
// its files, their bytes, and the pool space importing it alone would take.
import fs from 'node:fs';
import path from 'node:path';
import { ThinError } from '../errors.ts';
import { S3Bucket, isS3Url } from '../io/s3.ts';
import { measureImage } from './import.ts';
import type { SourceOpeners } from './source.ts';

export interface ImageStatsOptions {
  top: number;
  deep: boolean;
  openers?: SourceOpeners;
  /** S3-compatible endpoint for an s3:// source. */
  endpoint?: string;
}

export interface ImageStatsEntry {
  key: string;
  sizeBytes: number;
  /** With deep: files in the image, their bytes, and the pool bytes an import would map. */
  files?: number;
  fileBytes?: number;
  poolBytes?: number;
}

export interface ImageStats {
  source: string;
  count: number;
  totalBytes: number;
  minBytes: number;
  maxBytes: number;
  averageBytes: number;
  largest: ImageStatsEntry[];
  /** With deep: the sums over every image. */
  files?: number;
  fileBytes?: number;
  poolBytes?: number;
  /** Images deep could not read (with why); the rest are still counted. */
  errors: Array<{ key: string; message: string }>;
}

interface Listed {
  key: string;
  sizeBytes: number;
  /** What import reads: a path or an s3:// URL. */
  source: string;
}

export async function imageStats(source: string, options: ImageStatsOptions): Promise<ImageStats> {
  const objects = isS3Url(source) ? await listS3(source, options.endpoint) : listDirectory(source);
  const sizes = objects.map((object) => object.sizeBytes);
  const totalBytes = sizes.reduce((sum, size) => sum + size, 0);
  const stats: ImageStats = {
    source,
    count: objects.length,
    totalBytes,
    minBytes: sizes.length === 0 ? 0 : Math.min(...sizes),
    maxBytes: sizes.length === 0 ? 0 : Math.max(...sizes),
    averageBytes: sizes.length === 0 ? 0 : Math.round(totalBytes / sizes.length),
    largest: [],
    errors: [],
  };
  const byDetail = new Map<string, ImageStatsEntry>();
  if (options.deep) {
    stats.files = 0;
    stats.fileBytes = 0;
    stats.poolBytes = 0;
    for (const object of objects) {
      try {
        const measured = await measureImage(object.source, { ...(options.openers === undefined ? {} : { openers: options.openers }) });
        const poolBytes = measured.blocksMapped * 64 * 1024;
        byDetail.set(object.key, { key: object.key, sizeBytes: object.sizeBytes, files: measured.files, fileBytes: measured.fileBytes, poolBytes });
        stats.files += measured.files;
        stats.fileBytes += measured.fileBytes;
        stats.poolBytes += poolBytes;
      } catch (error) {
        stats.errors.push({ key: object.key, message: error instanceof Error ? error.message : String(error) });
      }
    }
  }
  stats.largest = [...objects]
    .sort((a, b) => b.sizeBytes - a.sizeBytes || (a.key < b.key ? -1 : 1))
    .slice(0, options.top)
    .map((object) => byDetail.get(object.key) ?? { key: object.key, sizeBytes: object.sizeBytes });
  return stats;
}

function listDirectory(source: string): Listed[] {
  let stat: fs.Stats;
  try {
    stat = fs.statSync(source);
  } catch (error) {
    throw new ThinError('THIN_NOT_FOUND', `Cannot read ${source}: no such directory`, { cause: error });
  }
  if (!stat.isDirectory()) throw new ThinError('THIN_INVALID', `${source} is not a directory (image stats takes a directory or s3://BUCKET/PREFIX)`);
  const entries: Listed[] = [];
  const pending = [source];
  while (pending.length > 0) {
    const dir = pending.pop()!;
    for (const entry of fs.readdirSync(dir, { withFileTypes: true })) {
      const full = path.join(dir, entry.name);
      if (entry.isDirectory()) pending.push(full);
      else if (entry.isFile()) entries.push({ key: path.relative(source, full), sizeBytes: fs.statSync(full).size, source: full });
    }
  }
  return entries;
}

async function listS3(source: string, endpoint: string | undefined): Promise<Listed[]> {
  const bucket = await S3Bucket.connect(source, endpoint === undefined ? {} : { endpoint });
  try {
    const entries: Listed[] = [];
    for await (const object of bucket.list()) {
      if (object.key.endsWith('/')) continue;
      entries.push({ key: object.key, sizeBytes: object.sizeBytes, source: bucket.url(object.key) });
    }
    return entries;
  } finally {
    bucket.close();
  }
}
