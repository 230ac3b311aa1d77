// The health of a pool's two devices, as `thinbd pool status` reports it: per device the I/O errors
// seen since the pool was opened (read, write, sync), the bad ranges recorded (durable), the
// blocks moved off them, the spare space a remap can still use, the latency of its reads, writes
// and syncs (avg, min, max, p95, p99, stddev, as dm-remap reports them) and a state with the rule
// that set it.
//
// The rules, first match wins (failing before degraded before ok); each names itself in the report:
//   H-FAIL-1 a sync of the device failed: no flush is acknowledged until the pool is reopened
//   H-FAIL-2 a write found no block to go to (every target refused it, or no free block was left)
//   H-FAIL-3 HEALTH_BAD_RANGES_FAILING_MIN or more bad ranges: the failures are not isolated
//   H-FAIL-4 a metadata block that no copy of could be read, or a metadata write every copy refused
//   H-DEG-1  bad ranges are recorded: after its first reallocations a drive is many times likelier
//            to fail soon (Pinheiro et al., FAST'07)
//   H-DEG-2  I/O errors since open, though each was worked around (retried, moved, repaired)
//   H-DEG-3  metadata blocks with a bad copy not yet rewritten, or metadata kept in one copy only
//   H-DEG-4  p99 read or write latency above HEALTH_LATENCY_P99_MS_DEGRADED (a drive retrying)
//   H-OK     none of the above
import { HEALTH_BAD_RANGES_FAILING_MIN, HEALTH_LATENCY_P99_MS_DEGRADED, HEALTH_LATENCY_SAMPLES_MIN } from '../constants.ts';
import type { LatencySummary } from '../io/latency.ts';
import type { IoErrorCounts, MeasuredBlockFile } from '../io/measured.ts';
import type { MirrorCounters, RedundantBlockFile } from '../io/mirror.ts';
import type { MediaErrorCounters } from './bad-blocks.ts';
import { BadRangeFlag, type BadDevice, type BadRanges } from './bad-ranges.ts';
import type { RemapCounters } from './remap.ts';
import type { SpareCounters } from './spare-area.ts';

export type HealthState = 'ok' | 'degraded' | 'failing';

export interface DeviceHealth {
  state: HealthState;
  /** The rule that set the state, with the figures behind it: "H-DEG-1: 2 bad ranges recorded (...)". */
  rule: string;
  /** Failed system calls since the pool was opened (retries and the narrowing of a failed request included). */
  ioErrors: IoErrorCounts;
  /** Bad ranges recorded in the pool's metadata (durable), and the sectors they cover. */
  badRanges: number;
  badSectors: number;
  /** Data: blocks whose data was moved off bad sectors; metadata: copies rewritten from a good copy since open. */
  remappedBlocks: number;
  /** Blocks a remap (data) or a new metadata block can still take. */
  spareBlocks: number;
  latencyMs: { read: LatencySummary; write: LatencySummary; sync: LatencySummary };
}

export interface MetadataHealth extends DeviceHealth {
  /** Copies of every metadata block: 2 with the mirror, 1 without. */
  copies: number;
  /** Metadata blocks with a copy known bad and not yet rewritten. */
  degradedBlocks: number;
  mirror?: MirrorCounters;
}

export interface DataHealth extends DeviceHealth {
  reads: MediaErrorCounters;
  remaps: RemapCounters;
  /**
   * The spare area (spare-area.ts): of spareBlocks, those kept written and synced ahead for remaps
   * (kept once the data file has refused a write), and what it did since open.
   */
  spareArea: SpareAreaFigures;
}

export interface SpareAreaFigures extends SpareCounters {
  blocks: number;
}

export interface PoolHealth {
  data: DataHealth;
  metadata: MetadataHealth;
}

export interface HealthSources {
  dataFile: MeasuredBlockFile;
  metadataFile: MeasuredBlockFile;
  mirror: RedundantBlockFile | undefined;
  badRanges: BadRanges;
  media: MediaErrorCounters;
  remaps: RemapCounters;
  spareArea: SpareAreaFigures;
  freeDataBlocks: number;
  freeMetadataBlocks: number;
  /** The first failed sync of each file since open, if any. */
  syncFailed: { data: boolean; metadata: boolean };
}

interface Verdict {
  state: HealthState;
  rule: string;
}

function badFigures(badRanges: BadRanges, device: BadDevice): { ranges: number; sectors: number; relocatedBlocks: number } {
  let ranges = 0;
  let sectors = 0;
  const relocated = new Set<number>();
  for (const range of badRanges.all()) {
    if (range.device !== device) continue;
    ranges += 1;
    sectors += range.endSector - range.beginSector;
    if ((range.flags & BadRangeFlag.relocated) !== 0) relocated.add(range.block);
  }
  return { ranges, sectors, relocatedBlocks: relocated.size };
}

function latencyVerdict(file: MeasuredBlockFile): Verdict | undefined {
  for (const [kind, stats] of [['read', file.readLatency], ['write', file.writeLatency]] as const) {
    if (stats.count < HEALTH_LATENCY_SAMPLES_MIN) continue;
    const p99Ms = stats.percentileUs(0.99) / 1000;
    if (p99Ms > HEALTH_LATENCY_P99_MS_DEGRADED) {
      return { state: 'degraded', rule: `H-DEG-4: p99 ${kind} latency ${p99Ms.toFixed(1)} ms over ${stats.count} operations, above ${HEALTH_LATENCY_P99_MS_DEGRADED} ms (a drive retrying internally)` };
    }
  }
  return undefined;
}

