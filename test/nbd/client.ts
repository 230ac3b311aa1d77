// A small NBD client for protocol tests: raw bytes when a test wants to break the rules, and a
// checked handshake plus request/reply calls (many in flight, matched by cookie) when it does
// not. Written from the spec, independently of src/nbd's parser, so it can judge the server.
import net from 'node:net';
import tls from 'node:tls';
import type { Duplex } from 'node:stream';
import {
  IHAVEOPT,
  NBDMAGIC,
  NBD_CMD_READ,
  NBD_FLAG_C_FIXED_NEWSTYLE,
  NBD_FLAG_C_NO_ZEROES,
  NBD_INFO_EXPORT,
  NBD_OPT_GO,
  NBD_OPT_SET_META_CONTEXT,
  NBD_OPT_STARTTLS,
  NBD_OPT_STRUCTURED_REPLY,
  NBD_REP_ACK,
  NBD_REP_FLAG_ERROR,
  NBD_REP_INFO,
  NBD_REP_MAGIC,
  NBD_REPLY_FLAG_DONE,
  NBD_REPLY_TYPE_BLOCK_STATUS,
  NBD_REPLY_TYPE_ERROR,
  NBD_REPLY_TYPE_ERROR_OFFSET,
  NBD_REPLY_TYPE_NONE,
  NBD_REPLY_TYPE_OFFSET_DATA,
  NBD_REPLY_TYPE_OFFSET_HOLE,
  NBD_REQUEST_MAGIC,
  NBD_SIMPLE_REPLY_MAGIC,
  NBD_STRUCTURED_REPLY_MAGIC,
} from '../../src/nbd/protocol.ts';

/** Bytes from a stream, read exactly as many as asked, with a timeout. */
export class RawClient {
  readonly stream: Duplex;
  #chunks: Buffer[] = [];
  #queuedBytes = 0;
  #waiter: (() => void) | undefined;
  #ended = false;
  readonly closed: Promise<void>;

  constructor(stream: Duplex) {
    this.stream = stream;
    stream.on('data', (chunk: Buffer) => {
      this.#chunks.push(chunk);
      this.#queuedBytes += chunk.length;
      this.#wake();
    });
    stream.on('error', () => {});
    this.closed = new Promise((resolve) => {
      const done = () => {
        this.#ended = true;
        this.#wake();
        resolve();
      };
      stream.on('end', done);
      stream.on('close', done);
    });
  }

  static async connect(target: { port: number; host?: string } | { path: string }): Promise<RawClient> {
    const socket = 'path' in target ? net.connect(target.path) : net.connect(target.port, target.host ?? '127.0.0.1');
    socket.setNoDelay(true);
    await new Promise<void>((resolve, reject) => {
      socket.once('connect', resolve);
      socket.once('error', reject);
    });
    return new RawClient(socket);
  }

  get ended(): boolean {
    return this.#ended;
  }

  get queuedBytes(): number {
    return this.#queuedBytes;
  }

  send(bytes: Uint8Array): void {
    if (!this.stream.destroyed && !this.stream.writableEnded) this.stream.write(bytes);
  }

