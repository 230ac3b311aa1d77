// The fuzzer's parts: a seeded generator of client sessions, a byte mutator, an oracle that
// judges the server's output against the client's input, and a runner over in-memory sockets.
// Used by fuzz-worker.ts (which runs them) for fuzz.test.ts (which judges the run).
import assert from 'node:assert/strict';
import {
  BASE_ALLOCATION,
  IHAVEOPT,
  NBDMAGIC,
  NBD_CMD_BLOCK_STATUS,
  NBD_CMD_CACHE,
  NBD_CMD_DISC,
  NBD_CMD_FLUSH,
  NBD_CMD_READ,
  NBD_CMD_TRIM,
  NBD_CMD_WRITE,
  NBD_CMD_WRITE_ZEROES,
  NBD_EINVAL,
  NBD_EIO,
  NBD_ENOSPC,
  NBD_ENOTSUP,
  NBD_EPERM,
  NBD_ESHUTDOWN,
  NBD_INFO_BLOCK_SIZE,
  NBD_INFO_EXPORT,
  NBD_OPT_ABORT,
  NBD_OPT_EXPORT_NAME,
  NBD_OPT_GO,
  NBD_OPT_INFO,
  NBD_OPT_LIST,
  NBD_OPT_LIST_META_CONTEXT,
  NBD_OPT_SET_META_CONTEXT,
  NBD_OPT_STARTTLS,
  NBD_OPT_STRUCTURED_REPLY,
  NBD_REPLY_FLAG_DONE,
  NBD_REPLY_TYPE_BLOCK_STATUS,
  NBD_REPLY_TYPE_ERROR,
  NBD_REPLY_TYPE_NONE,
  NBD_REPLY_TYPE_OFFSET_DATA,
  NBD_REPLY_TYPE_OFFSET_HOLE,
  NBD_REP_ACK,
  NBD_REP_ERR_INVALID,
  NBD_REP_ERR_UNKNOWN,
  NBD_REP_ERR_UNSUP,
  NBD_REP_INFO,
  NBD_REP_MAGIC,
  NBD_REP_META_CONTEXT,
  NBD_REP_SERVER,
  NBD_REQUEST_MAGIC,
  NBD_SIMPLE_REPLY_MAGIC,
  NBD_STRUCTURED_REPLY_MAGIC,
} from '../../src/nbd/protocol.ts';
import type { NbdServer } from '../../src/nbd/server.ts';
import { NBD_OPTION_DATA_BYTES_MAX, NBD_PAYLOAD_BYTES_MAX } from '../../src/constants.ts';
import { encodeInfoRequest, encodeMetaContextRequest, encodeOption, encodeRequest } from './client.ts';
import { duplexPair } from './duplex-pair.ts';

