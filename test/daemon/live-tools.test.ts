// Read-only commands on a pool that `thinbd serve` owns (issue 11): dump, delta, metadata pack
// and export read a generation the server pins for them (docs/format.md "Pinned generations")
// while a client keeps writing and flushing; the pin ends with the command, also when the reader
// just drops its control connection.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { createConnection } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { THINBD, thinbd } from '../cli/run-thinbd.ts';
import { run } from '../nbd/helpers.ts';
import { NbdTestClient } from '../nbd/client.ts';
import { NBD_CMD_FLUSH, NBD_CMD_WRITE } from '../../src/nbd/protocol.ts';
import { startServe } from './serve-process.ts';
import { Rng } from '../sim/rng.ts';
import { requireThinTools, runTool, Scratch, thinRestore } from '../tools/thin-tools.ts';

const MiB = 1024 * 1024;
const VOLUME_BYTES = 16 * MiB;
const SLOT_BYTES = 4096;
const SLOTS = VOLUME_BYTES / SLOT_BYTES;
const WRITTEN_SLOTS = 1024; // the first 4 MiB hold data before the snapshot

async function cli(args: string[]): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return run(process.execPath, [THINBD, ...args], { allowFailure: true });
}

async function cliOk(args: string[]): Promise<string> {
  const result = await cli(args);
  assert.equal(result.code, 0, `thinbd ${args.join(' ')}: ${result.stderr}`);
  return result.stdout;
}

interface Status {
  pinnedGenerations: number[];
}

test('dump, delta, metadata pack and export work on a served pool while a client writes, each on a pinned generation', async () => {
  requireThinTools();
  const work = mkdtempSync(join(tmpdir(), 'thinbd-live-tools-'));
  const scratch = new Scratch();
  const pool = join(work, 'pool');
  assert.equal(thinbd(['pool', 'create', '--pool', pool, '--data-size', '1G']).code, 0);
  assert.equal(thinbd(['create', '--pool', pool, 'disk', '--size', `${VOLUME_BYTES / MiB}M`]).code, 0);
  const server = await startServe(pool);
  const client = await NbdTestClient.connect({ port: server.port });
  try {
    await client.handshake('disk');
    // Before the snapshot: slot i holds (i % 250) + 1, flushed.
    const atSnapshot = Buffer.alloc(VOLUME_BYTES);
    for (let slot = 0; slot < WRITTEN_SLOTS; slot += 1) {
      const data = Buffer.alloc(SLOT_BYTES, (slot % 250) + 1);
      data.copy(atSnapshot, slot * SLOT_BYTES);
      assert.equal((await client.call(NBD_CMD_WRITE, { offsetBytes: slot * SLOT_BYTES, data })).error, 0);
    }
    assert.equal((await client.call(NBD_CMD_FLUSH)).error, 0);
    await cliOk(['snapshot', '--pool', pool, 'disk', 'snap', '--read-only']);

    // The writer: every slot's history of fills, and what was flushed when each command began.
    const history = new Map<number, number[]>();
    for (let slot = 0; slot < WRITTEN_SLOTS; slot += 1) history.set(slot, [(slot % 250) + 1]);
    const flushed = new Map<number, number>(); // slot -> index into its history, as of the last acknowledged flush
    for (const [slot] of history) flushed.set(slot, 0);
    let stopping = false;
    let writes = 0;
    const errors: string[] = [];
    const rng = new Rng(11);
    const writer = (async () => {
      const sinceFlush = new Map<number, number>();
      while (!stopping) {
        const slot = rng.int(SLOTS);
        const fill = (writes % 250) + 1;
        const reply = await client.call(NBD_CMD_WRITE, { offsetBytes: slot * SLOT_BYTES, data: Buffer.alloc(SLOT_BYTES, fill) });
        if (reply.error !== 0) errors.push(`write of slot ${slot}: error ${reply.error}`);
        const list = history.get(slot) ?? [0];
        list.push(fill);
        history.set(slot, list);
        sinceFlush.set(slot, list.length - 1);
        writes += 1;
        if (writes % 16 === 0) {
          const flush = await client.call(NBD_CMD_FLUSH);
          if (flush.error !== 0) errors.push(`flush: error ${flush.error}`);
          for (const [written, index] of sinceFlush) flushed.set(written, index);
          sinceFlush.clear();
        }
      }
    })();

    // dump: thin_restore and thin_check accept what a pinned generation dumps.
    const xml = await cliOk(['dump', '--pool', pool]);
    assert.match(xml, /<device dev_id="1" /);
    assert.match(xml, /<device dev_id="2" /);
    const restored = thinRestore(scratch, xml, 'live.bin');
    const thinCheck = runTool('thin_check', [restored]);
    assert.equal(thinCheck.status, 0, thinCheck.stderr);

    // delta between the volume being written and its snapshot.
    assert.match(await cliOk(['delta', '--pool', pool, 'snap', 'disk']), /<superblock uuid="" time="1" /);

    // metadata pack of the pinned generation unpacks into a pool that checks clean and holds the snapshot.
    const image = join(work, 'meta.pack');
    await cliOk(['metadata', 'pack', '--pool', pool, '-o', image]);
    const unpacked = join(work, 'unpacked');
    await cliOk(['metadata', 'unpack', '-i', image, '--pool', unpacked, '--data', join(pool, 'data')]);
    const unpackedCheck = await cli(['check', '--pool', unpacked]);
    assert.equal(unpackedCheck.code, 0, `${unpackedCheck.stdout}${unpackedCheck.stderr}`);
    const fromImage = join(work, 'snap-from-image.raw');
    await cliOk(['export', '--pool', unpacked, 'snap', fromImage]);
    assert.ok(readFileSync(fromImage).equals(atSnapshot), 'the packed generation holds the snapshot');

    // export of the read-only snapshot, live.
    const snapOut = join(work, 'snap.raw');
    await cliOk(['export', '--pool', pool, 'snap', snapOut]);
    assert.ok(readFileSync(snapOut).equals(atSnapshot), 'the live export of the snapshot is its contents');

    // export of the writable volume: refused without --snapshot, consistent with it.
    const refused = await cli(['export', '--pool', pool, 'disk', join(work, 'refused.raw')]);
    assert.equal(refused.code, 1);
    assert.match(refused.stderr, /writable .* add --snapshot/);
    const flushedAtStart = new Map(flushed);
    const diskOut = join(work, 'disk.raw');
    await cliOk(['export', '--pool', pool, 'disk', diskOut, '--snapshot']);
    const exported = readFileSync(diskOut);
    for (let slot = 0; slot < SLOTS; slot += 1) {
      const fills = history.get(slot) ?? [0];
      const value = exported[slot * SLOT_BYTES]!;
      assert.ok(exported.subarray(slot * SLOT_BYTES, (slot + 1) * SLOT_BYTES).every((byte) => byte === value), `slot ${slot} is not torn`);
      const since = fills.slice(flushedAtStart.get(slot) ?? 0);
      assert.ok(since.includes(value), `slot ${slot} holds ${value}, not a value written since its last flush before the export (${since.join(',')})`);
    }
    const names = JSON.parse(await cliOk(['list', '--pool', pool, '--json'])) as Array<{ name: string }>;
    assert.deepEqual(names.map((volume) => volume.name).sort(), ['disk', 'snap'], 'the export snapshot was removed');

    // Every command's pin ended with it; a reader that drops its connection ends its pin too.
    let status = JSON.parse(await cliOk(['pool', 'status', '--pool', pool, '--json'])) as Status;
    assert.deepEqual(status.pinnedGenerations, []);
    const socket = createConnection(join(pool, 'control.sock'));
    const answer = await new Promise<string>((resolve, reject) => {
      let text = '';
      socket.on('data', (chunk: Buffer) => {
        text += chunk.toString();
        if (text.includes('\n')) resolve(text);
      });
      socket.on('error', reject);
      socket.write(`${JSON.stringify({ id: 1, method: 'pinGeneration', params: {} })}\n`);
    });
    const pinnedGeneration = (JSON.parse(answer) as { result: { generation: number } }).result.generation;
    status = JSON.parse(await cliOk(['pool', 'status', '--pool', pool, '--json'])) as Status;
    assert.deepEqual(status.pinnedGenerations, [pinnedGeneration]);
    socket.destroy();
    for (let attempt = 0; attempt < 100 && status.pinnedGenerations.length > 0; attempt += 1) {
      status = JSON.parse(await cliOk(['pool', 'status', '--pool', pool, '--json'])) as Status;
    }
    assert.deepEqual(status.pinnedGenerations, [], 'the dropped connection released its pin');

    stopping = true;
    await writer;
    assert.deepEqual(errors, []);
    assert.ok(writes > 0);
    client.close();
    assert.equal(await server.stop(), 0, server.output());
    const offline = thinbd(['check', '--pool', pool]);
    assert.equal(offline.code, 0, `${offline.stdout}${offline.stderr}`);
  } finally {
    client.close();
    await server.kill();
    scratch.remove();
    rmSync(work, { recursive: true, force: true });
  }
});

