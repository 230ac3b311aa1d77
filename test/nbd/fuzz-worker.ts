// One fuzzing worker (a child process, started by fuzz.test.ts with its FuzzWorkerData as the one
// argument). Its sessions go to two kinds of server:
// - each lane's own server, whose exports (memory ones and a pool's volume, writable and
//   read-only) only that lane's sessions reach, one at a time: the checker holds READ data and
//   zero claims to a shadow model of each export, brought up to date after every session from
//   the export itself, over the ranges the session wrote;
// - a shared server all lanes reach at once (a quarter of the sessions), which also listens on
//   TCP so the test's bystander client works on it meanwhile: many connections against one
//   payload budget; its exports change under every session, so only outcomes are checked there.
// Not in the test's own process, because node:test tracks every async resource there, and that
// tripled the cost of each session.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { MapExportRegistry, type NbdExport, type NbdExtent } from '../../src/nbd/backend.ts';
import { NbdServer, type NbdServerOptions } from '../../src/nbd/server.ts';
import { MemoryBlockFile } from '../../src/io/memory.ts';
import { Pool } from '../../src/pool/pool.ts';
import { VolumeExport } from '../../src/daemon/volume-export.ts';
import { BLOCK, METADATA_BYTES } from '../pool/helpers.ts';
import { EXPORT_BYTES, FUZZ_EXPORTS, Rng, generateSession, mutate, runSession } from './fuzz-lib.ts';
import { checkSession, type CheckWorld, type FuzzExportFacts } from './fuzz-check.ts';
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
  /** Requests held to an expected outcome; READs whose data was compared with the shadow model. */
  outcomesChecked: number;
  readsChecked: number;
  /** Sessions per export name they entered transmission on. */
  sessionsByExport: Record<string, number>;
}

const data = JSON.parse(process.argv[2] ?? '') as FuzzWorkerData;
assert.ok(process.send !== undefined, 'fuzz-worker.ts runs as a child process with an IPC channel');
const send = (message: unknown): void => void process.send!(message);
const nextMessage = (): Promise<void> => new Promise((resolve) => process.once('message', () => resolve()));
const problems: string[] = [];
process.on('unhandledRejection', (reason) => problems.push(`unhandled rejection: ${String(reason)}`));
process.on('uncaughtException', (error) => problems.push(`uncaught exception: ${error.stack ?? error.message}`));
// The parent disconnects once it has the result, or because it ended (a failed or stopped test run):
// either way nothing is left to do, and a worker must not go on fuzzing for a parent that is gone.
// The lanes run on in-memory streams and can keep the event loop from polling for the disconnect,
// so they also look at the parent's PID (the test's process; 1 or a subreaper once it is gone).
process.once('disconnect', () => process.exit(0));
const parentPid = process.ppid;

/**
 * An export under another name (a read-only view of a volume), counting the calls in flight so
 * that a lane can wait until a session's last call has ended (a hard-disconnected session's
 * calls may outlive its connection) before it reads the export back into its shadow.
 */
class TrackedExport implements NbdExport {
  readonly #inner: NbdExport;
  readonly name: string;
  readonly readOnly: boolean;
  // The inner export's capabilities, fixed for its life (memory and volume exports alike).
  readonly description: string;
  readonly canTrim: boolean;
  readonly canZero: boolean;
  readonly canFastZero: boolean;
  readonly canFua: boolean;
  readonly canMultiConn: boolean;
  readonly canCache: boolean;
  readonly blockSizeMinBytes: number;
  readonly blockSizePreferredBytes: number;
  readonly blockSizeMaxBytes: number;
  #inFlight = 0;
  #idle: Array<() => void> = [];

  constructor(inner: NbdExport, options: { name?: string; readOnly?: boolean } = {}) {
    this.#inner = inner;
    this.name = options.name ?? inner.name;
    this.readOnly = options.readOnly ?? inner.readOnly;
    ({
      description: this.description,
      canTrim: this.canTrim,
      canZero: this.canZero,
      canFastZero: this.canFastZero,
      canFua: this.canFua,
      canMultiConn: this.canMultiConn,
      canCache: this.canCache,
      blockSizeMinBytes: this.blockSizeMinBytes,
      blockSizePreferredBytes: this.blockSizePreferredBytes,
      blockSizeMaxBytes: this.blockSizeMaxBytes,
    } = inner);
  }
  sizeBytes(): number {
    return this.#inner.sizeBytes();
  }
  read(offsetBytes: number, target: Uint8Array): Promise<boolean | void> {
    return this.#track(() => this.#inner.read(offsetBytes, target));
  }
  write(offsetBytes: number, source: Uint8Array, options: { fua: boolean }): Promise<void> {
    return this.#track(() => this.#inner.write(offsetBytes, source, options));
  }
  flush(): Promise<void> {
    return this.#track(() => this.#inner.flush());
  }
  trim(offsetBytes: number, lengthBytes: number, options: { fua: boolean }): Promise<void> {
    return this.#track(() => this.#inner.trim(offsetBytes, lengthBytes, options));
  }
  zero(offsetBytes: number, lengthBytes: number, options: { noHole: boolean; fua: boolean; fastZero: boolean }): Promise<void> {
    return this.#track(() => this.#inner.zero(offsetBytes, lengthBytes, options));
  }
  blockStatus(offsetBytes: number, lengthBytes: number): Promise<NbdExtent[]> {
    return this.#track(() => this.#inner.blockStatus(offsetBytes, lengthBytes));
  }
  cache(offsetBytes: number, lengthBytes: number): Promise<void> {
    return this.#track(async () => this.#inner.cache?.(offsetBytes, lengthBytes));
  }
  /** Resolves once no call is in flight. */
  idle(): Promise<void> {
    return this.#inFlight === 0 ? Promise.resolve() : new Promise((resolve) => this.#idle.push(resolve));
  }
  async #track<T>(call: () => Promise<T>): Promise<T> {
    this.#inFlight += 1;
    try {
      return await call();
    } finally {
      this.#inFlight -= 1;
      if (this.#inFlight === 0) for (const resolve of this.#idle.splice(0)) resolve();
    }
  }
}

