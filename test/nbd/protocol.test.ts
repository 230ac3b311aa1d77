// The server against the spec, byte by byte, with the test client in test/nbd/client.ts:
// handshake options, transmission commands and the errors of spec "Error values".
import { test, describe, after } from 'node:test';
import assert from 'node:assert/strict';
import {
  NBD_CMD_BLOCK_STATUS,
  NBD_CMD_CACHE,
  NBD_CMD_DISC,
  NBD_CMD_FLAG_DF,
  NBD_CMD_FLAG_FAST_ZERO,
  NBD_CMD_FLAG_FUA,
  NBD_CMD_FLAG_NO_HOLE,
  NBD_CMD_FLAG_REQ_ONE,
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
  NBD_FLAG_CAN_MULTI_CONN,
  NBD_FLAG_C_FIXED_NEWSTYLE,
  NBD_FLAG_FIXED_NEWSTYLE,
  NBD_FLAG_HAS_FLAGS,
  NBD_FLAG_NO_ZEROES,
  NBD_FLAG_READ_ONLY,
  NBD_FLAG_SEND_DF,
  NBD_FLAG_SEND_FAST_ZERO,
  NBD_FLAG_SEND_FLUSH,
  NBD_FLAG_SEND_FUA,
  NBD_FLAG_SEND_TRIM,
  NBD_FLAG_SEND_WRITE_ZEROES,
  NBD_INFO_BLOCK_SIZE,
  NBD_INFO_DESCRIPTION,
  NBD_INFO_EXPORT,
  NBD_INFO_NAME,
  NBD_OPT_ABORT,
  NBD_OPT_EXPORT_NAME,
  NBD_OPT_GO,
  NBD_OPT_INFO,
  NBD_OPT_LIST,
  NBD_OPT_LIST_META_CONTEXT,
  NBD_OPT_SET_META_CONTEXT,
  NBD_OPT_STARTTLS,
  NBD_OPT_STRUCTURED_REPLY,
  NBD_REPLY_TYPE_OFFSET_DATA,
  NBD_REPLY_TYPE_OFFSET_HOLE,
  NBD_REP_ACK,
  NBD_REP_ERR_INVALID,
  NBD_REP_ERR_UNKNOWN,
  NBD_REP_ERR_UNSUP,
  NBD_REP_INFO,
  NBD_REP_META_CONTEXT,
  NBD_REP_SERVER,
  NBD_STATE_HOLE,
  NBD_STATE_ZERO,
} from '../../src/nbd/protocol.ts';
import { nbdErrorForCode } from '../../src/nbd/backend.ts';
import { NBD_REQUESTS_IN_FLIGHT_MAX } from '../../src/constants.ts';
import { NbdTestClient, RawClient, encodeInfoRequest, encodeMetaContextRequest, encodeOption, encodeRequest } from './client.ts';
import { patternBytes, startServer, waitFor, type RunningServer } from './helpers.ts';
import { MemoryExport } from './memory-export.ts';

const MiB = 1024 * 1024;

