// Shared pieces of the archive tests: a pool in a temporary directory, volume contents, and the
// archive commands as library calls.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createHash } from 'node:crypto';
import { Pool } from '../../src/pool/pool.ts';

export const KiB = 1024;
export const MiB = 1024 * 1024;
export const BLOCK = 64 * KiB;

export function tempDir(label: string): { path: string; remove: () => void } {
  const path = mkdtempSync(join(tmpdir(), `thinbd-${label}-`));
  return { path, remove: () => rmSync(path, { recursive: true, force: true }) };
}

export async function createPool(dir: string, dataSizeBytes = 512 * MiB): Promise<Pool> {
  return await Pool.create(dir, { dataSizeBytes, blockSizeBytes: BLOCK, commitIntervalMs: 0 });
}

/** Bytes that compress a little and differ by seed (xorshift words with runs of text). */
export function contentBytes(lengthBytes: number, seed: number): Uint8Array {
  const bytes = new Uint8Array(lengthBytes);
  let state = (seed * 2654435761) >>> 0 || 1;
  for (let index = 0; index < lengthBytes; index += 1) {
    if (index % 1024 < 512) {
      bytes[index] = 97 + ((index >> 4) % 26);
      continue;
    }
    state ^= state << 13;
    state >>>= 0;
    state ^= state >>> 17;
    state ^= state << 5;
    state >>>= 0;
    bytes[index] = state & 0xff;
  }
  return bytes;
}

export async function readVolume(pool: Pool, name: string): Promise<Uint8Array> {
  const volume = pool.volume(name);
  const bytes = new Uint8Array(volume.sizeBytes);
  await volume.read(0, bytes);
  return bytes;
}

export function digest(bytes: Uint8Array): string {
  return createHash('sha256').update(bytes).digest('hex');
}

/** Mapped virtual blocks of a volume, as a sorted list of block numbers. */
export function mappedBlocks(pool: Pool, name: string): number[] {
  const blocks: number[] = [];
  for (const run of pool.volume(name).mappedRuns()) for (let block = 0; block < run.lengthBlocks; block += 1) blocks.push(run.virtualBlock + block);
  return blocks;
}
