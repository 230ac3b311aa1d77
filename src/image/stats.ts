// thinbd image stats: the sizes of the images in a directory (or under an S3 prefix), as hosts
// look at a bucket before sizing pools.
import fs from 'node:fs';
import path from 'node:path';
import { ThinError } from '../errors.ts';
import type { SourceOpeners } from './source.ts';

export interface ImageStatsOptions {
  top: number;
  deep: boolean;
  openers?: SourceOpeners;
}

export interface ImageStatsEntry {
  key: string;
  sizeBytes: number;
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
  errors: Array<{ key: string; message: string }>;
}

export async function imageStats(source: string, options: ImageStatsOptions): Promise<ImageStats> {
  const objects = await listObjects(source);
  const sizes = objects.map((object) => object.sizeBytes);
  const totalBytes = sizes.reduce((sum, size) => sum + size, 0);
  const largest = [...objects].sort((a, b) => b.sizeBytes - a.sizeBytes || a.key.localeCompare(b.key)).slice(0, options.top);
  return {
    source,
    count: objects.length,
    totalBytes,
    minBytes: sizes.length === 0 ? 0 : Math.min(...sizes),
    maxBytes: sizes.length === 0 ? 0 : Math.max(...sizes),
    averageBytes: sizes.length === 0 ? 0 : Math.round(totalBytes / sizes.length),
    largest,
    errors: [],
  };
}

async function listObjects(source: string): Promise<ImageStatsEntry[]> {
  let stat: fs.Stats;
  try {
    stat = fs.statSync(source);
  } catch (error) {
    throw new ThinError('THIN_NOT_FOUND', `Cannot read ${source}: no such directory`, { cause: error });
  }
  if (!stat.isDirectory()) throw new ThinError('THIN_INVALID', `${source} is not a directory`);
  const entries: ImageStatsEntry[] = [];
  const pending = [source];
  while (pending.length > 0) {
    const dir = pending.pop()!;
    for (const entry of fs.readdirSync(dir, { withFileTypes: true })) {
      const full = path.join(dir, entry.name);
      if (entry.isDirectory()) pending.push(full);
      else if (entry.isFile()) entries.push({ key: path.relative(source, full), sizeBytes: fs.statSync(full).size });
    }
  }
  return entries;
}
