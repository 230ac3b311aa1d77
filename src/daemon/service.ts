// The operations the CLI performs on a pool, behind one interface with two implementations:
// LocalPoolService runs them on a Pool this process opened (or, inside `thinbd serve`, on the
// live pool the server owns); the control socket's client runs them remotely on a live pool.
import type { PinnedGeneration, Pool, ScrubReport, SpaceSettings, SpaceSettingsChange } from '../pool/pool.ts';
import { listVolumes, type VolumeListing } from '../tools/list.ts';
import type { CheckReport } from '../tools/check.ts';
import { ThinError } from '../errors.ts';

export interface CreateVolumeRequest {
  name: string;
  sizeBytes: number;
  labels?: Record<string, string>;
}

export interface SnapshotRequest {
  source: string;
  name: string;
  readOnly?: boolean;
  /** Set besides the labels the snapshot copies from its source (these win). */
  labels?: Record<string, string>;
}

/** Replaces every label of a volume. */
export interface SetLabelsRequest {
  name: string;
  labels: Record<string, string>;
}

export interface RemoveRequest {
  name: string;
  /** Remove even when clients are connected to the volume's export. */
  force?: boolean;
}

export interface ResizeRequest {
  name: string;
  sizeBytes: number;
  /** Shrinking discards what lies past the new end: refused (THIN_NEEDS_CONFIRMATION) unless set. */
  allowShrink?: boolean;
}

/** `thinbd pool resize`: the sizes to grow the data and metadata files to (absent: unchanged). */
export interface ResizePoolRequest {
  dataSizeBytes?: number;
  metadataSizeBytes?: number;
}

/** A pinned generation as the control socket carries it (docs/format.md "Pinned generations"). */
export interface PinnedGenerationWire {
  generation: number;
  superblockBase64: string;
  superblockSlots: Array<{ blockNr: number; bytesBase64: string }>;
}

/**
 * The caller a request came from, for what lasts as long as it does: a pin ends with the control
 * connection that asked for it, so a reader that dies cannot hold blocks back for ever.
 */
export interface ServiceSession {
  onClose(release: () => void): void;
}

export interface ScrubRequest {
  /** Bytes per second at most; default SCRUB_RATE_BYTES_PER_SECOND_DEFAULT. */
  rateBytesPerSecond?: number;
}

export interface PoolService {
  createVolume(request: CreateVolumeRequest): Promise<{ id: number }>;
  snapshot(request: SnapshotRequest): Promise<{ id: number }>;
  setLabels(request: SetLabelsRequest): Promise<void>;
  removeVolume(request: RemoveRequest): Promise<void>;
  resizeVolume(request: ResizeRequest): Promise<void>;
  listVolumes(): Promise<VolumeListing[]>;
  status(): Promise<ReturnType<Pool['status']>>;
  /** Changes the pool's space settings (live at once) and makes them durable; returns them all. */
  setSpace(request: { change: SpaceSettingsChange }): Promise<SpaceSettings>;
  /** Grows the data and/or metadata file now, durably (never shrinks). */
  resizePool(request: ResizePoolRequest): Promise<void>;
  check(): Promise<CheckReport>;
  /** Reads and verifies everything the pool holds at a bounded rate, mending metadata copies (Pool.scrub). */
  scrub(request?: ScrubRequest): Promise<ScrubReport>;
  /**
   * Rolls the delta log up and pins the committed generation for a reader (F-TX-8) until the
   * session ends (the control connection closes; for an in-process caller, the service closes).
   */
  pinGeneration(request?: Record<string, never>, session?: ServiceSession): Promise<PinnedGenerationWire>;
  close(): Promise<void>;
}

export interface LocalServiceHooks {
  /** Called before a volume is removed; throws THIN_BUSY to refuse (e.g. clients connected). */
  beforeRemove?(name: string, force: boolean): Promise<void> | void;
  /** Checks the pool the service runs on (the daemon checks its live pool). */
  check?(): Promise<CheckReport>;
  /** Called when a removal that beforeRemove let go on has ended, done or failed. */
  afterRemove?(name: string): void;
  /** Called after the set of volumes changed, so exports can follow. */
  afterChange?(): void;
}

export class LocalPoolService implements PoolService {
  readonly pool: Pool;
  #hooks: LocalServiceHooks;
  #closePool: boolean;
  /** Pins asked for without a session (an in-process caller): released when the service closes. */
  #unsessionedPins: PinnedGeneration[] = [];

  constructor(pool: Pool, options: { hooks?: LocalServiceHooks; closePool?: boolean } = {}) {
    this.pool = pool;
    this.#hooks = options.hooks ?? {};
    this.#closePool = options.closePool ?? true;
  }

