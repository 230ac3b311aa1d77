// Fuzzing the server: 100,000 client inputs per run in CI (`npm test`), a million or more in the
// nightly-sized run `npm run fuzz` starts (THINBD_FUZZ_INPUTS sets the count), over in-memory
// socket pairs, in two child processes (test/nbd/fuzz-worker.ts; the parts are in fuzz-lib.ts).
// Half are structured random sessions (options and requests chosen at random, valid or not);
// half are those sessions with raw byte mutations (flips, interesting values in length fields,
// insertions, deletions, truncations). Each is delivered in random pieces, to memory exports and
// to a pool's volume (VolumeExport), writable and read-only.
//
// Every session's output is judged by a checker written from the NBD spec with its own constants
// (fuzz-check.ts, nbd-spec.ts): every complete option answered, as the spec asks; every request
// answered with the outcome the spec asks for (EPERM on a read-only export, EINVAL or ENOSPC past
// the end, EINVAL for unknown commands and flags, success when nothing is wrong); READ data and
// zero claims equal to a shadow model of the export on the servers whose exports only one
// session reaches at a time. Throughout: no crash, no unhandled rejection, bounded memory, every
// server's payload budget back to zero, and a well-behaved TCP client doing verified I/O on the
// shared server all the while. A failure prints the seed and saves the session's bytes;
// THINBD_FUZZ_SEED=<seed> replays the run.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { fork, type ChildProcess } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { NBD_CMD_READ, NBD_CMD_WRITE } from '../../src/nbd/protocol.ts';
import { NAMES } from './fuzz-lib.ts';
import { NbdTestClient } from './client.ts';
import type { FuzzWorkerData, FuzzWorkerResult } from './fuzz-worker.ts';

const INPUTS = Number(process.env.THINBD_FUZZ_INPUTS ?? 100_000);
const WORKERS = 2;
const CONCURRENCY = 32;

interface RunningWorker {
  child: ChildProcess;
  port: number;
  sessionsDone: Promise<void>;
  result: Promise<FuzzWorkerResult>;
}

/**
 * Starts one fuzzing worker as a child process running fuzz-worker.ts under tsx, like every test
 * file. (Worker threads that registered tsx's loader hooks themselves could exit silently while a
 * module was still loading, a race of Node's loader hooks thread: the test was then left waiting
 * for a port that never came.) A worker that ends before its result fails the test by name.
 */
async function startWorker(data: FuzzWorkerData): Promise<RunningWorker> {
  const entry = fileURLToPath(new URL('./fuzz-worker.ts', import.meta.url));
  const child = fork(entry, [JSON.stringify(data)], { execArgv: ['--expose-gc', '--import', 'tsx'], stdio: ['ignore', 'ignore', 'inherit', 'ipc'] });
  const ended = new Promise<never>((_, reject) => {
    child.once('error', reject);
    child.once('exit', (code, signal) =>
      reject(new Error(`fuzz worker ${data.workerIndex} exited (${signal ?? `code ${code}`}) before its result (seed ${data.seed})`)),
    );
  });
  ended.catch(() => {}); // Observed through the promises below; this only keeps it from going unhandled.
  let onSessionsDone!: () => void;
  let onResult!: (result: FuzzWorkerResult) => void;
  let onListening!: (port: number) => void;
  const sessionsDone = Promise.race([new Promise<void>((resolve) => (onSessionsDone = resolve)), ended]);
  const result = Promise.race([new Promise<FuzzWorkerResult>((resolve) => (onResult = resolve)), ended]);
  const listening = Promise.race([new Promise<number>((resolve) => (onListening = resolve)), ended]);
  sessionsDone.catch(() => {});
  result.catch(() => {});
  child.on('message', (message: { type: string; port?: number; result?: FuzzWorkerResult }) => {
    if (message.type === 'listening') onListening(message.port!);
    else if (message.type === 'sessions-done') onSessionsDone();
    else if (message.type === 'result') onResult(message.result!);
  });
  return { child, port: await listening, sessionsDone, result };
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

test(`${INPUTS.toLocaleString('en')} fuzzed sessions: no crash, the outcomes and data the spec asks for, bounded memory, a bystander unharmed`, async () => {
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
    void running.sessionsDone.then(
      () => (sessionsDone = true),
      () => (sessionsDone = true),
    );
    return bystander(running.port, () => sessionsDone);
  });
  for (const running of workers) running.child.send('start');
  const rounds = await Promise.all(bystanders);
  for (const running of workers) {
    await running.sessionsDone;
    running.child.send('bystander-gone');
  }
  const results = await Promise.all(workers.map((running) => running.result));
  const elapsedMs = Date.now() - started;
  for (const running of workers) running.child.disconnect();
  await Promise.all(workers.map(({ child }) => (child.exitCode !== null ? undefined : new Promise((resolve) => child.once('exit', resolve)))));

  let done = 0;
  let outcomesChecked = 0;
  let readsChecked = 0;
  const sessionsByExport: Record<string, number> = {};
  for (const [i, result] of results.entries()) {
    assert.equal(result.failure, undefined, result.failure);
    assert.deepEqual(result.problems, [], `seed ${seed}`);
    assert.equal(result.bytesInFlight, 0, `payload budget back to zero (seed ${seed})`);
    assert.equal(result.connectionCount, 0, `every connection closed (seed ${seed})`);
    // Retained growth is ~4 MiB a worker; closed connections held by a timer once made it 290 MB.
    assert.ok(result.heapGrowthBytes < 64 * 1024 * 1024, `worker ${i} heap grew by ${result.heapGrowthBytes} bytes (seed ${seed})`);
    assert.ok(rounds[i]! > 10, `the bystander on worker ${i} kept working (${rounds[i]} rounds)`);
    done += result.done;
    outcomesChecked += result.outcomesChecked;
    readsChecked += result.readsChecked;
    for (const [name, count] of Object.entries(result.sessionsByExport)) sessionsByExport[name] = (sessionsByExport[name] ?? 0) + count;
  }
  assert.ok(done >= INPUTS, `${done} inputs`);
  console.log(
    `fuzz: ${done} inputs in ${elapsedMs} ms on ${WORKERS} workers; ${outcomesChecked} request outcomes and ${readsChecked} READs' data checked; ` +
      `sessions per export ${JSON.stringify(sessionsByExport)}; bystander rounds ${rounds.join(', ')}; ` +
      `heap growth ${results.map((r) => Math.round(r.heapGrowthBytes / 1024 / 1024)).join(', ')} MiB`,
  );
  // The checks ran: outcomes of most sessions, READ data of many, on every export.
  assert.ok(outcomesChecked >= done, `only ${outcomesChecked} request outcomes checked in ${done} sessions`);
  assert.ok(readsChecked >= done / 20, `only ${readsChecked} READs' data checked in ${done} sessions`);
  for (const name of NAMES) assert.ok((sessionsByExport[name] ?? 0) >= done / 50, `only ${sessionsByExport[name] ?? 0} sessions on export ${name}`);
});
