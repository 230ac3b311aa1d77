// The fuzzer's checker: given the bytes a client sent and the bytes the server answered, says
// whether the server kept the NBD protocol (the NetworkBlockDevice project's doc/proto.md), with
// its own constants (nbd-spec.ts), never the server's.
//
// It follows the client's bytes as the spec says a server must read them and knows, for each
// complete option and request, what the answer must be:
// - every complete option is answered in full (the output may stop only where the spec lets a
//   server hang up: bad client flags, a bad option magic, EXPORT_NAME of an unknown export,
//   after ABORT, or an option too large or too many to be owed an answer); an INFO/GO names the
//   export's size and flags as the fuzz declared it; meta contexts follow structured replies;
// - each request's reply carries the outcome the spec asks for: EPERM for a write to a read-only
//   export, EINVAL (reads, trims) or ENOSPC (writes) past the end, EINVAL for an unknown command
//   or flag and for BLOCK_STATUS with no base:allocation selected, success when nothing is wrong;
//   where the spec leaves the server a choice (unaligned, oversized, zero-length, unadvertised
//   commands, a refused fast zero), success or the named errors;
// - READ data and base:allocation zero claims equal a shadow model of the export (its contents
//   when the session began, plus whatever this session's writes, zeroes and trims may have
//   left) when the world gives the export's contents;
// - every request sent in full is answered unless the client broke the framing.
// A request whose cookie is shared with another in flight is held only to the structure (and to
// an outcome one of its twins allows), as the reply cannot be matched to one request.
import {
  SPEC_BASE_ALLOCATION,
  SPEC_BLOCK_SIZE_MIN_MAX,
  SPEC_BLOCK_SIZE_PREFERRED_MIN,
  SPEC_CMD,
  SPEC_CMD_FLAG,
  SPEC_ERR,
  SPEC_ERRORS,
  SPEC_EXPORT_NAME_REPLY_BYTES,
  SPEC_EXPORT_NAME_ZEROES_BYTES,
  SPEC_FLAG_FIXED_NEWSTYLE,
  SPEC_FLAG_NO_ZEROES,
  SPEC_IHAVEOPT,
  SPEC_INFO,
  SPEC_INFO_BLOCK_SIZE_BYTES,
  SPEC_INFO_EXPORT_BYTES,
  SPEC_NBDMAGIC,
  SPEC_OPT,
  SPEC_OPTION_REPLY_MAGIC,
  SPEC_PAYLOAD_BYTES_DEFAULT_MAX,
  SPEC_REP,
  SPEC_REPLY_FLAG_DONE,
  SPEC_REPLY_TYPE,
  SPEC_REP_ERR,
  SPEC_REP_FLAG_ERROR,
  SPEC_REQUEST_BYTES,
  SPEC_REQUEST_MAGIC,
  SPEC_SIMPLE_REPLY_MAGIC,
  SPEC_STATE_ZERO,
  SPEC_STRUCTURED_REPLY_MAGIC,
  SPEC_TFLAG,
} from './nbd-spec.ts';

/** What the fuzz declares of an export the server serves. */
export interface FuzzExportFacts {
  name: string;
  sizeBytes: number;
  readOnly: boolean;
  /**
   * The export's minimum block size, when it has one: the spec lets a server refuse unaligned
   * requests (EINVAL) even from a client that never asked for the constraints (EXPORT_NAME).
   */
  blockSizeMinBytes?: number;
}

export interface CheckWorld {
  /** Every export the server serves, by name; any other name is unknown to it. */
  exports: ReadonlyMap<string, FuzzExportFacts>;
  /**
   * Contents, at the session's start, of exports nothing but this session changes while it runs:
   * READ data and zero claims on these are checked byte for byte.
   */
  contents?: ReadonlyMap<string, Uint8Array>;
}

export interface SessionVerdict {
  /** The export the session entered transmission on, if it did. */
  exportName: string | undefined;
  /** Ranges this session's write requests may have changed (clipped to the export). */
  touched: Array<{ offsetBytes: number; lengthBytes: number }>;
  /** Requests whose reply was held to an expected outcome. */
  outcomesChecked: number;
  /** READ replies whose data was compared with the shadow model. */
  readsChecked: number;
}

/** A server may hang up rather than answer option data larger than this (NBD_REP_ERR_TOO_BIG exists for it). */
const OPTION_DATA_BYTES_OWED = 4096;
/** ... or rather than answer more options than this in one handshake. */
const OPTIONS_OWED = 64;

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

interface Negotiated {
  exportName: string;
  facts: FuzzExportFacts;
  flags: number;
  structured: boolean;
  /** The base:allocation context id selected for this export, if one was. */
  contextId: number | undefined;
  blockMinBytes: number;
  payloadMaxBytes: number;
}

interface ReadPiece {
  offsetBytes: number;
  /** undefined for a hole (reads as zeros). */
  data: Buffer | undefined;
  lengthBytes: number;
}