  async createVolume(request: CreateVolumeRequest): Promise<{ id: number }> {
    const volume = await this.pool.createVolume(request.name, { sizeBytes: request.sizeBytes, labels: request.labels ?? {} });
    await this.pool.flush();
    this.#hooks.afterChange?.();
    return { id: volume.id };
  }

  async snapshot(request: SnapshotRequest): Promise<{ id: number }> {
    // The request's labels add to those the snapshot copies from its source (Pool.snapshot's replace them).
    const labels = request.labels === undefined ? undefined : { ...this.pool.list().find((info) => info.name === request.source)?.labels, ...request.labels };
    const snapshot = await this.pool.snapshot(request.source, request.name, { readOnly: Boolean(request.readOnly), ...(labels === undefined ? {} : { labels }) });
    await this.pool.flush();
    this.#hooks.afterChange?.();
    return { id: snapshot.id };
  }

  async setLabels(request: SetLabelsRequest): Promise<void> {
    await this.pool.updateVolume(request.name, { labels: request.labels });
    await this.pool.flush();
    this.#hooks.afterChange?.();
  }

  async removeVolume(request: RemoveRequest): Promise<void> {
    this.pool.volume(request.name); // THIN_NOT_FOUND before asking the hooks
    await this.#hooks.beforeRemove?.(request.name, Boolean(request.force));
    try {
      await this.pool.removeVolume(request.name);
      await this.pool.flush();
    } finally {
      this.#hooks.afterRemove?.(request.name);
      this.#hooks.afterChange?.();
    }
  }

  async resizeVolume(request: ResizeRequest): Promise<void> {
    // Checked and resized in one turn of the event loop, so no other request changes the size between.
    const currentBytes = this.pool.volume(request.name).sizeBytes;
    if (request.sizeBytes < currentBytes && request.allowShrink !== true) {
      throw new ThinError(
        'THIN_NEEDS_CONFIRMATION',
        `Resizing volume ${request.name} from ${currentBytes} to ${request.sizeBytes} bytes would discard what lies past the new end; ` +
          'add --allow-shrink to shrink it',
      );
    }
    await this.pool.resizeVolume(request.name, request.sizeBytes);
    await this.pool.flush();
    this.#hooks.afterChange?.();
  }

  async listVolumes(): Promise<VolumeListing[]> {
    return listVolumes(this.pool);
  }

  async status(): Promise<ReturnType<Pool['status']>> {
    return this.pool.status();
  }

  async setSpace(request: { change: SpaceSettingsChange }): Promise<SpaceSettings> {
    const settings = this.pool.changeSpaceSettings(request.change);
    await this.pool.flush();
    return settings;
  }

  async resizePool(request: ResizePoolRequest): Promise<void> {
    await this.pool.resizePool(request);
  }

  async pinGeneration(_request: Record<string, never> = {}, session?: ServiceSession): Promise<PinnedGenerationWire> {
    const pinned = await this.pool.pinCommitted();
    if (session !== undefined) session.onClose(() => pinned.release());
    else this.#unsessionedPins.push(pinned);
    return {
      generation: pinned.generation,
      superblockBase64: Buffer.from(pinned.superblock).toString('base64'),
      superblockSlots: pinned.superblockSlots.map(({ blockNr, bytes }) => ({ blockNr, bytesBase64: Buffer.from(bytes).toString('base64') })),
    };
  }

  async scrub(request: ScrubRequest = {}): Promise<ScrubReport> {
    // Comes from the control socket too: checked, not trusted.
    const rate = request.rateBytesPerSecond;
    if (rate !== undefined && !(typeof rate === 'number' && Number.isFinite(rate) && rate > 0)) {
      throw new ThinError('THIN_INVALID', `A scrub rate of ${JSON.stringify(rate)} bytes per second is not a positive number`);
    }
    return this.pool.scrub(rate === undefined ? {} : { rateBytesPerSecond: rate });
  }

  async check(): Promise<CheckReport> {
    if (!this.#hooks.check) {
      throw new ThinError('THIN_INVALID', 'This pool service cannot check its pool; run thinbd check on the pool directory');
    }
    return this.#hooks.check();
  }

  async close(): Promise<void> {
    for (const pinned of this.#unsessionedPins.splice(0)) pinned.release();
    if (this.#closePool) await this.pool.close();
  }
}

/** Rebuilds a ThinError sent over the control socket as { code, message }. */
export function errorFromWire(wire: { code?: string; message?: string }): Error {
  const message = wire.message ?? 'the server reported an error without a message';
  if (typeof wire.code === 'string' && wire.code.startsWith('THIN_')) {
    return new ThinError(wire.code as ThinError['code'], message);
  }
  return new Error(message);
}