  /** Exactly `count` bytes; rejects if the stream ends first or after `timeoutMs`. */
  async read(count: number, timeoutMs = 10_000): Promise<Buffer> {
    const deadline = Date.now() + timeoutMs;
    while (this.#queuedBytes < count) {
      if (this.#ended) throw new Error(`stream ended with ${this.#queuedBytes} of ${count} bytes`);
      const left = deadline - Date.now();
      if (left <= 0) throw new Error(`timed out waiting for ${count} bytes (have ${this.#queuedBytes})`);
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, left);
        this.#waiter = () => {
          clearTimeout(timer);
          resolve();
        };
      });
    }
    const all = this.#chunks.length === 1 ? this.#chunks[0]! : Buffer.concat(this.#chunks);
    const out = Buffer.from(all.subarray(0, count));
    const rest = all.subarray(count);
    this.#chunks = rest.length > 0 ? [rest] : [];
    this.#queuedBytes = rest.length;
    return out;
  }

  /**
   * Resolves true when the server has closed the stream, false after `timeoutMs` (a limit that
   * only turns a hang into a failure: tests do not time the server).
   */
  async waitClosed(timeoutMs = 60_000): Promise<boolean> {
    let timer: NodeJS.Timeout | undefined;
    const result = await Promise.race([
      this.closed.then(() => true),
      new Promise<boolean>((resolve) => (timer = setTimeout(() => resolve(false), timeoutMs))),
    ]);
    clearTimeout(timer);
    return result;
  }

  destroy(): void {
    this.stream.destroy();
  }

  #wake(): void {
    const waiter = this.#waiter;
    this.#waiter = undefined;
    waiter?.();
  }
}

export interface OptionReply {
  option: number;
  type: number;
  data: Buffer;
}

export interface Reply {
  cookie: bigint;
  /** 0 on success, else the NBD error value. */
  error: number;
  /** READ: the data, holes filled with zeros. */
  data?: Buffer;
  /** Structured chunk types in arrival order. */
  chunkTypes: number[];
  /** BLOCK_STATUS: [length, flags] pairs. */
  extents?: Array<[number, number]>;
  contextId?: number;
  message?: string;
}

interface Pending {
  type: number;
  offsetBytes: number;
  lengthBytes: number;
  resolve: (reply: Reply) => void;
  reject: (error: Error) => void;
  data?: Buffer;
  chunkTypes: number[];
  error: number;
  message?: string;
  extents?: Array<[number, number]>;
  contextId?: number;
  coveredBytes: number;
}

export function encodeOption(option: number, data: Uint8Array = new Uint8Array(0)): Buffer {
  const buffer = Buffer.alloc(16 + data.length);
  buffer.writeBigUInt64BE(IHAVEOPT, 0);
  buffer.writeUInt32BE(option, 8);
  buffer.writeUInt32BE(data.length, 12);
  buffer.set(data, 16);
  return buffer;
}

/** NBD_OPT_INFO / NBD_OPT_GO data. */
export function encodeInfoRequest(name: string, infos: number[] = []): Buffer {
  const nameBytes = Buffer.from(name, 'utf8');
  const buffer = Buffer.alloc(4 + nameBytes.length + 2 + 2 * infos.length);
  buffer.writeUInt32BE(nameBytes.length, 0);
  buffer.set(nameBytes, 4);
  buffer.writeUInt16BE(infos.length, 4 + nameBytes.length);
  infos.forEach((info, i) => buffer.writeUInt16BE(info, 6 + nameBytes.length + 2 * i));
  return buffer;
}

/** NBD_OPT_LIST_META_CONTEXT / NBD_OPT_SET_META_CONTEXT data. */
export function encodeMetaContextRequest(name: string, queries: string[]): Buffer {
  const parts: Buffer[] = [];
  const nameBytes = Buffer.from(name, 'utf8');
  const head = Buffer.alloc(4);
  head.writeUInt32BE(nameBytes.length);
  parts.push(head, nameBytes);
  const count = Buffer.alloc(4);
  count.writeUInt32BE(queries.length);
  parts.push(count);
  for (const query of queries) {
    const queryBytes = Buffer.from(query, 'utf8');
    const length = Buffer.alloc(4);
    length.writeUInt32BE(queryBytes.length);
    parts.push(length, queryBytes);
  }
  return Buffer.concat(parts);
}

export function encodeRequest(type: number, flags: number, cookie: bigint, offsetBytes: number, lengthBytes: number): Buffer {
  const buffer = Buffer.alloc(28);
  buffer.writeUInt32BE(NBD_REQUEST_MAGIC, 0);
  buffer.writeUInt16BE(flags, 4);
  buffer.writeUInt16BE(type, 6);
  buffer.writeBigUInt64BE(cookie, 8);
  buffer.writeBigUInt64BE(BigInt(offsetBytes), 16);
  buffer.writeUInt32BE(lengthBytes, 24);
  return buffer;
}

