// An import has the pool write its data back as it goes (WriteBackPacer): once per
// WRITE_BACK_BYTES written, never two at once, and settled() waits for the one running. A pool's
// writeBackData leaves what a flush makes durable unchanged.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { WRITE_BACK_BYTES, WriteBackPacer } from '../../src/image/write-back.ts';

function countingHost(): { writeBackData(): Promise<void>; started: number; running: number; finishAll(): void } {
  const pending: Array<() => void> = [];
  const host = {
    started: 0,
    running: 0,
    writeBackData(): Promise<void> {
      host.started++;
      host.running++;
      return new Promise<void>((resolve) => pending.push(() => {
        host.running--;
        resolve();
      }));
    },
    finishAll(): void {
      for (const finish of pending.splice(0)) finish();
    },
  };
  return host;
}

test('a write-back starts after every WRITE_BACK_BYTES written, one at a time', async () => {
  const host = countingHost();
  const pacer = new WriteBackPacer(host);
  pacer.note(WRITE_BACK_BYTES - 1);
  assert.equal(host.started, 0);
  pacer.note(1);
  assert.equal(host.started, 1);
  // While it runs, more bytes start none.
  pacer.note(WRITE_BACK_BYTES * 3);
  assert.equal(host.started, 1);
  host.finishAll();
  await pacer.settled();
  assert.equal(host.running, 0);
  pacer.note(WRITE_BACK_BYTES);
  assert.equal(host.started, 2);
  let settled = false;
  const waiting = pacer.settled().then(() => {
    settled = true;
  });
  await new Promise((resolve) => setImmediate(resolve));
  assert.equal(settled, false, 'settled() waits for the write-back running');
  host.finishAll();
  await waiting;
  assert.equal(host.running, 0);
});

test('the pacing target notes each completed write and passes discards on', async () => {
  const host = countingHost();
  const pacer = new WriteBackPacer(host);
  const writes: number[] = [];
  const discards: number[] = [];
  const target = pacer.pacing({
    write: async (offsetBytes) => {
      writes.push(offsetBytes);
    },
    discard: async (offsetBytes) => {
      discards.push(offsetBytes);
    },
  });
  const chunk = new Uint8Array(WRITE_BACK_BYTES / 2);
  await target.write(0, chunk);
  assert.equal(host.started, 0);
  await target.write(chunk.length, chunk);
  assert.equal(host.started, 1);
  await target.discard(4096, 4096);
  assert.deepEqual(writes, [0, chunk.length]);
  assert.deepEqual(discards, [4096]);
  host.finishAll();
  await pacer.settled();
});