const FACTS = FUZZ_EXPORTS;
const BYSTANDER_FACTS: FuzzExportFacts = { name: 'bystander', sizeBytes: 1024 * 1024, readOnly: false };

/** A pool on memory files with one volume of EXPORT_BYTES: room for every block of it, so ENOSPC is never right. */
async function poolVolumeExport(): Promise<{ pool: Pool; export: NbdExport }> {
  const pool = await Pool.createOn(
    { metadata: new MemoryBlockFile(0, 'metadata'), data: new MemoryBlockFile(0, 'data') },
    { dataSizeBytes: (EXPORT_BYTES / BLOCK + 4) * BLOCK, blockSizeBytes: BLOCK, metadataSizeBytes: METADATA_BYTES },
  );
  const volume = await pool.createVolume('fuzzed', { sizeBytes: EXPORT_BYTES });
  return { pool, export: new VolumeExport(volume) };
}

async function makeExports(): Promise<{ exports: TrackedExport[]; pool: Pool }> {
  const { pool, export: volume } = await poolVolumeExport();
  const exports = [
    new TrackedExport(new MemoryExport({ name: 'a', sizeBytes: EXPORT_BYTES })),
    new TrackedExport(new MemoryExport({ name: 'ro', sizeBytes: EXPORT_BYTES, readOnly: true })),
    new TrackedExport(new MemoryExport({ name: 'slow', sizeBytes: EXPORT_BYTES, latencyMsMax: 1, canFua: false, canTrim: false })),
    new TrackedExport(new MemoryExport({ name: 'aligned', sizeBytes: EXPORT_BYTES, blockSizeMinBytes: 512, canFastZero: false })),
    new TrackedExport(volume, { name: 'pool' }),
    new TrackedExport(volume, { name: 'pool-ro', readOnly: true }),
  ];
  assert.deepEqual(exports.map((exp) => exp.name), FACTS.map((facts) => facts.name));
  return { exports, pool };
}

/** The servers' last log lines (why a connection was closed), for a failure's message. */
const serverLog: string[] = [];
const SERVER_LIMITS: Omit<NbdServerOptions, 'registry'> = {
  // Far beyond any session's time even on a starved machine: the time limits are
  // hostile.test.ts's to test; here a cut-off would only leave requests unanswered.
  handshakeTimeoutMs: 120_000,
  replyStallTimeoutMs: 120_000,
  log: ({ message }) => {
    serverLog.push(message);
    if (serverLog.length > 20) serverLog.shift();
  },
  // Small limits, so that sessions of a dozen requests run into them and exercise backpressure:
  // parsing paused and resumed per connection, and connections waiting on the shared budget.
  requestsInFlightMax: 4,
  connectionBytesInFlightMax: 128 * 1024,
  serverBytesInFlightMax: 2 * 1024 * 1024,
};

interface Lane {
  server: NbdServer;
  exports: Map<string, TrackedExport>;
  shadows: Map<string, Uint8Array>;
  world: CheckWorld;
  pool: Pool;
}

async function makeLane(): Promise<Lane> {
  const { exports, pool } = await makeExports();
  // Every export starts as zeros; the pool's two names are one volume, so one shadow.
  const shadows = new Map<string, Uint8Array>();
  const poolShadow = new Uint8Array(EXPORT_BYTES);
  for (const exp of exports) shadows.set(exp.name, exp.name.startsWith('pool') ? poolShadow : new Uint8Array(EXPORT_BYTES));
  return {
    server: new NbdServer({ ...SERVER_LIMITS, registry: new MapExportRegistry(exports), connectionsMax: 4 }),
    exports: new Map(exports.map((exp) => [exp.name, exp])),
    shadows,
    world: { exports: new Map(FACTS.map((facts) => [facts.name, facts])), contents: shadows },
    pool,
  };
}

