// The space monitor: how much data and metadata space a pool can still give (space-policy.ts's
// figures over the engine's numbers now), the state each is in, and the events a change of state
// raises. The events are edge-triggered, as dm-thin's low-water event is: one event when the space
// a pool can still give falls below its low-water mark, and none again until space was added or
// freed above the mark (re-armed), however many writes go on below it.
//
// States, per resource (data, metadata):
//
//     ok ──available < low-water mark──► low ──a write refused or queued for lack of space──► full
//      ▲                                  │  ▲                                                 │
//      └──available ≥ mark: "restored"────┘  └──space added or freed (still below the mark)───┘
//     ok ──a write refused──► full (raises the low-water event on the way, unless the mark is off)
//
// Events: `<resource>-low-water` (ok → low or full; the one a --on-low-water hook runs for),
// `<resource>-full`, `<resource>-restored` (→ ok), and the growth events the growth room raises
// through emit (`<resource>-grown`, `<resource>-grow-failed`). Listeners run synchronously and
// must not throw: they log, or start a hook process.
import { METADATA_BLOCK_SIZE_BYTES } from '../constants.ts';
import { assert } from '../errors.ts';
import {
  dataSpaceFigures,
  metadataSpaceFigures,
  type DataSpaceFigures,
  type DataSpaceInputs,
  type MetadataSpaceFigures,
  type MetadataSpaceInputs,
  type SpaceSettings,
} from './space-policy.ts';

export type SpaceResource = 'data' | 'metadata';
export type SpaceState = 'ok' | 'low' | 'full';
export type SpaceEventKind = `${SpaceResource}-${'low-water' | 'full' | 'restored' | 'grown' | 'grow-failed'}`;

/** An event: the resource's figures when it was raised (SpaceReport's, without the counters). */
export interface SpaceEvent extends Omit<SpaceReport, 'canGrow' | 'grows'> {
  kind: SpaceEventKind;
  resource: SpaceResource;
  /** One sentence for logs. */
  message: string;
}

/** One resource's figures in bytes, for `pool status` and events. */
export interface SpaceReport {
  state: SpaceState;
  /** What the pool can still give (growth and the host included). */
  freeBytes: number;
  usedBytes: number;
  /** The file's size now (data or metadata space). */
  sizeBytes: number;
  /** How far growth may take it now. */
  maxBytes: number;
  lowWaterBytes: number;
  /** Whether the file can grow at all (a regular file; not a block device). */
  canGrow: boolean;
  /** Times it grew since open. */
  grows: number;
}

/** The numbers the monitor reads from the engine. */
export interface SpaceMonitorHost {
  readonly settings: SpaceSettings;
  dataInputs(): DataSpaceInputs;
  readonly dataUsedBlocks: number;
  metadataInputs(): MetadataSpaceInputs;
  readonly metadataUsedBlocks: number;
}

interface ResourceState {
  state: SpaceState;
  /** Available blocks when it became full: more than that means space was added or freed. */
  availableWhenFull: number;
  grows: number;
}