interface Request {
  index: number;
  type: number;
  flags: number;
  cookie: bigint;
  offset: bigint;
  offsetBytes: number;
  lengthBytes: number;
  payload: Buffer | undefined;
  done: boolean;
  /** The reply's error (0: success) once decided; undefined while unanswered or ambiguous. */
  error: number | undefined;
  pieces: ReadPiece[];
  chunkCount: number;
  zeroClaims: Array<{ offsetBytes: number; lengthBytes: number }>;
}

interface Expectation {
  /** Errors one of which the reply must carry (success is wrong). */
  strict: Set<number>;
  /** Errors the reply may carry instead of success. */
  lenient: Set<number>;
  why: string[];
}

const ERROR_NAMES = new Map<number, string>(Object.entries(SPEC_ERR).map(([name, value]) => [value, name]));
const COMMAND_NAMES = new Map<number, string>(Object.entries(SPEC_CMD).map(([name, value]) => [value, name]));
const describeErrors = (errors: Iterable<number>): string => [...errors].map((error) => ERROR_NAMES.get(error) ?? String(error)).join('/');
const describeRequest = (r: Request): string =>
  `request ${r.index} (${COMMAND_NAMES.get(r.type) ?? `command ${r.type}`} flags 0x${r.flags.toString(16)} of ${r.lengthBytes} bytes at ${r.offset})`;

/** Flags the spec defines for each command. */
const DEFINED_FLAGS: Record<number, number> = {
  [SPEC_CMD.READ]: SPEC_CMD_FLAG.FUA | SPEC_CMD_FLAG.DF,
  [SPEC_CMD.WRITE]: SPEC_CMD_FLAG.FUA,
  [SPEC_CMD.FLUSH]: SPEC_CMD_FLAG.FUA,
  [SPEC_CMD.TRIM]: SPEC_CMD_FLAG.FUA,
  [SPEC_CMD.CACHE]: SPEC_CMD_FLAG.FUA,
  [SPEC_CMD.WRITE_ZEROES]: SPEC_CMD_FLAG.FUA | SPEC_CMD_FLAG.NO_HOLE | SPEC_CMD_FLAG.FAST_ZERO,
  [SPEC_CMD.BLOCK_STATUS]: SPEC_CMD_FLAG.FUA | SPEC_CMD_FLAG.REQ_ONE,
};

/** What the spec says the reply to r must be on this export. */
function expectationOf(r: Request, n: Negotiated): Expectation {
  const e: Expectation = { strict: new Set(), lenient: new Set(), why: [] };
  const must = (why: string, ...errors: number[]): void => {
    e.why.push(why);
    for (const error of errors) e.strict.add(error);
  };
  const may = (why: string, ...errors: number[]): void => {
    e.why.push(why);
    for (const error of errors) e.lenient.add(error);
  };
  const defined = DEFINED_FLAGS[r.type];
  if (defined === undefined) {
    must('a command the server did not offer', SPEC_ERR.EINVAL);
    return e;
  }
  if ((r.flags & ~defined) !== 0) must('a flag the command does not define', SPEC_ERR.EINVAL);
  if ((r.flags & SPEC_CMD_FLAG.FUA) !== 0 && (n.flags & SPEC_TFLAG.SEND_FUA) === 0) may('FUA not offered', SPEC_ERR.EINVAL);
  if ((r.flags & SPEC_CMD_FLAG.DF) !== 0 && (!n.structured || (n.flags & SPEC_TFLAG.SEND_DF) === 0)) may('DF not offered', SPEC_ERR.EINVAL);
  if ((r.flags & SPEC_CMD_FLAG.FAST_ZERO) !== 0 && r.type === SPEC_CMD.WRITE_ZEROES) {
    if ((n.flags & SPEC_TFLAG.SEND_FAST_ZERO) === 0) may('FAST_ZERO not offered', SPEC_ERR.EINVAL);
    else may('a fast zero may be refused', SPEC_ERR.ENOTSUP);
  }
  if (r.type === SPEC_CMD.FLUSH) {
    if (r.offset !== 0n || r.lengthBytes !== 0) may('FLUSH with an offset or a length', SPEC_ERR.EINVAL);
    return e;
  }
  const writes = r.type === SPEC_CMD.WRITE || r.type === SPEC_CMD.TRIM || r.type === SPEC_CMD.WRITE_ZEROES;
  if (writes && (n.flags & SPEC_TFLAG.READ_ONLY) !== 0) must('a write to a read-only export', SPEC_ERR.EPERM);
  if (r.type === SPEC_CMD.TRIM && (n.flags & SPEC_TFLAG.SEND_TRIM) === 0) may('TRIM not offered', SPEC_ERR.EINVAL);
  if (r.type === SPEC_CMD.WRITE_ZEROES && (n.flags & SPEC_TFLAG.SEND_WRITE_ZEROES) === 0) may('WRITE_ZEROES not offered', SPEC_ERR.EINVAL);
  if (r.type === SPEC_CMD.CACHE && (n.flags & SPEC_TFLAG.SEND_CACHE) === 0) may('CACHE not offered', SPEC_ERR.EINVAL);
  if (r.type === SPEC_CMD.BLOCK_STATUS && n.contextId === undefined) must('BLOCK_STATUS with no meta context selected', SPEC_ERR.EINVAL);
  if (r.offset + BigInt(r.lengthBytes) > BigInt(n.facts.sizeBytes)) {
    if (r.type === SPEC_CMD.WRITE || r.type === SPEC_CMD.WRITE_ZEROES) must('a write past the end', SPEC_ERR.ENOSPC, SPEC_ERR.EINVAL);
    else must('past the end', SPEC_ERR.EINVAL);
  }
  const blockMinBytes = Math.max(n.blockMinBytes, n.facts.blockSizeMinBytes ?? 1);
  if (blockMinBytes > 1 && (r.offset % BigInt(blockMinBytes) !== 0n || r.lengthBytes % blockMinBytes !== 0)) {
    may('not aligned to the minimum block size', SPEC_ERR.EINVAL);
  }
  if ((r.type === SPEC_CMD.READ || r.type === SPEC_CMD.WRITE) && r.lengthBytes > n.payloadMaxBytes) {
    may('over the maximum payload', SPEC_ERR.EINVAL, SPEC_ERR.ENOMEM, SPEC_ERR.EOVERFLOW);
  }
  if (r.lengthBytes === 0) may('a length of 0', SPEC_ERR.EINVAL);
  return e;
}

