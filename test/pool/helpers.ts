// Pools in memory for the pool and checker tests.
import { METADATA_BLOCK_COUNT_MIN, METADATA_BLOCK_SIZE_BYTES } from '../../src/constants.ts';
import { MemoryBlockFile } from '../../src/io/memory.ts';
import type { BlockFile } from '../../src/io/block-file.ts';
import { ThinError } from '../../src/errors.ts';
import { Pool, type PoolFiles } from '../../src/pool/pool.ts';
import { ForwardingBlockFile } from '../io/forwarding-block-file.ts';
import { SparseImage } from '../sim/sim-disk.ts';

export const BLOCK = 64 * 1024;
/** The smallest metadata file pdata accepts (sparse in memory: costs only what is written). */
export const METADATA_BYTES = METADATA_BLOCK_COUNT_MIN * METADATA_BLOCK_SIZE_BYTES;

export interface MemoryPool {
  pool: Pool;
  files: { metadata: MemoryBlockFile; data: MemoryBlockFile };
}

export async function memoryPool(dataBlocks = 64, blockSizeBytes = BLOCK): Promise<MemoryPool> {
  const files = { metadata: new MemoryBlockFile(0, 'metadata'), data: new MemoryBlockFile(0, 'data') };
  const pool = await Pool.createOn(files, { dataSizeBytes: dataBlocks * blockSizeBytes, blockSizeBytes, metadataSizeBytes: METADATA_BYTES });
  return { pool, files };
}

/** Closes the pool and opens it again on copies of what its files held. */
export async function reopen(memory: MemoryPool, options: { readOnly?: boolean } = {}): Promise<MemoryPool> {
  await memory.pool.close();
  const files = { metadata: MemoryBlockFile.from(memory.files.metadata.snapshot(), 'metadata'), data: MemoryBlockFile.from(memory.files.data.snapshot(), 'data') };
  const pool = await Pool.openOn(files, options);
  return { pool, files };
}

/** Copies of the files as they are now (for opening a second view of a pool). */
export function copyFiles(memory: MemoryPool): PoolFiles {
  return { metadata: MemoryBlockFile.from(memory.files.metadata.snapshot(), 'metadata'), data: MemoryBlockFile.from(memory.files.data.snapshot(), 'data') };
}

export function filled(lengthBytes: number, byte: number): Uint8Array {
  return new Uint8Array(lengthBytes).fill(byte);
}

export async function readAll(pool: Pool, name: string): Promise<Uint8Array> {
  const volume = pool.volume(name);
  const bytes = new Uint8Array(volume.sizeBytes);
  await volume.read(0, bytes);
  return bytes;
}

/**
 * A sparse block file in memory (a copy-on-write image of 4 KiB pages, test/sim/sim-disk.ts), so
 * a test can use a data space of many gigabytes and write a byte here and there.
 */
export class SparseMemoryBlockFile implements BlockFile {
  readonly description: string;
  readonly #image: SparseImage;
  #closed = false;

  constructor(sizeBytes: number, description = 'sparse memory') {
    this.#image = new SparseImage(sizeBytes);
    this.description = description;
  }

  sizeBytes(): number {
    return this.#image.sizeBytes;
  }

  readSync(target: Uint8Array, offsetBytes: number): void {
    this.#checkOpen();
    this.#image.read(target, offsetBytes);
  }

  async read(target: Uint8Array, offsetBytes: number): Promise<void> {
    this.readSync(target, offsetBytes);
  }

  async write(source: Uint8Array, offsetBytes: number): Promise<void> {
    this.#checkOpen();
    this.#image.write(source, offsetBytes);
  }

  async sync(): Promise<void> {
    this.#checkOpen();
  }

  async grow(sizeBytes: number): Promise<void> {
    this.#image.grow(sizeBytes);
  }

  async close(): Promise<void> {
    this.#closed = true;
  }

  #checkOpen(): void {
    if (this.#closed) throw new ThinError('THIN_CLOSED', `${this.description} is closed`);
  }
}

/** Wraps a block file so that sync (and optionally writes) can be made to fail on demand. */
export class FailingBlockFile extends ForwardingBlockFile {
  failSyncs = false;
  failWrites = false;

  override async write(source: Uint8Array, offsetBytes: number): Promise<void> {
    if (this.failWrites) throw new ThinError('THIN_IO', `injected write failure at ${offsetBytes}`);
    await this.inner.write(source, offsetBytes);
  }
  override async sync(): Promise<void> {
    if (this.failSyncs) throw new ThinError('THIN_IO', 'injected sync failure');
    await this.inner.sync();
  }
}
