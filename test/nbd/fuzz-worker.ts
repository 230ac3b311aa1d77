// One fuzzing worker (a child process, started by fuzz.test.ts with its FuzzWorkerData as the one
// argument). It runs its share of sessions against its own server, which also listens on TCP so
// the test's bystander client can work on it meanwhile. Not in the test's own process, because
// node:test tracks every async resource there, and that tripled the cost of each session.
import assert from 'node:assert/strict';
import { MapExportRegistry } from '../../src/nbd/backend.ts';
import { NbdServer } from '../../src/nbd/server.ts';
import { EXPORT_BYTES, Rng, checkSession, generateSession, mutate, runSession } from './fuzz-lib.ts';
import { MemoryExport } from './memory-export.ts';

export interface FuzzWorkerData {
  seed: number;
  workerIndex: number;
  inputs: number;
  concurrency: number;
}

export interface FuzzWorkerResult {
  done: number;
  failure: string | undefined;
  problems: string[];
  heapGrowthBytes: number;
  bytesInFlight: number;
  connectionCount: number;
  elapsedMs: number;
}

const data = JSON.parse(process.argv[2] ?? '') as FuzzWorkerData;
assert.ok(process.send !== undefined, 'fuzz-worker.ts runs as a child process with an IPC channel');
const send = (message: unknown): void => void process.send!(message);
const nextMessage = (): Promise<void> => new Promise((resolve) => process.once('message', () => resolve()));
const problems: string[] = [];
process.on('unhandledRejection', (reason) => problems.push(`unhandled rejection: ${String(reason)}`));
process.on('uncaughtException', (error) => problems.push(`uncaught exception: ${error.stack ?? error.message}`));

const exports = [
  new MemoryExport({ name: 'a', sizeBytes: EXPORT_BYTES }),
  new MemoryExport({ name: 'ro', sizeBytes: EXPORT_BYTES, readOnly: true }),
  new MemoryExport({ name: 'slow', sizeBytes: EXPORT_BYTES, latencyMsMax: 1, canFua: false, canTrim: false }),
  new MemoryExport({ name: 'aligned', sizeBytes: EXPORT_BYTES, blockSizeMinBytes: 512, canFastZero: false }),
  new MemoryExport({ name: 'bystander', sizeBytes: 1024 * 1024 }),
];
const server = new NbdServer({
  registry: new MapExportRegistry(exports),
  connectionsMax: data.concurrency + 8,
  handshakeTimeoutMs: 5000,
  replyStallTimeoutMs: 5000,
  // Small limits, so that sessions of a dozen requests run into them and exercise backpressure:
  // parsing paused and resumed per connection, and connections waiting on the shared budget.
  requestsInFlightMax: 4,
  connectionBytesInFlightMax: 128 * 1024,
  serverBytesInFlightMax: 2 * 1024 * 1024,
});
const bound = await server.listen({ host: '127.0.0.1', port: 0 });
const started = nextMessage();
send({ type: 'listening', port: (bound as { port: number }).port });
await started;

const heapStartBytes = process.memoryUsage().heapUsed;
let heapMaxBytes = heapStartBytes;
let done = 0;
let failure: string | undefined;
const startedAt = Date.now();
const lane = async (laneIndex: number) => {
  const rng = new Rng(data.seed ^ Math.imul(data.workerIndex * 1000 + laneIndex + 1, 0x9e3779b1));
  for (let i = laneIndex; i < data.inputs && failure === undefined; i += data.concurrency) {
    const session = generateSession(rng);
    const input = i % 2 === 0 ? session : mutate(rng, session);
    const output = await runSession(server, rng, input);
    try {
      checkSession(input, output);
    } catch (error) {
      failure =
        `worker ${data.workerIndex} input ${i} (seed ${data.seed}): ${(error as Error).message}\n` +
        `input: ${input.toString('hex').slice(0, 2000)}\noutput: ${output.toString('hex').slice(0, 2000)}`;
    }
    done++;
    if (done % 2000 === 0) heapMaxBytes = Math.max(heapMaxBytes, process.memoryUsage().heapUsed);
  }
};
await Promise.all(Array.from({ length: data.concurrency }, (_, i) => lane(i)));
const elapsedMs = Date.now() - startedAt;
// Wait for the bystander to leave, then close: the server must end with nothing held.
const bystanderGone = nextMessage();
send({ type: 'sessions-done' });
await bystanderGone;
await server.close({ timeoutMs: 5000 });
const result: FuzzWorkerResult = {
  done,
  failure,
  problems,
  heapGrowthBytes: heapMaxBytes - heapStartBytes,
  bytesInFlight: server.bytesInFlight,
  connectionCount: server.connectionCount,
  elapsedMs,
};
send({ type: 'result', result });
// The parent disconnects once it has every result; then nothing is left and the process ends.