const shared = await makeExports();
const sharedServer = new NbdServer({
  ...SERVER_LIMITS,
  registry: new MapExportRegistry([...shared.exports, new MemoryExport({ name: BYSTANDER_FACTS.name, sizeBytes: BYSTANDER_FACTS.sizeBytes })]),
  connectionsMax: data.concurrency + 8,
});
const sharedWorld: CheckWorld = { exports: new Map([...FACTS, BYSTANDER_FACTS].map((facts) => [facts.name, facts])) };
const lanes = await Promise.all(Array.from({ length: data.concurrency }, makeLane));
const bound = await sharedServer.listen({ host: '127.0.0.1', port: 0 });
const started = nextMessage();
send({ type: 'listening', port: (bound as { port: number }).port });
await started;

/**
 * The heap that stays after a full collection (the test runs this worker with --expose-gc): memory
 * held, not garbage a busy machine has not yet collected.
 */
function retainedHeapBytes(): number {
  (globalThis as { gc?: () => void }).gc?.();
  return process.memoryUsage().heapUsed;
}

const heapStartBytes = retainedHeapBytes();
let heapMaxBytes = heapStartBytes;
let done = 0;
let outcomesChecked = 0;
let readsChecked = 0;
const sessionsByExport: Record<string, number> = {};
let failure: string | undefined;
const startedAt = Date.now();
const runLane = async (laneIndex: number): Promise<void> => {
  const lane = lanes[laneIndex]!;
  const rng = new Rng(data.seed ^ Math.imul(data.workerIndex * 1000 + laneIndex + 1, 0x9e3779b1));
  for (let i = laneIndex; i < data.inputs && failure === undefined; i += data.concurrency) {
    const session = generateSession(rng);
    const input = i % 2 === 0 ? session : mutate(rng, session);
    const onShared = rng.chance(0.25);
    const output = await runSession(onShared ? sharedServer : lane.server, rng, input);
    try {
      if (!onShared) await Promise.all([...lane.exports.values()].map((exp) => exp.idle()));
      const verdict = checkSession(input, output, onShared ? sharedWorld : lane.world);
      outcomesChecked += verdict.outcomesChecked;
      readsChecked += verdict.readsChecked;
      if (verdict.exportName !== undefined) sessionsByExport[verdict.exportName] = (sessionsByExport[verdict.exportName] ?? 0) + 1;
      if (!onShared && verdict.exportName !== undefined) {
        // The shadow follows the export: read back what the session may have changed.
        const exp = lane.exports.get(verdict.exportName)!;
        const shadow = lane.shadows.get(verdict.exportName)!;
        for (const range of verdict.touched) await exp.read(range.offsetBytes, shadow.subarray(range.offsetBytes, range.offsetBytes + range.lengthBytes));
      }
    } catch (error) {
      // The whole session goes to files (fuzz-oracle.test.ts replays such a pair as a regression case).
      const saved = path.join(os.tmpdir(), `thinbd-fuzz-${data.seed}-${data.workerIndex}-${i}`);
      fs.writeFileSync(`${saved}.input`, input);
      fs.writeFileSync(`${saved}.output`, output);
      failure =
        `worker ${data.workerIndex} input ${i} on the ${onShared ? 'shared' : `lane ${laneIndex}`} server (seed ${data.seed}): ${(error as Error).message}\n` +
        `server log: ${serverLog.join(' | ') || 'empty'}\n` +
        `session saved as ${saved}.input and .output; input: ${input.toString('hex').slice(0, 2000)}\noutput: ${output.toString('hex').slice(0, 2000)}`;
    }
    done++;
    if (done % 100 === 0 && process.ppid !== parentPid) process.exit(1);
    if (done % 2000 === 0) heapMaxBytes = Math.max(heapMaxBytes, retainedHeapBytes());
  }
};
await Promise.all(Array.from({ length: data.concurrency }, (_, i) => runLane(i)));
const elapsedMs = Date.now() - startedAt;
// Wait for the bystander to leave, then close: every server must end with nothing held.
const bystanderGone = nextMessage();
send({ type: 'sessions-done' });
await bystanderGone;
const servers = [sharedServer, ...lanes.map((lane) => lane.server)];
await Promise.all(servers.map((server) => server.close({ timeoutMs: 5000 })));
await Promise.all([shared.pool, ...lanes.map((lane) => lane.pool)].map((pool) => pool.close()));
const result: FuzzWorkerResult = {
  done,
  failure,
  problems,
  heapGrowthBytes: heapMaxBytes - heapStartBytes,
  bytesInFlight: servers.reduce((sum, server) => sum + server.bytesInFlight, 0),
  connectionCount: servers.reduce((sum, server) => sum + server.connectionCount, 0),
  elapsedMs,
  outcomesChecked,
  readsChecked,
  sessionsByExport,
};
send({ type: 'result', result });
// The parent disconnects once it has every result; then nothing is left and the process ends.
