// The metadata mirror (src/io/mirror.ts) beyond the BlockFile contract: a copy that fails with EIO
// or fails the caller's validation is passed over and rewritten from a good one; a write that one
// copy refuses goes on with the others and is reported; a write every copy refuses fails.
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { isThinError } from '../../src/errors.ts';
import { FaultInjectingBlockFile } from '../../src/io/fault-injection.ts';
import { MemoryBlockFile } from '../../src/io/memory.ts';
import { MirroredBlockFile, type BadCopyEvent } from '../../src/io/mirror.ts';

const UNIT = 4096;
const MIRROR_OFFSET = 1024 * UNIT;
/** Sectors of copy 1 of unit n in the one file. */
const copy1Sector = (unit: number): number => (MIRROR_OFFSET + unit * UNIT) / 512;

function block(seed: number): Uint8Array {
  const bytes = new Uint8Array(UNIT);
  for (let index = 0; index < UNIT; index++) bytes[index] = (index * 31 + seed * 7) & 0xff;
  return bytes;
}

async function setup(): Promise<{ raw: MemoryBlockFile; faults: FaultInjectingBlockFile; mirror: MirroredBlockFile; events: BadCopyEvent[] }> {
  const raw = new MemoryBlockFile(0);
  const faults = new FaultInjectingBlockFile(raw);
  const mirror = MirroredBlockFile.inOneFile(faults, MIRROR_OFFSET);
  await mirror.grow(64 * UNIT);
  const events: BadCopyEvent[] = [];
  mirror.onBadCopy = (event) => events.push(event);
  return { raw, faults, mirror, events };
}

function rawRead(raw: MemoryBlockFile, offsetBytes: number): Uint8Array {
  const bytes = new Uint8Array(UNIT);
  raw.readSync(bytes, offsetBytes);
  return bytes;
}