export class SpaceMonitor {
  readonly #host: SpaceMonitorHost;
  readonly #resources: Record<SpaceResource, ResourceState> = {
    data: { state: 'ok', availableWhenFull: 0, grows: 0 },
    metadata: { state: 'ok', availableWhenFull: 0, grows: 0 },
  };
  readonly #listeners = new Set<(event: SpaceEvent) => void>();

  constructor(host: SpaceMonitorHost) {
    this.#host = host;
  }

  state(resource: SpaceResource): SpaceState {
    return this.#resources[resource].state;
  }

  dataFigures(): DataSpaceFigures {
    return dataSpaceFigures(this.#host.settings, this.#host.dataInputs());
  }

  metadataFigures(): MetadataSpaceFigures {
    return metadataSpaceFigures(this.#host.settings, this.#host.metadataInputs());
  }

  /** Listens to every event; returns the function that stops listening. */
  listen(listener: (event: SpaceEvent) => void): () => void {
    this.#listeners.add(listener);
    // A listener that comes while a resource is already below its mark hears of it once, as if
    // it had been there when it crossed (a server started on a pool that opens low).
    for (const resource of ['data', 'metadata'] as const) {
      const report = this.report(resource);
      if (report.state !== 'ok' && report.lowWaterBytes > 0) {
        listener(this.#event(`${resource}-low-water`, resource, `the ${resource} space is below its low-water mark: ${this.#describe(report)}`));
      }
    }
    return () => this.#listeners.delete(listener);
  }

  /**
   * Takes the state the figures say now, raising the events of the change. Cheap enough to call
   * after every allocation: when the resource is ok and its free blocks alone are above the mark,
   * nothing is computed.
   */
  evaluate(resource: SpaceResource): void {
    const entry = this.#resources[resource];
    const { available, lowWater } = this.#figures(resource);
    // Full stays full until space was added or freed, whatever the mark (it may be off).
    if (entry.state === 'full' && available <= entry.availableWhenFull) return;
    this.#move(resource, available < lowWater ? 'low' : 'ok');
  }

  /** Evaluates data only when its free blocks may be near the mark (the per-write check). */
  evaluateDataIfNear(freeBlocks: number, lowWaterBlocks: number): void {
    if (this.#resources.data.state === 'ok' && freeBlocks >= lowWaterBlocks) return;
    this.evaluate('data');
  }

  /** A write was refused (or queued) for lack of this space: full until space is added or freed. */
  markFull(resource: SpaceResource): void {
    const entry = this.#resources[resource];
    entry.availableWhenFull = this.#figures(resource).available;
    this.#move(resource, 'full');
  }

  /** Growth raised the file's size (counted for status); re-evaluates. */
  grew(resource: SpaceResource, fromBlocks: number, toBlocks: number): void {
    this.#resources[resource].grows += 1;
    this.emit(`${resource}-grown`, resource, `the ${resource} space grew from ${this.#bytes(resource, fromBlocks)} to ${this.#bytes(resource, toBlocks)} bytes`);
    this.evaluate(resource);
  }

  report(resource: SpaceResource): SpaceReport {
    const entry = this.#resources[resource];
    const dataInputs = resource === 'data' ? this.#host.dataInputs() : undefined;
    const metadataInputs = dataInputs === undefined ? this.#host.metadataInputs() : undefined;
    const inputs = dataInputs ?? metadataInputs!;
    const figures = dataInputs !== undefined ? dataSpaceFigures(this.#host.settings, dataInputs) : metadataSpaceFigures(this.#host.settings, metadataInputs!);
    const unit = dataInputs?.blockSizeBytes ?? METADATA_BLOCK_SIZE_BYTES;
    return {
      state: entry.state,
      freeBytes: figures.availableBlocks * unit,
      usedBytes: (dataInputs !== undefined ? this.#host.dataUsedBlocks : this.#host.metadataUsedBlocks) * unit,
      sizeBytes: inputs.blockCount * unit,
      maxBytes: figures.growLimitBlocks * unit,
      lowWaterBytes: figures.lowWaterBlocks * unit,
      canGrow: inputs.canGrow,
      grows: entry.grows,
    };
  }

  /** Raises an event with the resource's figures now. */
  emit(kind: SpaceEventKind, resource: SpaceResource, message: string): void {
    const event = this.#event(kind, resource, message);
    for (const listener of this.#listeners) listener(event);
  }

  assertInvariants(): void {
    for (const resource of ['data', 'metadata'] as const) {
      const entry = this.#resources[resource];
      assert(entry.grows >= 0 && entry.availableWhenFull >= 0, `bad ${resource} space counters`);
    }
  }

  #event(kind: SpaceEventKind, resource: SpaceResource, message: string): SpaceEvent {
    const { canGrow: _canGrow, grows: _grows, ...figures } = this.report(resource);
    return { kind, resource, ...figures, message };
  }

  #describe(report: SpaceReport): string {
    return `${report.freeBytes} bytes can still be given, the mark is ${report.lowWaterBytes}`;
  }

  #figures(resource: SpaceResource): { available: number; lowWater: number } {
    const figures = resource === 'data' ? this.dataFigures() : this.metadataFigures();
    return { available: figures.availableBlocks, lowWater: figures.lowWaterBlocks };
  }

  #bytes(resource: SpaceResource, blocks: number): number {
    return blocks * (resource === 'data' ? this.#host.dataInputs().blockSizeBytes : METADATA_BLOCK_SIZE_BYTES);
  }

  #move(resource: SpaceResource, next: SpaceState): void {
    const entry = this.#resources[resource];
    const previous = entry.state;
    if (previous === next) return;
    entry.state = next;
    const report = this.report(resource);
    const figures = this.#describe(report);
    if (previous === 'ok' && report.lowWaterBytes > 0) {
      this.emit(`${resource}-low-water`, resource, `the ${resource} space fell below its low-water mark: ${figures}`);
    }
    if (next === 'full') {
      this.emit(`${resource}-full`, resource, `a write found no ${resource} space: ${figures}`);
    } else if (next === 'ok') {
      this.emit(`${resource}-restored`, resource, `the ${resource} space is above its low-water mark again (re-armed): ${figures}`);
    }
  }
}
