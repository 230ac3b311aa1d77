// How a command reaches a pool: through the control socket when `thinbd serve` owns it, otherwise
// by opening its files (taking the pool lock for as long as the command runs).
//
// The engine (pool.ts) and the tools' view are loaded when a command first needs them: `thinbd
// check` and `dump` never open the engine, and loading it was a large part of their start.
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { assertPoolExists, METADATA_FILE_NAME, DATA_FILE_NAME } from '../pool/files.ts';
import type { Pool } from '../pool/pool.ts';
import { describeExposure, describeForeignControl } from '../io/private.ts';
import type { Reporter } from './report.ts';

export { assertPoolExists };
import { ThinError } from '../errors.ts';
import type { PoolService } from '../daemon/service.ts';
import { connectControl, controlSocketPath } from '../daemon/control.ts';
import type { PoolView, ViewTarget } from '../tools/pool-view.ts';

export type Access = 'read' | 'write';

/** The live server's service when one answers on the pool's control socket. */
export async function liveService(dir: string): Promise<PoolService | undefined> {
  const socketPath = controlSocketPath(dir);
  if (!existsSync(socketPath)) return undefined;
  return connectControl(socketPath);
}

/**
 * One warning line when a pool opened for reading is in needs-check mode: it fell back past a newer
 * generation that cannot be read (docs/format.md F-SB-6, F-SB-10), so what a read command shows is
 * an older state than the pool's; the engine refuses every change, but a read would otherwise say
 * nothing of it. A served pool's server logs the same when it opens.
 */
function warnIfNeedsCheck(pool: Pool, dir: string, reporter: Reporter | undefined): void {
  const status = pool.status();
  if (reporter === undefined || status.mode !== 'needs-check') return;
  reporter.note(`thinbd: warning: pool ${dir} needs a check, and what is shown may be older than its last commit: ${status.modeReason ?? 'unknown reason'}`);
}

/**
 * Runs work on the pool's service: remote when served, local otherwise. With a reporter, a local
 * read of a pool in needs-check mode is warned of (warnIfNeedsCheck).
 */
export async function withService<T>(dir: string, access: Access, work: (service: PoolService) => Promise<T>, reporter?: Reporter): Promise<T> {
  assertPoolExists(dir);
  let service = await liveService(dir);
  if (service === undefined) {
    const [{ Pool }, { LocalPoolService }] = await Promise.all([import('../pool/pool.ts'), import('../daemon/service.ts')]);
    const pool = await Pool.open(dir, { readOnly: access === 'read' });
    warnIfNeedsCheck(pool, dir, reporter);
    service = new LocalPoolService(pool);
  }
  try {
    return await work(service);
  } finally {
    await service.close();
  }
}

/** Runs work on the pool's files directly; refused while a server owns the pool. A reporter: as withService. */
export async function withPool<T>(dir: string, access: Access, work: (pool: Pool) => Promise<T>, reporter?: Reporter): Promise<T> {
  assertPoolExists(dir);
  const live = await liveService(dir);
  if (live) {
    await live.close();
    throw new ThinError(
      'THIN_BUSY',
      `Pool ${dir} is being served by 'thinbd serve'; reach its volumes over NBD (e.g. nbdcopy) or stop the server`,
    );
  }
  const { Pool } = await import('../pool/pool.ts');
  const pool = await Pool.open(dir, { readOnly: access === 'read' });
  try {
    warnIfNeedsCheck(pool, dir, reporter);
    return await work(pool);
  } finally {
    await pool.close();
  }
}

/**
 * Runs read-only work on the pool's committed state. On a served pool the server pins a generation
 * for as long as the work runs (docs/format.md "Pinned generations": it rolls its delta log up,
 * so every flush acknowledged before the command started is in it) and the work reads the files
 * beside it; otherwise the work gets the directory, which the tools open under the pool's lock.
 * Closing the control connection ends the pin, also when this process dies.
 */
export async function withReadTarget<T>(dir: string, work: (target: ViewTarget) => Promise<T>, live?: PoolService): Promise<T> {
  assertPoolExists(dir);
  const service = live ?? (await liveService(dir));
  if (service === undefined) return work(dir);
  try {
    const pinned = await service.pinGeneration({});
    return await work({
      pool: dir,
      pinnedSuperblock: Buffer.from(pinned.superblockBase64, 'base64'),
      superblockSlots: pinned.superblockSlots.map(({ blockNr, bytesBase64 }) => ({ blockNr, bytes: Buffer.from(bytesBase64, 'base64') })),
    });
  } finally {
    if (live === undefined) await service.close();
  }
}

/** `withReadTarget` on a served pool, with the pinned generation opened as a view for the work. */
export async function withPinnedView<T>(dir: string, live: PoolService, work: (view: PoolView) => Promise<T>): Promise<T> {
  return withReadTarget(
    dir,
    async (pinned) => {
      const { PoolView } = await import('../tools/pool-view.ts');
      const view = await PoolView.open(pinned);
      try {
        return await work(view);
      } finally {
        await view.close();
      }
    },
    live,
  );
}

/**
 * One warning line when users other than the owner can read the pool's volumes (a pool made
 * before thinbd created them private, or loosened by hand). Not an error: the operator may have
 * chosen it.
 */
export function warnIfExposed(dir: string, reporter: Reporter): void {
  const exposure = poolExposure(dir);
  if (exposure !== undefined) reporter.note(`thinbd: warning: ${exposure}`);
}

/**
 * What lets others read the pool's files, or change which files they are, as a sentence, or
 * undefined when nothing does.
 */
export function poolExposure(dir: string): string | undefined {
  const exposures = [describeExposure([join(dir, METADATA_FILE_NAME), join(dir, DATA_FILE_NAME)]), describeForeignControl(dir)].filter((text) => text !== undefined);
  return exposures.length === 0 ? undefined : `pool ${dir}: ${exposures.join('; ')}`;
}
