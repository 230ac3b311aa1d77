// The wrapper between the protocol and an export (nbdkit's backend.c): FUA by a flush when the
// export has none, the export's block status answers checked, and filters that see exactly the
// calls the export would.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import type { NbdExport } from '../../src/nbd/backend.ts';
import { ExportBackend, type NbdExportFilter } from '../../src/nbd/export-backend.ts';
import { NBD_CMD_FLAG_FUA, NBD_CMD_WRITE, NBD_EIO } from '../../src/nbd/protocol.ts';
import { RequestError } from '../../src/nbd/request-error.ts';
import { NbdTestClient } from './client.ts';
import { startServer } from './helpers.ts';
import { MemoryExport } from './memory-export.ts';

const MiB = 1024 * 1024;

/** A filter that records every call that reaches the export below it. */
function recorder(calls: string[]): NbdExportFilter {
  return (next) =>
    new Proxy(next, {
      get(target, property, receiver) {
        const value = Reflect.get(target, property, receiver) as unknown;
        if (typeof value !== 'function') return value;
        return (...args: unknown[]) => {
          const options = args[args.length - 1];
          const fua = typeof options === 'object' && options !== null && 'fua' in options ? ` fua=${String((options as { fua: boolean }).fua)}` : '';
          calls.push(`${String(property)}${fua}`);
          return (value as (...rest: unknown[]) => unknown).apply(target, args);
        };
      },
    }) as NbdExport;
}

test('a FUA write to an export without native FUA is the write, then a flush; with native FUA, the write alone', async () => {
  for (const canFua of [false, true]) {
    const calls: string[] = [];
    const backend = new ExportBackend(new MemoryExport({ name: 'm', sizeBytes: MiB, canFua }), { sizeBytes: MiB, payloadBytesMax: MiB }, [recorder(calls)]);
    await backend.write(4096, new Uint8Array(4096), true);
    await backend.trim(0, 4096, true);
    await backend.zero(8192, 4096, { noHole: false, fua: true, fastZero: false });
    await backend.write(0, new Uint8Array(512), false);
    assert.deepEqual(
      calls,
      canFua
        ? ['write fua=true', 'trim fua=true', 'zero fua=true', 'write fua=false']
        : ['write fua=false', 'flush', 'trim fua=false', 'flush', 'zero fua=false', 'flush', 'write fua=false'],
      `canFua ${canFua}`,
    );
  }
});

test('an export that answers block status with an extent of no bytes fails the request with NBD_EIO', async () => {
  const exp = new MemoryExport({ name: 'm', sizeBytes: MiB });
  const broken: NbdExport = Object.assign(Object.create(exp) as NbdExport, { blockStatus: async () => [{ lengthBytes: 0, hole: true, zero: true }] });
  const backend = new ExportBackend(broken, { sizeBytes: MiB, payloadBytesMax: MiB });
  await assert.rejects(backend.blockStatus(0, 4096), (error: unknown) => error instanceof RequestError && error.nbdError === NBD_EIO && /extent of 0 bytes/.test(error.message));
});

test('a range outside the size the connection sampled never reaches the export: it is a bug', async () => {
  const calls: string[] = [];
  const backend = new ExportBackend(new MemoryExport({ name: 'm', sizeBytes: MiB }), { sizeBytes: MiB, payloadBytesMax: 64 * 1024 }, [recorder(calls)]);
  assert.throws(() => backend.read(MiB - 512, new Uint8Array(4096)), /internal error|bug/i);
  await assert.rejects(backend.write(0, new Uint8Array(128 * 1024), false), /internal error|bug/i);
  assert.deepEqual(calls, []);
});

test('the server puts its filters below the fallbacks: a FUA WRITE from a client reaches a filter as a write and a flush', async () => {
  const calls: string[] = [];
  const running = await startServer([new MemoryExport({ name: 'plain', sizeBytes: MiB, canFua: false })], { filters: [recorder(calls)] });
  try {
    const client = await NbdTestClient.connect({ port: running.port });
    await client.handshake('plain', { structured: true });
    const reply = await client.call(NBD_CMD_WRITE, { flags: NBD_CMD_FLAG_FUA, offsetBytes: 0, data: new Uint8Array(4096).fill(7) });
    assert.equal(reply.error, 0);
    assert.deepEqual(calls.filter((call) => call.startsWith('write') || call === 'flush'), ['write fua=false', 'flush']);
    client.close();
  } finally {
    await running.close();
  }
});