/** A client that checks every byte the server sends against the spec. */
export class NbdTestClient {
  /** The byte stream; replaced by the TLS stream over it after startTls(). */
  raw: RawClient;
  sizeBytes = 0;
  transmissionFlags = 0;
  structured = false;
  #nextCookie = 1n;
  #pending = new Map<bigint, Pending>();
  #readerError: Error | undefined;

  constructor(raw: RawClient) {
    this.raw = raw;
  }

  static async connect(target: { port: number } | { path: string }): Promise<NbdTestClient> {
    return new NbdTestClient(await RawClient.connect(target));
  }

  /** Reads and checks the greeting, sends client flags. */
  async greet(clientFlags = NBD_FLAG_C_FIXED_NEWSTYLE | NBD_FLAG_C_NO_ZEROES): Promise<number> {
    const greeting = await this.raw.read(18);
    if (greeting.readBigUInt64BE(0) !== NBDMAGIC) throw new Error('bad NBDMAGIC');
    if (greeting.readBigUInt64BE(8) !== IHAVEOPT) throw new Error('bad IHAVEOPT');
    const flags = greeting.readUInt16BE(16);
    const flagBytes = Buffer.alloc(4);
    flagBytes.writeUInt32BE(clientFlags);
    this.raw.send(flagBytes);
    return flags;
  }

  /**
   * NBD_OPT_STARTTLS, then the TLS handshake over the same socket; returns the option's replies
   * (when the first is not an ACK, no TLS is attempted). Options after it travel encrypted.
   */
  async startTls(options: tls.ConnectionOptions): Promise<OptionReply[]> {
    const replies = await this.option(NBD_OPT_STARTTLS);
    if (replies.at(-1)?.type !== NBD_REP_ACK) return replies;
    const plain = this.raw.stream as net.Socket;
    plain.removeAllListeners('data');
    const secure = tls.connect({ ...options, socket: plain });
    await new Promise<void>((resolve, reject) => {
      secure.once('secureConnect', resolve);
      secure.once('error', reject);
    });
    this.raw = new RawClient(secure);
    return replies;
  }

  /** Sends one option and reads its replies up to and including the final one. */
  async option(option: number, data?: Uint8Array): Promise<OptionReply[]> {
    this.raw.send(encodeOption(option, data));
    return this.readOptionReplies(option);
  }

  async readOptionReplies(option: number): Promise<OptionReply[]> {
    const replies: OptionReply[] = [];
    for (;;) {
      const header = await this.raw.read(20);
      if (header.readBigUInt64BE(0) !== NBD_REP_MAGIC) throw new Error('bad option reply magic');
      const echoed = header.readUInt32BE(8);
      if (echoed !== option) throw new Error(`option reply for ${echoed}, expected ${option}`);
      const type = header.readUInt32BE(12);
      const data = await this.raw.read(header.readUInt32BE(16));
      replies.push({ option, type, data });
      if (type === NBD_REP_ACK || type >= NBD_REP_FLAG_ERROR) return replies;
    }
  }

