// The space options of `pool create` and `pool set` (src/cli/space-options.ts): what each value
// means, and a usage error naming the option for what it cannot mean.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spaceChange } from '../../src/cli/space-options.ts';
import { UsageError } from '../../src/cli/report.ts';

test('space options parse into settings; default only for pool set', () => {
  assert.deepEqual(
    spaceChange(
      { lowWater: '10%', metadataLowWater: '32M', dataMax: '2G', metadataMax: '1G', growStep: '256M', whenFull: 'queue', autoGrow: 'off', punch: 'on' },
      false,
    ),
    {
      lowWater: { percent: 10 },
      metadataLowWater: { bytes: 32 * 1024 ** 2 },
      dataMaxBytes: 2 * 1024 ** 3,
      metadataMaxBytes: 1024 ** 3,
      growStepBytes: 256 * 1024 ** 2,
      whenFull: { queueSeconds: 60 },
      autoGrow: false,
      punchHoles: true,
    },
  );
  assert.deepEqual(spaceChange({ lowWater: 'off', whenFull: 'queue:5' }, false), { lowWater: 'off', whenFull: { queueSeconds: 5 } });
  assert.deepEqual(spaceChange({ lowWater: '1.25%', whenFull: 'error' }, true), { lowWater: { percent: 1.25 }, whenFull: 'error' });
  assert.deepEqual(spaceChange({ dataMax: 'default', punch: 'default' }, true), { dataMaxBytes: 'default', punchHoles: 'default' });
  assert.deepEqual(spaceChange({}, true), {});
});

test('a value an option cannot take is a usage error naming the option', () => {
  const cases: Array<[Parameters<typeof spaceChange>[0], boolean, RegExp]> = [
    [{ lowWater: '0%' }, false, /--low-water: 0% is not a share/],
    [{ lowWater: '101%' }, false, /--low-water/],
    [{ lowWater: 'lots' }, false, /--low-water: Invalid size 'lots'/],
    [{ dataMax: '0' }, false, /--data-max: 0 must be at least 1 byte/],
    [{ whenFull: 'wait' }, false, /--when-full: 'wait' is not error, queue or queue:SECONDS/],
    [{ whenFull: 'queue:0' }, false, /--when-full: a queue of 0 seconds/],
    [{ whenFull: 'queue:3601' }, false, /--when-full: a queue of 3601 seconds/],
    [{ autoGrow: 'yes' }, false, /--auto-grow: 'yes' is not on or off/],
    [{ growStep: 'default' }, false, /--grow-step: 'default' is for pool set/],
  ];
  for (const [options, resettable, message] of cases) {
    assert.throws(() => spaceChange(options, resettable), (error) => error instanceof UsageError && message.test(error.message), JSON.stringify(options));
  }
});
