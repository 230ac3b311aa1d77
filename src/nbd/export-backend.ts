// Between the protocol and an export, as nbdkit's server/backend.c sits between its protocol code
// and its plugins and filters: one object per connection, made when it enters transmission, that
// every command reaches the export through. It holds
// - the fallbacks: FUA by a flush after the operation when the export has no native FUA, CACHE as
//   nothing when the export cannot cache;
// - the contract's assertions (nbd/backend.ts): what the server passes lies inside the size sampled
//   for this connection and within the payload limit (a bug otherwise), and what the export answers
//   to block status is checked before the protocol uses it (the export is someone else's code);
// - the filters: functions that wrap an export in another (a test's fault injection or delay),
//   placed below the fallbacks, so a filter sees exactly the calls the export would.
import { assert } from '../errors.ts';
import type { NbdExport, NbdExtent } from './backend.ts';
import { NBD_EIO } from './protocol.ts';
import { RequestError } from './request-error.ts';

/** Wraps an export in another that sees every call first (nbdkit's filters). */
export type NbdExportFilter = (next: NbdExport) => NbdExport;

export interface ExportBackendLimits {
  /** The export's size as sampled when the connection entered transmission. */
  sizeBytes: number;
  /** Largest READ/WRITE payload negotiated. */
  payloadBytesMax: number;
}

export class ExportBackend {
  /** The export the connection negotiated (its flags and name), before any filter. */
  readonly export: NbdExport;
  /** What the calls go to: the export inside its filters. */
  readonly #target: NbdExport;
  readonly #limits: ExportBackendLimits;

  constructor(exp: NbdExport, limits: ExportBackendLimits, filters: readonly NbdExportFilter[] = []) {
    this.export = exp;
    this.#limits = limits;
    this.#target = filters.reduceRight<NbdExport>((next, filter) => filter(next), exp);
  }

  read(offsetBytes: number, target: Uint8Array): Promise<boolean | void> {
    this.#assertRange('read', offsetBytes, target.length, true);
    return this.#target.read(offsetBytes, target);
  }

  async write(offsetBytes: number, source: Uint8Array, fua: boolean): Promise<void> {
    this.#assertRange('write', offsetBytes, source.length, true);
    const native = this.export.canFua;
    await this.#target.write(offsetBytes, source, { fua: fua && native });
    if (fua && !native) await this.#target.flush();
  }

  flush(): Promise<void> {
    return this.#target.flush();
  }

  async trim(offsetBytes: number, lengthBytes: number, fua: boolean): Promise<void> {
    this.#assertRange('trim', offsetBytes, lengthBytes, false);
    const native = this.export.canFua;
    await this.#target.trim(offsetBytes, lengthBytes, { fua: fua && native });
    if (fua && !native) await this.#target.flush();
  }

  async zero(offsetBytes: number, lengthBytes: number, options: { noHole: boolean; fua: boolean; fastZero: boolean }): Promise<void> {
    this.#assertRange('zero', offsetBytes, lengthBytes, false);
    const native = this.export.canFua;
    await this.#target.zero(offsetBytes, lengthBytes, { noHole: options.noHole, fua: options.fua && native, fastZero: options.fastZero });
    if (options.fua && !native) await this.#target.flush();
  }

  /** A hint that must not change what anyone reads: without a cache it is done at once. */
  async cache(offsetBytes: number, lengthBytes: number): Promise<void> {
    this.#assertRange('cache', offsetBytes, lengthBytes, false);
    if (this.export.canCache && this.#target.cache !== undefined) await this.#target.cache(offsetBytes, lengthBytes);
  }

  /**
   * The export's extents from offsetBytes, each checked: a length that is not a positive whole
   * number of bytes is the export's error (NBD_EIO), never passed on to the client.
   */
  async blockStatus(offsetBytes: number, lengthBytes: number): Promise<NbdExtent[]> {
    this.#assertRange('block status', offsetBytes, lengthBytes, false);
    const extents = await this.#target.blockStatus(offsetBytes, lengthBytes);
    for (const extent of extents) {
      if (!(Number.isSafeInteger(extent.lengthBytes) && extent.lengthBytes > 0)) {
        throw new RequestError(NBD_EIO, `The export answered block status with an extent of ${extent.lengthBytes} bytes.`);
      }
    }
    return extents;
  }

  /** The server validated the request (commands.ts); a range outside the contract here is a bug. */
  #assertRange(what: string, offsetBytes: number, lengthBytes: number, payload: boolean): void {
    const { sizeBytes, payloadBytesMax } = this.#limits;
    if (!(offsetBytes >= 0 && lengthBytes >= 0 && offsetBytes + lengthBytes <= sizeBytes && (!payload || lengthBytes <= payloadBytesMax))) {
      assert(false, `${what} of ${lengthBytes} bytes at ${offsetBytes} passed to an export of ${sizeBytes} bytes (payload limit ${payloadBytesMax})`);
    }
  }
}