  /** The usual modern handshake: structured replies, base:allocation, GO. */
  async handshake(name: string, options: { structured?: boolean; metaContext?: boolean; tls?: tls.ConnectionOptions } = {}): Promise<void> {
    await this.greet();
    if (options.tls !== undefined) {
      const replies = await this.startTls(options.tls);
      if (replies.at(-1)?.type !== NBD_REP_ACK) throw new Error(`STARTTLS refused with reply type ${replies.at(-1)?.type}`);
    }
    const structured = options.structured ?? true;
    if (structured) {
      const replies = await this.option(NBD_OPT_STRUCTURED_REPLY);
      if (replies.at(-1)?.type !== NBD_REP_ACK) throw new Error('structured replies refused');
      this.structured = true;
      if (options.metaContext ?? true) {
        const meta = await this.option(NBD_OPT_SET_META_CONTEXT, encodeMetaContextRequest(name, ['base:allocation']));
        if (meta.at(-1)?.type !== NBD_REP_ACK) throw new Error('SET_META_CONTEXT failed');
      }
    }
    const replies = await this.option(NBD_OPT_GO, encodeInfoRequest(name, [3]));
    const last = replies.at(-1);
    if (last?.type !== NBD_REP_ACK) throw new Error(`GO failed with reply type ${last?.type}: ${last?.data.toString()}`);
    const exportInfo = replies.find((reply) => reply.type === NBD_REP_INFO && reply.data.readUInt16BE(0) === NBD_INFO_EXPORT);
    if (exportInfo === undefined) throw new Error('GO without NBD_INFO_EXPORT');
    this.sizeBytes = Number(exportInfo.data.readBigUInt64BE(2));
    this.transmissionFlags = exportInfo.data.readUInt16BE(10);
    this.#startReader();
  }