function errorsText(errors: IoErrorCounts): string {
  return `${errors.read} read, ${errors.write} write, ${errors.sync} sync`;
}

export function poolHealth(sources: HealthSources): PoolHealth {
  const { badRanges } = sources;
  const dataBad = badFigures(badRanges, 'data');
  const metadataBad = badFigures(badRanges, 'metadata');
  const dataErrors = { ...sources.dataFile.errors };
  const metadataErrors = { ...sources.metadataFile.errors };
  const mirror = sources.mirror;

  const dataVerdict = ((): Verdict => {
    if (sources.syncFailed.data) return { state: 'failing', rule: 'H-FAIL-1: a sync of the data file failed; no flush is acknowledged until the pool is reopened' };
    if (sources.remaps.remapsFailed > 0) return { state: 'failing', rule: `H-FAIL-2: ${sources.remaps.remapsFailed} write(s) found no block to go to (every target refused, no free block left, or unreadable sectors around them)` };
    if (dataBad.ranges >= HEALTH_BAD_RANGES_FAILING_MIN) return { state: 'failing', rule: `H-FAIL-3: ${dataBad.ranges} bad ranges recorded (${HEALTH_BAD_RANGES_FAILING_MIN} or more)` };
    if (dataBad.ranges > 0) return { state: 'degraded', rule: `H-DEG-1: ${dataBad.ranges} bad range(s), ${dataBad.sectors} sector(s) recorded; ${dataBad.relocatedBlocks} block(s) moved off them` };
    if (dataErrors.read + dataErrors.write > 0) return { state: 'degraded', rule: `H-DEG-2: I/O errors since open (${errorsText(dataErrors)}), each retried or worked around` };
    return latencyVerdict(sources.dataFile) ?? { state: 'ok', rule: 'H-OK: no I/O error since the pool was opened, no bad range recorded' };
  })();

  const metadataVerdict = ((): Verdict => {
    if (sources.syncFailed.metadata) return { state: 'failing', rule: 'H-FAIL-1: a sync of the metadata file failed; no flush is acknowledged until the pool is reopened' };
    if ((mirror?.counters.unrecoverableReads ?? 0) > 0) return { state: 'failing', rule: `H-FAIL-4: ${mirror!.counters.unrecoverableReads} metadata read(s) found no good copy` };
    if ((mirror?.counters.unrecoverableWrites ?? 0) > 0) return { state: 'failing', rule: `H-FAIL-4: ${mirror!.counters.unrecoverableWrites} metadata write(s) refused by every copy` };
    if (metadataBad.ranges >= HEALTH_BAD_RANGES_FAILING_MIN) return { state: 'failing', rule: `H-FAIL-3: ${metadataBad.ranges} bad ranges recorded (${HEALTH_BAD_RANGES_FAILING_MIN} or more)` };
    if (metadataBad.ranges > 0) return { state: 'degraded', rule: `H-DEG-1: ${metadataBad.ranges} bad range(s), ${metadataBad.sectors} sector(s) recorded in metadata copies that could not be rewritten` };
    if (mirror === undefined) return { state: 'degraded', rule: 'H-DEG-3: metadata is kept in one copy (no mirror): one bad sector can lose the pool' };
    if (mirror.degradedUnits > 0) return { state: 'degraded', rule: `H-DEG-3: ${mirror.degradedUnits} metadata block(s) with a bad copy not yet rewritten` };
    const copyErrors = mirror.counters.invalidCopies;
    if (metadataErrors.read + metadataErrors.write + copyErrors > 0) {
      return { state: 'degraded', rule: `H-DEG-2: I/O errors since open (${errorsText(metadataErrors)}; ${copyErrors} copies failed their checksum), each served from the other copy and rewritten` };
    }
    return latencyVerdict(sources.metadataFile) ?? { state: 'ok', rule: 'H-OK: no I/O error since the pool was opened, no bad range recorded, every block in two copies' };
  })();

  const latencyOf = (file: MeasuredBlockFile): DeviceHealth['latencyMs'] => ({
    read: file.readLatency.summary(),
    write: file.writeLatency.summary(),
    sync: file.syncLatency.summary(),
  });
  return {
    data: {
      ...dataVerdict,
      ioErrors: dataErrors,
      badRanges: dataBad.ranges,
      badSectors: dataBad.sectors,
      remappedBlocks: dataBad.relocatedBlocks,
      spareBlocks: sources.freeDataBlocks,
      latencyMs: latencyOf(sources.dataFile),
      reads: { ...sources.media },
      remaps: { ...sources.remaps },
      spareArea: { ...sources.spareArea },
    },
    metadata: {
      ...metadataVerdict,
      ioErrors: metadataErrors,
      badRanges: metadataBad.ranges,
      badSectors: metadataBad.sectors,
      remappedBlocks: mirror?.counters.repairs ?? 0,
      spareBlocks: sources.freeMetadataBlocks,
      latencyMs: latencyOf(sources.metadataFile),
      copies: mirror?.copyCount ?? 1,
      degradedBlocks: mirror?.degradedUnits ?? 0,
      ...(mirror !== undefined ? { mirror: { ...mirror.counters } } : {}),
    },
  };
}
