// How a command reaches a pool: through the control socket when `thinbd serve` owns it, otherwise
// by opening its files (taking the pool lock for as long as the command runs).
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { Pool, assertPoolExists, METADATA_FILE_NAME, DATA_FILE_NAME } from '../pool/pool.ts';
import { describeExposure } from '../io/private.ts';
import type { Reporter } from './report.ts';

export { assertPoolExists };
import { ThinError } from '../errors.ts';
import { LocalPoolService, type PoolService } from '../daemon/service.ts';
import { connectControl, controlSocketPath } from '../daemon/control.ts';

export type Access = 'read' | 'write';

/** The live server's service when one answers on the pool's control socket. */
export async function liveService(dir: string): Promise<PoolService | undefined> {
  const socketPath = controlSocketPath(dir);
  if (!existsSync(socketPath)) return undefined;
  return connectControl(socketPath);
}

/** Runs work on the pool's service: remote when served, local otherwise. */
export async function withService<T>(dir: string, access: Access, work: (service: PoolService) => Promise<T>): Promise<T> {
  assertPoolExists(dir);
  const service = (await liveService(dir)) ?? new LocalPoolService(await Pool.open(dir, { readOnly: access === 'read' }));
  try {
    return await work(service);
  } finally {
    await service.close();
  }
}

/** Runs work on the pool's files directly; refused while a server owns the pool. */
export async function withPool<T>(dir: string, access: Access, work: (pool: Pool) => Promise<T>): Promise<T> {
  assertPoolExists(dir);
  const live = await liveService(dir);
  if (live) {
    await live.close();
    throw new ThinError(
      'THIN_BUSY',
      `Pool ${dir} is being served by 'thinbd serve'; reach its volumes over NBD (e.g. nbdcopy) or stop the server`,
    );
  }
  const pool = await Pool.open(dir, { readOnly: access === 'read' });
  try {
    return await work(pool);
  } finally {
    await pool.close();
  }
}

/**
 * One warning line when users other than the owner can read the pool's volumes (a pool made
 * before thinbd created them private, or loosened by hand). Not an error: the operator may have
 * chosen it.
 */
export function warnIfExposed(dir: string, reporter: Reporter): void {
  const exposure = describeExposure([join(dir, METADATA_FILE_NAME), join(dir, DATA_FILE_NAME)]);
  if (exposure !== undefined) reporter.note(`thinbd: warning: pool ${dir}: ${exposure}`);
}
