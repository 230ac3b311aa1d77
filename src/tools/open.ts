// The one way check and repair open a pool: read-only, under the pool's lock (a directory) or on
// block files the caller owns, at the generation the pool itself would open, and with every fact
// about that choice written down as a finding instead of decided twice.
//
// The generation is the newest whose superblock copy, metadata space map and payload roots
// validate (F-SB-6). When no generation's roots validate (a root every generation on disk shares
// is damaged), the newest whose superblock and metadata space map do is read as it is, so that
// the walks name the damaged node and everything else is still judged. The findings:
//   superblock-copy         a copy that does not validate or is stale (a crash tears one: a warning)
//   generation-passed-over  a newer generation was committed and then damaged: what it committed is
//                           not in what is read
//   roots-unvalidated       no generation's roots validate; the newest is read as it is
//   log-records             delta log records after the generation: flushes not in its trees,
//                           which only a read-write open replays (docs/format.md F-LOG-5)
//   log-unreadable          the delta log cannot be read
//   metadata-truncated      the metadata file is shorter than the superblock says
//   no-generation           nothing opens (then there is no view; `openError` is why)
// check lists the first two kinds of the log and copies as warnings and the rest as problems;
// repair lists what its rebuilt pool will lack (passed-over generations, log records) as losses.
import { METADATA_BLOCK_SIZE_BYTES } from '../constants.ts';
import { isThinError } from '../errors.ts';
import type { BlockFile } from '../io/block-file.ts';
import type { FileSystem } from '../io/file-system.ts';
import { readDeltaLog } from '../journal/replay.ts';
import { TransactionManager, isZeroBlock } from '../pdata/index.ts';
import { decodePoolPayload } from '../pool/codecs.ts';
import type { PoolFiles } from '../pool/files.ts';
import { validatePayloadRoots } from '../pool/trees.ts';
import type { Problem } from './problem.ts';
import { PoolView, openReadOnly } from './pool-view.ts';

export type FindingKind =
  | 'superblock-copy'
  | 'generation-passed-over'
  | 'roots-unvalidated'
  | 'log-records'
  | 'log-unreadable'
  | 'metadata-truncated'
  | 'no-generation';

export interface OpenFinding extends Problem {
  kind: FindingKind;
}

export interface ToolsOpen {
  /** The generation read; undefined when none opens (a `no-generation` finding says why). */
  view: PoolView | undefined;
  findings: OpenFinding[];
  /** Why nothing opened, as thrown by pdata or the payload's decoder. */
  openError?: unknown;
  /** Delta log records after the generation read (0 when the log is unreadable). */
  logRecords: number;
  /** The generation opened, when one did (also when its payload does not decode). */
  tm?: TransactionManager;
}

function messageOf(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}

function isAllZeros(file: BlockFile, blockNr: number): boolean {
  const bytes = new Uint8Array(METADATA_BLOCK_SIZE_BYTES);
  file.readSync(bytes, blockNr * METADATA_BLOCK_SIZE_BYTES);
  return isZeroBlock(bytes);
}

/** Opens the pool for check or repair (see the module comment). The caller closes the view. */
export async function openPoolForTools(
  target: string | PoolFiles,
  options: { release?: () => Promise<void>; fileSystem?: FileSystem } = {},
): Promise<ToolsOpen> {
  const opened = await openReadOnly(target, options.fileSystem);
  const { files } = opened;
  // Block files the caller owns may come with what closes them when the view is closed.
  const release = options.release ?? opened.release;
  const findings: OpenFinding[] = [];
  try {
    let opened;
    try {
      try {
        opened = await TransactionManager.open(files.metadata, { readOnly: true, validatePayload: validatePayloadRoots });
      } catch (error) {
        if (!isThinError(error, 'THIN_CORRUPT_SUPERBLOCK')) throw error;
        opened = await TransactionManager.open(files.metadata, { readOnly: true });
        findings.push({
          kind: 'roots-unvalidated',
          where: 'superblock',
          message: `no generation's roots validate, generation ${opened.report.generation} is read as it is: ${error.message}`,
        });
      }
    } catch (error) {
      findings.push({ kind: 'no-generation', where: 'superblock', message: messageOf(error) });
      await release();
      return { view: undefined, findings, openError: error, logRecords: 0 };
    }
    const { tm, report } = opened;
    for (const copy of report.copies) {
      // Until the first generation of the other parity is committed, its copies are rightly empty.
      const neverYetWritten = report.generation < 2 && copy.copyIndex % 2 !== report.generation % 2 && isAllZeros(files.metadata, copy.blockNr);
      if (copy.problem !== undefined && !neverYetWritten) {
        findings.push({ kind: 'superblock-copy', where: `superblock copy ${copy.copyIndex} (metadata block ${copy.blockNr})`, message: copy.problem });
      }
    }
    // A generation with a valid superblock copy whose trees do not validate was committed and
    // then damaged, unlike a copy a crash tore.
    for (const rejected of report.rejected) {
      findings.push({
        kind: 'generation-passed-over',
        where: `superblock generation ${rejected.generation}`,
        message: `passed over for generation ${report.generation}, so what it committed after that is not in what was read: ${rejected.problem}`,
      });
    }
    // A mirrored pool's file cut short before its second copy is read plainly (F-MIR-5): say so.
    const missing = opened.missingMirrorOffsetBlocks;
    if (missing !== undefined) {
      findings.push({
        kind: 'superblock-copy',
        where: 'metadata mirror',
        message:
          `the superblock names a second copy of the metadata at block ${missing}, but the file (${files.metadata.sizeBytes()} bytes) ends before it: ` +
          'one copy is all there is (the file was cut short, or written by metadata unpack); a read-write open of the pool builds the mirror again',
      });
    }
    // Flushes after the generation may be delta-log records not yet rolled up into its trees.
    // Nothing here writes, so nothing replays them.
    let logRecords = 0;
    try {
      // Through the mirror (tm.file): a slot unreadable in one copy is read from the other (F-MIR-4).
      const log = await readDeltaLog(tm.file, { poolId: tm.poolId, baseGeneration: tm.generation });
      logRecords = log.records.length;
      if (logRecords > 0) {
        findings.push({
          kind: 'log-records',
          where: 'delta log',
          message:
            `${logRecords} record(s) after generation ${tm.generation} hold flushed changes not yet rolled up into its trees; ` +
            'a read-write open of the pool replays them (a crash or kill left them)',
        });
      }
    } catch (error) {
      findings.push({ kind: 'log-unreadable', where: 'delta log', message: messageOf(error) });
    }
    // A metadata file shorter than the superblock says (cut short by a copy or a resize) reads as
    // zeros past its end: blocks there are lost, and the next commit could not write them.
    const metadataBytes = files.metadata.sizeBytes();
    if (metadataBytes < tm.metadataBlockCount * METADATA_BLOCK_SIZE_BYTES) {
      findings.push({
        kind: 'metadata-truncated',
        where: 'metadata file',
        message: `${metadataBytes} bytes, shorter than the ${tm.metadataBlockCount} blocks of ${METADATA_BLOCK_SIZE_BYTES} bytes the superblock records (truncated?)`,
      });
    }
    let payload;
    try {
      payload = decodePoolPayload(opened.payload, tm.metadataBlockCount);
    } catch (error) {
      findings.push({ kind: 'no-generation', where: 'superblock payload', message: messageOf(error) });
      await release();
      return { view: undefined, findings, openError: error, logRecords, tm };
    }
    return { view: new PoolView(files, release, { tm, payload, report }), findings, logRecords, tm };
  } catch (error) {
    await release();
    throw error;
  }
}