test('an export --snapshot interrupted by SIGINT, SIGTERM or SIGHUP removes its snapshot', async () => {
  // The snapshot taken for the export used to stay in the pool when the command was interrupted,
  // named export-PID-HEX, pinning the volume's space, with nothing to remove it later.
  const work = mkdtempSync(join(tmpdir(), 'thinbd-live-export-'));
  const pool = join(work, 'pool');
  const image = join(work, 'image.raw');
  writeFileSync(image, randomBytes(192 * MiB));
  assert.equal(thinbd(['pool', 'create', '--pool', pool, '--data-size', '1G']).code, 0);
  assert.equal(thinbd(['import', '--pool', pool, 'disk', image]).code, 0);
  const server = await startServe(pool);
  try {
    for (const signal of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) {
      const out = join(work, `${signal}.raw`);
      const child = spawn(process.execPath, [THINBD, 'export', '--pool', pool, 'disk', out, '--snapshot'], { stdio: ['ignore', 'ignore', 'pipe'] });
      let stderr = '';
      child.stderr.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
      const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
      // The output file exists once the snapshot is taken and the export has begun.
      while (child.exitCode === null && statSync(out, { throwIfNoEntry: false }) === undefined) await new Promise((resolve) => setTimeout(resolve, 2));
      child.kill(signal);
      assert.equal(await exited, 1, `the export ended before it was interrupted: ${stderr}`);
      assert.match(stderr, new RegExp(`Export of disk interrupted by ${signal}`));
      const names = JSON.parse(await cliOk(['list', '--pool', pool, '--all', '--json'])) as Array<{ name: string }>;
      assert.deepEqual(names.map((volume) => volume.name), ['disk'], `${signal}: the export snapshot was removed`);
    }
    assert.equal(await server.stop(), 0, server.output());
    const check = thinbd(['check', '--pool', pool]);
    assert.equal(check.code, 0, `${check.stdout}${check.stderr}`);
  } finally {
    await server.kill();
    rmSync(work, { recursive: true, force: true });
  }
});
