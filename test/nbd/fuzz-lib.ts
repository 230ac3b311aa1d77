// The fuzzer's parts: a seeded generator of client sessions, a byte mutator, an oracle that
// judges the server's output against the client's input, and a runner over in-memory sockets.
// Used by fuzz-worker.ts (which runs them) for fuzz.test.ts (which judges the run).
import assert from 'node:assert/strict';
import type { FuzzExportFacts } from './fuzz-check.ts';
import { SPEC_BASE_ALLOCATION, SPEC_CMD, SPEC_OPT, SPEC_PAYLOAD_BYTES_DEFAULT_MAX } from './nbd-spec.ts';
import type { NbdServer } from '../../src/nbd/server.ts';
import { encodeInfoRequest, encodeMetaContextRequest, encodeOption, encodeRequest } from './client.ts';
import { duplexPair } from './duplex-pair.ts';

/** Size of every fuzzed export; requests aim in and around it. */
export const EXPORT_BYTES = 256 * 1024;
/**
 * The exports the fuzzer's servers serve (fuzz-worker.ts), as the checker is told of them:
 * memory ones (plain, read-only, slow without FUA or TRIM, 512-byte aligned without fast zero)
 * and a pool's volume, writable and read-only.
 */
export const FUZZ_EXPORTS: readonly FuzzExportFacts[] = [
  { name: 'a', sizeBytes: EXPORT_BYTES, readOnly: false },
  { name: 'ro', sizeBytes: EXPORT_BYTES, readOnly: true },
  { name: 'slow', sizeBytes: EXPORT_BYTES, readOnly: false },
  { name: 'aligned', sizeBytes: EXPORT_BYTES, readOnly: false, blockSizeMinBytes: 512 },
  { name: 'pool', sizeBytes: EXPORT_BYTES, readOnly: false },
  { name: 'pool-ro', sizeBytes: EXPORT_BYTES, readOnly: true },
];
export const NAMES = FUZZ_EXPORTS.map((facts) => facts.name);

/** xoshiro128** — small, fast, and the same sequence on every platform for a seed. */
export class Rng {
  #s: Uint32Array;
  constructor(seed: number) {
    this.#s = new Uint32Array(4);
    let x = seed >>> 0 || 0x9e3779b9;
    for (let i = 0; i < 4; i++) {
      // splitmix32 to spread the seed.
      x = (x + 0x9e3779b9) >>> 0;
      let z = x;
      z = Math.imul(z ^ (z >>> 16), 0x85ebca6b) >>> 0;
      z = Math.imul(z ^ (z >>> 13), 0xc2b2ae35) >>> 0;
      this.#s[i] = (z ^ (z >>> 16)) >>> 0;
    }
  }
  next(): number {
    const s = this.#s;
    const result = Math.imul(rotl(Math.imul(s[1]!, 5), 7), 9) >>> 0;
    const t = (s[1]! << 9) >>> 0;
    s[2]! ^= s[0]!;
    s[3]! ^= s[1]!;
    s[1]! ^= s[2]!;
    s[0]! ^= s[3]!;
    s[2]! ^= t;
    s[3] = rotl(s[3]!, 11);
    return result;
  }
  below(n: number): number {
    return Math.floor((this.next() / 2 ** 32) * n);
  }
  chance(p: number): boolean {
    return this.next() / 2 ** 32 < p;
  }
  pick<T>(items: readonly T[]): T {
    return items[this.below(items.length)]!;
  }
}

function rotl(x: number, k: number): number {
  return ((x << k) | (x >>> (32 - k))) >>> 0;
}

// ---- session generation ----

function u32(n: number): Buffer {
  const b = Buffer.alloc(4);
  b.writeUInt32BE(n >>> 0);
  return b;
}

function randomOffset(rng: Rng): number {
  const r = rng.below(10);
  if (r < 6) return rng.below(EXPORT_BYTES / 512) * 512;
  if (r < 8) return rng.below(EXPORT_BYTES);
  if (r < 9) return EXPORT_BYTES - rng.below(4096);
  return rng.pick([EXPORT_BYTES, 2 ** 40, 2 ** 53 + 4096, 0xffff_ffff]);
}

