// A pool volume as an NBD export. The pool's flush commits the whole pool, so a FLUSH on any
// connection covers writes completed on all of them: the export can offer CAN_MULTI_CONN.
import type { NbdExport, NbdExtent } from '../nbd/backend.ts';
import type { Volume } from '../pool/volume.ts';
import { NBD_BLOCK_SIZE_PREFERRED_BYTES_DEFAULT, NBD_PAYLOAD_BYTES_MAX } from '../constants.ts';

export class VolumeExport implements NbdExport {
  readonly #volume: Volume;
  readonly readOnly: boolean;
  readonly description: string;
  readonly canTrim = true;
  readonly canZero = true;
  readonly canFastZero = true;
  readonly canFua = true;
  readonly canMultiConn = true;
  readonly canCache = false;
  readonly blockSizeMinBytes = 1;
  /** A page, so guests do not read-modify-write. */
  readonly blockSizePreferredBytes = NBD_BLOCK_SIZE_PREFERRED_BYTES_DEFAULT;
  readonly blockSizeMaxBytes = NBD_PAYLOAD_BYTES_MAX;

  constructor(volume: Volume, options: { readOnly?: boolean; description?: string } = {}) {
    this.#volume = volume;
    this.readOnly = volume.readOnly || Boolean(options.readOnly);
    this.description = options.description ?? `thinbd volume ${volume.name}`;
  }

  get name(): string {
    return this.#volume.name;
  }

  sizeBytes(): number {
    return this.#volume.sizeBytes;
  }

  read(offsetBytes: number, target: Uint8Array): Promise<boolean> {
    return this.#volume.read(offsetBytes, target);
  }

  write(offsetBytes: number, source: Uint8Array, options: { fua: boolean }): Promise<void> {
    return this.#volume.write(offsetBytes, source, { fua: options.fua });
  }

  flush(): Promise<void> {
    return this.#volume.flush();
  }

  async trim(offsetBytes: number, lengthBytes: number, options: { fua: boolean }): Promise<void> {
    await this.#volume.discard(offsetBytes, lengthBytes);
    if (options.fua) await this.#volume.flush();
  }

  async zero(offsetBytes: number, lengthBytes: number, options: { noHole: boolean; fua: boolean; fastZero: boolean }): Promise<void> {
    if (options.fastZero && options.noHole) {
      // Keeping blocks allocated means writing zeros into them: not faster than the client doing it.
      throw Object.assign(new Error('Zeroing with NO_HOLE writes the zeros; not fast'), { code: 'ENOTSUP' });
    }
    await this.#volume.writeZeroes(offsetBytes, lengthBytes, { noHole: options.noHole, fua: options.fua });
  }

  async blockStatus(offsetBytes: number, lengthBytes: number): Promise<NbdExtent[]> {
    return this.#volume.extents(offsetBytes, lengthBytes).map((extent) => ({
      lengthBytes: extent.lengthBytes,
      hole: !extent.mapped,
      zero: !extent.mapped,
    }));
  }
}