/** Size of every fuzzed export; requests aim in and around it. */
export const EXPORT_BYTES = 256 * 1024;
/** Exports the fuzzer's server must serve (see fuzz-worker.ts). */
export const NAMES = ['a', 'ro', 'slow', 'aligned'];

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
      case 0: parts.push(encodeOption(NBD_OPT_STRUCTURED_REPLY)); break;
      case 1: parts.push(encodeOption(NBD_OPT_SET_META_CONTEXT, encodeMetaContextRequest(rng.pick(NAMES), rng.pick([[BASE_ALLOCATION], [], ['base:'], ['qemu:x', BASE_ALLOCATION]])))); break;
      case 2: parts.push(encodeOption(NBD_OPT_LIST_META_CONTEXT, encodeMetaContextRequest(rng.pick(NAMES), rng.pick([[], ['base:'], [BASE_ALLOCATION]])))); break;
      case 3: parts.push(encodeOption(NBD_OPT_INFO, encodeInfoRequest(rng.pick([...NAMES, 'nope']), [0, 1, 2, 3]))); break;
      case 4: parts.push(encodeOption(NBD_OPT_LIST)); break;
      case 5: parts.push(encodeOption(rng.pick([NBD_OPT_STARTTLS, 4, 11, 99, 0x7fffffff]), Buffer.alloc(rng.below(8)))); break;
      default: parts.push(encodeOption(NBD_OPT_STRUCTURED_REPLY), encodeOption(NBD_OPT_SET_META_CONTEXT, encodeMetaContextRequest(name, [BASE_ALLOCATION]))); break;
    }
  }
  const finish = rng.below(20);
  if (finish === 0) {
    parts.push(encodeOption(NBD_OPT_ABORT));
    return Buffer.concat(parts);
  }
  if (finish < 4) parts.push(encodeOption(NBD_OPT_EXPORT_NAME, Buffer.from(name)));
  else parts.push(encodeOption(NBD_OPT_GO, encodeInfoRequest(name, rng.chance(0.5) ? [NBD_INFO_BLOCK_SIZE] : [])));
  const requestCount = rng.below(12);
  for (let i = 0; i < requestCount; i++) {
    const type = rng.chance(0.95)
      ? rng.pick([NBD_CMD_READ, NBD_CMD_READ, NBD_CMD_WRITE, NBD_CMD_WRITE, NBD_CMD_FLUSH, NBD_CMD_TRIM, NBD_CMD_WRITE_ZEROES, NBD_CMD_BLOCK_STATUS, NBD_CMD_CACHE])
      : rng.below(16);
    const flags = rng.chance(0.7) ? 0 : rng.chance(0.8) ? 1 << rng.below(5) : rng.below(0x10000);
    const cookie = BigInt(rng.next()) * 2n ** 32n + BigInt(rng.next());
    let offsetBytes = type === NBD_CMD_FLUSH && rng.chance(0.9) ? 0 : randomOffset(rng);
    let lengthBytes = type === NBD_CMD_FLUSH && rng.chance(0.9) ? 0 : randomLength(rng);
    if (type === NBD_CMD_DISC) offsetBytes = lengthBytes = 0;
    parts.push(encodeRequest(type, flags, cookie, offsetBytes, lengthBytes));
    if (type === NBD_CMD_WRITE) parts.push(Buffer.alloc(lengthBytes, rng.below(256)));
    if (type === NBD_CMD_DISC) return Buffer.concat(parts);
  }
  if (rng.chance(0.5)) parts.push(encodeRequest(NBD_CMD_DISC, 0, 1n, 0, 0));
  return Buffer.concat(parts);
}

const INTERESTING_U32 = [0, 1, 0x7fffffff, 0x80000000, 0xffffffff, NBD_PAYLOAD_BYTES_MAX + 1, NBD_OPTION_DATA_BYTES_MAX + 1, 4096, 28];

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

// ---- the oracle ----

class Cursor {
  position = 0;
  readonly bytes: Buffer;
  constructor(bytes: Buffer) {
    this.bytes = bytes;
  }
  get left(): number {
    return this.bytes.length - this.position;
  }
  take(count: number): Buffer | undefined {
    if (this.left < count) return undefined;
    const out = this.bytes.subarray(this.position, this.position + count);
    this.position += count;
    return out;
  }
}

const KNOWN_ERRORS = new Set([NBD_EPERM, NBD_EIO, NBD_EINVAL, NBD_ENOSPC, NBD_ENOTSUP, NBD_ESHUTDOWN, 75, 12]);
const OPTION_FINAL = new Set([NBD_REP_ACK, NBD_REP_ERR_UNSUP, NBD_REP_ERR_INVALID, NBD_REP_ERR_UNKNOWN]);

interface Outstanding {
  type: number;
  offsetBytes: number;
  lengthBytes: number;
  coveredBytes: number;
  done: boolean;
}