function allows(e: Expectation, error: number): boolean {
  return error === 0 ? e.strict.size === 0 : e.strict.has(error) || e.lenient.has(error);
}

/** Throws with a description when the server's output breaks the protocol for this input. */
export function checkSession(input: Buffer, output: Buffer, world: CheckWorld): SessionVerdict {
  const verdict: SessionVerdict = { exportName: undefined, touched: [], outcomesChecked: 0, readsChecked: 0 };
  const client = new Cursor(input);
  const server = new Cursor(output);
  const fail = (what: string): never => {
    throw new Error(`${what} (client byte ${client.position}, server byte ${server.position})`);
  };
  const serverDone = (): boolean => server.left === 0;
  /** The server may stop here; if it goes on, what follows is judged by the caller. */
  const endsHere = (why: string): SessionVerdict => (serverDone() ? verdict : fail(`output after ${why}`));

  const greeting = server.take(18) ?? fail('no greeting');
  if (greeting.readBigUInt64BE(0) !== SPEC_NBDMAGIC || greeting.readBigUInt64BE(8) !== SPEC_IHAVEOPT) fail('bad greeting magic');
  const handshakeFlags = greeting.readUInt16BE(16);
  if ((handshakeFlags & SPEC_FLAG_FIXED_NEWSTYLE) === 0) fail('greeting without FIXED_NEWSTYLE');
  if ((handshakeFlags & ~(SPEC_FLAG_FIXED_NEWSTYLE | SPEC_FLAG_NO_ZEROES)) !== 0) fail(`greeting with unknown flags 0x${handshakeFlags.toString(16)}`);

  const flagBytes = client.take(4);
  if (flagBytes === undefined) return endsHere('a greeting with no client flags');
  const clientFlags = flagBytes.readUInt32BE(0);
  if ((clientFlags & ~handshakeFlags) !== 0) return endsHere('client flags the server did not offer');
  const noZeroes = (clientFlags & SPEC_FLAG_NO_ZEROES) !== 0;

  let structured = false;
  let selection: { exportName: string; contextId: number } | undefined;
  let negotiated: Negotiated | undefined;
  for (let optionIndex = 0; negotiated === undefined; optionIndex++) {
    const header = client.take(16);
    if (header === undefined) return endsHere('an incomplete option header');
    if (header.readBigUInt64BE(0) !== SPEC_IHAVEOPT) return endsHere('an option without IHAVEOPT');
    const option = header.readUInt32BE(8);
    const dataBytes = header.readUInt32BE(12);
    const data = client.take(dataBytes);
    if (data === undefined) return endsHere(`option ${option} with incomplete data`);
    const mayHangUp = dataBytes > OPTION_DATA_BYTES_OWED || optionIndex >= OPTIONS_OWED;
    if (serverDone()) {
      if (mayHangUp || option === SPEC_OPT.ABORT) return verdict;
      if (option === SPEC_OPT.EXPORT_NAME && !world.exports.has(data.toString('utf8'))) return verdict;
      fail(`option ${optionIndex} (${option}, ${dataBytes} bytes) complete but not answered`);
    }

    if (option === SPEC_OPT.EXPORT_NAME) {
      const name = data.toString('utf8');
      const facts = world.exports.get(name);
      if (facts === undefined) return endsHere(`EXPORT_NAME of the unknown export ${JSON.stringify(name)}`);
      const reply = server.take(SPEC_EXPORT_NAME_REPLY_BYTES + (noZeroes ? 0 : SPEC_EXPORT_NAME_ZEROES_BYTES)) ?? fail('short EXPORT_NAME reply');
      if (!reply.subarray(SPEC_EXPORT_NAME_REPLY_BYTES).every((byte) => byte === 0)) fail('EXPORT_NAME padding not zero');
      negotiated = enter(name, facts, reply.readBigUInt64BE(0), reply.readUInt16BE(8), 1, SPEC_PAYLOAD_BYTES_DEFAULT_MAX);
      break;
    }

    // Every other option: replies up to a final one (ACK or an error).
    const infos: Buffer[] = [];
    const servers: Buffer[] = [];
    const contexts: Buffer[] = [];
    let final: number | undefined;
    while (final === undefined) {
      const replyHeader = server.take(20) ?? fail(`option ${option} answered in part`);
      if (replyHeader.readBigUInt64BE(0) !== SPEC_OPTION_REPLY_MAGIC) fail('bad option reply magic');
      if (replyHeader.readUInt32BE(8) !== option) fail(`option reply echoes ${replyHeader.readUInt32BE(8)} for ${option}`);
      const type = replyHeader.readUInt32BE(12);
      const replyData = server.take(replyHeader.readUInt32BE(16)) ?? fail('short option reply data');
      if (type === SPEC_REP.INFO) infos.push(replyData);
      else if (type === SPEC_REP.SERVER) servers.push(replyData);
      else if (type === SPEC_REP.META_CONTEXT) contexts.push(replyData);
      else if (type === SPEC_REP.ACK || type >= SPEC_REP_FLAG_ERROR) final = type;
      else fail(`unknown option reply type ${type}`);
    }
    const acked = final === SPEC_REP.ACK;
    if (infos.length > 0 && option !== SPEC_OPT.INFO && option !== SPEC_OPT.GO) fail(`NBD_REP_INFO for option ${option}`);
    if (servers.length > 0 && option !== SPEC_OPT.LIST) fail(`NBD_REP_SERVER for option ${option}`);
    if (contexts.length > 0 && option !== SPEC_OPT.LIST_META_CONTEXT && option !== SPEC_OPT.SET_META_CONTEXT) fail(`NBD_REP_META_CONTEXT for option ${option}`);
    if (!acked && infos.length + servers.length + contexts.length > 0) fail(`option ${option} answered with data and then an error`);

    switch (option) {
      case SPEC_OPT.ABORT:
        if (!acked) fail('ABORT answered with an error');
        return endsHere('the ABORT acknowledgement');
      case SPEC_OPT.LIST:
        if (dataBytes > 0) {
          if (acked) fail('LIST with data acknowledged');
          break;
        }
        if (!acked) fail(`LIST refused (${final})`);
        for (const entry of servers) if (entry.length < 4 || entry.readUInt32BE(0) > entry.length - 4) fail('bad NBD_REP_SERVER');
        break;
      case SPEC_OPT.STRUCTURED_REPLY:
        if (dataBytes > 0 && acked) fail('STRUCTURED_REPLY with data acknowledged');
        if (dataBytes === 0 && !acked && !structured) fail(`STRUCTURED_REPLY refused (${final})`);
        if (acked) structured = true;
        break;
      case SPEC_OPT.INFO:
      case SPEC_OPT.GO: {
        const request = parseInfoRequest(data);
        if (request === undefined) {
          if (acked) fail(`malformed ${option === SPEC_OPT.GO ? 'GO' : 'INFO'} acknowledged`);
          break;
        }
        const facts = world.exports.get(request.name);
        if (facts === undefined) {
          if (final !== SPEC_REP_ERR.UNKNOWN) fail(`INFO/GO of the unknown export ${JSON.stringify(request.name)} answered ${final}, not NBD_REP_ERR_UNKNOWN`);
          break;
        }
        if (!acked) fail(`INFO/GO of export ${request.name} refused (${final})`);
        let size: bigint | undefined;
        let flags = 0;
        let blockMinBytes = 1;
        let payloadMaxBytes = SPEC_PAYLOAD_BYTES_DEFAULT_MAX;
        for (const info of infos) {
          if (info.length < 2) fail('short NBD_REP_INFO');
          const infoType = info.readUInt16BE(0);
          if (infoType === SPEC_INFO.EXPORT) {
            if (info.length !== SPEC_INFO_EXPORT_BYTES) fail('NBD_INFO_EXPORT of the wrong length');
            if (size !== undefined) fail('two NBD_INFO_EXPORT replies');
            size = info.readBigUInt64BE(2);
            flags = info.readUInt16BE(10);
          } else if (infoType === SPEC_INFO.BLOCK_SIZE) {
            if (info.length !== SPEC_INFO_BLOCK_SIZE_BYTES) fail('NBD_INFO_BLOCK_SIZE of the wrong length');
            const [min, preferred, max] = [info.readUInt32BE(2), info.readUInt32BE(6), info.readUInt32BE(10)];
            const powerOfTwo = (n: number): boolean => n > 0 && (n & (n - 1)) === 0;
            if (!powerOfTwo(min) || min > SPEC_BLOCK_SIZE_MIN_MAX) fail(`minimum block size ${min}`);
            if (!powerOfTwo(preferred) || preferred < Math.max(min, SPEC_BLOCK_SIZE_PREFERRED_MIN)) fail(`preferred block size ${preferred}`);
            if (max !== 0xffffffff && (max < min || max % min !== 0)) fail(`maximum block size ${max}`);
            blockMinBytes = min;
            payloadMaxBytes = max;
          }
        }
        if (size === undefined) fail('INFO/GO acknowledged without NBD_INFO_EXPORT');
        if (option === SPEC_OPT.GO) negotiated = enter(request.name, facts, size!, flags, blockMinBytes, payloadMaxBytes);
        else checkExportFacts(facts, size!, flags);
        break;
      }
      case SPEC_OPT.LIST_META_CONTEXT:
      case SPEC_OPT.SET_META_CONTEXT: {
        const set = option === SPEC_OPT.SET_META_CONTEXT;
        if (set) selection = undefined; // a SET replaces the selection, even when it fails
        const request = parseMetaContextRequest(data);
        const owed = structured && request !== undefined && world.exports.has(request.name);
        if (!owed) {
          if (acked) fail(`${set ? 'SET' : 'LIST'}_META_CONTEXT acknowledged ${structured ? 'malformed or for an unknown export' : 'before STRUCTURED_REPLY'}`);
          break;
        }
        if (!acked) fail(`${set ? 'SET' : 'LIST'}_META_CONTEXT refused (${final})`);
        const names = contexts.map((context) => (context.length < 4 ? fail('short NBD_REP_META_CONTEXT') : context.subarray(4).toString('utf8')));
        const asked = request!.queries.includes(SPEC_BASE_ALLOCATION);
        const listedAll = !set && (request!.queries.length === 0 || request!.queries.includes('base:'));
        for (const name of names) if (name !== SPEC_BASE_ALLOCATION || !(asked || listedAll)) fail(`meta context ${name} not asked for`);
        if (set && asked) {
          if (names.length !== 1) fail('SET_META_CONTEXT of base:allocation did not select it');
          selection = { exportName: request!.name, contextId: contexts[0]!.readUInt32BE(0) };
        }
        break;
      }
      default:
        if (acked) fail(`option ${option} the spec does not let this server accept was acknowledged`);
    }
  }

  function checkExportFacts(facts: FuzzExportFacts, size: bigint, flags: number): void {
    if (size !== BigInt(facts.sizeBytes)) fail(`export ${facts.name} announced as ${size} bytes, not ${facts.sizeBytes}`);
    if ((flags & SPEC_TFLAG.HAS_FLAGS) === 0) fail('transmission flags without HAS_FLAGS');
    if (((flags & SPEC_TFLAG.READ_ONLY) !== 0) !== facts.readOnly) fail(`export ${facts.name} announced ${facts.readOnly ? 'writable' : 'read-only'}`);
    if ((flags & SPEC_TFLAG.SEND_DF) !== 0 && !structured) fail('DF offered without structured replies');
    if ((flags & SPEC_TFLAG.SEND_FAST_ZERO) !== 0 && (flags & SPEC_TFLAG.SEND_WRITE_ZEROES) === 0) fail('FAST_ZERO offered without WRITE_ZEROES');
  }

  function enter(name: string, facts: FuzzExportFacts, size: bigint, flags: number, blockMinBytes: number, payloadMaxBytes: number): Negotiated {
    checkExportFacts(facts, size, flags);
    verdict.exportName = name;
    const contextId = structured && selection?.exportName === name ? selection.contextId : undefined;
    return { exportName: name, facts, flags, structured, contextId, blockMinBytes, payloadMaxBytes };
  }

  // Transmission: the requests the client sent in full, in order.
  const n = negotiated;
  const requests: Request[] = [];
  const byCookie = new Map<bigint, Request[]>();
  // Unless the client broke the framing (a bad magic: the server hard-disconnects), every request
  // sent in full is answered: after NBD_CMD_DISC, and also when the input just ends.
  let mustAnswerAll = true;
  for (;;) {
    const header = client.take(SPEC_REQUEST_BYTES);
    if (header === undefined) break;
    if (header.readUInt32BE(0) !== SPEC_REQUEST_MAGIC) {
      mustAnswerAll = false;
      break;
    }
    const flags = header.readUInt16BE(4);
    const type = header.readUInt16BE(6);
    const cookie = header.readBigUInt64BE(8);
    const offset = header.readBigUInt64BE(16);
    const lengthBytes = header.readUInt32BE(24);
    if (type === SPEC_CMD.DISC) break;
    let payload: Buffer | undefined;
    if (type === SPEC_CMD.WRITE) {
      payload = client.take(lengthBytes);
      if (payload === undefined) break;
    }
    const request: Request = {
      index: requests.length,
      type,
      flags,
      cookie,
      offset,
      offsetBytes: Number(offset),
      lengthBytes,
      payload,
      done: false,
      error: undefined,
      pieces: [],
      chunkCount: 0,
      zeroClaims: [],
    };
    requests.push(request);
    const list = byCookie.get(cookie) ?? [];
    list.push(request);
    byCookie.set(cookie, list);
    const writes = type === SPEC_CMD.WRITE || type === SPEC_CMD.TRIM || type === SPEC_CMD.WRITE_ZEROES;
    if (writes && offset < BigInt(n.facts.sizeBytes)) {
      verdict.touched.push({ offsetBytes: request.offsetBytes, lengthBytes: Math.min(lengthBytes, n.facts.sizeBytes - request.offsetBytes) });
    }
  }

  const expectations = new Map<Request, Expectation>();
  const expect = (r: Request): Expectation => {
    let e = expectations.get(r);
    if (e === undefined) {
      e = expectationOf(r, n);
      expectations.set(r, e);
    }
    return e;
  };
  /** Holds a decided reply to its request's expected outcome. */
  const judge = (r: Request, error: number): void => {
    const e = expect(r);
    if (!allows(e, error)) {
      const wanted = e.strict.size > 0 ? describeErrors(e.strict) : e.lenient.size > 0 ? `success or ${describeErrors(e.lenient)}` : 'success';
      fail(`${describeRequest(r)} answered ${error === 0 ? 'success' : describeErrors([error])}; the spec wants ${wanted}${e.why.length > 0 ? ` (${e.why.join('; ')})` : ''}`);
    }
    r.error = error;
    verdict.outcomesChecked += 1;
  };

  // Simple replies that fit every pending request of their cookie equally (the same data length
  // whichever it answers) are counted here instead of being given to one request: which request
  // they answered is only told by a later reply of the cookie (an error reply to a READ or a TRIM
  // sharing a cookie says nothing; the data after a later success does).
  const undecided = new Map<bigint, number>();
  const pendingFor = (cookie: bigint): Request[] => {
    const pending = byCookie.get(cookie)?.filter((r) => !r.done) ?? [];
    return pending.length > (undecided.get(cookie) ?? 0) ? pending : fail(`reply for unknown cookie ${cookie}`);
  };
  const nextIsReply = (position: number): boolean => {
    if (position === output.length) return true;
    if (position + 4 > output.length) return false;
    const magic = output.readUInt32BE(position);
    return magic === SPEC_SIMPLE_REPLY_MAGIC || magic === SPEC_STRUCTURED_REPLY_MAGIC;
  };
  while (!serverDone()) {
    const magic = (server.take(4) ?? fail('short reply magic')).readUInt32BE(0);
    if (magic === SPEC_SIMPLE_REPLY_MAGIC) {
      const rest = server.take(12) ?? fail('short simple reply');
      const error = rest.readUInt32BE(0);
      const cookie = rest.readBigUInt64BE(4);
      const pending = pendingFor(cookie);
      if (error !== 0 && !SPEC_ERRORS.has(error)) fail(`error value ${error} is not one the spec lists`);
      const dataBytes = (r: Request): number => (r.type === SPEC_CMD.READ && error === 0 ? r.lengthBytes : 0);
      if (pending.length > 1 && new Set(pending.map(dataBytes)).size === 1) {
        if (structured && pending.every((r) => r.type === SPEC_CMD.READ)) fail('simple reply to READ with structured replies');
        if (!pending.some((r) => allows(expect(r), error))) fail(`reply ${error} to cookie ${cookie} fits none of its ${pending.length} requests`);
        server.take(dataBytes(pending[0]!)) ?? fail('short READ data');
        undecided.set(cookie, (undecided.get(cookie) ?? 0) + 1);
        continue;
      }
      const request = pending.length === 1 ? pending[0]! : pending.find((r) => nextIsReply(server.position + dataBytes(r))) ?? pending[0]!;
      if (request.type === SPEC_CMD.READ && structured) fail('simple reply to READ with structured replies');
      request.done = true;
      const decided = pending.length === 1 && (byCookie.get(cookie)?.length ?? 0) === 1;
      if (decided) judge(request, error);
      const data = server.take(dataBytes(request)) ?? fail('short READ data');
      if (decided && request.type === SPEC_CMD.READ && error === 0) request.pieces.push({ offsetBytes: request.offsetBytes, data, lengthBytes: data.length });
      continue;
    }
    if (magic !== SPEC_STRUCTURED_REPLY_MAGIC) fail(`bad reply magic 0x${magic.toString(16)}`);
    if (!structured) fail('structured reply without negotiation');
    const header = server.take(16) ?? fail('short chunk header');
    const chunkFlags = header.readUInt16BE(0);
    const type = header.readUInt16BE(2);
    const cookie = header.readBigUInt64BE(4);
    const pending = pendingFor(cookie);
    const ambiguous = (byCookie.get(cookie)?.length ?? 0) > 1;
    const wantType =
      type === SPEC_REPLY_TYPE.OFFSET_DATA || type === SPEC_REPLY_TYPE.OFFSET_HOLE ? SPEC_CMD.READ : type === SPEC_REPLY_TYPE.BLOCK_STATUS ? SPEC_CMD.BLOCK_STATUS : undefined;
    const request = (ambiguous && pending.find((r) => wantType === undefined || r.type === wantType)) || pending[0]!;
    const payload = server.take(header.readUInt32BE(12)) ?? fail('short chunk payload');
    if ((chunkFlags & ~SPEC_REPLY_FLAG_DONE) !== 0) fail('unknown chunk flags');
    let failedWith: number | undefined;
    switch (type) {
      case SPEC_REPLY_TYPE.NONE:
        if (payload.length !== 0 || !(chunkFlags & SPEC_REPLY_FLAG_DONE)) fail('bad NONE chunk');
        break;
      case SPEC_REPLY_TYPE.OFFSET_DATA:
      case SPEC_REPLY_TYPE.OFFSET_HOLE: {
        if (request.type !== SPEC_CMD.READ) fail('data chunk for a non-READ');
        if (payload.length < (type === SPEC_REPLY_TYPE.OFFSET_DATA ? 9 : 12)) fail('short data chunk');
        if (type === SPEC_REPLY_TYPE.OFFSET_HOLE && payload.length !== 12) fail('bad hole chunk');
        const offset = payload.readBigUInt64BE(0);
        const lengthBytes = type === SPEC_REPLY_TYPE.OFFSET_DATA ? payload.length - 8 : payload.readUInt32BE(8);
        if (lengthBytes === 0) fail('empty data chunk');
        if (!ambiguous && (offset < request.offset || offset + BigInt(lengthBytes) > request.offset + BigInt(request.lengthBytes))) fail('chunk outside its READ');
        request.chunkCount += 1;
        request.pieces.push({ offsetBytes: Number(offset), data: type === SPEC_REPLY_TYPE.OFFSET_DATA ? payload.subarray(8) : undefined, lengthBytes });
        break;
      }
      case SPEC_REPLY_TYPE.BLOCK_STATUS: {
        if (request.type !== SPEC_CMD.BLOCK_STATUS || payload.length < 12 || (payload.length - 4) % 8 !== 0) fail('bad block status chunk');
        if (!ambiguous && n.contextId !== undefined && payload.readUInt32BE(0) !== n.contextId) fail('block status for a context never selected');
        const extentCount = (payload.length - 4) / 8;
        if (!ambiguous && (request.flags & SPEC_CMD_FLAG.REQ_ONE) !== 0 && extentCount !== 1) fail('REQ_ONE answered with several extents');
        let position = request.offsetBytes;
        for (let at = 4; at < payload.length; at += 8) {
          const extentBytes = payload.readUInt32BE(at);
          const status = payload.readUInt32BE(at + 4);
          if (extentBytes === 0 || (status & ~3) !== 0) fail('bad extent');
          if ((status & SPEC_STATE_ZERO) !== 0) request.zeroClaims.push({ offsetBytes: position, lengthBytes: extentBytes });
          position += extentBytes;
        }
        if (!ambiguous && position > n.facts.sizeBytes) fail('extents past the end of the export');
        break;
      }
      case SPEC_REPLY_TYPE.ERROR:
      case SPEC_REPLY_TYPE.ERROR_OFFSET: {
        const extra = type === SPEC_REPLY_TYPE.ERROR_OFFSET ? 8 : 0;
        if (payload.length < 6 + extra || payload.readUInt16BE(4) !== payload.length - 6 - extra) fail('bad error chunk');
        failedWith = payload.readUInt32BE(0);
        if (failedWith === 0 || !SPEC_ERRORS.has(failedWith)) fail(`error value ${failedWith} is not one the spec lists`);
        if (!(chunkFlags & SPEC_REPLY_FLAG_DONE)) fail('error chunk not last');
        break;
      }
      default:
        fail(`unknown chunk type ${type}`);
    }
    if (chunkFlags & SPEC_REPLY_FLAG_DONE) {
      // A last chunk that names no command (NONE, an error) on a cookie several requests share may
      // end any of them: it is counted, like a simple reply that fits them all, and a later chunk
      // of the cookie (data only a READ gets) still finds the request it belongs to.
      if (ambiguous && wantType === undefined) {
        undecided.set(cookie, (undecided.get(cookie) ?? 0) + 1);
        continue;
      }
      request.done = true;
      if (!ambiguous) {
        if (failedWith === undefined && request.type === SPEC_CMD.READ && request.lengthBytes > 0) checkCover(request);
        judge(request, failedWith ?? 0);
      }
    }
  }

  /** A successful structured READ: its chunks cover the request exactly, once, and in one chunk under DF. */
  function checkCover(r: Request): void {
    const pieces = [...r.pieces].sort((a, b) => a.offsetBytes - b.offsetBytes);
    let position = r.offsetBytes;
    for (const piece of pieces) {
      if (piece.offsetBytes !== position) fail(`${describeRequest(r)}: chunks ${piece.offsetBytes < position ? 'overlap' : 'leave a gap'} at ${position}`);
      position += piece.lengthBytes;
    }
    if (position !== r.offsetBytes + r.lengthBytes) fail(`${describeRequest(r)}: chunks cover ${position - r.offsetBytes} of ${r.lengthBytes} bytes`);
    if ((r.flags & SPEC_CMD_FLAG.DF) !== 0 && r.chunkCount > 1) fail(`${describeRequest(r)}: DF answered in ${r.chunkCount} chunks`);
  }

  if (mustAnswerAll) {
    for (const [cookie, list] of byCookie) {
      if (list.filter((r) => !r.done).length > (undecided.get(cookie) ?? 0)) fail('a request was left unanswered');
    }
  }

  // Data: READ bytes and zero claims against the shadow model of the export.
  const contents = world.contents?.get(n.exportName);
  if (contents !== undefined) {
    const changes = (r: Request): boolean => r.type === SPEC_CMD.WRITE || r.type === SPEC_CMD.WRITE_ZEROES || r.type === SPEC_CMD.TRIM;
    // Writes not known to have failed may have landed before, during or after any READ.
    const candidates = requests.filter((r) => changes(r) && (r.error === undefined || r.error === 0));
    for (const r of requests) {
      if (r.error !== 0 || (byCookie.get(r.cookie)?.length ?? 0) > 1) continue;
      if (r.type === SPEC_CMD.READ && r.pieces.length > 0) {
        for (const piece of r.pieces) {
          const why = explain(piece, contents, candidates);
          if (why !== undefined) fail(`${describeRequest(r)} read ${why}`);
        }
        verdict.readsChecked += 1;
      }
      if (r.type === SPEC_CMD.BLOCK_STATUS) {
        for (const claim of r.zeroClaims) {
          const end = Math.min(claim.offsetBytes + claim.lengthBytes, contents.length);
          if (claim.offsetBytes >= end) continue;
          const why = explain({ offsetBytes: claim.offsetBytes, data: undefined, lengthBytes: end - claim.offsetBytes }, contents, candidates);
          if (why !== undefined) fail(`${describeRequest(r)} claims zeros where the export ${why.replace(/^bytes/, 'holds')}`);
        }
      }
    }
  }
  return verdict;
}