function randomLength(rng: Rng): number {
  const r = rng.below(10);
  if (r < 5) return (1 + rng.below(16)) * 512;
  if (r < 8) return rng.below(20_000);
  if (r < 9) return 0;
  return rng.pick([65536, 200_000, EXPORT_BYTES]);
}

export function generateSession(rng: Rng): Buffer {
  const parts: Buffer[] = [];
  parts.push(u32(rng.chance(0.97) ? rng.pick([3, 3, 3, 1]) : rng.next()));
  const name = rng.chance(0.9) ? rng.pick(NAMES) : rng.pick(['', 'nope', 'x'.repeat(300)]);
  const optionCount = rng.below(4);
  for (let i = 0; i < optionCount; i++) {
    switch (rng.below(8)) {
      case 0: parts.push(encodeOption(SPEC_OPT.STRUCTURED_REPLY)); break;
      case 1: parts.push(encodeOption(SPEC_OPT.SET_META_CONTEXT, encodeMetaContextRequest(rng.pick(NAMES), rng.pick([[SPEC_BASE_ALLOCATION], [], ['base:'], ['qemu:x', SPEC_BASE_ALLOCATION]])))); break;
      case 2: parts.push(encodeOption(SPEC_OPT.LIST_META_CONTEXT, encodeMetaContextRequest(rng.pick(NAMES), rng.pick([[], ['base:'], [SPEC_BASE_ALLOCATION]])))); break;
      case 3: parts.push(encodeOption(SPEC_OPT.INFO, encodeInfoRequest(rng.pick([...NAMES, 'nope']), [0, 1, 2, 3]))); break;
      case 4: parts.push(encodeOption(SPEC_OPT.LIST)); break;
      case 5: parts.push(encodeOption(rng.pick([SPEC_OPT.STARTTLS, 4, 11, 99, 0x7fffffff]), Buffer.alloc(rng.below(8)))); break;
      default: parts.push(encodeOption(SPEC_OPT.STRUCTURED_REPLY), encodeOption(SPEC_OPT.SET_META_CONTEXT, encodeMetaContextRequest(name, [SPEC_BASE_ALLOCATION]))); break;
    }
  }
  const finish = rng.below(20);
  if (finish === 0) {
    parts.push(encodeOption(SPEC_OPT.ABORT));
    return Buffer.concat(parts);
  }
  if (finish < 4) parts.push(encodeOption(SPEC_OPT.EXPORT_NAME, Buffer.from(name)));
  else parts.push(encodeOption(SPEC_OPT.GO, encodeInfoRequest(name, rng.chance(0.5) ? [3] : [])));
  const requestCount = rng.below(12);
  for (let i = 0; i < requestCount; i++) {
    const type = rng.chance(0.95)
      ? rng.pick([SPEC_CMD.READ, SPEC_CMD.READ, SPEC_CMD.WRITE, SPEC_CMD.WRITE, SPEC_CMD.FLUSH, SPEC_CMD.TRIM, SPEC_CMD.WRITE_ZEROES, SPEC_CMD.BLOCK_STATUS, SPEC_CMD.CACHE])
      : rng.below(16);
    const flags = rng.chance(0.7) ? 0 : rng.chance(0.8) ? 1 << rng.below(5) : rng.below(0x10000);
    const cookie = BigInt(rng.next()) * 2n ** 32n + BigInt(rng.next());
    let offsetBytes = type === SPEC_CMD.FLUSH && rng.chance(0.9) ? 0 : randomOffset(rng);
    let lengthBytes = type === SPEC_CMD.FLUSH && rng.chance(0.9) ? 0 : randomLength(rng);
    if (type === SPEC_CMD.DISC) offsetBytes = lengthBytes = 0;
    parts.push(encodeRequest(type, flags, cookie, offsetBytes, lengthBytes));
    if (type === SPEC_CMD.WRITE) parts.push(Buffer.alloc(lengthBytes, rng.below(256)));
    if (type === SPEC_CMD.DISC) return Buffer.concat(parts);
  }
  if (rng.chance(0.5)) parts.push(encodeRequest(SPEC_CMD.DISC, 0, 1n, 0, 0));
  return Buffer.concat(parts);
}

