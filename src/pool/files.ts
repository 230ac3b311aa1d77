// A pool on disk: two block files, as dm-thin has (metadata and data). By default a directory
// holds them as `metadata` and `data`, with `lock`: opening a pool directory takes its exclusive
// lock (src/io/lock.ts) before either file, so two processes never open one pool at once, and a
// reader never runs beside a writer. The engine (pool.ts) and the tools' read-only opener
// (tools/open.ts) both open a directory through openPoolDirectory.
import { statfsSync } from 'node:fs';
import { join } from 'node:path';
import { ThinError } from '../errors.ts';
import type { BlockFile } from '../io/block-file.ts';
import { FaultInjectingBlockFile, type FaultRule } from '../io/fault-injection.ts';
import { nodeFileSystem, type FileSystem } from '../io/file-system.ts';
import type { DirectoryLock } from '../io/lock.ts';
import { MeasuredBlockFile } from '../io/measured.ts';
import type { HostFigures } from './space-policy.ts';

export interface PoolFiles {
  metadata: BlockFile;
  data: BlockFile;
  /**
   * The free space of the file system holding the files (statfs), which bounds how far they may
   * grow by themselves (space-policy.ts); absent for files not in a directory (tests, the
   * simulator: no host limit). Read when the pool evaluates its space, so keep it cheap.
   */
  host?: () => HostFigures | undefined;
}

/** The free space of the file system holding `dir`, as statfs reports it; undefined when statfs fails. */
export function hostFiguresOf(dir: string): () => HostFigures | undefined {
  return () => {
    try {
      const stats = statfsSync(dir);
      return { freeBytes: stats.bavail * stats.bsize, sizeBytes: stats.blocks * stats.bsize };
    } catch {
      return undefined;
    }
  };
}

export const METADATA_FILE_NAME = 'metadata';
export const DATA_FILE_NAME = 'data';

/** THIN_NOT_FOUND unless DIR holds a pool's metadata and data files: the one wording of "no pool here". */
export function assertPoolExists(dir: string, fileSystem: FileSystem = nodeFileSystem): void {
  for (const name of [METADATA_FILE_NAME, DATA_FILE_NAME]) {
    if (fileSystem.kind(join(dir, name)) === undefined) {
      throw new ThinError('THIN_NOT_FOUND', `No pool at ${dir} (no ${name} file there); create one with 'thinbd pool create --pool ${dir}'`);
    }
  }
}

/**
 * Takes the lock of an existing pool directory. Nothing is created in a directory until it is
 * known to hold a pool, so a mistyped --pool leaves no lock file behind.
 */
export function lockPool(dir: string, fileSystem: FileSystem = nodeFileSystem): DirectoryLock {
  assertPoolExists(dir, fileSystem);
  return fileSystem.lock(dir);
}

/** Both files of the pool in `dir`, opened under the directory's lock; close them with closePoolDirectory. */
export interface OpenPoolDirectory {
  files: PoolFiles;
  lock: DirectoryLock;
}

/**
 * Opens the pool in `dir`: THIN_NOT_FOUND when there is none, THIN_BUSY when another process holds
 * its lock. On any failure nothing stays open or locked.
 */
export async function openPoolDirectory(dir: string, options: { readOnly: boolean; fileSystem?: FileSystem }): Promise<OpenPoolDirectory> {
  const fileSystem = options.fileSystem ?? nodeFileSystem;
  const lock = lockPool(dir, fileSystem);
  const files: Partial<PoolFiles> = {};
  try {
    files.metadata = await fileSystem.openFile(join(dir, METADATA_FILE_NAME), { readOnly: options.readOnly });
    files.data = await fileSystem.openFile(join(dir, DATA_FILE_NAME), { readOnly: options.readOnly });
    // The host's free space is the real file system's: a simulated one has none to report.
    if (fileSystem === nodeFileSystem) files.host = hostFiguresOf(dir);
    return { files: files as PoolFiles, lock };
  } catch (error) {
    await closePoolFiles(files);
    lock.release();
    throw error;
  }
}

/**
 * Opens both files of the pool in `dir` read-only WITHOUT its lock: only for a reader that holds
 * a pin from the process that owns the pool (docs/format.md "Pinned generations", F-TX-8), which
 * keeps every block of the pinned generation as it is while the owner goes on writing.
 */
export async function openPinnedPoolFiles(dir: string): Promise<PoolFiles> {
  assertPoolExists(dir);
  const files: Partial<PoolFiles> = {};
  try {
    files.metadata = await nodeFileSystem.openFile(join(dir, METADATA_FILE_NAME), { readOnly: true });
    files.data = await nodeFileSystem.openFile(join(dir, DATA_FILE_NAME), { readOnly: true });
    return files as PoolFiles;
  } catch (error) {
    await closePoolFiles(files);
    throw error;
  }
}

/** Closes whichever files are open; returns the first failure instead of throwing it, so both are always tried. */
export async function closePoolFiles(files: Partial<PoolFiles>): Promise<unknown> {
  let failure: unknown;
  for (const file of [files.metadata, files.data]) {
    await file?.close().catch((error: unknown) => {
      failure ??= error;
    });
  }
  return failure;
}

/** A pool's files as the engine uses them: measured (for health), under fault injection when rules are given. */
export interface InstrumentedFiles {
  files: PoolFiles;
  measured: { data: MeasuredBlockFile; metadata: MeasuredBlockFile };
  /** The injectors, when rules were given for that file (more rules can be added while serving). */
  faults: { data?: FaultInjectingBlockFile; metadata?: FaultInjectingBlockFile };
}

/**
 * Wraps a pool's raw files: fault injection first (io/fault-injection.ts, `thinbd serve
 * --inject`), so that what it injects is seen by everything above as the device's own failure;
 * then the measuring file that `pool status` reports from (io/measured.ts).
 */
export function instrumentPoolFiles(files: PoolFiles, rules: readonly FaultRule[] = []): InstrumentedFiles {
  const faults: InstrumentedFiles['faults'] = {};
  const wrap = (kind: 'data' | 'metadata', file: BlockFile): MeasuredBlockFile => {
    const mine = rules.filter((rule) => rule.file === kind);
    if (mine.length === 0) return new MeasuredBlockFile(file);
    const injector = new FaultInjectingBlockFile(file, mine);
    faults[kind] = injector;
    return new MeasuredBlockFile(injector);
  };
  const measured = { data: wrap('data', files.data), metadata: wrap('metadata', files.metadata) };
  return { files: { data: measured.data, metadata: measured.metadata }, measured, faults };
}