/** The session's write-type requests that may have changed bytes (by the time of any READ). */
type Candidate = Request;

/**
 * Why piece (a READ chunk, or a claim of zeros) cannot be what the export held: undefined when
 * each byte is the session's starting contents or what a candidate write, zero or trim may leave.
 */
function explain(piece: ReadPiece, contents: Uint8Array, candidates: readonly Candidate[]): string | undefined {
  const begin = piece.offsetBytes;
  const end = begin + piece.lengthBytes;
  const data = piece.data ?? Buffer.alloc(piece.lengthBytes);
  const covering = candidates.filter((c) => c.offsetBytes < end && begin < c.offsetBytes + c.lengthBytes);
  const edges = new Set<number>([begin, end]);
  for (const c of covering) {
    edges.add(Math.max(begin, c.offsetBytes));
    edges.add(Math.min(end, c.offsetBytes + c.lengthBytes));
  }
  const sorted = [...edges].sort((a, b) => a - b);
  for (let i = 0; i + 1 < sorted.length; i++) {
    const s = sorted[i]!;
    const e = sorted[i + 1]!;
    const got = data.subarray(s - begin, e - begin);
    const before = contents.subarray(s, e);
    if (Buffer.compare(got, before) === 0) continue;
    const here = covering.filter((c) => c.offsetBytes <= s && e <= c.offsetBytes + c.lengthBytes);
    if (here.some((c) => c.type === SPEC_CMD.TRIM)) continue;
    if (here.some((c) => (c.type === SPEC_CMD.WRITE_ZEROES ? got.every((byte) => byte === 0) : Buffer.compare(got, c.payload!.subarray(s - c.offsetBytes, e - c.offsetBytes)) === 0))) continue;
    // Byte by byte: a READ racing writes may see some of each.
    for (let at = s; at < e; at++) {
      const byte = got[at - s]!;
      if (byte === contents[at]) continue;
      if (here.some((c) => (c.type === SPEC_CMD.WRITE_ZEROES ? byte === 0 : c.payload![at - c.offsetBytes] === byte))) continue;
      return `bytes the export never held: byte ${at} is ${byte}, was ${contents[at]}${here.length > 0 ? `, and no request of the session wrote it` : ' and nothing in the session wrote there'}`;
    }
  }
  return undefined;
}