  /** Sends a request; resolves with its whole reply. */
  call(type: number, options: { flags?: number; offsetBytes?: number; lengthBytes?: number; data?: Uint8Array; cookie?: bigint } = {}): Promise<Reply> {
    if (this.#readerError !== undefined) return Promise.reject(this.#readerError);
    const cookie = options.cookie ?? this.#nextCookie++;
    const offsetBytes = options.offsetBytes ?? 0;
    const lengthBytes = options.lengthBytes ?? options.data?.length ?? 0;
    const promise = new Promise<Reply>((resolve, reject) => {
      this.#pending.set(cookie, { type, offsetBytes, lengthBytes, resolve, reject, chunkTypes: [], error: 0, coveredBytes: 0 });
    });
    this.raw.send(encodeRequest(type, options.flags ?? 0, cookie, offsetBytes, lengthBytes));
    if (options.data !== undefined) this.raw.send(options.data);
    return promise;
  }

  /** Requests whose reply has not arrived. */
  get pendingCount(): number {
    return this.#pending.size;
  }

  #startReader(): void {
    void this.#readLoop().catch((error: Error) => {
      this.#readerError = error;
      for (const pending of this.#pending.values()) pending.reject(error);
      this.#pending.clear();
    });
  }

  async #readLoop(): Promise<void> {
    for (;;) {
      if (this.raw.ended && this.raw.queuedBytes === 0) throw new Error('server closed the connection');
      const magicBytes = await this.raw.read(4, 600_000);
      const magic = magicBytes.readUInt32BE(0);
      if (magic === NBD_SIMPLE_REPLY_MAGIC) {
        const rest = await this.raw.read(12);
        const error = rest.readUInt32BE(0);
        const cookie = rest.readBigUInt64BE(4);
        const pending = this.#take(cookie);
        if (pending.type === NBD_CMD_READ && this.structured) throw new Error('simple reply to a READ after structured replies were negotiated');
        const reply: Reply = { cookie, error, chunkTypes: [] };
        if (pending.type === NBD_CMD_READ && error === 0) reply.data = await this.raw.read(pending.lengthBytes);
        pending.resolve(reply);
        continue;
      }
      if (magic !== NBD_STRUCTURED_REPLY_MAGIC) throw new Error(`bad reply magic 0x${magic.toString(16)}`);
      if (!this.structured) throw new Error('structured reply without negotiation');
      const header = await this.raw.read(16);
      const flags = header.readUInt16BE(0);
      const type = header.readUInt16BE(2);
      const cookie = header.readBigUInt64BE(4);
      const payloadBytes = header.readUInt32BE(12);
      const payload = await this.raw.read(payloadBytes);
      const pending = this.#pending.get(cookie);
      if (pending === undefined) throw new Error(`structured reply for unknown cookie ${cookie}`);
      pending.chunkTypes.push(type);
      switch (type) {
        case NBD_REPLY_TYPE_NONE:
          if (payloadBytes !== 0 || (flags & NBD_REPLY_FLAG_DONE) === 0) throw new Error('bad NBD_REPLY_TYPE_NONE');
          break;
        case NBD_REPLY_TYPE_OFFSET_DATA:
        case NBD_REPLY_TYPE_OFFSET_HOLE: {
          if (pending.type !== NBD_CMD_READ) throw new Error('data chunk for a non-READ');
          const offsetBytes = Number(payload.readBigUInt64BE(0));
          const lengthBytes = type === NBD_REPLY_TYPE_OFFSET_DATA ? payloadBytes - 8 : payload.readUInt32BE(8);
          if (type === NBD_REPLY_TYPE_OFFSET_HOLE && payloadBytes !== 12) throw new Error('bad hole chunk length');
          if (lengthBytes <= 0) throw new Error('empty data or hole chunk');
          if (offsetBytes < pending.offsetBytes || offsetBytes + lengthBytes > pending.offsetBytes + pending.lengthBytes) {
            throw new Error(`chunk ${offsetBytes}+${lengthBytes} outside the request`);
          }
          pending.data ??= Buffer.alloc(pending.lengthBytes);
          pending.coveredBytes += lengthBytes;
          const at = offsetBytes - pending.offsetBytes;
          if (type === NBD_REPLY_TYPE_OFFSET_DATA) payload.copy(pending.data, at, 8);
          else pending.data.fill(0, at, at + lengthBytes);
          break;
        }
        case NBD_REPLY_TYPE_BLOCK_STATUS: {
          if ((payloadBytes - 4) % 8 !== 0 || payloadBytes < 12) throw new Error('bad block status length');
          pending.contextId = payload.readUInt32BE(0);
          pending.extents = [];
          for (let at = 4; at < payloadBytes; at += 8) pending.extents.push([payload.readUInt32BE(at), payload.readUInt32BE(at + 4)]);
          break;
        }
        case NBD_REPLY_TYPE_ERROR:
        case NBD_REPLY_TYPE_ERROR_OFFSET: {
          pending.error = payload.readUInt32BE(0);
          const messageBytes = payload.readUInt16BE(4);
          if (6 + messageBytes + (type === NBD_REPLY_TYPE_ERROR_OFFSET ? 8 : 0) !== payloadBytes) throw new Error('bad error chunk length');
          pending.message = payload.toString('utf8', 6, 6 + messageBytes);
          if (pending.error === 0) throw new Error('error chunk with error 0');
          break;
        }
        default:
          throw new Error(`unknown structured reply type ${type}`);
      }
      if ((flags & NBD_REPLY_FLAG_DONE) !== 0) {
        this.#pending.delete(cookie);
        if (pending.type === NBD_CMD_READ && pending.error === 0 && pending.coveredBytes !== pending.lengthBytes) {
          throw new Error(`READ reply covered ${pending.coveredBytes} of ${pending.lengthBytes} bytes`);
        }
        const reply: Reply = { cookie, error: pending.error, chunkTypes: pending.chunkTypes };
        if (pending.data !== undefined || (pending.type === NBD_CMD_READ && pending.error === 0)) {
          reply.data = pending.data ?? Buffer.alloc(pending.lengthBytes);
        }
        if (pending.extents !== undefined) reply.extents = pending.extents;
        if (pending.contextId !== undefined) reply.contextId = pending.contextId;
        if (pending.message !== undefined) reply.message = pending.message;
        pending.resolve(reply);
      }
    }
  }

  #take(cookie: bigint): Pending {
    const pending = this.#pending.get(cookie);
    if (pending === undefined) throw new Error(`reply for unknown cookie ${cookie}`);
    this.#pending.delete(cookie);
    return pending;
  }

  close(): void {
    this.raw.destroy();
  }
}
