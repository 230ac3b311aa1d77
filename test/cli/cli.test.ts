// The command contract of issue 2, through the real `thinbd` executable.
import { test, describe, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { once } from 'node:events';
import { chmodSync, mkdtempSync, readdirSync, rmSync, writeFileSync, readFileSync, statSync, existsSync, openSync, readSync, closeSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import type { VolumeListing } from '../../src/tools/list.ts';
import { thinbd, thinbdBytes, thinbdJson, spawnThinbd } from './run-thinbd.ts';

type Listing = VolumeListing;

const K = 1024;
const M = 1024 * K;

let work: string;
before(() => {
  work = mkdtempSync(join(tmpdir(), 'thinbd-cli-'));
});
after(() => {
  rmSync(work, { recursive: true, force: true });
});

function freshPool(name: string, extra: string[] = []): string {
  const dir = join(work, name);
  const result = thinbd(['pool', 'create', '--pool', dir, '--data-size', '256M', ...extra]);
  assert.equal(result.code, 0, result.stderr);
  return dir;
}

function ok(args: string[], env?: Record<string, string>): string {
  const result = thinbd(args, { env });
  assert.equal(result.code, 0, `thinbd ${args.join(' ')}: ${result.stderr}`);
  return result.stdout;
}

function usageError(args: string[], pattern: RegExp): void {
  const result = thinbd(args);
  assert.equal(result.code, 2, `expected usage error from ${args.join(' ')}, got ${result.code}: ${result.stderr}`);
  assert.match(result.stderr, pattern);
}

/**
 * The newest generation among a pool's superblock copies on disk (their header's transaction id,
 * where the copy's magic is right): enough to see that a running process has committed.
 */
/** Whether a thread of process `pid` waits in the kernel for a FIFO's other end (Linux's wchan). */
function waitingForFifoReader(pid: number): boolean {
  try {
    return readdirSync(`/proc/${pid}/task`).some((task) => readFileSync(`/proc/${pid}/task/${task}/wchan`, 'utf8') === 'wait_for_partner');
  } catch {
    return false;
  }
}

function committedGeneration(metadataPath: string): number {
  const fd = openSync(metadataPath, 'r');
  try {
    let newest = 0;
    const block = Buffer.alloc(4096);
    for (const blockNr of [0, 64, 1024, 16384]) {
      if (readSync(fd, block, 0, block.length, blockNr * block.length) !== block.length) continue;
      if (block.readUInt32LE(32) === 0x424e4854) newest = Math.max(newest, Number(block.readBigUInt64LE(16)));
    }
    return newest;
  } finally {
    closeSync(fd);
  }
}

/** An image with data in some 64 KiB blocks and zeros in the rest. */
function makeImage(path: string, blocks: number, dataBlocks: number[]): Buffer {
  const image = Buffer.alloc(blocks * 64 * K);
  for (const block of dataBlocks) randomBytes(64 * K).copy(image, block * 64 * K);
  writeFileSync(path, image);
  return image;
}

describe('pool create and status', () => {
  test('a new pool is a directory with sparse metadata and data files', () => {
    const dir = freshPool('p-create');
    assert.ok(existsSync(join(dir, 'metadata')) && existsSync(join(dir, 'data')));
    const data = statSync(join(dir, 'data'));
    assert.equal(data.size, 256 * M);
    assert.ok(data.blocks * 512 < 1 * M, 'the data file is sparse');
  });

  test('pool create refuses to overwrite an existing pool', () => {
    const dir = freshPool('p-twice');
    const again = thinbd(['pool', 'create', '--pool', dir]);
    assert.equal(again.code, 1);
    assert.match(again.stderr, /exist/i);
    assert.equal(again.stderr.trim().split('\n').length, 1, 'one clear line');
  });

  test('pool status --json reports space, metadata, transaction, mode and counters', () => {
    const dir = freshPool('p-status', ['--block-size', '128k']);
    const status = thinbdJson<Record<string, unknown>>(['pool', 'status', '--pool', dir]);
    assert.equal(status['blockSizeBytes'], 128 * K);
    assert.equal(status['dataBlockCount'], 2048);
    assert.equal(status['dataBlocksUsed'], 0);
    assert.equal(status['volumeCount'], 0);
    assert.equal(status['mode'], 'read-write');
    assert.match(String(status['poolId']), /^[0-9a-f]{16}$/);
    for (const key of ['metadataBlockCount', 'metadataBlocksUsed', 'transactionId', 'metadataPath', 'dataPath']) {
      assert.ok(key in status, `status has ${key}`);
    }
    assert.equal(status['dataPath'], join(dir, 'data'));
    const counters = status['counters'] as Record<string, unknown>;
    for (const key of ['metadataBlocksWritten', 'flushes', 'commits', 'rollups', 'logBlocksUsed']) {
      assert.equal(typeof counters[key], 'number', `counters has ${key}`);
    }
  });

  test('block sizes must be powers of two from 64k to 1G', () => {
    usageError(['pool', 'create', '--pool', join(work, 'bs1'), '--block-size', '96k'], /power of two/);
    usageError(['pool', 'create', '--pool', join(work, 'bs2'), '--block-size', '32k'], /power of two/);
    usageError(['pool', 'create', '--pool', join(work, 'bs3'), '--block-size', '2G'], /power of two/);
    assert.equal(existsSync(join(work, 'bs1')), false, 'nothing created on a usage error');
  });

  test('the pool defaults to $THINBD_POOL, then ./pool', () => {
    const dir = join(work, 'p-env');
    ok(['pool', 'create', '--data-size', '64M'], { THINBD_POOL: dir });
    ok(['create', 'v', '--size', '1M'], { THINBD_POOL: dir });
    assert.equal(thinbdJson<Listing[]>(['list', '--pool', dir]).length, 1);
    const cwd = mkdtempSync(join(work, 'cwd-'));
    const result = thinbd(['pool', 'create', '--data-size', '64M'], { cwd });
    assert.equal(result.code, 0, result.stderr);
    assert.ok(existsSync(join(cwd, 'pool', 'metadata')));
  });
});

describe('usage errors exit 2 and say what was wrong', () => {
  test('a bad size', () => {
    const dir = freshPool('u-size');
    usageError(['create', '--pool', dir, 'v', '--size', '12Q'], /Invalid size '12Q'.*unknown unit/);
    usageError(['create', '--pool', dir, 'v', '--size', 'lots'], /Invalid size 'lots'/);
    usageError(['create', '--pool', dir, 'v', '--size', '0'], /at least 1 byte/);
  });

  test('a --metadata-size out of range is a bad size: exit 2 naming the option, nothing made or changed', () => {
    const dir = freshPool('u-metadata-size');
    const before = ok(['pool', 'status', '--pool', dir, '--json']);
    for (const [args, made] of [
      [['pool', 'create', '--pool', join(work, 'u-ms-small'), '--metadata-size', '60M'], join(work, 'u-ms-small')],
      [['pool', 'create', '--pool', join(work, 'u-ms-large'), '--metadata-size', '32G'], join(work, 'u-ms-large')],
      [['restore', '--pool', join(work, 'u-ms-restore'), '-i', '-', '--data-size', '1G', '--metadata-size', '1M'], join(work, 'u-ms-restore')],
    ] as const) {
      usageError([...args], /^thinbd: --metadata-size: \d+[MG] is not from 68M to 16G$/m);
      assert.equal(existsSync(made), false, `thinbd ${args.join(' ')} made ${made}`);
    }
    usageError(['pool', 'resize', '--pool', dir, '--metadata-size', '20G'], /^thinbd: --metadata-size: 20G is not from 68M to 16G$/m);
    const after = JSON.parse(ok(['pool', 'status', '--pool', dir, '--json'])) as { metadataBlockCount: number; transactionId: number };
    const was = JSON.parse(before) as { metadataBlockCount: number; transactionId: number };
    assert.deepEqual([after.metadataBlockCount, after.transactionId], [was.metadataBlockCount, was.transactionId]);
  });

  test('a bad name', () => {
    const dir = freshPool('u-name');
    usageError(['create', '--pool', dir, '../evil', '--size', '1M'], /Invalid volume name '..\/evil'/);
    usageError(['create', '--pool', dir, 'a'.repeat(200), '--size', '1M'], /longer than/);
    usageError(['snapshot', '--pool', dir, 'v', 'bad name'], /Invalid snapshot name/);
    usageError(['delta', '--pool', dir, 'v', 'bad name'], /Invalid volume name 'bad name'/);
  });

  test('a name with a newline or a terminal escape in it is quoted on one line, escaped', () => {
    const dir = freshPool('u-name-controls');
    for (const args of [
      ['create', '--pool', dir, 'a\nthinbd: forged line\u001b[2J', '--size', '1M'],
      ['archive', 'pack', '--pool', dir, 'v', '--store', join(work, 'no-store'), '--name', 'a\nthinbd: forged line\u001b[2J'],
    ]) {
      const result = thinbd(args);
      assert.equal(result.code, 2, result.stderr);
      assert.match(result.stderr, /^thinbd: Invalid (volume|stream) name 'a\\nthinbd: forged line\\x1b\[2J': use letters/);
      assert.equal(result.stderr.split('\n').length, 2, `one line: ${JSON.stringify(result.stderr)}`);
    }
  });

  test('a bad --remap-spares count', () => {
    const dir = freshPool('u-spares');
    usageError(['serve', '--pool', dir, '--socket', join(work, 'spares.sock'), '--remap-spares', 'many'], /--remap-spares: 'many' is not a block count/);
    usageError(['serve', '--pool', dir, '--socket', join(work, 'spares.sock'), '--remap-spares', '-1'], /--remap-spares: '-1' is not a block count|unknown option '-1'/);
  });

  test('an unknown option or a missing argument', () => {
    usageError(['list', '--frobnicate'], /unknown option '--frobnicate'/);
    usageError(['create', '--size', '1M'], /missing required argument 'name'/);
    usageError(['frobnicate'], /unknown command/);
  });

  test('a mistyped option is named even when a required option is then missing', () => {
    const dir = freshPool('u-typo');
    usageError(['create', '--pool', dir, 'v', '--sise', '1G'], /unknown option '--sise'\n\(Did you mean --size\?\)/);
    usageError(['metadata', 'size', '--data-sise', '1G'], /unknown option '--data-sise'/);
    usageError(['create', '--pool', dir, 'v'], /required option '--size <size>' not specified/);
    assert.doesNotMatch(ok(['list', '--pool', dir]), /^v /m);
  });

  test('no command, or a command group without its command, shows the usage on stderr and exits 2', () => {
    for (const args of [[], ['pool'], ['metadata'], ['archive'], ['image']]) {
      const result = thinbd(args);
      assert.equal(result.code, 2, `thinbd ${args.join(' ')}: ${result.stderr}`);
      assert.equal(result.stdout, '');
      assert.match(result.stderr, /^Usage: thinbd/);
    }
  });

  test('help names an unknown command, shows nested commands, and runs nothing', () => {
    usageError(['help', 'crate'], /unknown command 'crate'\n\(Did you mean create\?\)/);
    usageError(['help', 'pool', 'stauts'], /unknown command 'stauts'/);
    assert.match(ok(['help', 'pool', 'create']), /^Usage: thinbd pool create /);
    assert.match(ok(['help', 'metadata', 'size']), /^Usage: thinbd metadata size /);
    assert.match(ok(['help']), /^Usage: thinbd \[options\] \[command\]/);
    const dir = freshPool('u-help');
    ok(['create', '--pool', dir, 'keep', '--size', '1M']);
    assert.match(ok(['help', 'remove', 'keep'], { THINBD_POOL: dir }), /^Usage: thinbd remove /);
    assert.match(ok(['list', '--pool', dir]), /^keep /m);
  });
});

describe('failures exit 1 with one clear line', () => {
  test('a missing pool', () => {
    const result = thinbd(['list', '--pool', join(work, 'nowhere')]);
    assert.equal(result.code, 1);
    assert.match(result.stderr, /No pool at .*nowhere/);
    assert.equal(result.stderr.trim().split('\n').length, 1);
  });

  test('a missing volume, and a name that is taken', () => {
    const dir = freshPool('f-volume');
    const missing = thinbd(['remove', '--pool', dir, 'ghost']);
    assert.equal(missing.code, 1);
    assert.match(missing.stderr, /ghost/);
    ok(['create', '--pool', dir, 'v', '--size', '1M']);
    const taken = thinbd(['create', '--pool', dir, 'v', '--size', '1M']);
    assert.equal(taken.code, 1);
    assert.match(taken.stderr, /exists/);
  });
});

describe('volumes and snapshots', () => {
  test('create, snapshot, resize, list and remove, with thin_ls-style accounting', () => {
    const dir = freshPool('v-life');
    const image = join(work, 'v-life.img');
    makeImage(image, 16, [0, 1, 2, 3]);
    ok(['create', '--pool', dir, 'base', '--size', '1M']);
    ok(['import', '--pool', dir, 'base', image]);
    ok(['snapshot', '--pool', dir, 'base', 'snap']);
    ok(['snapshot', '--pool', dir, 'snap', 'snap2', '--read-only']);
    let listing = thinbdJson<Listing[]>(['list', '--pool', dir]);
    const byName = new Map(listing.map((entry) => [entry.name, entry]));
    assert.deepEqual([...byName.keys()].sort(), ['base', 'snap', 'snap2']);
    assert.equal(byName.get('base')?.mappedBytes, 4 * 64 * K);
    assert.equal(byName.get('snap')?.sharedBytes, 4 * 64 * K);
    assert.equal(byName.get('snap')?.exclusiveBytes, 0);
    assert.equal(byName.get('snap')?.origin, 'base');
    assert.equal(byName.get('snap2')?.origin, 'snap');
    assert.equal(byName.get('snap2')?.readOnly, true);
    assert.ok(!Number.isNaN(Date.parse(byName.get('snap')?.createdAt ?? '')));

    ok(['resize', '--pool', dir, 'snap', '--size', '2M', '--allow-shrink']);
    ok(['remove', '--pool', dir, 'base']);
    listing = thinbdJson<Listing[]>(['list', '--pool', dir]);
    const snap = listing.find((entry) => entry.name === 'snap');
    assert.equal(snap?.sizeBytes, 2 * M);
    assert.equal(snap?.mappedBytes, 4 * 64 * K, 'removing the origin keeps the snapshot intact');

    const exported = join(work, 'v-life.out');
    ok(['export', '--pool', dir, 'snap2', exported]);
    assert.ok(readFileSync(exported).equals(readFileSync(image)), 'snapshot of snapshot reads what was imported');
    const table = ok(['list', '--pool', dir]);
    assert.match(table, /^NAME\s+ID\s+SIZE\s+MAPPED\s+EXCLUSIVE\s+SHARED\s+ORIGIN\s+MODE\s+CREATED/);
    assert.match(table, /snap2\s+\d+\s+1M\s+256K\s+0B\s+256K\s+snap\s+ro/);
    ok(['check', '--pool', dir]);
  });

  test('a read-only snapshot refuses an import', () => {
    const dir = freshPool('v-ro');
    const image = join(work, 'v-ro.img');
    makeImage(image, 2, [0]);
    ok(['import', '--pool', dir, 'v', image]);
    ok(['snapshot', '--pool', dir, 'v', 'frozen', '--read-only']);
    const result = thinbd(['import', '--pool', dir, 'frozen', image]);
    assert.equal(result.code, 1);
    assert.match(result.stderr, /read-only/i);
  });
});

describe('import and export', () => {
  test('import creates the volume sized to the image and leaves zeros unmapped; export keeps holes', () => {
    const dir = freshPool('t-import');
    const image = join(work, 't.img');
    const bytes = makeImage(image, 64, [0, 5, 6, 40]);
    ok(['import', '--pool', dir, 'disk', image]);
    const [entry] = thinbdJson<Listing[]>(['list', '--pool', dir]);
    assert.equal(entry?.sizeBytes, bytes.length);
    assert.equal(entry?.mappedBytes, 4 * 64 * K, 'runs of zeros are not written');
    const out = join(work, 't.out');
    ok(['export', '--pool', dir, 'disk', out]);
    assert.ok(readFileSync(out).equals(bytes));
    const stat = statSync(out);
    assert.ok(stat.blocks * 512 <= 4 * 64 * K + 64 * K, `export leaves holes (${stat.blocks * 512} bytes allocated)`);
  });

  test('export to a device or a FIFO keeps its mode and writes holes as zeros (export to /dev/null made it 0600)', async () => {
    assert.equal(process.getuid?.(), 0, 'mknod needs root (npm test runs as root)');
    const dir = freshPool('t-export-special');
    ok(['create', '--pool', dir, 'disk', '--size', '4M']);
    const payload = randomBytes(100_000);
    assert.equal(thinbd(['import', '--pool', dir, 'disk', '-', '--offset', '1000k'], { input: payload }).code, 0);
    const expected = Buffer.alloc(4 * M);
    payload.copy(expected, 1000 * K);

    const nullDevice = join(work, 'null');
    assert.equal(spawnSync('mknod', [nullDevice, 'c', '1', '3']).status, 0);
    chmodSync(nullDevice, 0o666);
    ok(['export', '--pool', dir, 'disk', nullDevice]);
    assert.equal(statSync(nullDevice).mode & 0o777, 0o666);

    const fifo = join(work, 'export.fifo');
    assert.equal(spawnSync('mkfifo', [fifo]).status, 0);
    const received = join(work, 'export.fifo.out');
    const reader = spawn('sh', ['-c', `cat '${fifo}' > '${received}'`]);
    const readerExited = once(reader, 'exit');
    ok(['export', '--pool', dir, 'disk', fifo]);
    assert.deepEqual(await readerExited, [0, null]);
    assert.ok(readFileSync(received).equals(expected));
  });

  test('an export to a FIFO no one reads yet stops at SIGINT or SIGTERM (its open, waiting for a reader, is given up)', { timeout: 120_000 }, async () => {
    // The open waits in a thread no signal reaches: a Ctrl-C used to do nothing until a reader came.
    const dir = freshPool('t-export-fifo-signal');
    ok(['create', '--pool', dir, 'disk', '--size', '4M']);
    for (const signal of ['SIGINT', 'SIGTERM'] as const) {
      const fifo = join(work, `export-${signal}.fifo`);
      assert.equal(spawnSync('mkfifo', [fifo]).status, 0);
      const child = spawnThinbd(['export', '--pool', dir, 'disk', fifo]);
      let stderr = '';
      child.stderr!.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
      const exited = once(child, 'exit');
      try {
        while (child.exitCode === null && !waitingForFifoReader(child.pid!)) await new Promise((resolve) => setTimeout(resolve, 10));
        child.kill(signal);
        const [code] = (await exited) as [number | null];
        assert.equal(code, 1, stderr);
        assert.match(stderr, new RegExp(`^thinbd: Export of disk interrupted by ${signal}$`, 'm'));
      } finally {
        if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
      }
    }
  });

  test('import from stdin at an offset into an existing volume', () => {
    const dir = freshPool('t-stdin');
    ok(['create', '--pool', dir, 'disk', '--size', '4M']);
    const payload = randomBytes(100_000);
    const result = thinbd(['import', '--pool', dir, 'disk', '-', '--offset', '1000k'], { input: payload });
    assert.equal(result.code, 0, result.stderr);
    const exported = thinbdBytes(['export', '--pool', dir, 'disk', '-']);
    assert.equal(exported.length, 4 * M, 'export to stdout writes the whole volume, holes as zeros');
    const expected = Buffer.alloc(4 * M);
    payload.copy(expected, 1000 * K);
    assert.ok(exported.equals(expected));
  });

  test('import from stdin creates a volume sized to the stream', () => {
    const dir = freshPool('t-stdin-new');
    const payload = Buffer.concat([randomBytes(70_000), Buffer.alloc(200_000), randomBytes(3)]);
    const result = thinbd(['import', '--pool', dir, 'disk', '-'], { input: payload });
    assert.equal(result.code, 0, result.stderr);
    const [entry] = thinbdJson<Listing[]>(['list', '--pool', dir]);
    assert.equal(entry?.sizeBytes, payload.length);
    const out = join(work, 'stdin-new.out');
    ok(['export', '--pool', dir, 'disk', out]);
    assert.ok(readFileSync(out).equals(payload));
  });

  test('an image that does not fit an existing volume is refused without writing', () => {
    const dir = freshPool('t-fit');
    ok(['create', '--pool', dir, 'small', '--size', '64k']);
    const image = join(work, 'fit.img');
    makeImage(image, 2, [0, 1]);
    const result = thinbd(['import', '--pool', dir, 'small', image]);
    assert.equal(result.code, 1);
    assert.match(result.stderr, /does not fit/);
    assert.equal(thinbdJson<Listing[]>(['list', '--pool', dir])[0]?.mappedBytes, 0);
  });
});

describe('check and crashes', () => {
  test('a pool left by a killed process opens, lists and checks clean', async () => {
    // The import reads a stream from stdin that never ends, so the process is certainly
    // mid-import when it is killed, however fast the machine. It is killed once its own commits
    // have moved the pool's generation twice (read from the superblock copies on disk), so some
    // of the import is committed however slow the machine.
    const dir = freshPool('k-killed', ['--data-size', '1G']);
    const blockBytes = 64 * K;
    const volumeBlocks = 4096;
    ok(['create', '--pool', dir, 'victim', '--size', `${(volumeBlocks * blockBytes) / M}M`]);
    const generationBefore = committedGeneration(join(dir, 'metadata'));
    const child = spawnThinbd(['import', '--pool', dir, 'victim', '-']);
    const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) =>
      child.once('exit', (code, signal) => resolve({ code, signal })),
    );
    let stderr = '';
    child.stderr!.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
    child.stdin!.on('error', () => {}); // EPIPE once the child is killed.
    const fed: Buffer[] = [];
    while (committedGeneration(join(dir, 'metadata')) < generationBefore + 2 && fed.length < volumeBlocks - 1 && child.exitCode === null) {
      const chunk = randomBytes(blockBytes);
      fed.push(chunk);
      // Waits while the pipe is full; the import's commit timer ticks on its own meanwhile.
      if (!child.stdin!.write(chunk)) await new Promise((resolve) => child.stdin!.once('drain', resolve));
    }
    assert.ok(fed.length < volumeBlocks - 1, `the import committed nothing in ${fed.length} blocks: ${stderr}`);
    assert.equal(child.exitCode, null, `the import ended before it was killed: ${stderr}`);
    child.kill('SIGKILL');
    assert.deepEqual(await exited, { code: null, signal: 'SIGKILL' });

    const check = thinbd(['check', '--pool', dir]);
    assert.equal(check.code, 0, check.stdout + check.stderr);
    const listing = thinbdJson<Listing[]>(['list', '--pool', dir]);
    assert.equal(listing[0]?.name, 'victim');
    // Block by block, what survived is either exactly the data fed for that block (its mapping
    // was committed after its data was synced) or zeros: nothing torn, nothing foreign.
    const exported = thinbdBytes(['export', '--pool', dir, 'victim', '-']);
    const zeros = Buffer.alloc(blockBytes);
    let kept = 0;
    for (let block = 0; block < volumeBlocks; block += 1) {
      const got = exported.subarray(block * blockBytes, (block + 1) * blockBytes);
      if (block < fed.length && got.equals(fed[block]!)) kept += 1;
      else assert.ok(got.equals(zeros), `block ${block} holds neither what was fed for it nor zeros`);
    }
    console.log(`killed import: ${fed.length} blocks fed, ${kept} survived`);
    assert.ok(kept > 0, 'some of the import was committed before the kill');
    ok(['create', '--pool', dir, 'after', '--size', '1M']);
  });
});
