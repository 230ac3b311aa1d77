// thinbd's delta against thin_delta 0.9.0 on the same metadata: seeded random histories through
// thin_restore; every pair of devices (both orders, and a device with itself) compared, plain and
// --verbose, byte for byte.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readThinXmlString } from '../../src/tools/restore-xml.ts';
import { EventRecorder, type Mapping, type SuperblockBegin } from '../../src/tools/dump/events.ts';
import { StringSink } from '../../src/tools/dump/sink.ts';
import { deltaSteps, deltaTotals, mergeDeltaSteps, writeDeltaJson, writeDeltaXml, type DeltaHeader } from '../../src/tools/delta.ts';
import { generateHistory, historyXml } from './dm-thin-history.ts';
import { Scratch, requireThinTools, thinRestore, toolOutput } from './thin-tools.ts';

async function devicesOf(xml: string): Promise<{ header: DeltaHeader; devices: Map<number, Mapping[]> }> {
  const recorder = new EventRecorder();
  await readThinXmlString(xml, recorder);
  const devices = new Map<number, Mapping[]>();
  let header: DeltaHeader | undefined;
  let current: Mapping[] = [];
  for (const event of recorder.events) {
    if (event.kind === 'superblockBegin') {
      const sb: SuperblockBegin = event;
      header = { uuid: sb.uuid, time: sb.time, transaction: sb.transaction, dataBlockSizeSectors: sb.dataBlockSizeSectors, nrDataBlocks: sb.nrDataBlocks };
    } else if (event.kind === 'deviceBegin') {
      current = [];
      devices.set(event.devId, current);
    } else if (event.kind === 'mapping') {
      const { kind: _kind, ...mapping } = event;
      current.push(mapping);
    }
  }
  assert.ok(header !== undefined);
  return { header, devices };
}

async function ourDelta(header: DeltaHeader, devices: Map<number, Mapping[]>, left: number, right: number, verbose: boolean): Promise<string> {
  const sink = new StringSink();
  await writeDeltaXml(sink, header, left, right, deltaSteps(devices.get(left)!, devices.get(right)!), { verbose });
  return sink.text;
}

test('for seeded random histories, delta prints what thin_delta 0.9.0 prints for every pair of devices, plain and verbose', async () => {
  requireThinTools();
  const scratch = new Scratch();
  try {
    let comparisons = 0;
    const kindsSeen = new Set<string>();
    for (let seed = 2000; seed < 2010; seed += 1) {
      const model = generateHistory(seed, { steps: 30, devIdMax: 40 });
      const metadata = thinRestore(scratch, historyXml(model), `seed-${seed}.bin`);
      const { header, devices } = await devicesOf(toolOutput('thin_dump', [metadata]));
      const ids = [...devices.keys()];
      // Every ordered pair of a small pool; for larger ones an even spread of about 10 pairs keeps the run short.
      const pairs = ids.flatMap((left) => ids.map((right) => [left, right] as const));
      const stride = Math.max(1, Math.floor(pairs.length / 10));
      for (let index = 0; index < pairs.length; index += stride) {
        const [left, right] = pairs[index]!;
        for (const verbose of [false, true]) {
          const args = ['--snap1', String(left), '--snap2', String(right), ...(verbose ? ['--verbose'] : []), metadata];
          const expected = toolOutput('thin_delta', args);
          assert.equal(await ourDelta(header, devices, left, right, verbose), expected, `seed ${seed}: thin_delta ${args.join(' ')}`);
          comparisons += 1;
        }
        for (const step of deltaSteps(devices.get(left)!, devices.get(right)!)) kindsSeen.add(step.kind);
      }
    }
    assert.ok(comparisons >= 100, `only ${comparisons} comparisons`);
    assert.deepEqual([...kindsSeen].sort(), ['different', 'left_only', 'right_only', 'same'], 'the histories produced every kind of run');
  } finally {
    scratch.remove();
  }
});

test('delta ignores times and compares data blocks, as thin_delta does', () => {
  const left: Mapping[] = [
    { originBegin: 0, dataBegin: 100, length: 4, time: 0 },
    { originBegin: 4, dataBegin: 104, length: 2, time: 3 },
    { originBegin: 30, dataBegin: 7, length: 2, time: 0 },
  ];
  const right: Mapping[] = [
    { originBegin: 0, dataBegin: 100, length: 4, time: 1 },
    { originBegin: 4, dataBegin: 500, length: 2, time: 3 },
    { originBegin: 50, dataBegin: 9, length: 2, time: 0 },
  ];
  assert.deepEqual([...mergeDeltaSteps(deltaSteps(left, right))], [
    { kind: 'same', begin: 0, length: 4 },
    { kind: 'different', begin: 4, length: 2 },
    { kind: 'left_only', begin: 30, length: 2 },
    { kind: 'right_only', begin: 50, length: 2 },
  ]);
  assert.deepEqual(deltaTotals(deltaSteps(left, right)), { same: 4, different: 2, left_only: 2, right_only: 2 });
});

test('the JSON delta lists the merged runs between the header and the devices', async () => {
  const sink = new StringSink();
  const header: DeltaHeader = { uuid: '', time: 2, transaction: 3, dataBlockSizeSectors: 128, nrDataBlocks: 1024 };
  await writeDeltaJson(sink, header, { devId: 1, name: 'a' }, { devId: 2, name: 'b' }, deltaSteps([{ originBegin: 0, dataBegin: 0, length: 2, time: 0 }], []));
  assert.deepEqual(JSON.parse(sink.text), {
    superblock: header,
    left: { devId: 1, name: 'a' },
    right: { devId: 2, name: 'b' },
    diff: [{ kind: 'left_only', begin: 0, length: 2 }],
  });
});
