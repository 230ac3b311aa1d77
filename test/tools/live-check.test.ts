// `thinbd check` against a pool that `thinbd serve` owns: the check goes through the control
// socket and checks a frozen committed generation (pool.withCommitsHeld) while clients keep
// writing and flushing. Every check is clean, no client request fails, and every acknowledged
// write reads back afterwards.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { THINBD, thinbd } from '../cli/run-thinbd.ts';
import { run } from '../nbd/helpers.ts';
import { NbdTestClient } from '../nbd/client.ts';
import { NBD_CMD_FLUSH, NBD_CMD_READ, NBD_CMD_WRITE } from '../../src/nbd/protocol.ts';
import { startServe } from '../daemon/serve-process.ts';
import { Rng } from '../sim/rng.ts';

const MiB = 1024 * 1024;
const VOLUME_BYTES = 64 * MiB;
const WRITE_BYTES = 4096;
const CHECK_RUNS = 5;
const WRITES_PER_FLUSH = 8;

test('check of a served pool is clean every time while a client writes and flushes, and the client never sees an error', async () => {
  const work = mkdtempSync(join(tmpdir(), 'thinbd-live-check-'));
  const pool = join(work, 'pool');
  assert.equal(thinbd(['pool', 'create', '--pool', pool, '--data-size', '1G']).code, 0);
  assert.equal(thinbd(['create', '--pool', pool, 'disk', '--size', '64M']).code, 0);
  const server = await startServe(pool);
  const client = await NbdTestClient.connect({ port: server.port });
  try {
    await client.handshake('disk');
    const rng = new Rng(77);
    /** What each written 4 KiB slot must hold: the byte the last acknowledged write filled it with. */
    const expected = new Map<number, number>();
    const errors: string[] = [];
    let stopping = false;
    let writes = 0;
    let flushes = 0;
    const writer = (async () => {
      let sinceFlush = 0;
      while (!stopping) {
        const slot = rng.int(VOLUME_BYTES / WRITE_BYTES);
        const fill = (writes % 251) + 1;
        const reply = await client.call(NBD_CMD_WRITE, { offsetBytes: slot * WRITE_BYTES, data: Buffer.alloc(WRITE_BYTES, fill) });
        if (reply.error !== 0) errors.push(`write of slot ${slot}: error ${reply.error}`);
        else expected.set(slot, fill);
        writes += 1;
        sinceFlush += 1;
        if (sinceFlush === WRITES_PER_FLUSH) {
          const flush = await client.call(NBD_CMD_FLUSH);
          if (flush.error !== 0) errors.push(`flush: error ${flush.error}`);
          flushes += 1;
          sinceFlush = 0;
        }
      }
    })();

    const writesDuringChecks: number[] = [];
    for (let index = 0; index < CHECK_RUNS; index += 1) {
      if (index === 2) {
        // The pool changes shape between checks too: a snapshot of the volume being written.
        const snapshot = await run(process.execPath, [THINBD, 'snapshot', '--pool', pool, 'disk', `disk-snap-${index}`], { allowFailure: true });
        assert.equal(snapshot.code, 0, snapshot.stderr);
      }
      const writesBefore = writes;
      // An asynchronous child, so the writer keeps going while the check runs.
      const checked = await run(process.execPath, [THINBD, 'check', '--pool', pool], { allowFailure: true });
      writesDuringChecks.push(writes - writesBefore);
      assert.equal(checked.code, 0, `check ${index + 1} of ${CHECK_RUNS}:\n${checked.stdout}${checked.stderr}`);
      assert.match(checked.stdout, /is clean/);
    }
    // Repair needs the pool to itself: refused while served, and nothing is changed.
    const repair = await run(process.execPath, [THINBD, 'check', '--pool', pool, '--repair'], { allowFailure: true });
    assert.equal(repair.code, 1);
    assert.match(repair.stderr, /being served/);
    stopping = true;
    await writer;
    assert.deepEqual(errors, [], 'no client request failed');
    assert.ok(writesDuringChecks.every((count) => count > 0), `the client wrote during every check (${writesDuringChecks.join(', ')} writes)`);
    assert.ok(flushes > CHECK_RUNS, `the client flushed during the checks (${flushes} flushes)`);

    for (const [slot, fill] of expected) {
      const reply = await client.call(NBD_CMD_READ, { offsetBytes: slot * WRITE_BYTES, lengthBytes: WRITE_BYTES });
      assert.equal(reply.error, 0);
      assert.ok(reply.data!.every((byte) => byte === fill), `slot ${slot} holds its last acknowledged write`);
    }
    client.close();
    assert.equal(await server.stop(), 0, server.output());
    const offline = thinbd(['check', '--pool', pool]);
    assert.equal(offline.code, 0, `${offline.stdout}${offline.stderr}`);
  } finally {
    client.close();
    await server.kill();
    rmSync(work, { recursive: true, force: true });
  }
});
