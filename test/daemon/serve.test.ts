// `thinbd serve`: the server owns the pool, every volume is an export, and the other commands
// work on the live pool through its control socket.
import { test, describe, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { THINBD, thinbd, thinbdJson } from '../cli/run-thinbd.ts';
import { run, requireTools, waitFor } from '../nbd/helpers.ts';
import { NbdTestClient, encodeInfoRequest, encodeRequest } from '../nbd/client.ts';
import { NBD_CMD_FLUSH, NBD_CMD_READ, NBD_CMD_WRITE, NBD_OPT_INFO, NBD_REP_ACK } from '../../src/nbd/protocol.ts';
import { startServe, type ServeProcess } from './serve-process.ts';
import type { VolumeListing } from '../../src/tools/list.ts';

requireTools('nbdinfo', 'qemu-io');

const MiB = 1024 * 1024;
let work: string;
let pool: string;
let server: ServeProcess;

function ok(args: string[]): string {
  const result = thinbd([...args, '--pool', pool]);
  assert.equal(result.code, 0, `thinbd ${args.join(' ')}: ${result.stderr}`);
  return result.stdout;
}

before(async () => {
  work = mkdtempSync(join(tmpdir(), 'thinbd-serve-'));
  pool = join(work, 'pool');
  assert.equal(thinbd(['pool', 'create', '--pool', pool, '--data-size', '1G']).code, 0);
  assert.equal(thinbd(['create', '--pool', pool, 'disk', '--size', '64M']).code, 0);
  server = await startServe(pool);
});

after(async () => {
  await server?.kill();
  rmSync(work, { recursive: true, force: true });
});

describe('a served pool', () => {
  test('nbdinfo --list shows every volume as an export with its size', async () => {
    const listing = await run('nbdinfo', ['--list', '--json', `nbd://127.0.0.1:${server.port}`]);
    const exports = (JSON.parse(listing.stdout) as { exports: Array<{ 'export-name': string; 'export-size': number }> }).exports;
    assert.deepEqual(exports.map((entry) => [entry['export-name'], entry['export-size']]), [['disk', 64 * MiB]]);
  });

  test('a second server on the same pool is refused: the first owns it', () => {
    const second = thinbd(['serve', '--pool', pool, '--listen', '127.0.0.1:0']);
    assert.equal(second.code, 1);
    assert.match(second.stderr, /in use/);
  });

  test('create, snapshot, resize, list, status and check work on the live pool and exports follow at once', async () => {
    ok(['create', 'live', '--size', '8M']);
    await run('qemu-io', ['-f', 'raw', '-c', 'write -P 0x5a 0 1M', server.uri('live')]);
    ok(['snapshot', 'live', 'live-snap', '--read-only']);
    const info = await run('nbdinfo', ['--json', server.uri('live-snap')]);
    const snapInfo = JSON.parse(info.stdout) as { exports: Array<{ 'is_read_only': boolean; 'export-size': number }> };
    assert.equal(snapInfo.exports[0]?.is_read_only, true, 'a read-only snapshot is a read-only export');
    await run('qemu-io', ['-f', 'raw', '-r', '-c', 'read -P 0x5a 0 1M', server.uri('live-snap')]);

    ok(['resize', 'live', '--size', '16M']);
    const grown = await run('nbdinfo', ['--size', server.uri('live')]);
    assert.equal(Number(grown.stdout.trim()), 16 * MiB, 'growth is visible to new connections');

    const volumes = thinbdJson<VolumeListing[]>(['list', '--pool', pool]);
    assert.deepEqual(volumes.map((volume) => volume.name).sort(), ['disk', 'live', 'live-snap']);
    assert.equal(volumes.find((volume) => volume.name === 'live-snap')?.sharedBytes, 1 * MiB);
    const status = thinbdJson<{ volumeCount: number; mode: string }>(['pool', 'status', '--pool', pool]);
    assert.equal(status.volumeCount, 3);
    assert.equal(status.mode, 'read-write');
    assert.match(ok(['check']), /is clean/);

    ok(['remove', 'live-snap']);
    const after = await run('nbdinfo', ['--list', '--json', `nbd://127.0.0.1:${server.port}`]);
    assert.ok(!after.stdout.includes('live-snap'), 'a removed volume is no longer exported');
    const importWhileServed = thinbd(['import', '--pool', pool, 'disk', join(work, 'none')]);
    assert.equal(importWhileServed.code, 1);
    assert.match(importWhileServed.stderr, /being served/);
  });

  test('removing a volume with a connected client is refused unless --force', async () => {
    ok(['create', 'busy', '--size', '1M']);
    const client = await NbdTestClient.connect({ port: server.port });
    await client.handshake('busy');
    const refused = thinbd(['remove', '--pool', pool, 'busy']);
    assert.equal(refused.code, 1);
    assert.match(refused.stderr, /1 NBD client\(s\) connected/);
    ok(['remove', 'busy', '--force']);
    assert.equal(await client.raw.waitClosed(), true, 'the forced removal disconnected the client');
  });

  test('a volume being removed is not exported again by another command while its clients drain', async () => {
    ok(['create', 'doomed', '--size', '1M']);
    // A client stopped in the middle of a WRITE payload holds the forced removal while it drains.
    const stalled = await NbdTestClient.connect({ port: server.port });
    await stalled.handshake('doomed');
    stalled.raw.send(encodeRequest(NBD_CMD_WRITE, 0, 1n, 0, 65536));
    stalled.raw.send(Buffer.alloc(100));
    const removal = run(process.execPath, [THINBD, 'remove', '--pool', pool, 'doomed', '--force'], { allowFailure: true });
    const exported = async (): Promise<boolean> => {
      const probe = await NbdTestClient.connect({ port: server.port });
      await probe.greet();
      const replies = await probe.option(NBD_OPT_INFO, encodeInfoRequest('doomed'));
      probe.close();
      return replies.at(-1)?.type === NBD_REP_ACK;
    };
    for (let tries = 0; await exported(); tries++) {
      assert.ok(tries < 3000, 'the removal never took the export away');
      await new Promise((resolve) => setTimeout(resolve, 20));
    }
    // Any command that changes the volumes syncs the exports with the pool, where doomed still is.
    ok(['create', 'bystander', '--size', '1M']);
    assert.equal(await exported(), false, 'no new client can reach a volume being removed');
    stalled.raw.send(Buffer.alloc(65536 - 100));
    assert.equal((await removal).code, 0);
    assert.equal(await stalled.raw.waitClosed(), true, 'the forced removal disconnected the client');
    assert.ok(!thinbdJson<VolumeListing[]>(['list', '--pool', pool]).some((volume) => volume.name === 'doomed'));
    ok(['remove', 'bystander']);
  });

  test('a snapshot taken while a client writes holds every write acknowledged before it and none sent after it', async () => {
    ok(['create', 'busywriter', '--size', '16M']);
    const client = await NbdTestClient.connect({ port: server.port });
    await client.handshake('busywriter');
    const sectorBytes = 4096;
    const sectors = (16 * MiB) / sectorBytes;
    const acknowledgedBefore = new Set<number>();
    const sentAfter = new Set<number>();
    let phase: 'before' | 'during' | 'after' = 'before';
    let next = 0;
    // The last sectors wait for the snapshot to finish, so some writes are sent after it however
    // fast the server takes the others (all 4096 used to be done before a slow CLI even started).
    const sectorsKeptForAfter = 128;
    const writer = async (): Promise<void> => {
      while (next < sectors) {
        if (next >= sectors - sectorsKeptForAfter && phase !== 'after') {
          await new Promise((resolve) => setTimeout(resolve, 5));
          continue;
        }
        const sector = next++;
        const sentIn = phase;
        const data = Buffer.alloc(sectorBytes, (sector % 255) + 1);
        const reply = await client.call(NBD_CMD_WRITE, { offsetBytes: sector * sectorBytes, data });
        assert.equal(reply.error, 0);
        if (phase === 'before') acknowledgedBefore.add(sector);
        if (sentIn === 'after') sentAfter.add(sector);
        if (phase === 'after' && sentAfter.size > 64) return;
      }
    };
    const writers = Promise.all(Array.from({ length: 8 }, writer));
    // Some writes acknowledged before the snapshot starts: counted, not timed.
    await waitFor(() => acknowledgedBefore.size >= 64, 'writes acknowledged before the snapshot');
    phase = 'during';
    // An asynchronous child, so the writers keep sending while the snapshot is taken.
    const snapshot = (await run(process.execPath, [THINBD, 'snapshot', '--pool', pool, 'busywriter', 'frozen'], { allowFailure: true })).code;
    phase = 'after';
    assert.equal(snapshot, 0);
    await writers;
    assert.ok(acknowledgedBefore.size > 0 && sentAfter.size > 0, 'writes happened on both sides of the snapshot');
    const reader = await NbdTestClient.connect({ port: server.port });
    await reader.handshake('frozen');
    const image = (await reader.call(NBD_CMD_READ, { offsetBytes: 0, lengthBytes: 16 * MiB })).data!;
    for (const sector of acknowledgedBefore) {
      assert.equal(image[sector * sectorBytes], (sector % 255) + 1, `sector ${sector}, acknowledged before the snapshot, is in it`);
    }
    for (const sector of sentAfter) {
      assert.equal(image[sector * sectorBytes], 0, `sector ${sector}, sent after the snapshot, is not in it`);
    }
    client.close();
    reader.close();
  });

  test('SIGTERM finishes in-flight requests, commits and exits cleanly', async () => {
    const client = await NbdTestClient.connect({ port: server.port });
    await client.handshake('disk');
    const data = randomBytes(256 * 1024);
    const writes = Array.from({ length: 16 }, (_, index) =>
      client.call(NBD_CMD_WRITE, { offsetBytes: index * data.length, data }),
    );
    await (await writes[0]!);
    const code = await server.stop();
    assert.equal(code, 0, server.output());
    const replies = await Promise.allSettled(writes);
    const acknowledged = replies.filter((reply) => reply.status === 'fulfilled' && reply.value.error === 0).length;
    assert.ok(acknowledged >= 1);
    assert.equal(thinbd(['check', '--pool', pool]).code, 0);
    server = await startServe(pool);
    const reader = await NbdTestClient.connect({ port: server.port });
    await reader.handshake('disk');
    const back = await reader.call(NBD_CMD_READ, { offsetBytes: 0, lengthBytes: data.length });
    assert.ok(back.data?.equals(data), 'a write acknowledged before SIGTERM survives a clean stop without FLUSH');
    const flush = await reader.call(NBD_CMD_FLUSH);
    assert.equal(flush.error, 0);
    reader.close();
  });
});

test('serve --read-only exports every volume read-only and refuses every change through the control socket, while list works', async () => {
  const readOnlyPool = join(work, 'read-only-pool');
  assert.equal(thinbd(['pool', 'create', '--pool', readOnlyPool, '--data-size', '256M']).code, 0);
  assert.equal(thinbd(['create', '--pool', readOnlyPool, 'disk', '--size', '8M']).code, 0);
  const readOnlyServer = await startServe(readOnlyPool, ['--read-only']);
  try {
    const listing = await run('nbdinfo', ['--json', readOnlyServer.uri('disk')]);
    assert.equal((JSON.parse(listing.stdout) as { exports: Array<{ is_read_only: boolean }> }).exports[0]!.is_read_only, true);
    for (const args of [['create', 'other', '--size', '1M'], ['snapshot', 'disk', 'disk-snap'], ['resize', 'disk', '--size', '16M'], ['pool', 'set', '--low-water', '5%']]) {
      const result = thinbd([...args, '--pool', readOnlyPool]);
      assert.equal(result.code, 1, `thinbd ${args.join(' ')}: ${result.stderr}`);
      assert.match(result.stderr, /read-only/);
    }
    const volumes = thinbdJson<VolumeListing[]>(['list', '--pool', readOnlyPool]);
    assert.deepEqual(volumes.map((volume) => [volume.name, volume.sizeBytes]), [['disk', 8 * MiB]]);
  } finally {
    assert.equal(await readOnlyServer.stop(), 0);
  }
});
