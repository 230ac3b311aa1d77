// The space options `pool create` and `pool set` share (docs/format.md "Pool superblock payload"): the
// low-water marks, the limits growth stops at, the growth step, what a full pool does with writes,
// and the two switches. `pool set` also takes `default` for each, putting the setting back to the
// default of the build that opens the pool.
import { Option } from '@commander-js/extra-typings';
import type { LowWater, SpaceSettingsChange, WhenFull } from '../pool/pool.ts';
import { WHEN_FULL_QUEUE_SECONDS_DEFAULT, WHEN_FULL_QUEUE_SECONDS_MAX } from '../constants.ts';
import { UsageError } from './report.ts';
import { sizeOption } from './options.ts';

export interface SpaceOptionValues {
  lowWater?: string;
  metadataLowWater?: string;
  dataMax?: string;
  metadataMax?: string;
  growStep?: string;
  whenFull?: string;
  autoGrow?: string;
  punch?: string;
}

/** The options, with `default` described as a value when `resettable` (pool set). */
export function spaceOptions(resettable: boolean): Option[] {
  const orDefault = resettable ? ', or default' : '';
  return [
    new Option('--low-water <size|pct>', `data low-water mark: a size (64M), a share (10%), or off; default 10%${orDefault}`),
    new Option('--metadata-low-water <size|pct>', `metadata low-water mark; default 5%, at least 8M${orDefault}`),
    new Option('--data-max <size>', `largest size automatic growth takes the data file to; default: the host file system's free space less a margin${orDefault}`),
    new Option('--metadata-max <size>', `largest size automatic growth takes the metadata file to; default: the host file system's free space less a margin (not --data-max's value), at most 16G${orDefault}`),
    new Option('--grow-step <size>', `data growth step; default 20% of the data space, at least 1024 blocks${orDefault}`),
    new Option('--when-full <error|queue[:seconds]>', `a write finding the data space full fails at once (error, the default) or waits up to 60 s (queue) or the seconds given${orDefault}`),
    new Option('--auto-grow <on|off>', `grow the files by themselves below their low-water marks (default on; never a block device)${orDefault}`),
    new Option('--punch <on|off>', `give freed data blocks back to the host file system (fallocate PUNCH_HOLE; default on)${orDefault}`),
  ];
}

function lowWater(name: string, text: string): LowWater {
  if (text === 'off') return 'off';
  const percent = /^\s*(\d+(?:\.\d{1,2})?)\s*%\s*$/.exec(text);
  if (percent) {
    const value = Number(percent[1]);
    if (!(value > 0 && value <= 100)) throw new UsageError(`${name}: ${text} is not a share from 0.01% to 100%`);
    return { percent: value };
  }
  const bytes = sizeOption(name, text);
  if (bytes < 1) throw new UsageError(`${name}: ${text} must be at least 1 byte`);
  return { bytes };
}

function positiveSize(name: string, text: string): number {
  const bytes = sizeOption(name, text);
  if (bytes < 1) throw new UsageError(`${name}: ${text} must be at least 1 byte`);
  return bytes;
}

function whenFull(text: string): WhenFull {
  if (text === 'error') return 'error';
  if (text === 'queue') return { queueSeconds: WHEN_FULL_QUEUE_SECONDS_DEFAULT };
  const match = /^queue:(\d+)$/.exec(text);
  if (match) {
    const queueSeconds = Number(match[1]);
    if (queueSeconds < 1 || queueSeconds > WHEN_FULL_QUEUE_SECONDS_MAX) throw new UsageError(`--when-full: a queue of ${match[1]} seconds is not from 1 to ${WHEN_FULL_QUEUE_SECONDS_MAX}`);
    return { queueSeconds };
  }
  throw new UsageError(`--when-full: '${text}' is not error, queue or queue:SECONDS`);
}

function onOff(name: string, text: string): boolean {
  if (text === 'on') return true;
  if (text === 'off') return false;
  throw new UsageError(`${name}: '${text}' is not on or off`);
}

/** The settings the options give; `default` is accepted only when `resettable`. Range checks are the pool's. */
export function spaceChange(options: SpaceOptionValues, resettable: boolean): SpaceSettingsChange {
  const change: SpaceSettingsChange = {};
  const set = <K extends keyof SpaceSettingsChange>(key: K, name: string, text: string | undefined, parse: (text: string) => SpaceSettingsChange[K]): void => {
    if (text === undefined) return;
    if (text === 'default') {
      if (!resettable) throw new UsageError(`${name}: 'default' is for pool set; leave the option out instead`);
      change[key] = 'default';
      return;
    }
    change[key] = parse(text);
  };
  set('lowWater', '--low-water', options.lowWater, (text) => lowWater('--low-water', text));
  set('metadataLowWater', '--metadata-low-water', options.metadataLowWater, (text) => lowWater('--metadata-low-water', text));
  set('dataMaxBytes', '--data-max', options.dataMax, (text) => positiveSize('--data-max', text));
  set('metadataMaxBytes', '--metadata-max', options.metadataMax, (text) => positiveSize('--metadata-max', text));
  set('growStepBytes', '--grow-step', options.growStep, (text) => positiveSize('--grow-step', text));
  set('whenFull', '--when-full', options.whenFull, whenFull);
  set('autoGrow', '--auto-grow', options.autoGrow, (text) => onOff('--auto-grow', text));
  set('punchHoles', '--punch', options.punch, (text) => onOff('--punch', text));
  return change;
}