describe('MirroredBlockFile', () => {
  test('a write lands in both copies, mirrorOffset apart', async () => {
    const { raw, mirror } = await setup();
    await mirror.write(block(1), 3 * UNIT);
    assert.deepEqual(rawRead(raw, 3 * UNIT), block(1));
    assert.deepEqual(rawRead(raw, MIRROR_OFFSET + 3 * UNIT), block(1));
    assert.equal(raw.sizeBytes(), MIRROR_OFFSET + 64 * UNIT);
    assert.equal(mirror.sizeBytes(), 64 * UNIT);
  });

  test('copies in one file: a grow past the second copy is refused naming the mirror; once the copy is relocated further on, the mirror grows to there', async () => {
    const { raw, mirror } = await setup();
    assert.equal(mirror.fixedSize, false, 'the file can grow (the copy can move)');
    await mirror.grow(MIRROR_OFFSET);
    await assert.rejects(mirror.grow(MIRROR_OFFSET + UNIT), (error) => isThinError(error, 'THIN_INVALID') && /mirror/.test(error.message));
    assert.equal(mirror.sizeBytes(), MIRROR_OFFSET);
    assert.equal(raw.sizeBytes(), 2 * MIRROR_OFFSET, 'nothing grew past the second copy');
    await mirror.write(block(4), 2 * UNIT);
    // The caller copies what matters to the new place first (TransactionManager.moveMirror).
    await raw.write(block(4), 2 * MIRROR_OFFSET + 2 * UNIT);
    assert.throws(() => mirror.relocateCopy(1, MIRROR_OFFSET + UNIT, 2 * MIRROR_OFFSET), /overlap/, 'a place inside the old span is refused');
    mirror.relocateCopy(1, 2 * MIRROR_OFFSET, 2 * MIRROR_OFFSET);
    assert.equal(mirror.limitBytes, 2 * MIRROR_OFFSET);
    await mirror.grow(MIRROR_OFFSET + UNIT);
    await mirror.write(block(5), MIRROR_OFFSET);
    assert.deepEqual(rawRead(raw, MIRROR_OFFSET), block(5), 'the first copy now reaches over the old second copy');
    assert.deepEqual(rawRead(raw, 3 * MIRROR_OFFSET), block(5), 'its second copy is at the new place');
    const back = new Uint8Array(UNIT);
    mirror.readCopySync(1, back, 2 * UNIT);
    assert.deepEqual(back, block(4));
  });

  test('a read that fails with EIO is served from the other copy, and the bad copy is rewritten', async () => {
    const { raw, faults, mirror, events } = await setup();
    await mirror.write(block(2), 5 * UNIT);
    faults.addRules([{ file: 'metadata', op: 'read', beginSector: (5 * UNIT) / 512, endSector: (6 * UNIT) / 512, healOnWrite: true }]);
    const target = new Uint8Array(UNIT);
    mirror.readSync(target, 5 * UNIT);
    assert.deepEqual(target, block(2));
    assert.equal(events.length, 1);
    assert.equal(events[0]!.kind, 'read');
    assert.equal(events[0]!.copyIndex, 0);
    await mirror.repairsSettled();
    assert.equal(mirror.counters.repairs, 1);
    assert.equal(mirror.degradedUnits, 0, 'the rewrite healed the copy');
    // The healed sector now reads from copy 0 again.
    const again = new Uint8Array(UNIT);
    mirror.readCopySync(0, again, 5 * UNIT);
    assert.deepEqual(again, block(2));
    assert.deepEqual(rawRead(raw, 5 * UNIT), block(2));
  });

  test('a copy that reads but fails validation is passed over and rewritten from the valid one', async () => {
    const { raw, mirror, events } = await setup();
    await mirror.write(block(3), 7 * UNIT);
    const rotten = block(3);
    rotten[100] = rotten[100]! ^ 0x10;
    await raw.write(rotten, 7 * UNIT);
    const target = new Uint8Array(UNIT);
    const validate = (bytes: Uint8Array): string | undefined => (bytes[100] === block(3)[100] ? undefined : 'checksum mismatch');
    await mirror.readValidated(target, 7 * UNIT, validate);
    assert.deepEqual(target, block(3));
    assert.equal(events[0]?.kind, 'invalid');
    assert.match(events[0]!.reason, /checksum mismatch/);
    await mirror.repairsSettled();
    assert.deepEqual(rawRead(raw, 7 * UNIT), block(3), 'copy 0 rewritten');
  });

  test('when no copy is good, the read fails naming each copy, and nothing is rewritten', async () => {
    const { raw, mirror } = await setup();
    await mirror.write(block(4), 9 * UNIT);
    const validate = (): string | undefined => 'bad magic';
    assert.throws(() => mirror.readValidatedSync(new Uint8Array(UNIT), 9 * UNIT, validate), (error) => {
      assert.ok(isThinError(error, 'THIN_CORRUPT_BLOCK'));
      assert.match(error.message, /copy 0: bad magic; copy 1: bad magic/);
      return true;
    });
    await mirror.repairsSettled();
    assert.equal(mirror.counters.repairs, 0);
    assert.equal(mirror.counters.unrecoverableReads, 1);
    assert.deepEqual(rawRead(raw, 9 * UNIT), block(4));
  });

  test('a write one copy refuses succeeds, is reported, and later reads prefer the good copy', async () => {
    const { faults, mirror, events } = await setup();
    faults.addRules([{ file: 'metadata', op: 'write', beginSector: copy1Sector(11), endSector: copy1Sector(11) + 8, times: 1 }]);
    await mirror.write(block(5), 11 * UNIT);
    assert.equal(events.length, 1);
    assert.equal(events[0]!.kind, 'write');
    assert.equal(events[0]!.copyIndex, 1);
    assert.equal(events[0]!.physicalOffsetBytes, MIRROR_OFFSET + 11 * UNIT);
    assert.equal(mirror.degradedUnits, 1);
    const target = new Uint8Array(UNIT);
    mirror.readSync(target, 11 * UNIT);
    assert.deepEqual(target, block(5));
    // A later write that both copies take clears the mark.
    await mirror.write(block(6), 11 * UNIT);
    assert.equal(mirror.degradedUnits, 0);
  });

  test('a write every copy refuses fails with the medium error', async () => {
    const { faults, mirror } = await setup();
    faults.addRules([{ file: 'metadata', op: 'write', times: 2 }]);
    await assert.rejects(mirror.write(block(7), 13 * UNIT), (error) => isThinError(error, 'THIN_IO'));
  });

  test('a multi-unit write one copy refuses in one unit marks only that unit bad in that copy', async () => {
    const { raw, faults, mirror, events } = await setup();
    const whole = new Uint8Array(3 * UNIT);
    for (let unit = 0; unit < 3; unit++) whole.set(block(30 + unit), unit * UNIT);
    faults.addRules([{ file: 'metadata', op: 'write', beginSector: copy1Sector(41), endSector: copy1Sector(41) + 1 }]);
    await mirror.write(whole, 40 * UNIT);
    assert.deepEqual(
      events.map((event) => [event.kind, event.copyIndex, event.offsetBytes, event.lengthBytes]),
      [['write', 1, 41 * UNIT, UNIT]],
    );
    assert.equal(mirror.degradedUnits, 1);
    // The units around it are in copy 1; the refused one only in copy 0.
    assert.deepEqual(rawRead(raw, MIRROR_OFFSET + 40 * UNIT), block(30));
    assert.deepEqual(rawRead(raw, MIRROR_OFFSET + 42 * UNIT), block(32));
    for (let unit = 0; unit < 3; unit++) assert.deepEqual(rawRead(raw, (40 + unit) * UNIT), block(30 + unit));
    const target = new Uint8Array(3 * UNIT);
    await mirror.read(target, 40 * UNIT);
    assert.deepEqual(target, whole);
  });

  test('a multi-unit write fails when one unit is refused by every copy', async () => {
    const { faults, mirror } = await setup();
    faults.addRules([
      { file: 'metadata', op: 'write', beginSector: (45 * UNIT) / 512, endSector: (45 * UNIT) / 512 + 1 },
      { file: 'metadata', op: 'write', beginSector: copy1Sector(45), endSector: copy1Sector(45) + 1 },
    ]);
    await assert.rejects(mirror.write(new Uint8Array(2 * UNIT).fill(3), 44 * UNIT), (error) => isThinError(error, 'THIN_IO'));
  });

  test('a multi-unit read with one bad unit in copy 0 is pieced together unit by unit', async () => {
    const { faults, mirror } = await setup();
    const whole = new Uint8Array(4 * UNIT);
    for (let unit = 0; unit < 4; unit++) whole.set(block(10 + unit), unit * UNIT);
    await mirror.write(whole, 20 * UNIT);
    faults.addRules([{ file: 'metadata', op: 'read', beginSector: (22 * UNIT) / 512, endSector: (22 * UNIT) / 512 + 1 }]);
    const target = new Uint8Array(4 * UNIT);
    await mirror.read(target, 20 * UNIT);
    assert.deepEqual(target, whole);
  });

  test('a repair in flight is ordered before a later write of the same unit', async () => {
    const { raw, faults, mirror } = await setup();
    await mirror.write(block(8), 30 * UNIT);
    faults.addRules([{ file: 'metadata', op: 'read', beginSector: (30 * UNIT) / 512, endSector: (31 * UNIT) / 512, times: 1 }]);
    mirror.readSync(new Uint8Array(UNIT), 30 * UNIT); // starts a repair of copy 0 with block(8)
    await mirror.write(block(9), 30 * UNIT); // must land after it
    assert.deepEqual(rawRead(raw, 30 * UNIT), block(9));
    assert.deepEqual(rawRead(raw, MIRROR_OFFSET + 30 * UNIT), block(9));
  });

  test('a sync that fails is not absorbed', async () => {
    const { faults, mirror } = await setup();
    faults.addRules([{ file: 'metadata', op: 'sync', times: 1 }]);
    await assert.rejects(mirror.sync(), (error) => isThinError(error, 'THIN_IO'));
    await assert.rejects(mirror.sync(), (error) => isThinError(error, 'THIN_IO'), 'and stays failed');
  });

  test('growing past the mirror offset is refused', async () => {
    const { mirror } = await setup();
    await assert.rejects(mirror.grow(MIRROR_OFFSET + UNIT), (error) => isThinError(error, 'THIN_INVALID'));
  });
});
