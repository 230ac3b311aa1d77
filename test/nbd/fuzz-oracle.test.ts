// The fuzz checker's own cases (fuzz-check.ts): sessions it once judged wrongly, replayed from
// their bytes, and falsified answers it must refuse.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { MapExportRegistry } from '../../src/nbd/backend.ts';
import { NbdServer } from '../../src/nbd/server.ts';
import { encodeInfoRequest, encodeOption, encodeRequest } from './client.ts';
import { checkSession, type CheckWorld, type FuzzExportFacts } from './fuzz-check.ts';
import { FUZZ_EXPORTS, Rng, runSession } from './fuzz-lib.ts';
import { MemoryExport } from './memory-export.ts';
import { SPEC_CMD, SPEC_ERR, SPEC_OPT, SPEC_SIMPLE_REPLY_MAGIC } from './nbd-spec.ts';

const world = { exports: new Map(FUZZ_EXPORTS.map((facts) => [facts.name, facts])) };

test('a READ and a TRIM sharing a cookie, answered error first and data second, are a valid session (seed 1592917947, input 28091)', () => {
  // Simple replies: the error reply cannot say which request it answered; only the data after
  // the later success does. The oracle once gave the error to the READ and then misread the data.
  const input = Buffer.from(
    '0000000349484156454f50540000000a0000002200000007616c69676e6564000000010000000f626173653a616c6c6f636174696f6e49484156454f505400000004000000070000000000000049484156454f5054000000070000000a00000004736c6f77000025609513000000034dff573806c49ef00000000000006c00000000002560951300000005a240e9984e02d7220000000000022000000010002560951300080006bfca2bd8fb946de5000000000003f921000400002560951300000000013b5d69451160b3000000000001ee5b000049382560951300000004013b5d69451160b3000000000001ee5b0000493825609513000000041ec3335900e254c0000000000001fa0000001600',
    'hex',
  );
  const replies = Buffer.from(
    '4e42444d4147494349484156454f505400030003e889045565a90000000a800000030000003e4e42445f4f50545f5345545f4d4554415f434f4e54455854206e65656473204e42445f4f50545f535452554354555245445f5245504c592066697273742e0003e889045565a90000000480000001000000294f7074696f6e2034206973206e6f7420737570706f727465642062792074686973207365727665722e0003e889045565a900000007000000030000000c000000000000000400000d4d0003e889045565a900000007000000030000000e00030000000100001000020000000003e889045565a900000007000000010000000067446698000000164dff573806c49ef06744669800000016bfca2bd8fb946de56744669800000016013b5d69451160b367446698000000161ec3335900e254c06744669800000000a240e9984e02d7226744669800000000013b5d69451160b3',
    'hex',
  );
  const readData = Buffer.alloc(0x4938, 0x8f);
  assert.doesNotThrow(() => checkSession(input, Buffer.concat([replies, readData]), world));
  // The same bytes with the READ's data cut short are still refused.
  assert.throws(() => checkSession(input, Buffer.concat([replies, readData.subarray(0, 100)]), world));
});

test('a READ and a TRIM sharing a cookie, the TRIM refused by an error chunk before the READ\'s data chunk, are a valid session (seed 396840578, input 49781)', () => {
  // Structured replies: the error chunk names no command, so it may end either request; the
  // oracle once ended the READ with it and then took the READ's data chunk for the TRIM's.
  const handshake = Buffer.from(
    '0000000349484156454f5054000000080000000049484156454f5054000000070000000c00000004736c6f7700010003',
    'hex',
  );
  const cookie = 0xb840bd38a6caa5a3n;
  const input = Buffer.concat([
    handshake,
    encodeRequest(SPEC_CMD.READ, 0, cookie, 0x20a00, 2),
    encodeRequest(SPEC_CMD.TRIM, 0x2, cookie, 0x20a00, 2),
  ]);
  const greetingAndGo = Buffer.from(
    '4e42444d4147494349484156454f505400030003e889045565a90000000800000001000000000003e889045565a900000007000000030000000c000000000000000400000dcd0003e889045565a900000007000000030000000e00030000000100001000020000000003e889045565a9000000070000000100000000',
    'hex',
  );
  const trimRefused = Buffer.from('668e33ef00018001b840bd38a6caa5a30000002d0000001600274e42445f434d445f5452494d20646f6573206e6f742061636365707420666c616773203078322e', 'hex');
  const readData = Buffer.from('668e33ef00010001b840bd38a6caa5a30000000a0000000000020a00f8f8', 'hex');
  assert.doesNotThrow(() => checkSession(input, Buffer.concat([greetingAndGo, trimRefused, readData]), world));
  // Two error chunks and then data for the cookie: a chunk too many, refused.
  assert.throws(() => checkSession(input, Buffer.concat([greetingAndGo, trimRefused, trimRefused, readData]), world), /unknown cookie/);
});

