// The progress bar of work whose total grows as it goes (archive pack and unpack): the bar is
// started once and lengthened, so the work shown done never goes back.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { growingProgress, type Progress } from '../../src/cli/progress.ts';

test('a growing total lengthens the bar once started, never restarts it or shrinks it', () => {
  const events: string[] = [];
  const start = (label: string, total: number): Progress => {
    events.push(`start ${label} ${total}`);
    return {
      update: (done) => events.push(`update ${done}`),
      setTotal: (total) => events.push(`total ${total}`),
      stop: () => events.push('stop'),
    };
  };
  const progress = growingProgress('pack v', start);
  progress.update(0, 0); // nothing known yet: no bar
  progress.update(100, 300);
  progress.update(290, 300);
  progress.update(300, 303); // pack found more to read near the end
  progress.update(303, 306);
  progress.update(305, 304); // a smaller total does not shrink the bar
  progress.stop();
  assert.deepEqual(events, ['start pack v 300', 'update 100', 'update 290', 'total 303', 'update 300', 'total 306', 'update 303', 'update 305', 'stop']);
});
