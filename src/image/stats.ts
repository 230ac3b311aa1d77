// thinbd image stats: the images in a directory or under an S3 prefix, as hosts look at a bucket
// before sizing pools: how many, how large in all, the smallest, the largest, the average, the top
// N with their keys. With `deep`, each image is read as an import would read it (nothing written):
// its files, their bytes, and the pool space importing it alone would take.
//
// Only files that look like images are counted (a readme beside them is not one): in a directory,
// by their first bytes (a tar header, gzip or zstd: what import reads); under an S3 prefix, by the
// key's extension (.tar, .tar.gz, .tgz, .tar.zst, .tzst), since reading each object's first bytes
// would be a request per object. The others are counted as skipped.
import fs from 'node:fs';
import path from 'node:path';
import { ThinError } from '../errors.ts';
import { S3Bucket, isS3Url } from '../io/s3.ts';
import { DATA_BLOCK_SIZE_BYTES_DEFAULT } from '../constants.ts';
import { measureImage } from './import.ts';
import { detectCompression, type SourceOpeners } from './source.ts';
import { checksumMatches } from './tar.ts';

export interface ImageStatsOptions {
  top: number;
  deep: boolean;
  openers?: SourceOpeners;
  /** S3-compatible endpoint for an s3:// source. */
  endpoint?: string;
  /** The block size of the pool deep counts for (default the pool default, 64 KiB). */
  poolBlockSizeBytes?: number;
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
  /** Files (or objects) that do not look like images, not counted. */
  skipped: number;
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
  const listing = isS3Url(source) ? await listS3(source, options.endpoint) : listDirectory(source);
  const objects = listing.images;
  const sizes = objects.map((object) => object.sizeBytes);
  const totalBytes = sizes.reduce((sum, size) => sum + size, 0);
  const stats: ImageStats = {
    source,
    count: objects.length,
    skipped: listing.skipped,
    totalBytes,
    // Not Math.min(...sizes): a bucket of more than about 120,000 images overflows the stack as arguments.
    minBytes: sizes.reduce((min, size) => Math.min(min, size), sizes[0] ?? 0),
    maxBytes: sizes.reduce((max, size) => Math.max(max, size), 0),
    averageBytes: sizes.length === 0 ? 0 : Math.round(totalBytes / sizes.length),
    largest: [],
    errors: [],
  };
  const byDetail = new Map<string, ImageStatsEntry>();
  const poolBlockSizeBytes = options.poolBlockSizeBytes ?? DATA_BLOCK_SIZE_BYTES_DEFAULT;
  if (options.deep) {
    stats.files = 0;
    stats.fileBytes = 0;
    stats.poolBytes = 0;
    for (const object of objects) {
      try {
        const measured = await measureImage(object.source, { poolBlockSizeBytes, ...(options.openers === undefined ? {} : { openers: options.openers }) });
        const poolBytes = measured.blocksMapped * poolBlockSizeBytes;
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

interface Listing {
  images: Listed[];
  skipped: number;
}

function listDirectory(source: string): Listing {
  let stat: fs.Stats;
  try {
    stat = fs.statSync(source);
  } catch (error) {
    throw new ThinError('THIN_NOT_FOUND', `Cannot read ${source}: no such directory`, { cause: error });
  }
  if (!stat.isDirectory()) throw new ThinError('THIN_INVALID', `${source} is not a directory (image stats takes a directory or s3://BUCKET/PREFIX)`);
  const listing: Listing = { images: [], skipped: 0 };
  const pending = [source];
  while (pending.length > 0) {
    const dir = pending.pop()!;
    for (const entry of fs.readdirSync(dir, { withFileTypes: true })) {
      const full = path.join(dir, entry.name);
      if (entry.isDirectory()) {
        pending.push(full);
        continue;
      }
      // A symlink to a file is read as import reads it (followed); to a directory it is not walked (no loops).
      const target = entry.isSymbolicLink() ? statOrUndefined(full) : undefined;
      const isFile = entry.isFile() || target?.isFile() === true;
      if (isFile && looksLikeImage(full)) listing.images.push({ key: path.relative(source, full), sizeBytes: fs.statSync(full).size, source: full });
      else listing.skipped++;
    }
  }
  return listing;
}

function statOrUndefined(file: string): fs.Stats | undefined {
  try {
    return fs.statSync(file);
  } catch {
    return undefined;
  }
}

/**
 * Whether a file's first bytes are what import reads: gzip or zstd as import tells them
 * (detectCompression), or a tar header whose checksum matches (docker save and OCI archives are
 * tars).
 */
function looksLikeImage(file: string): boolean {
  let head: Buffer;
  try {
    const fd = fs.openSync(file, 'r');
    try {
      head = Buffer.alloc(512);
      head = head.subarray(0, fs.readSync(fd, head, 0, 512, 0));
    } finally {
      fs.closeSync(fd);
    }
  } catch {
    // Unreadable: deep would say why; counted as an image by its name only when it looks like one.
    return IMAGE_KEY.test(file);
  }
  try {
    if (detectCompression(head, file) !== 'none') return true;
  } catch {
    return false; // xz or bzip2: named and refused by import
  }
  return head.length === 512 && checksumMatches(head);
}

/** Keys of objects taken as images under an S3 prefix (the first bytes would cost a request each). */
const IMAGE_KEY = /\.(tar|tar\.gz|tgz|tar\.zst|tar\.zstd|tzst)$/i;

async function listS3(source: string, endpoint: string | undefined): Promise<Listing> {
  const bucket = await S3Bucket.connect(source, endpoint === undefined ? {} : { endpoint });
  try {
    const listing: Listing = { images: [], skipped: 0 };
    for await (const object of bucket.list()) {
      if (object.key.endsWith('/')) continue;
      if (IMAGE_KEY.test(object.key)) listing.images.push({ key: object.key, sizeBytes: object.sizeBytes, source: bucket.url(object.key) });
      else listing.skipped++;
    }
    return listing;
  } finally {
    bucket.close();
  }
}
