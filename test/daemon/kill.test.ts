// Process crash: SIGKILL the real server while clients write to a volume and to its snapshot
// (copy-on-write both ways: the snapshot was taken of a volume with data), at a seeded moment of
// a management call — a snapshot, a volume created, removed or resized, a rollup of the delta log
// (a pinned generation) — or right after an acknowledged FLUSH; restart; everything flushed reads
// back exactly on both sides, nothing reads as another write's bytes, a snapshot reads as its
// origin did when it was taken, and `thinbd check` is clean both before the restart (the killed
// pool, its delta log not yet replayed) and after it (the live pool, replayed) — KILLS times a run.
//
// A SIGKILL keeps the page cache, so this cannot show that a FLUSH waited for the disk: the crash
// simulator does (test/sim/nbd-crash.test.ts). It shows that the real process, killed anywhere,
// leaves a pool that opens and checks clean with every acknowledged write in it.
//
// Every 4 KiB write carries (stamp, sector) in its first bytes, so a sector read back names the
// write it came from. The model keeps, per volume and sector, the set of stamps it may hold:
// exactly one after a FLUSH covered it, more while unflushed writes are in the air.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { thinbd } from '../cli/run-thinbd.ts';
import { NbdTestClient } from '../nbd/client.ts';
import { NBD_CMD_FLUSH, NBD_CMD_READ, NBD_CMD_WRITE } from '../../src/nbd/protocol.ts';
import { connectControl, controlSocketPath } from '../../src/daemon/control.ts';
import { startServe } from './serve-process.ts';
import { Rng } from '../sim/rng.ts';

const KILLS = 16;
const SECTOR_BYTES = 4096;
const VOLUME_BYTES = 8 * 1024 * 1024;
const SECTORS = VOLUME_BYTES / SECTOR_BYTES;
const SMALL_BYTES = 1024 * 1024;
const SEED = Number(process.env['THINBD_SEED'] ?? Date.now() % 1_000_000);
const MOMENTS = ['flush', 'snapshot', 'create', 'remove', 'resize', 'rollup'] as const;
type Moment = (typeof MOMENTS)[number];