describe('NBD protocol', async () => {
  const disk = new MemoryExport({ name: 'disk', sizeBytes: 64 * MiB, description: 'a test disk' });
  const readOnly = new MemoryExport({ name: 'ro', sizeBytes: 1 * MiB, readOnly: true });
  const full = new MemoryExport({ name: 'full', sizeBytes: 1 * MiB, blockCountMax: 2 });
  const slow = new MemoryExport({ name: 'slow', sizeBytes: 4 * MiB, latencyMsMax: 20 });
  const plain = new MemoryExport({ name: 'plain', sizeBytes: 1 * MiB, canTrim: false, canZero: false, canFastZero: false, canFua: false, canMultiConn: false, canCache: false });
  const failing = new MemoryExport({ name: 'failing', sizeBytes: 1 * MiB });
  failing.failWith = 'THIN_IO';
  const slowZero = new MemoryExport({ name: 'slowzero', sizeBytes: 1 * MiB, fastZeroRefused: true });
  const running: RunningServer = await startServer([disk, readOnly, full, slow, plain, failing, slowZero], { defaultName: 'disk' });
  after(() => running.close());
  const target = { port: running.port };

  async function connect(name = 'disk', options?: { structured?: boolean; metaContext?: boolean }): Promise<NbdTestClient> {
    const client = await NbdTestClient.connect(target);
    await client.handshake(name, options);
    return client;
  }

  test('the greeting is fixed newstyle and offers NO_ZEROES', async () => {
    const client = await NbdTestClient.connect(target);
    assert.equal(await client.greet(), NBD_FLAG_FIXED_NEWSTYLE | NBD_FLAG_NO_ZEROES);
    client.close();
  });

  test('unknown client flags make the server drop the connection', async () => {
    const client = await NbdTestClient.connect(target);
    await client.greet(0x80 | NBD_FLAG_C_FIXED_NEWSTYLE);
    assert.equal(await client.raw.waitClosed(), true);
  });

  test('NBD_OPT_LIST lists every export with its description, and a list with data is invalid', async () => {
    const client = await NbdTestClient.connect(target);
    await client.greet();
    const replies = await client.option(NBD_OPT_LIST);
    const servers = replies.filter((reply) => reply.type === NBD_REP_SERVER);
    const names = servers.map((reply) => reply.data.toString('utf8', 4, 4 + reply.data.readUInt32BE(0)));
    assert.deepEqual(names.sort(), ['disk', 'failing', 'full', 'plain', 'ro', 'slow', 'slowzero']);
    const diskEntry = servers.find((reply) => reply.data.toString('utf8', 4, 8) === 'disk')!;
    assert.equal(diskEntry.data.toString('utf8', 8), 'a test disk');
    assert.equal(replies.at(-1)?.type, NBD_REP_ACK);
    const bad = await client.option(NBD_OPT_LIST, Buffer.from('x'));
    assert.equal(bad.at(-1)?.type, NBD_REP_ERR_INVALID);
    client.close();
  });

  test('NBD_OPT_INFO answers EXPORT, NAME, DESCRIPTION and BLOCK_SIZE, then the handshake goes on', async () => {
    const client = await NbdTestClient.connect(target);
    await client.greet();
    const replies = await client.option(NBD_OPT_INFO, encodeInfoRequest('disk', [NBD_INFO_NAME, NBD_INFO_DESCRIPTION, NBD_INFO_BLOCK_SIZE]));
    const infos = new Map(replies.filter((r) => r.type === NBD_REP_INFO).map((r) => [r.data.readUInt16BE(0), r.data]));
    const exportInfo = infos.get(NBD_INFO_EXPORT)!;
    assert.equal(exportInfo.length, 12);
    assert.equal(Number(exportInfo.readBigUInt64BE(2)), 64 * MiB);
    const flags = exportInfo.readUInt16BE(10);
    for (const flag of [NBD_FLAG_HAS_FLAGS, NBD_FLAG_SEND_FLUSH, NBD_FLAG_SEND_FUA, NBD_FLAG_SEND_TRIM, NBD_FLAG_SEND_WRITE_ZEROES, NBD_FLAG_SEND_FAST_ZERO, NBD_FLAG_CAN_MULTI_CONN]) {
      assert.ok(flags & flag, `flag 0x${flag.toString(16)} set`);
    }
    assert.equal(flags & NBD_FLAG_SEND_DF, 0, 'DF is clear without structured replies');
    assert.equal(infos.get(NBD_INFO_NAME)!.toString('utf8', 2), 'disk');
    assert.equal(infos.get(NBD_INFO_DESCRIPTION)!.toString('utf8', 2), 'a test disk');
    const blockSize = infos.get(NBD_INFO_BLOCK_SIZE)!;
    assert.deepEqual([blockSize.readUInt32BE(2), blockSize.readUInt32BE(6), blockSize.readUInt32BE(10)], [1, 4096, 32 * MiB]);
    assert.equal(replies.at(-1)?.type, NBD_REP_ACK);
    const unknown = await client.option(NBD_OPT_INFO, encodeInfoRequest('nope'));
    assert.deepEqual(unknown.map((r) => r.type), [NBD_REP_ERR_UNKNOWN]);
    const short = await client.option(NBD_OPT_GO, Buffer.from([0, 0, 0, 9, 1]));
    assert.deepEqual(short.map((r) => r.type), [NBD_REP_ERR_INVALID]);
    client.close();
  });

  test('unknown options and STARTTLS get NBD_REP_ERR_UNSUP and the next option still works', async () => {
    const client = await NbdTestClient.connect(target);
    await client.greet();
    assert.deepEqual((await client.option(0x4242, Buffer.from('junk'))).map((r) => r.type), [NBD_REP_ERR_UNSUP]);
    assert.deepEqual((await client.option(NBD_OPT_STARTTLS)).map((r) => r.type), [NBD_REP_ERR_UNSUP]);
    const go = await client.option(NBD_OPT_GO, encodeInfoRequest('disk'));
    assert.equal(go.at(-1)?.type, NBD_REP_ACK);
    client.close();
  });

  test('NBD_OPT_ABORT is acknowledged and the server closes', async () => {
    const client = await NbdTestClient.connect(target);
    await client.greet();
    assert.deepEqual((await client.option(NBD_OPT_ABORT)).map((r) => r.type), [NBD_REP_ACK]);
    assert.equal(await client.raw.waitClosed(), true);
  });

  test('the empty export name is the default export', async () => {
    const client = await connect('');
    assert.equal(client.sizeBytes, 64 * MiB);
    client.close();
  });

  test('NBD_OPT_EXPORT_NAME enters transmission with 124 zero bytes unless NO_ZEROES was agreed', async () => {
    for (const noZeroes of [true, false]) {
      const client = await NbdTestClient.connect(target);
      await client.greet(NBD_FLAG_C_FIXED_NEWSTYLE | (noZeroes ? NBD_FLAG_NO_ZEROES : 0));
      client.raw.send(encodeOption(NBD_OPT_EXPORT_NAME, Buffer.from('ro')));
      const reply = await client.raw.read(10 + (noZeroes ? 0 : 124));
      assert.equal(Number(reply.readBigUInt64BE(0)), 1 * MiB);
      assert.ok(reply.readUInt16BE(8) & NBD_FLAG_READ_ONLY);
      assert.ok(reply.subarray(10).every((byte) => byte === 0));
      client.raw.send(encodeRequest(NBD_CMD_READ, 0, 7n, 0, 512));
      const simple = await client.raw.read(16 + 512);
      assert.equal(simple.readUInt32BE(4), 0);
      assert.equal(simple.readBigUInt64BE(8), 7n);
      client.close();
    }
  });

  test('NBD_OPT_EXPORT_NAME of an unknown export hard-disconnects', async () => {
    const client = await NbdTestClient.connect(target);
    await client.greet();
    client.raw.send(encodeOption(NBD_OPT_EXPORT_NAME, Buffer.from('nope')));
    assert.equal(await client.raw.waitClosed(), true);
  });

  test('meta contexts: LIST offers base:allocation, SET selects it, and SET before structured replies is invalid', async () => {
    const client = await NbdTestClient.connect(target);
    await client.greet();
    const early = await client.option(NBD_OPT_SET_META_CONTEXT, encodeMetaContextRequest('disk', ['base:allocation']));
    assert.deepEqual(early.map((r) => r.type), [NBD_REP_ERR_INVALID]);
    assert.deepEqual((await client.option(NBD_OPT_STRUCTURED_REPLY)).map((r) => r.type), [NBD_REP_ACK]);
    const list = await client.option(NBD_OPT_LIST_META_CONTEXT, encodeMetaContextRequest('disk', []));
    assert.deepEqual(list.map((r) => r.type), [NBD_REP_META_CONTEXT, NBD_REP_ACK]);
    assert.equal(list[0]!.data.toString('utf8', 4), 'base:allocation');
    const wildcard = await client.option(NBD_OPT_LIST_META_CONTEXT, encodeMetaContextRequest('disk', ['base:']));
    assert.deepEqual(wildcard.map((r) => r.type), [NBD_REP_META_CONTEXT, NBD_REP_ACK]);
    const other = await client.option(NBD_OPT_SET_META_CONTEXT, encodeMetaContextRequest('disk', ['qemu:dirty-bitmap:x', 'base:']));
    assert.deepEqual(other.map((r) => r.type), [NBD_REP_ACK], 'unknown contexts and the bare namespace select nothing');
    const set = await client.option(NBD_OPT_SET_META_CONTEXT, encodeMetaContextRequest('disk', ['base:allocation']));
    assert.deepEqual(set.map((r) => r.type), [NBD_REP_META_CONTEXT, NBD_REP_ACK]);
    assert.notEqual(set[0]!.data.readUInt32BE(0), 0);
    const truncated = encodeMetaContextRequest('disk', ['base:allocation']).subarray(0, 12);
    assert.deepEqual((await client.option(NBD_OPT_SET_META_CONTEXT, truncated)).map((r) => r.type), [NBD_REP_ERR_INVALID]);
    const unknown = await client.option(NBD_OPT_LIST_META_CONTEXT, encodeMetaContextRequest('nope', []));
    assert.deepEqual(unknown.map((r) => r.type), [NBD_REP_ERR_UNKNOWN]);
    client.close();
  });

  test('a write reads back, with FUA, over simple and structured replies', async () => {
    for (const structured of [false, true]) {
      const client = await connect('disk', { structured });
      const data = patternBytes(100_000, structured ? 1 : 2);
      const offsetBytes = structured ? 3 * MiB + 17 : 5 * MiB + 3;
      assert.equal((await client.call(NBD_CMD_WRITE, { offsetBytes, data, flags: NBD_CMD_FLAG_FUA })).error, 0);
      const reply = await client.call(NBD_CMD_READ, { offsetBytes, lengthBytes: data.length });
      assert.equal(reply.error, 0);
      assert.ok(reply.data!.equals(data));
      assert.equal((await client.call(NBD_CMD_FLUSH)).error, 0);
      client.close();
    }
  });

  test('a structured READ sends holes as OFFSET_HOLE chunks, and with DF one data chunk', async () => {
    const client = await connect('disk');
    const base = 10 * MiB;
    await client.call(NBD_CMD_WRITE, { offsetBytes: base + 8192, data: patternBytes(4096, 3) });
    const sparse = await client.call(NBD_CMD_READ, { offsetBytes: base, lengthBytes: 16384 });
    assert.deepEqual(sparse.chunkTypes, [NBD_REPLY_TYPE_OFFSET_HOLE, NBD_REPLY_TYPE_OFFSET_DATA, NBD_REPLY_TYPE_OFFSET_HOLE]);
    assert.ok(sparse.data!.subarray(8192, 12288).equals(patternBytes(4096, 3)));
    assert.ok(sparse.data!.subarray(0, 8192).every((byte) => byte === 0));
    const dense = await client.call(NBD_CMD_READ, { offsetBytes: base, lengthBytes: 16384, flags: NBD_CMD_FLAG_DF });
    assert.deepEqual(dense.chunkTypes, [NBD_REPLY_TYPE_OFFSET_DATA]);
    assert.ok(dense.data!.equals(sparse.data!));
    const written = await client.call(NBD_CMD_READ, { offsetBytes: base + 8192, lengthBytes: 4096 });
    assert.deepEqual(written.chunkTypes, [NBD_REPLY_TYPE_OFFSET_DATA], 'no hole, one data chunk');
    assert.ok(written.data!.equals(patternBytes(4096, 3)));
    client.close();
  });

  test('BLOCK_STATUS reports holes and data, and REQ_ONE gives exactly one extent', async () => {
    const client = await connect('disk');
    const base = 20 * MiB;
    await client.call(NBD_CMD_WRITE, { offsetBytes: base + 65536, data: patternBytes(65536, 4) });
    const status = await client.call(NBD_CMD_BLOCK_STATUS, { offsetBytes: base, lengthBytes: 4 * 65536 });
    assert.equal(status.error, 0);
    assert.deepEqual(status.extents, [
      [65536, NBD_STATE_HOLE | NBD_STATE_ZERO],
      [65536, 0],
      [131072, NBD_STATE_HOLE | NBD_STATE_ZERO],
    ]);
    const one = await client.call(NBD_CMD_BLOCK_STATUS, { offsetBytes: base + 4096, lengthBytes: 4 * 65536, flags: NBD_CMD_FLAG_REQ_ONE });
    assert.deepEqual(one.extents, [[61440, NBD_STATE_HOLE | NBD_STATE_ZERO]]);
    client.close();
  });

  test('BLOCK_STATUS without a selected context is EINVAL', async () => {
    const client = await connect('disk', { metaContext: false });
    assert.equal((await client.call(NBD_CMD_BLOCK_STATUS, { offsetBytes: 0, lengthBytes: 4096 })).error, NBD_EINVAL);
    client.close();
  });

  test('TRIM and WRITE_ZEROES make holes, NO_HOLE keeps blocks allocated, and both read back as zeros', async () => {
    const client = await connect('disk');
    const base = 30 * MiB;
    await client.call(NBD_CMD_WRITE, { offsetBytes: base, data: patternBytes(4 * 65536, 5) });
    assert.equal((await client.call(NBD_CMD_TRIM, { offsetBytes: base, lengthBytes: 65536 })).error, 0);
    assert.equal((await client.call(NBD_CMD_WRITE_ZEROES, { offsetBytes: base + 65536, lengthBytes: 65536 })).error, 0);
    assert.equal((await client.call(NBD_CMD_WRITE_ZEROES, { offsetBytes: base + 131072, lengthBytes: 65536, flags: NBD_CMD_FLAG_NO_HOLE | NBD_CMD_FLAG_FUA })).error, 0);
    assert.equal((await client.call(NBD_CMD_WRITE_ZEROES, { offsetBytes: base + 196608, lengthBytes: 100, flags: NBD_CMD_FLAG_FAST_ZERO })).error, 0);
    const status = await client.call(NBD_CMD_BLOCK_STATUS, { offsetBytes: base, lengthBytes: 4 * 65536 });
    assert.deepEqual(status.extents, [[131072, NBD_STATE_HOLE | NBD_STATE_ZERO], [131072, 0]]);
    const read = await client.call(NBD_CMD_READ, { offsetBytes: base + 65536, lengthBytes: 131072 + 100 });
    assert.ok(read.data!.every((byte) => byte === 0));
    client.close();
  });

  test('errors follow the spec: EINVAL reading past the end, ENOSPC writing past it, EPERM on read-only', async () => {
    const client = await connect('disk');
    const end = 64 * MiB;
    assert.equal((await client.call(NBD_CMD_READ, { offsetBytes: end - 512, lengthBytes: 1024 })).error, NBD_EINVAL);
    assert.equal((await client.call(NBD_CMD_WRITE, { offsetBytes: end - 512, data: Buffer.alloc(1024) })).error, NBD_ENOSPC);
    assert.equal((await client.call(NBD_CMD_WRITE_ZEROES, { offsetBytes: end, lengthBytes: 1 })).error, NBD_ENOSPC);
    assert.equal((await client.call(NBD_CMD_TRIM, { offsetBytes: end, lengthBytes: 1 })).error, NBD_EINVAL);
    assert.equal((await client.call(NBD_CMD_BLOCK_STATUS, { offsetBytes: end, lengthBytes: 1 })).error, NBD_EINVAL);
    assert.equal((await client.call(NBD_CMD_CACHE, { offsetBytes: 2 ** 52, lengthBytes: 1 })).error, NBD_EINVAL);
    const huge = await client.call(NBD_CMD_READ, { offsetBytes: 0xffff_ffff_ffff * 0x10000, lengthBytes: 1 });
    assert.equal(huge.error, NBD_EINVAL);
    assert.equal((await client.call(NBD_CMD_FLUSH, { offsetBytes: 1 })).error, NBD_EINVAL);
    assert.equal((await client.call(9)).error, NBD_EINVAL, 'unknown command');
    assert.equal((await client.call(NBD_CMD_READ, { lengthBytes: 1, flags: NBD_CMD_FLAG_NO_HOLE })).error, NBD_EINVAL, 'flag not valid for READ');
    assert.equal((await client.call(NBD_CMD_WRITE, { data: Buffer.alloc(1), flags: 0x80 })).error, NBD_EINVAL, 'unknown flag');
    const read = await client.call(NBD_CMD_READ, { offsetBytes: end - 1, lengthBytes: 1 });
    assert.equal(read.error, 0, 'the connection still works');
    assert.ok(read.message === undefined);
    client.close();
    const ro = await connect('ro');
    assert.equal((await ro.call(NBD_CMD_WRITE, { data: Buffer.alloc(512) })).error, NBD_EPERM);
    assert.equal((await ro.call(NBD_CMD_TRIM, { lengthBytes: 512 })).error, NBD_EPERM);
    assert.equal((await ro.call(NBD_CMD_WRITE_ZEROES, { lengthBytes: 512 })).error, NBD_EPERM);
    assert.equal((await ro.call(NBD_CMD_READ, { lengthBytes: 512 })).error, 0);
    ro.close();
  });

  test('an error reply carries a message naming the request', async () => {
    const client = await connect('disk');
    const reply = await client.call(NBD_CMD_READ, { offsetBytes: 64 * MiB, lengthBytes: 4096 });
    assert.match(reply.message ?? '', /NBD_CMD_READ of 4096 bytes at 67108864 passes the end/);
    client.close();
  });

  test('commands an export does not offer are EINVAL, and FUA without native support flushes', async () => {
    const client = await connect('plain');
    assert.equal(client.transmissionFlags & (NBD_FLAG_SEND_TRIM | NBD_FLAG_SEND_WRITE_ZEROES | NBD_FLAG_SEND_FAST_ZERO | NBD_FLAG_CAN_MULTI_CONN), 0);
    assert.equal((await client.call(NBD_CMD_TRIM, { lengthBytes: 512 })).error, NBD_EINVAL);
    assert.equal((await client.call(NBD_CMD_WRITE_ZEROES, { lengthBytes: 512 })).error, NBD_EINVAL);
    const flushesBefore = plain.counts.flush;
    assert.equal((await client.call(NBD_CMD_WRITE, { data: Buffer.alloc(512, 1), flags: NBD_CMD_FLAG_FUA })).error, 0);
    assert.equal(plain.counts.flush, flushesBefore + 1);
    assert.equal((await client.call(NBD_CMD_CACHE, { lengthBytes: 512 })).error, 0, 'CACHE without a cache is a no-op');
    client.close();
  });

  test('FAST_ZERO that the export cannot do fast is ENOTSUP and changes nothing; plain ENOTSUP is EIO', async () => {
    const client = await connect('slowzero');
    assert.ok(client.transmissionFlags & NBD_FLAG_SEND_FAST_ZERO);
    const data = patternBytes(8192, 9);
    assert.equal((await client.call(NBD_CMD_WRITE, { offsetBytes: 0, data })).error, 0);
    const refused = await client.call(NBD_CMD_WRITE_ZEROES, { offsetBytes: 0, lengthBytes: 8192, flags: NBD_CMD_FLAG_FAST_ZERO });
    assert.equal(refused.error, NBD_ENOTSUP);
    assert.ok((await client.call(NBD_CMD_READ, { offsetBytes: 0, lengthBytes: 8192 })).data!.equals(data), 'nothing was zeroed');
    assert.equal((await client.call(NBD_CMD_WRITE_ZEROES, { offsetBytes: 0, lengthBytes: 8192 })).error, 0, 'without FAST_ZERO it zeroes');
    assert.ok((await client.call(NBD_CMD_READ, { offsetBytes: 0, lengthBytes: 8192 })).data!.every((byte) => byte === 0));
    client.close();
    const noFast = await connect('plain');
    assert.equal((await noFast.call(NBD_CMD_WRITE_ZEROES, { lengthBytes: 512, flags: NBD_CMD_FLAG_FAST_ZERO })).error, NBD_EINVAL, 'FAST_ZERO not advertised');
    noFast.close();
    const failingZero = await connect('failing');
    failing.failWith = 'ENOTSUP';
    assert.equal((await failingZero.call(NBD_CMD_WRITE, { data: Buffer.alloc(512) })).error, NBD_EIO, 'ENOTSUP outside FAST_ZERO is an I/O error');
    failing.failWith = 'THIN_IO';
    failingZero.close();
  });

  test('a full pool is ENOSPC, a failing export EIO, and the connection goes on', async () => {
    const client = await connect('full');
    assert.equal((await client.call(NBD_CMD_WRITE, { offsetBytes: 0, data: Buffer.alloc(8192, 1) })).error, 0);
    assert.equal((await client.call(NBD_CMD_WRITE, { offsetBytes: 65536, data: Buffer.alloc(512, 1) })).error, NBD_ENOSPC);
    assert.equal((await client.call(NBD_CMD_WRITE, { offsetBytes: 0, data: Buffer.alloc(512, 2) })).error, 0, 'allocated blocks stay writable');
    client.close();
    const bad = await connect('failing');
    assert.equal((await bad.call(NBD_CMD_READ, { lengthBytes: 512 })).error, NBD_EIO);
    assert.equal((await bad.call(NBD_CMD_FLUSH)).error, NBD_EIO);
    bad.close();
  });

  test('backend error codes map to NBD errors', () => {
    assert.equal(nbdErrorForCode('THIN_NO_SPACE'), NBD_ENOSPC);
    assert.equal(nbdErrorForCode('THIN_READ_ONLY'), NBD_EPERM);
    assert.equal(nbdErrorForCode('THIN_OUT_OF_RANGE'), NBD_EINVAL);
    assert.equal(nbdErrorForCode('THIN_INVALID'), NBD_EINVAL);
    assert.equal(nbdErrorForCode('THIN_CORRUPT_NODE'), NBD_EIO);
    assert.equal(nbdErrorForCode(undefined), NBD_EIO);
  });

  test('a READ longer than the maximum payload is EINVAL, and an oversized WRITE is skipped with EINVAL', async () => {
    const client = await connect('disk');
    assert.equal((await client.call(NBD_CMD_READ, { lengthBytes: 32 * MiB + 1 })).error, NBD_EINVAL);
    const tooBig = Buffer.alloc(32 * MiB + 4096, 7);
    assert.equal((await client.call(NBD_CMD_WRITE, { offsetBytes: 0, data: tooBig })).error, NBD_EINVAL);
    const read = await client.call(NBD_CMD_READ, { offsetBytes: 0, lengthBytes: 4096 });
    assert.equal(read.error, 0);
    assert.ok(!read.data!.every((byte) => byte === 7), 'the oversized payload was not applied');
    const max = await client.call(NBD_CMD_READ, { offsetBytes: 0, lengthBytes: 32 * MiB });
    assert.equal(max.error, 0);
    client.close();
  });

  test('many requests in flight are answered out of order, each matched to its cookie', async () => {
    const client = await connect('slow');
    const writes = [];
    for (let i = 0; i < 64; i++) writes.push(client.call(NBD_CMD_WRITE, { offsetBytes: i * 65536, data: patternBytes(65536, 100 + i) }));
    assert.ok((await Promise.all(writes)).every((reply) => reply.error === 0));
    const order: number[] = [];
    const reads = [];
    for (let i = 0; i < 64; i++) {
      reads.push(client.call(NBD_CMD_READ, { offsetBytes: i * 65536, lengthBytes: 65536 }).then((reply) => {
        order.push(i);
        assert.ok(reply.data!.equals(patternBytes(65536, 100 + i)));
      }));
    }
    await Promise.all(reads);
    assert.notDeepEqual(order, [...order].sort((a, b) => a - b), 'replies came back out of order');
    client.close();
  });

  test('a client with thousands of requests outstanding never has more than the in-flight limit running', async () => {
    const client = await connect('slow');
    slow.inFlightMax = 0;
    const replies = [];
    for (let i = 0; i < 2000; i++) replies.push(client.call(NBD_CMD_FLUSH));
    assert.ok((await Promise.all(replies)).every((reply) => reply.error === 0));
    assert.ok(slow.inFlightMax <= NBD_REQUESTS_IN_FLIGHT_MAX, `${slow.inFlightMax} at once`);
    assert.ok(slow.inFlightMax > NBD_REQUESTS_IN_FLIGHT_MAX / 2, `requests did run concurrently (${slow.inFlightMax})`);
    client.close();
  });

  test('NBD_CMD_DISC waits for the requests in flight, replies to them, then closes', async () => {
    const client = await connect('slow');
    const replies = [];
    for (let i = 0; i < 16; i++) replies.push(client.call(NBD_CMD_WRITE, { offsetBytes: i * 4096, data: Buffer.alloc(4096, i) }));
    client.raw.send(encodeRequest(NBD_CMD_DISC, 0, 999n, 0, 0));
    assert.ok((await Promise.all(replies)).every((reply) => reply.error === 0));
    assert.equal(await client.raw.waitClosed(), true);
  });

  test('a FLUSH on one connection covers writes replied to on another (CAN_MULTI_CONN)', async () => {
    const writer = await connect('disk');
    const flusher = await connect('disk');
    assert.ok(writer.transmissionFlags & NBD_FLAG_CAN_MULTI_CONN);
    const data = patternBytes(4096, 77);
    assert.equal((await writer.call(NBD_CMD_WRITE, { offsetBytes: 40 * MiB, data })).error, 0);
    assert.equal((await flusher.call(NBD_CMD_FLUSH)).error, 0);
    const read = await flusher.call(NBD_CMD_READ, { offsetBytes: 40 * MiB, lengthBytes: 4096 });
    assert.ok(read.data!.equals(data));
    writer.close();
    flusher.close();
  });

  test('exports added and removed while serving are seen by the next handshake', async () => {
    const extra = new MemoryExport({ name: 'late', sizeBytes: 2 * MiB });
    running.registry.add(extra);
    const client = await connect('late');
    assert.equal(client.sizeBytes, 2 * MiB);
    assert.equal(running.server.connectionsTo('late').length, 1);
    running.registry.remove('late');
    const probe = await NbdTestClient.connect(target);
    await probe.greet();
    assert.deepEqual((await probe.option(NBD_OPT_INFO, encodeInfoRequest('late'))).map((r) => r.type), [NBD_REP_ERR_UNKNOWN]);
    probe.close();
    assert.equal((await client.call(NBD_CMD_READ, { lengthBytes: 512 })).error, 0, 'a connected client keeps its export');
    await running.server.disconnectExport('late');
    assert.equal(await client.raw.waitClosed(), true);
  });

  test('a bad request magic hard-disconnects', async () => {
    const client = await connect('disk');
    client.raw.send(Buffer.alloc(28, 0x55));
    assert.equal(await client.raw.waitClosed(), true);
  });

  test('a client that ends in the middle of a WRITE payload leaves the server budget at zero', async () => {
    const raw = await RawClient.connect(target);
    const client = new NbdTestClient(raw);
    await client.handshake('disk');
    raw.send(encodeRequest(NBD_CMD_WRITE, 0, 1n, 0, 1 * MiB));
    raw.send(Buffer.alloc(1000));
    await waitFor(() => running.server.bytesInFlight >= 1 * MiB, 'the server holds the WRITE payload it is reading');
    raw.destroy();
    await waitFor(() => running.server.bytesInFlight === 0, 'the budget back to zero after the client left');
  });

  test('an export whose size throws costs only the connection that asked for it', async () => {
    const broken = new MemoryExport({ name: 'broken', sizeBytes: 1 * MiB });
    broken.sizeBytes = () => {
      throw new Error('size unavailable');
    };
    running.registry.add(broken);
    const client = await NbdTestClient.connect(target);
    await client.greet();
    client.raw.send(encodeOption(NBD_OPT_GO, encodeInfoRequest('broken')));
    assert.equal(await client.raw.waitClosed(), true);
    running.registry.remove('broken');
    const other = await connect('disk');
    assert.equal((await other.call(NBD_CMD_READ, { lengthBytes: 512 })).error, 0);
    other.close();
  });
});
