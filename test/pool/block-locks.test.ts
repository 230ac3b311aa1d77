import { test } from 'node:test';
import assert from 'node:assert/strict';
import { BlockLocks, WHOLE_VOLUME_END } from '../../src/pool/block-locks.ts';

const tick = (): Promise<void> => new Promise((resolve) => setImmediate(resolve));

test('locks on disjoint ranges of a volume are granted at once', async () => {
  const locks = new BlockLocks();
  const a = await locks.lock(1, 0, 4);
  const b = await locks.lock(1, 4, 8);
  const c = await locks.lock(2, 0, 4);
  a();
  b();
  c();
  assert.equal(locks.activeCount, 0);
});

test('an overlapping lock waits until the holder releases', async () => {
  const locks = new BlockLocks();
  const first = await locks.lock(1, 0, 4);
  let granted = false;
  const second = locks.lock(1, 3, 5).then((release) => {
    granted = true;
    return release;
  });
  await tick();
  assert.equal(granted, false);
  first();
  (await second)();
  assert.equal(granted, true);
  assert.equal(locks.activeCount, 0);
});

test('a whole-volume lock is not starved by later small requests', async () => {
  const locks = new BlockLocks();
  const order: string[] = [];
  const small = await locks.lock(1, 0, 1);
  const whole = locks.lock(1, 0, WHOLE_VOLUME_END).then((release) => {
    order.push('whole');
    release();
  });
  // A later request on a block nobody holds still queues behind the waiting whole-volume lock.
  const later = locks.lock(1, 10, 11).then((release) => {
    order.push('later');
    release();
  });
  await tick();
  assert.deepEqual(order, []);
  small();
  await Promise.all([whole, later]);
  assert.deepEqual(order, ['whole', 'later']);
});

test('overlapping requests on one block run one at a time, in arrival order', async () => {
  const locks = new BlockLocks();
  const events: string[] = [];
  let active = 0;
  await Promise.all(
    [0, 1, 2, 3, 4].map((index) =>
      locks.with(7, 5, 6, async () => {
        active += 1;
        assert.equal(active, 1);
        events.push(`start ${index}`);
        await tick();
        events.push(`end ${index}`);
        active -= 1;
      }),
    ),
  );
  assert.deepEqual(events, [0, 1, 2, 3, 4].flatMap((index) => [`start ${index}`, `end ${index}`]));
});

test('releasing a lock twice is a bug', async () => {
  const locks = new BlockLocks();
  const release = await locks.lock(1, 0, 1);
  release();
  assert.throws(() => release(), /released twice/);
});