// The checker's teeth: real sessions against a real server, whose output is then falsified one
// way at a time; each falsehood must be refused, naming what the spec wanted.
const EXPORT = 'a';
const SIZE = 64 * 1024;

async function realSession(input: Buffer): Promise<Buffer> {
  const server = new NbdServer({ registry: new MapExportRegistry([new MemoryExport({ name: EXPORT, sizeBytes: SIZE }), new MemoryExport({ name: 'ro', sizeBytes: SIZE, readOnly: true })]) });
  try {
    return await runSession(server, new Rng(7), input);
  } finally {
    await server.close({ timeoutMs: 5000 });
  }
}

const smallWorld = (): CheckWorld => ({
  exports: new Map([
    [EXPORT, { name: EXPORT, sizeBytes: SIZE, readOnly: false }],
    ['ro', { name: 'ro', sizeBytes: SIZE, readOnly: true }],
  ]),
  contents: new Map([
    [EXPORT, new Uint8Array(SIZE)],
    ['ro', new Uint8Array(SIZE)],
  ]),
});

/** A session entering `name` by GO (simple replies), then the given requests. */
function session(name: string, ...requests: Buffer[]): Buffer {
  return Buffer.concat([Buffer.from([0, 0, 0, 3]), encodeOption(SPEC_OPT.GO, encodeInfoRequest(name)), ...requests]);
}

/** The output with the simple reply of `cookie` given another error value. */
function withError(output: Buffer, cookie: bigint, error: number): Buffer {
  const copy = Buffer.from(output);
  for (let at = 0; at + 16 <= copy.length; at++) {
    if (copy.readUInt32BE(at) === SPEC_SIMPLE_REPLY_MAGIC && copy.readBigUInt64BE(at + 8) === cookie) {
      copy.writeUInt32BE(error, at + 4);
      return copy;
    }
  }
  throw new Error(`no simple reply for cookie ${cookie}`);
}

test('the checker refuses a write to a read-only export answered with success', async () => {
  const input = session('ro', encodeRequest(SPEC_CMD.WRITE, 0, 5n, 0, 512), Buffer.alloc(512, 0xaa));
  const output = await realSession(input);
  assert.doesNotThrow(() => checkSession(input, output, smallWorld()));
  assert.throws(() => checkSession(input, withError(output, 5n, 0), smallWorld()), /answered success; the spec wants EPERM/);
});

test('the checker refuses a READ past the end answered with success, and a valid WRITE answered EIO', async () => {
  const input = session(EXPORT, encodeRequest(SPEC_CMD.READ, 0, 1n, SIZE - 512, 1024), encodeRequest(SPEC_CMD.WRITE, 0, 2n, 0, 512), Buffer.alloc(512, 0xaa));
  const output = await realSession(input);
  assert.doesNotThrow(() => checkSession(input, output, smallWorld()));
  assert.throws(() => checkSession(input, withError(output, 1n, 0), smallWorld()), /the spec wants EINVAL/);
  assert.throws(() => checkSession(input, withError(output, 2n, SPEC_ERR.EIO), smallWorld()), /answered EIO; the spec wants success/);
});

test('the checker refuses READ data that neither the export held nor the session wrote', async () => {
  const input = session(EXPORT, encodeRequest(SPEC_CMD.WRITE, 0, 1n, 0, 512), Buffer.alloc(512, 0xaa), encodeRequest(SPEC_CMD.READ, 0, 2n, 0, 1024));
  const output = await realSession(input);
  const verdict = checkSession(input, output, smallWorld());
  assert.equal(verdict.readsChecked, 1);
  const wrong = Buffer.from(output);
  wrong[wrong.length - 100] = 0x55; // in the READ's second half, which nothing wrote: must be zeros
  assert.throws(() => checkSession(input, wrong, smallWorld()), /bytes the export never held/);
  const torn = Buffer.from(output);
  torn[torn.length - 1024 + 10] = 0x55; // inside the written range: neither the old zeros nor 0xaa
  assert.throws(() => checkSession(input, torn, smallWorld()), /bytes the export never held/);
});

test('the checker refuses a complete option left unanswered and an INFO with the wrong size', async () => {
  const input = Buffer.concat([Buffer.from([0, 0, 0, 3]), encodeOption(SPEC_OPT.LIST), encodeOption(SPEC_OPT.INFO, encodeInfoRequest(EXPORT))]);
  const output = await realSession(input);
  assert.doesNotThrow(() => checkSession(input, output, smallWorld()));
  assert.throws(() => checkSession(input, output.subarray(0, 18), smallWorld()), /complete but not answered/);
  const bigger = smallWorld();
  (bigger.exports as Map<string, FuzzExportFacts>).set(EXPORT, { name: EXPORT, sizeBytes: 2 * SIZE, readOnly: false });
  assert.throws(() => checkSession(input, output, bigger), /announced as 65536 bytes, not 131072/);
});
