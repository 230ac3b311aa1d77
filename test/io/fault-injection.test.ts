// Fault injection (src/io/fault-injection.ts): each kind of rule does what the rules file says, and
// a malformed rules file is refused naming the rule and the field.
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { isThinError } from '../../src/errors.ts';
import { FaultInjectingBlockFile, parseFaultRules, type FaultRule } from '../../src/io/fault-injection.ts';
import { isMediaError } from '../../src/io/media-error.ts';
import { MemoryBlockFile } from '../../src/io/memory.ts';
import { Rng, seedFromEnv, withSeed } from '../sim/rng.ts';

function file(rules: FaultRule[]): FaultInjectingBlockFile {
  return new FaultInjectingBlockFile(new MemoryBlockFile(1024 * 1024), rules);
}

const eio = (error: unknown): boolean => isThinError(error, 'THIN_IO') && isMediaError(error) && /injected by fault rule/.test((error as Error).message);

describe('fault rules', () => {
  test('a read rule fails reads that overlap its sectors, and only those', async () => {
    const injected = file([{ file: 'data', op: 'read', beginSector: 16, endSector: 24 }]);
    await injected.read(new Uint8Array(8192), 0); // sectors 0..15
    await assert.rejects(injected.read(new Uint8Array(512), 23 * 512), eio);
    assert.throws(() => injected.readSync(new Uint8Array(4096), 6 * 1024), eio);
    await injected.write(new Uint8Array(4096).fill(1), 8192); // writes are not affected
    await assert.rejects(injected.read(new Uint8Array(512), 16 * 512), eio, 'persistent: still failing after a write');
    assert.equal(injected.counters.injected, 3);
  });

  test('healOnWrite: reads fail until a write covers the sector (dm-dust)', async () => {
    const injected = file([{ file: 'data', op: 'read', beginSector: 8, endSector: 10, healOnWrite: true }]);
    await assert.rejects(injected.read(new Uint8Array(1024), 4096), eio);
    await injected.write(new Uint8Array(512).fill(7), 8 * 512);
    await assert.rejects(injected.read(new Uint8Array(1024), 4096), eio, 'sector 9 is still bad');
    await injected.write(new Uint8Array(512).fill(7), 9 * 512);
    const back = new Uint8Array(1024);
    await injected.read(back, 4096);
    assert.ok(back.every((byte) => byte === 7));
  });

  test('times and afterIos: a rule fires once the file saw N operations, at most `times` times', async () => {
    const injected = file([{ file: 'data', op: 'any', afterIos: 3, times: 2 }]);
    await injected.write(new Uint8Array(512), 0);
    await injected.read(new Uint8Array(512), 0);
    await injected.sync();
    await assert.rejects(injected.read(new Uint8Array(512), 0), eio);
    await assert.rejects(injected.write(new Uint8Array(512), 0), eio);
    await injected.read(new Uint8Array(512), 0);
    assert.equal(injected.ioCount, 6);
  });

  test('many overlapping rules: each I/O trips the rule a scan in rule order would (model, seeded)', async () => {
    const seed = seedFromEnv(1717);
    await withSeed(seed, async () => {
      const rng = new Rng(seed);
      const rules: FaultRule[] = [];
      for (let index = 0; index < 300; index++) {
        const beginSector = rng.int(2048);
        const rule: FaultRule = { file: 'data', op: (['read', 'write', 'any'] as const)[rng.int(3)]!, beginSector, endSector: beginSector + 1 + rng.int(index % 10 === 0 ? 64 : 8) };
        if (rng.int(3) === 0) rule.times = 1 + rng.int(3);
        if (rng.int(4) === 0) rule.afterIos = rng.int(500);
        rules.push(rule);
      }
      const injected = file(rules);
      // The model: the first rule in file order that matches, as the rules file reads.
      const fired = rules.map(() => 0);
      let ios = 0;
      const expected = (op: 'read' | 'write', offsetBytes: number, lengthBytes: number): number | undefined => {
        ios += 1;
        const begin = Math.floor(offsetBytes / 512);
        const end = Math.ceil((offsetBytes + lengthBytes) / 512);
        const index = rules.findIndex(
          (rule, at) =>
            (rule.op === op || rule.op === 'any') &&
            (rule.afterIos === undefined || ios > rule.afterIos) &&
            (rule.times === undefined || fired[at]! < rule.times) &&
            rule.beginSector! < end &&
            rule.endSector! > begin,
        );
        if (index < 0) return undefined;
        fired[index]! += 1;
        return index;
      };
      for (let step = 0; step < 2000; step++) {
        const op = rng.int(2) === 0 ? 'read' : 'write';
        const offsetBytes = rng.int(2100 * 512);
        const lengthBytes = 1 + rng.int(8192);
        const want = expected(op, offsetBytes, lengthBytes);
        const buffer = new Uint8Array(lengthBytes);
        const io = op === 'read' ? injected.read(buffer, offsetBytes) : injected.write(buffer, offsetBytes);
        if (want === undefined) await io;
        else await assert.rejects(io, new RegExp(`injected by fault rule ${want + 1}\\)`), `step ${step}: ${op} of ${lengthBytes} bytes at ${offsetBytes}`);
      }
    });
  });

  test('a sync rule fails the sync, and every later sync fails too (fail-stop)', async () => {
    const injected = file([{ file: 'data', op: 'sync', times: 1 }]);
    await assert.rejects(injected.sync(), (error) => isThinError(error, 'THIN_IO'));
    await assert.rejects(injected.sync(), /an earlier sync failed/);
  });

  test('flip-bit: the read succeeds with the first byte of each matching sector changed', async () => {
    const injected = file([{ file: 'metadata', op: 'read', beginSector: 2, endSector: 4, effect: 'flip-bit' }]);
    await injected.write(new Uint8Array(4096).fill(0x40), 0);
    const back = new Uint8Array(4096);
    await injected.read(back, 0);
    const changed = [...back.keys()].filter((index) => back[index] !== 0x40);
    assert.deepEqual(changed, [1024, 1536]);
    assert.equal(back[1024], 0x41);
  });

  test('rules that cannot be meant are refused, naming the rule and the field', () => {
    const refused = (text: string, pattern: RegExp): void =>
      assert.throws(() => parseFaultRules(text, 'rules.json'), (error) => isThinError(error, 'THIN_INVALID') && pattern.test((error as Error).message));
    refused('{', /Cannot parse rules.json/);
    refused('[]', /"rules" array/);
    refused('{"rules":[{"file":"disk","op":"read"}]}', /rule 1: "file" must be "data" or "metadata"/);
    refused('{"rules":[{"file":"data","op":"read"},{"file":"data","op":"scribble"}]}', /rule 2: "op"/);
    refused('{"rules":[{"file":"data","op":"read","beginSector":-1}]}', /"beginSector" must be a whole number/);
    refused('{"rules":[{"file":"data","op":"read","beginSector":4,"endSector":4}]}', /range \[4, 4\) is empty/);
    refused('{"rules":[{"file":"data","op":"sync","beginSector":4}]}', /a sync has no sectors/);
    refused('{"rules":[{"file":"data","op":"write","effect":"flip-bit"}]}', /reads only/);
    refused('{"rules":[{"file":"data","op":"read","colour":"red"}]}', /unknown field "colour"/);
    refused('{"rules":[{"file":"data","op":"read","times":0}]}', /"times" must be at least 1/);
    assert.deepEqual(parseFaultRules('{"rules":[{"file":"data","op":"read","beginSector":4,"sectorCount":2,"times":1}]}'), [
      { file: 'data', op: 'read', beginSector: 4, endSector: 6, times: 1 },
    ]);
  });
});