/** NBD_OPT_INFO/GO data: name length (32), name, request count (16), requests (16 each); undefined when it does not add up. */
function parseInfoRequest(data: Buffer): { name: string; requests: number[] } | undefined {
  if (data.length < 6) return undefined;
  const nameBytes = data.readUInt32BE(0);
  if (nameBytes > data.length - 6) return undefined;
  const count = data.readUInt16BE(4 + nameBytes);
  if (data.length !== 6 + nameBytes + 2 * count) return undefined;
  const requests = Array.from({ length: count }, (_, i) => data.readUInt16BE(6 + nameBytes + 2 * i));
  return { name: data.toString('utf8', 4, 4 + nameBytes), requests };
}

/** NBD_OPT_{LIST,SET}_META_CONTEXT data: name length (32), name, query count (32), queries (length 32, string); undefined when it does not add up. */
function parseMetaContextRequest(data: Buffer): { name: string; queries: string[] } | undefined {
  if (data.length < 8) return undefined;
  const nameBytes = data.readUInt32BE(0);
  if (nameBytes > data.length - 8) return undefined;
  const count = data.readUInt32BE(4 + nameBytes);
  const queries: string[] = [];
  let position = 8 + nameBytes;
  for (let i = 0; i < count; i++) {
    if (data.length - position < 4) return undefined;
    const queryBytes = data.readUInt32BE(position);
    position += 4;
    if (queryBytes > data.length - position) return undefined;
    queries.push(data.toString('utf8', position, position + queryBytes));
    position += queryBytes;
  }
  return position === data.length ? { name: data.toString('utf8', 4, 4 + nameBytes), queries } : undefined;
}