let work: string;
let pool: string;
before(() => {
  work = mkdtempSync(join(tmpdir(), 'thinbd-kill-'));
  pool = join(work, 'pool');
  assert.equal(thinbd(['pool', 'create', '--pool', pool, '--data-size', '256M']).code, 0);
  assert.equal(thinbd(['create', '--pool', pool, 'v', '--size', String(VOLUME_BYTES)]).code, 0);
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

/** Per sector, the stamps a volume may hold. */
type Allowed = Array<Set<number>>;
const fresh = (): Allowed => Array.from({ length: SECTORS }, () => new Set([0]));

async function readWhole(port: number, name: string, lengthBytes: number): Promise<Buffer> {
  const reader = await NbdTestClient.connect({ port });
  await reader.handshake(name);
  const image = (await reader.call(NBD_CMD_READ, { offsetBytes: 0, lengthBytes })).data!;
  reader.close();
  return image;
}

test(`${KILLS} SIGKILLs at seeded moments of writes to a volume and its snapshot and of management calls lose nothing flushed (seed ${SEED})`, async () => {
  const rng = new Rng(SEED);
  /** The written volumes (v and its snapshots) and what each may hold. */
  const models = new Map<string, Allowed>([['v', fresh()]]);
  /** Volumes made by `create` (never written: they read zeros) and their possible sizes. */
  const smallSizes = new Map<string, Set<number>>();
  /** Names a killed call may or may not have left behind. */
  const maybe = new Set<string>();
  let nextStamp = 1;
  const moments = new Map<Moment, number>();
  // Every moment at least once, in a seeded order, then at random.
  const firstMoments = rng.shuffle([...MOMENTS]);
  for (let kill = 0; kill < KILLS; kill += 1) {
    const moment: Moment = firstMoments[kill] ?? rng.pick(MOMENTS);
    moments.set(moment, (moments.get(moment) ?? 0) + 1);
    const context = `seed ${SEED}, kill ${kill} (${moment})`;
    const server = await startServe(pool);
    const clients = new Map<string, NbdTestClient>();
    for (const name of models.keys()) {
      const client = await NbdTestClient.connect({ port: server.port });
      await client.handshake(name);
      clients.set(name, client);
    }

    // Phase 1: writes on every written volume, all acknowledged, then a FLUSH: durable from its reply.
    const inFlight = new Set<string>();
    const writeOne = async (name: string): Promise<void> => {
      let sector = rng.int(SECTORS);
      while (inFlight.has(`${name}:${sector}`)) sector = rng.int(SECTORS);
      inFlight.add(`${name}:${sector}`);
      const stamp = nextStamp++;
      const allowed = models.get(name)!;
      allowed[sector]!.add(stamp);
      const reply = await clients.get(name)!.call(NBD_CMD_WRITE, { offsetBytes: sector * SECTOR_BYTES, data: stamped(stamp, sector) });
      assert.equal(reply.error, 0, context);
      allowed[sector] = new Set([stamp]); // acknowledged; the FLUSH below makes it the only possibility
      inFlight.delete(`${name}:${sector}`);
    };
    const names = [...models.keys()];
    const batch = 20 + rng.int(60);
    for (let begin = 0; begin < batch; begin += 16) {
      await Promise.all(Array.from({ length: Math.min(16, batch - begin) }, () => writeOne(rng.pick(names))));
    }
    assert.equal((await clients.get('v')!.call(NBD_CMD_FLUSH)).error, 0, context);

    // Phase 2: a management call at this moment (a snapshot sees v as flushed: nothing is in the
    // air yet), then unflushed writes, then SIGKILL somewhere in the call or just after it.
    const control = await connectControl(controlSocketPath(pool));
    assert.ok(control !== undefined, `${context}: the server's control socket answers`);
    let call: Promise<unknown> = Promise.resolve();
    /** A snapshot taken now may catch the writes sent to v while it is taken. */
    let snapshotting: Allowed | undefined;
    if (moment === 'snapshot') {
      const name = `snap-${kill}`;
      maybe.add(name);
      snapshotting = models.get('v')!.map((stamps) => new Set(stamps));
      models.set(name, snapshotting);
      call = control.snapshot({ source: 'v', name });
    } else if (moment === 'create') {
      const name = `c-${kill}`;
      maybe.add(name);
      smallSizes.set(name, new Set([SMALL_BYTES]));
      call = control.createVolume({ name, sizeBytes: SMALL_BYTES });
    } else if (moment === 'remove') {
      const candidates = [...smallSizes.keys(), ...[...models.keys()].filter((name) => name !== 'v')];
      if (candidates.length > 0) {
        const name = rng.pick(candidates);
        maybe.add(name);
        clients.get(name)?.close();
        clients.delete(name);
        call = control.removeVolume({ name, force: true });
      }
    } else if (moment === 'resize' && smallSizes.size > 0) {
      const name = rng.pick([...smallSizes.keys()]);
      const sizes = smallSizes.get(name)!;
      const grown = Math.max(...sizes) + SMALL_BYTES;
      sizes.add(grown);
      call = control.resizeVolume({ name, sizeBytes: grown });
    } else if (moment === 'rollup') {
      call = control.pinGeneration();
    }
    call.catch(() => undefined);
    const unflushed: Array<Promise<unknown>> = [];
    for (let index = 0; index < 32; index += 1) {
      const name = 'v';
      let sector = rng.int(SECTORS);
      while (inFlight.has(`${name}:${sector}`)) sector = rng.int(SECTORS);
      inFlight.add(`${name}:${sector}`);
      const stamp = nextStamp++;
      models.get(name)![sector]!.add(stamp);
      snapshotting?.[sector]!.add(stamp);
      unflushed.push(clients.get(name)!.call(NBD_CMD_WRITE, { offsetBytes: sector * SECTOR_BYTES, data: stamped(stamp, sector) }).catch(() => undefined));
    }
    // The kill: during the call (after 0 to 3 turns of the event loop), or once it answered.
    const turns = rng.int(5);
    if (turns === 4) await call.catch(() => undefined);
    else for (let turn = 0; turn < turns; turn += 1) await new Promise((resolve) => setImmediate(resolve));
    await server.kill();
    await Promise.allSettled([...unflushed, call]);
    for (const client of clients.values()) client.close();
    await control.close().catch(() => undefined);

    // Offline check of the killed pool: its delta log is read, not yet replayed.
    const offline = thinbd(['check', '--pool', pool]);
    assert.equal(offline.code, 0, `${context}: check after the kill:\n${offline.stdout}${offline.stderr}`);

    const restarted = await startServe(pool);
    // The live pool: opened, log replayed and rolled up; checked as it serves, through its control
    // socket (what `thinbd check` does on a served pool).
    const service = await connectControl(controlSocketPath(pool));
    assert.ok(service !== undefined, `${context}: the restarted server's control socket answers`);
    const report = await service.check();
    assert.deepEqual(report.problems, [], `${context}: check after the restart's replay`);
    const volumes = new Map((await service.listVolumes()).map((volume) => [volume.name, volume]));
    await service.close();
    for (const name of maybe) {
      if (volumes.has(name)) continue;
      models.delete(name);
      smallSizes.delete(name);
    }
    maybe.clear();
    for (const name of [...models.keys(), ...smallSizes.keys()]) assert.ok(volumes.has(name), `${context}: volume ${name} is gone`);
    for (const [name, allowed] of models) {
      const image = await readWhole(restarted.port, name, VOLUME_BYTES);
      for (let sector = 0; sector < SECTORS; sector += 1) {
        const stamp = stampOf(image, sector, `${context}, ${name}`);
        assert.ok(allowed[sector]!.has(stamp), `${context}: ${name} sector ${sector} holds write ${stamp}, allowed ${[...allowed[sector]!].join(',')}`);
        allowed[sector] = new Set([stamp]);
      }
    }
    for (const [name, sizes] of smallSizes) {
      const sizeBytes = volumes.get(name)!.sizeBytes;
      assert.ok(sizes.has(sizeBytes), `${context}: ${name} is ${sizeBytes} bytes, expected one of ${[...sizes].join(', ')}`);
      smallSizes.set(name, new Set([sizeBytes]));
      const image = await readWhole(restarted.port, name, sizeBytes);
      assert.ok(image.every((byte) => byte === 0), `${context}: ${name}, never written, reads zeros`);
    }
    await restarted.stop();
  }
  for (const moment of MOMENTS) assert.ok((moments.get(moment) ?? 0) > 0, `no kill at a ${moment}`);
});