/** Throws with a description when the server's output breaks the protocol for this input. */
export function checkSession(input: Buffer, output: Buffer): void {
  const client = new Cursor(input);
  const server = new Cursor(output);
  const fail = (what: string): never => {
    throw new Error(`${what} (client byte ${client.position}, server byte ${server.position})`);
  };
  const greeting = server.take(18) ?? fail('no greeting');
  if (greeting.readBigUInt64BE(0) !== NBDMAGIC || greeting.readBigUInt64BE(8) !== IHAVEOPT || greeting.readUInt16BE(16) !== 3) fail('bad greeting');
  const serverDone = () => server.left === 0;

  const flags = client.take(4);
  if (flags === undefined) return serverDone() ? undefined : fail('output without client flags');
  const clientFlags = flags.readUInt32BE(0);
  if ((clientFlags & ~3) !== 0) return serverDone() ? undefined : fail('output after bad client flags');
  const noZeroes = (clientFlags & 2) !== 0;
  let structured = false;

  // Handshake: each complete option gets one complete answer, or the output stops.
  for (;;) {
    const header = client.take(16);
    if (header === undefined) return serverDone() ? undefined : fail('output for an incomplete option header');
    if (header.readBigUInt64BE(0) !== IHAVEOPT) return serverDone() ? undefined : fail('output after a bad option magic');
    const option = header.readUInt32BE(8);
    const dataBytes = header.readUInt32BE(12);
    if (dataBytes > NBD_OPTION_DATA_BYTES_MAX) return serverDone() ? undefined : fail('output after an oversized option');
    if (client.take(dataBytes) === undefined) return serverDone() ? undefined : fail('output for incomplete option data');
    if (serverDone()) return;
    if (option === NBD_OPT_EXPORT_NAME) {
      const reply = server.take(noZeroes ? 10 : 134) ?? fail('short EXPORT_NAME reply');
      if (!noZeroes && !reply.subarray(10).every((b) => b === 0)) fail('EXPORT_NAME padding not zero');
      if ((reply.readUInt16BE(8) & 1) === 0) fail('transmission flags without HAS_FLAGS');
      break;
    }
    let sawExport = false;
    let entered = false;
    for (;;) {
      const replyHeader = server.take(20) ?? fail('short option reply header');
      if (replyHeader.readBigUInt64BE(0) !== NBD_REP_MAGIC) fail('bad option reply magic');
      if (replyHeader.readUInt32BE(8) !== option) fail(`option reply echoes ${replyHeader.readUInt32BE(8)} for ${option}`);
      const type = replyHeader.readUInt32BE(12);
      const data = server.take(replyHeader.readUInt32BE(16)) ?? fail('short option reply data');
      if (type === NBD_REP_INFO) {
        if (data.length < 2) fail('short NBD_REP_INFO');
        const info = data.readUInt16BE(0);
        if (info === NBD_INFO_EXPORT) {
          if (data.length !== 12) fail('NBD_INFO_EXPORT length');
          sawExport = true;
        }
        if (info === NBD_INFO_BLOCK_SIZE && data.length !== 14) fail('NBD_INFO_BLOCK_SIZE length');
        if (option !== NBD_OPT_INFO && option !== NBD_OPT_GO) fail('NBD_REP_INFO for another option');
        continue;
      }
      if (type === NBD_REP_SERVER) {
        if (option !== NBD_OPT_LIST || data.length < 4 || data.readUInt32BE(0) > data.length - 4) fail('bad NBD_REP_SERVER');
        continue;
      }
      if (type === NBD_REP_META_CONTEXT) {
        if (option !== NBD_OPT_LIST_META_CONTEXT && option !== NBD_OPT_SET_META_CONTEXT) fail('NBD_REP_META_CONTEXT for another option');
        if (data.subarray(4).toString() !== BASE_ALLOCATION) fail('unknown meta context');
        continue;
      }
      if (!OPTION_FINAL.has(type)) fail(`unknown option reply type ${type}`);
      if (type === NBD_REP_ACK && (option === NBD_OPT_INFO || option === NBD_OPT_GO) && !sawExport) fail('INFO/GO ack without NBD_INFO_EXPORT');
      if (type === NBD_REP_ACK && option === NBD_OPT_STRUCTURED_REPLY) structured = true;
      if (type === NBD_REP_ACK && option === NBD_OPT_ABORT) return serverDone() ? undefined : fail('output after ABORT ack');
      if (type === NBD_REP_ACK && option === NBD_OPT_GO) entered = true;
      break;
    }
    if (entered) break;
  }

  // Transmission: the requests the server can have parsed, by cookie.
  const outstanding = new Map<bigint, Outstanding[]>();
  // Unless the client breaks the framing (a bad magic: the server hard-disconnects), every request
  // it sent in full is answered: after NBD_CMD_DISC, and also when its input just ends.
  let mustAnswerAll = true;
  for (;;) {
    const header = client.take(28);
    if (header === undefined) break;
    if (header.readUInt32BE(0) !== NBD_REQUEST_MAGIC) {
      mustAnswerAll = false;
      break;
    }
    const type = header.readUInt16BE(6);
    const cookie = header.readBigUInt64BE(8);
    const lengthBytes = header.readUInt32BE(24);
    if (type === NBD_CMD_DISC) break;
    if (type === NBD_CMD_WRITE && client.take(lengthBytes) === undefined) break;
    const high = header.readUInt32BE(16);
    const offsetBytes = high * 2 ** 32 + header.readUInt32BE(20);
    const list = outstanding.get(cookie) ?? [];
    list.push({ type, offsetBytes, lengthBytes, coveredBytes: 0, done: false });
    outstanding.set(cookie, list);
  }
  // A client may break the rule that in-flight cookies are unique (mutations do): then a reply
  // cannot be matched to one request, so for that cookie only the structure is checked, and a
  // simple reply's data length is the one after which a valid reply (or the end) follows.
  // Simple replies that fit every pending request of their cookie equally (the same data length
  // whichever it answers) are counted here instead of being given to one request: which request
  // they answered is only told by a later reply of the cookie (an error reply to a READ or a TRIM
  // sharing a cookie says nothing; the data after a later success does).
  const undecided = new Map<bigint, number>();
  const pendingFor = (cookie: bigint): Outstanding[] => {
    const pending = outstanding.get(cookie)?.filter((r) => !r.done) ?? [];
    return pending.length > (undecided.get(cookie) ?? 0) ? pending : fail(`reply for unknown cookie ${cookie}`);
  };
  const nextIsReply = (position: number): boolean => {
    if (position === output.length) return true;
    if (position + 4 > output.length) return false;
    const magic = output.readUInt32BE(position);
    return magic === NBD_SIMPLE_REPLY_MAGIC || magic === NBD_STRUCTURED_REPLY_MAGIC;
  };
  while (!serverDone()) {
    const magic = (server.take(4) ?? fail('short reply magic')).readUInt32BE(0);
    if (magic === NBD_SIMPLE_REPLY_MAGIC) {
      const rest = server.take(12) ?? fail('short simple reply');
      const error = rest.readUInt32BE(0);
      const cookie = rest.readBigUInt64BE(4);
      const pending = pendingFor(cookie);
      if (error !== 0 && !KNOWN_ERRORS.has(error)) fail(`unknown error ${error}`);
      const dataBytes = (r: Outstanding) => (r.type === NBD_CMD_READ && error === 0 ? r.lengthBytes : 0);
      if (pending.length > 1 && new Set(pending.map(dataBytes)).size === 1) {
        if (structured && pending.every((r) => r.type === NBD_CMD_READ)) fail('simple reply to READ with structured replies');
        server.take(dataBytes(pending[0]!)) ?? fail('short READ data');
        undecided.set(cookie, (undecided.get(cookie) ?? 0) + 1);
        continue;
      }
      const request = pending.length === 1 ? pending[0]! : pending.find((r) => nextIsReply(server.position + dataBytes(r))) ?? pending[0]!;
      if (request.type === NBD_CMD_READ && structured) fail('simple reply to READ with structured replies');
      server.take(dataBytes(request)) ?? fail('short READ data');
      request.done = true;
      continue;
    }
    if (magic !== NBD_STRUCTURED_REPLY_MAGIC) fail(`bad reply magic 0x${magic.toString(16)}`);
    if (!structured) fail('structured reply without negotiation');
    const header = server.take(16) ?? fail('short chunk header');
    const chunkFlags = header.readUInt16BE(0);
    const type = header.readUInt16BE(2);
    const pending = pendingFor(header.readBigUInt64BE(4));
    const ambiguous = (outstanding.get(header.readBigUInt64BE(4))?.length ?? 0) > 1;
    const wantType = type === NBD_REPLY_TYPE_OFFSET_DATA || type === NBD_REPLY_TYPE_OFFSET_HOLE ? NBD_CMD_READ : type === NBD_REPLY_TYPE_BLOCK_STATUS ? NBD_CMD_BLOCK_STATUS : undefined;
    const request = (ambiguous && pending.find((r) => wantType === undefined || r.type === wantType)) || pending[0]!;
    const payload = server.take(header.readUInt32BE(12)) ?? fail('short chunk payload');
    if ((chunkFlags & ~NBD_REPLY_FLAG_DONE) !== 0) fail('unknown chunk flags');
    switch (type) {
      case NBD_REPLY_TYPE_NONE:
        if (payload.length !== 0 || !(chunkFlags & NBD_REPLY_FLAG_DONE)) fail('bad NONE chunk');
        break;
      case NBD_REPLY_TYPE_OFFSET_DATA:
      case NBD_REPLY_TYPE_OFFSET_HOLE: {
        if (request.type !== NBD_CMD_READ) fail('data chunk for a non-READ');
        if (payload.length < (type === NBD_REPLY_TYPE_OFFSET_DATA ? 9 : 12)) fail('short data chunk');
        if (type === NBD_REPLY_TYPE_OFFSET_HOLE && payload.length !== 12) fail('bad hole chunk');
        const offsetBytes = Number(payload.readBigUInt64BE(0));
        const lengthBytes = type === NBD_REPLY_TYPE_OFFSET_DATA ? payload.length - 8 : payload.readUInt32BE(8);
        if (lengthBytes === 0) fail('empty data chunk');
        if (!ambiguous && (offsetBytes < request.offsetBytes || offsetBytes + lengthBytes > request.offsetBytes + request.lengthBytes)) fail('chunk outside its READ');
        request.coveredBytes += lengthBytes;
        break;
      }
      case NBD_REPLY_TYPE_BLOCK_STATUS: {
        if (request.type !== NBD_CMD_BLOCK_STATUS || payload.length < 12 || (payload.length - 4) % 8 !== 0) fail('bad block status chunk');
        let sum = 0;
        for (let at = 4; at < payload.length; at += 8) {
          const extentBytes = payload.readUInt32BE(at);
          if (extentBytes === 0 || (payload.readUInt32BE(at + 4) & ~3) !== 0) fail('bad extent');
          sum += extentBytes;
        }
        if (!ambiguous && sum > request.lengthBytes) fail('extents past the request');
        break;
      }
      case NBD_REPLY_TYPE_ERROR: {
        if (payload.length < 6 || payload.readUInt16BE(4) !== payload.length - 6) fail('bad error chunk');
        const error = payload.readUInt32BE(0);
        if (error === 0 || !KNOWN_ERRORS.has(error)) fail(`bad error ${error}`);
        if (!(chunkFlags & NBD_REPLY_FLAG_DONE)) fail('error chunk not last');
        request.coveredBytes = -1;
        break;
      }
      default:
        fail(`unknown chunk type ${type}`);
    }
    if (chunkFlags & NBD_REPLY_FLAG_DONE) {
      if (!ambiguous && request.type === NBD_CMD_READ && request.coveredBytes >= 0 && request.coveredBytes !== request.lengthBytes) fail('READ reply does not cover the request');
      request.done = true;
    }
  }
  if (mustAnswerAll) {
    for (const [cookie, list] of outstanding) {
      if (list.filter((request) => !request.done).length > (undecided.get(cookie) ?? 0)) fail('a request was left unanswered');
    }
  }
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