const INTERESTING_U32 = [0, 1, 0x7fffffff, 0x80000000, 0xffffffff, SPEC_PAYLOAD_BYTES_DEFAULT_MAX + 1, 16 * 1024 + 1, 4097, 4096, 28];

export function mutate(rng: Rng, input: Buffer): Buffer {
  let bytes = Buffer.from(input);
  const count = 1 + rng.below(4);
  for (let i = 0; i < count; i++) {
    const at = rng.below(Math.max(1, bytes.length));
    switch (rng.below(7)) {
      case 0: if (bytes.length > 0) bytes[at] = bytes[at]! ^ (1 << rng.below(8)); break;
      case 1: if (bytes.length > 0) bytes[at] = rng.pick([0, 0xff, 0x7f, 0x80, rng.below(256)]); break;
      case 2: if (bytes.length >= at + 4) bytes.writeUInt32BE(rng.pick(INTERESTING_U32), at); break;
      case 3: bytes = Buffer.concat([bytes.subarray(0, at), Buffer.from(Array.from({ length: 1 + rng.below(32) }, () => rng.below(256))), bytes.subarray(at)]); break;
      case 4: bytes = Buffer.concat([bytes.subarray(0, at), bytes.subarray(at + 1 + rng.below(64))]); break;
      case 5: bytes = bytes.subarray(0, at); break;
      default: {
        const end = Math.min(bytes.length, at + 1 + rng.below(64));
        bytes = Buffer.concat([bytes.subarray(0, end), bytes.subarray(at, end), bytes.subarray(end)]);
      }
    }
  }
  return bytes;
}

// ---- the run ----

const TRANSIENT_READ_BYTES = 64 * 1024;
const transientReadBuffer = Buffer.alloc(TRANSIENT_READ_BYTES);

export async function runSession(server: NbdServer, rng: Rng, input: Buffer): Promise<Buffer> {
  const [clientSide, serverSide] = duplexPair();
  const output: Buffer[] = [];
  clientSide.on('data', (chunk: Buffer) => output.push(chunk));
  const closed = new Promise<void>((resolve) => clientSide.on('end', resolve));
  // Half the sessions feed the server as NbdServer does real sockets: through one reused read
  // buffer, scribbled over after each read, so a parser that kept a view of its input misreads.
  const transientReads = rng.chance(0.5);
  const connection = server.handle(serverSide, { transientReads });
  assert.ok(connection !== undefined);
  if (transientReads) {
    serverSide.on('data', (chunk: Buffer) => {
      let more = true;
      for (let offset = 0; offset < chunk.length; offset += TRANSIENT_READ_BYTES) {
        const piece = chunk.subarray(offset, offset + TRANSIENT_READ_BYTES);
        transientReadBuffer.set(piece);
        more = connection.receiveTransient(transientReadBuffer.subarray(0, piece.length)) && more;
        transientReadBuffer.fill(0xa5);
      }
      if (!more) serverSide.pause();
    });
  }
  // Whole, in a few pieces, or (now and then) in tiny pieces: the parser must not care.
  const style = rng.below(10);
  const pieceBytesMax = style < 5 ? input.length : style < 9 ? Math.max(1, input.length >> 2) : 16;
  let position = 0;
  while (position < input.length) {
    const step = 1 + rng.below(Math.min(pieceBytesMax, input.length - position));
    clientSide.write(input.subarray(position, position + step));
    position += step;
    if (style >= 5 && rng.chance(0.3)) await new Promise((resolve) => setImmediate(resolve));
  }
  // Let the server answer what it parsed before the client's end arrives (it ends the session).
  await new Promise((resolve) => setImmediate(resolve));
  clientSide.end();
  await closed;
  await connection.closed;
  return Buffer.concat(output);
}

