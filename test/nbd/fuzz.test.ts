// Fuzzing the server in-process: at least 100,000 client inputs per run, over in-memory socket
// pairs, in two worker threads (test/nbd/fuzz-worker.ts; the parts are in fuzz-lib.ts). Half are structured random sessions (options and requests chosen at random, valid or
// not); half are those sessions with raw byte mutations (flips, interesting values in length
// fields, insertions, deletions, truncations). Each is delivered in random pieces.
//
// Every session's output is parsed by an independent oracle (below) that follows the client's
// bytes: the greeting, one complete answer per option, then replies matched to requests by
// cookie, each well-formed (known magic, type, error value, lengths that add up, READ chunks
// inside their request and covering it, DONE last). The output may stop early only where the
// server hard-disconnects. Throughout: no crash, no unhandled rejection, bounded memory, the
// server's payload budget back to zero, and a well-behaved TCP client doing verified I/O on the
// same server all the while. A failure prints the seed; THINBD_FUZZ_SEED=<seed> replays it.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Worker } from 'node:worker_threads';
import { NBD_CMD_READ, NBD_CMD_WRITE } from '../../src/nbd/protocol.ts';
import { NbdTestClient } from './client.ts';
import type { FuzzWorkerData, FuzzWorkerResult } from './fuzz-worker.ts';

const INPUTS = Number(process.env.THINBD_FUZZ_INPUTS ?? 100_000);
const WORKERS = 2;
const CONCURRENCY = 32;

interface RunningWorker {
  worker: Worker;
  port: number;
  sessionsDone: Promise<void>;
  result: Promise<FuzzWorkerResult>;
}

async function startWorker(data: FuzzWorkerData): Promise<RunningWorker> {
  // The worker loads TypeScript through tsx's loader, registered in the worker before its entry.
  const tsxApi = import.meta.resolve('tsx/esm/api');
  const entry = new URL('./fuzz-worker.ts', import.meta.url).href;
  const bootstrap = `import(${JSON.stringify(tsxApi)}).then((tsx) => { tsx.register(); return import(${JSON.stringify(entry)}); });`;
  const worker = new Worker(bootstrap, { eval: true, workerData: data });
  let onSessionsDone!: () => void;
  let onResult!: (result: FuzzWorkerResult) => void;
  const sessionsDone = new Promise<void>((resolve) => (onSessionsDone = resolve));
  const result = new Promise<FuzzWorkerResult>((resolve, reject) => {
    onResult = resolve;
    worker.once('error', reject);
    worker.once('exit', (code) => reject(new Error(`fuzz worker ${data.workerIndex} exited with ${code} before its result (seed ${data.seed})`)));
  });
  result.catch(() => {}); // Observed by the caller; this only keeps an early failure from going unhandled.

  const port = await new Promise<number>((resolve, reject) => {
    worker.on('message', (message: { type: string; port?: number; result?: FuzzWorkerResult }) => {
      if (message.type === 'listening') resolve(message.port!);
      else if (message.type === 'sessions-done') onSessionsDone();
      else if (message.type === 'result') onResult(message.result!);
    });
    worker.once('error', reject);
  });
  return { worker, port, sessionsDone, result };
}

/** A well-behaved client writing and verifying on a fuzzed server until told to stop. */
async function bystander(port: number, isDone: () => boolean): Promise<number> {
  const client = await NbdTestClient.connect({ port });
  await client.handshake('bystander');
  let rounds = 0;
  while (!isDone()) {
    const offsetBytes = (rounds % 200) * 4096;
    const data = Buffer.alloc(4096, rounds & 0xff);
    assert.equal((await client.call(NBD_CMD_WRITE, { offsetBytes, data })).error, 0);
    const read = await client.call(NBD_CMD_READ, { offsetBytes, lengthBytes: 4096 });
    assert.ok(read.data!.equals(data), 'the bystander reads what it wrote');
    rounds++;
    await new Promise((resolve) => setTimeout(resolve, 2));
  }
  client.close();
  return rounds;
}

test('100,000 fuzzed sessions: no crash, well-formed replies, bounded memory, a bystander unharmed', async () => {
  const seed = Number(process.env.THINBD_FUZZ_SEED ?? Math.floor(Math.random() * 2 ** 32));
  console.log(`fuzz seed ${seed} (replay: THINBD_FUZZ_SEED=${seed})`);
  const started = Date.now();
  const workers = await Promise.all(
    Array.from({ length: WORKERS }, (_, workerIndex) =>
      startWorker({ seed, workerIndex, inputs: Math.ceil(INPUTS / WORKERS), concurrency: CONCURRENCY }),
    ),
  );
  const bystanders = workers.map((running) => {
    let sessionsDone = false;
    void running.sessionsDone.then(() => (sessionsDone = true));
    return bystander(running.port, () => sessionsDone);
  });
  for (const running of workers) running.worker.postMessage('start');
  const rounds = await Promise.all(bystanders);
  for (const running of workers) {
    await running.sessionsDone;
    running.worker.postMessage('bystander-gone');
  }
  const results = await Promise.all(workers.map((running) => running.result));
  const elapsedMs = Date.now() - started;
  for (const running of workers) await running.worker.terminate();

  let done = 0;
  for (const [i, result] of results.entries()) {
    assert.equal(result.failure, undefined, result.failure);
    assert.deepEqual(result.problems, [], `seed ${seed}`);
    assert.equal(result.bytesInFlight, 0, `payload budget back to zero (seed ${seed})`);
    assert.equal(result.connectionCount, 0, `every connection closed (seed ${seed})`);
    assert.ok(result.heapGrowthBytes < 256 * 1024 * 1024, `worker ${i} heap grew by ${result.heapGrowthBytes} bytes (seed ${seed})`);
    assert.ok(rounds[i]! > 10, `the bystander on worker ${i} kept working (${rounds[i]} rounds)`);
    done += result.done;
  }
  assert.ok(done >= INPUTS, `${done} inputs`);
  console.log(
    `fuzz: ${done} inputs in ${elapsedMs} ms on ${WORKERS} workers; bystander rounds ${rounds.join(', ')}; ` +
      `heap growth ${results.map((r) => Math.round(r.heapGrowthBytes / 1024 / 1024)).join(', ')} MiB`,
  );
});
