// Process crash: SIGKILL the real server while a client writes, right after an acknowledged
// FLUSH; restart; everything flushed reads back exactly, nothing reads as another write's bytes,
// and `thinbd check` is clean — KILLS times per run.
//
// Every 4 KiB write carries (stamp, sector) in its first bytes, so a sector read back names the
// write it came from. The model keeps, per sector, the set of stamps it may hold: exactly one
// after a FLUSH covered it, more while unflushed writes are in the air.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { thinbd } from '../cli/run-thinbd.ts';
import { NbdTestClient } from '../nbd/client.ts';
import { NBD_CMD_FLUSH, NBD_CMD_READ, NBD_CMD_WRITE } from '../../src/nbd/protocol.ts';
import { startServe } from './serve-process.ts';
import { Rng } from '../sim/rng.ts';

const KILLS = 22;
const SECTOR_BYTES = 4096;
const VOLUME_BYTES = 8 * 1024 * 1024;
const SECTORS = VOLUME_BYTES / SECTOR_BYTES;
const SEED = Number(process.env['THINBD_SEED'] ?? Date.now() % 1_000_000);

let work: string;
let pool: string;
before(() => {
  work = mkdtempSync(join(tmpdir(), 'thinbd-kill-'));
  pool = join(work, 'pool');
  assert.equal(thinbd(['pool', 'create', '--pool', pool, '--data-size', '256M']).code, 0);
  assert.equal(thinbd(['create', '--pool', pool, 'v', '--size', String(VOLUME_BYTES)]).code, 0);
  assert.equal(thinbd(['snapshot', '--pool', pool, 'v', 'base']).code, 0);
});
after(() => rmSync(work, { recursive: true, force: true }));

function stamped(stamp: number, sector: number): Buffer {
  const data = Buffer.alloc(SECTOR_BYTES, stamp & 0xff);
  data.writeUInt32BE(stamp, 0);
  data.writeUInt32BE(sector, 4);
  return data;
}

/** The stamp a sector holds: 0 for never written (all zeros). */
function stampOf(image: Buffer, sector: number, context: string): number {
  const data = image.subarray(sector * SECTOR_BYTES, (sector + 1) * SECTOR_BYTES);
  const stamp = data.readUInt32BE(0);
  if (stamp === 0) {
    assert.ok(data.every((byte) => byte === 0), `${context}: sector ${sector} is neither zeros nor a whole write`);
    return 0;
  }
  assert.equal(data.readUInt32BE(4), sector, `${context}: sector ${sector} holds the bytes of sector ${data.readUInt32BE(4)}`);
  assert.ok(data.subarray(8).every((byte) => byte === (stamp & 0xff)), `${context}: sector ${sector} is torn`);
  return stamp;
}

test(`${KILLS} SIGKILLs right after an acknowledged FLUSH lose nothing flushed (seed ${SEED})`, async () => {
  const rng = new Rng(SEED);
  const allowed: Array<Set<number>> = Array.from({ length: SECTORS }, () => new Set([0]));
  let nextStamp = 1;
  for (let kill = 0; kill < KILLS; kill += 1) {
    const context = `seed ${SEED}, kill ${kill}`;
    const server = await startServe(pool);
    const client = await NbdTestClient.connect({ port: server.port });
    await client.handshake('v');

    // Phase 1: writes, all acknowledged, then a FLUSH: from its reply on they are durable.
    const inFlight = new Set<number>();
    const writeOne = async (): Promise<void> => {
      let sector = rng.int(SECTORS);
      while (inFlight.has(sector)) sector = rng.int(SECTORS);
      inFlight.add(sector);
      const stamp = nextStamp++;
      allowed[sector]!.add(stamp);
      const reply = await client.call(NBD_CMD_WRITE, { offsetBytes: sector * SECTOR_BYTES, data: stamped(stamp, sector) });
      assert.equal(reply.error, 0, context);
      allowed[sector] = new Set([stamp]); // acknowledged; the FLUSH below makes it the only possibility
      inFlight.delete(sector);
    };
    const batch = 20 + rng.int(60);
    for (let begin = 0; begin < batch; begin += 16) {
      await Promise.all(Array.from({ length: Math.min(16, batch - begin) }, writeOne));
    }
    const flush = await client.call(NBD_CMD_FLUSH);
    assert.equal(flush.error, 0, context);

    // Phase 2: more writes in the air, then SIGKILL. They may or may not survive.
    const unflushed: Array<Promise<unknown>> = [];
    for (let index = 0; index < 32; index += 1) {
      let sector = rng.int(SECTORS);
      while (inFlight.has(sector)) sector = rng.int(SECTORS);
      inFlight.add(sector);
      const stamp = nextStamp++;
      allowed[sector]!.add(stamp);
      unflushed.push(client.call(NBD_CMD_WRITE, { offsetBytes: sector * SECTOR_BYTES, data: stamped(stamp, sector) }).catch(() => undefined));
    }
    if (rng.chance(0.5)) await unflushed[rng.int(unflushed.length)];
    await server.kill();
    await Promise.allSettled(unflushed);
    client.close();

    const check = thinbd(['check', '--pool', pool]);
    assert.equal(check.code, 0, `${context}: check after the kill:\n${check.stdout}${check.stderr}`);

    const restarted = await startServe(pool);
    const reader = await NbdTestClient.connect({ port: restarted.port });
    await reader.handshake('v');
    const image = (await reader.call(NBD_CMD_READ, { offsetBytes: 0, lengthBytes: VOLUME_BYTES })).data!;
    for (let sector = 0; sector < SECTORS; sector += 1) {
      const stamp = stampOf(image, sector, context);
      assert.ok(allowed[sector]!.has(stamp), `${context}: sector ${sector} holds write ${stamp}, allowed ${[...allowed[sector]!].join(',')}`);
      allowed[sector] = new Set([stamp]);
    }
    const base = await NbdTestClient.connect({ port: restarted.port });
    await base.handshake('base');
    const baseImage = (await base.call(NBD_CMD_READ, { offsetBytes: 0, lengthBytes: VOLUME_BYTES })).data!;
    assert.ok(baseImage.every((byte) => byte === 0), `${context}: the snapshot taken before any write changed`);
    reader.close();
    base.close();
    await restarted.stop();
  }
});
