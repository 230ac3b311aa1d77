// One fuzzing worker (a worker thread, started by fuzz.test.ts). It runs its share of sessions
// against its own server, which also listens on TCP so the test's bystander client can work on
// it meanwhile. A worker thread, not the test's own thread, because node:test tracks every async
// resource of its thread, and that tripled the cost of each session.
import { parentPort, workerData } from 'node:worker_threads';
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

const data = workerData as FuzzWorkerData;
const port = parentPort!;
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
port.postMessage({ type: 'listening', port: (bound as { port: number }).port });
await new Promise<void>((resolve) => port.once('message', () => resolve()));

const heapStartBytes = process.memoryUsage().heapUsed;
let heapMaxBytes = heapStartBytes;
let done = 0;
let failure: string | undefined;
const started = Date.now();
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
const elapsedMs = Date.now() - started;
// Wait for the bystander to leave, then close: the server must end with nothing held.
await new Promise<void>((resolve) => {
  port.postMessage({ type: 'sessions-done' });
  port.once('message', () => resolve());
});
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
port.postMessage({ type: 'result', result });
