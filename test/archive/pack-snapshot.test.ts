// The read-only snapshot a pack takes of a writable volume (src/archive/pack-snapshot.ts): a pack
// that fails leaves none, a pack killed leaves one the next pack of that stream (or, named by
// default, of any stream) removes, a volume of that name that no pack left is refused and kept,
// and --keep-snapshot keeps one, served or not.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { hostname } from 'node:os';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { THINBD, thinbd } from '../cli/run-thinbd.ts';
import { startServe, type ServeProcess } from '../daemon/serve-process.ts';
import { MiB, contentBytes, createPool, tempDir } from './helpers.ts';
import { packVolume } from '../../src/archive/commands.ts';
import { initArchive } from '../../src/archive/commands.ts';
import { PACK_SNAPSHOT_LABEL, snapshotAccess } from '../../src/archive/pack-snapshot.ts';
import { poolSources } from '../../src/archive/source.ts';
import { LocalPoolService } from '../../src/daemon/service.ts';

const dir = tempDir('pack-snapshot');
const store = join(dir.path, 'store');

function ok(args: string[]): string {
  const result = thinbd(args);
  assert.equal(result.code, 0, `thinbd ${args.join(' ')}: ${result.stderr}`);
  return result.stdout;
}

interface Listed {
  name: string;
  readOnly: boolean;
  labels: Record<string, string>;
}

function volumes(pool: string): Listed[] {
  return (JSON.parse(ok(['list', '--pool', pool, '--all', '--json'])) as Listed[]).sort((a, b) => a.name.localeCompare(b.name));
}

function names(pool: string): string[] {
  return volumes(pool).map((volume) => `${volume.name}:${volume.readOnly ? 'ro' : 'rw'}`);
}

function volume(pool: string, name: string): Listed | undefined {
  return volumes(pool).find((entry) => entry.name === name);
}

/** A pool with writable `v` (and `big`), read-only `v.0` packed as stream s0, read-only `ro` never packed, writable `rw`. */
function makePool(name: string): string {
  const pool = join(dir.path, name);
  ok(['pool', 'create', '--pool', pool, '--data-size', '256M']);
  const image = join(dir.path, `${name}.image`);
  writeFileSync(image, contentBytes(4 * MiB, 1));
  ok(['import', '--pool', pool, 'v', image]);
  writeFileSync(image, contentBytes(48 * MiB, 2));
  ok(['import', '--pool', pool, 'big', image]);
  ok(['snapshot', '--pool', pool, 'v', 'v.0', '--read-only']);
  ok(['snapshot', '--pool', pool, 'v', 'ro', '--read-only']);
  ok(['snapshot', '--pool', pool, 'v', 'rw']);
  ok(['archive', 'pack', '--pool', pool, 'v.0', '--store', store, '--name', `${name}.s0`]);
  return pool;
}

/** Starts `thinbd archive pack ARGS` and kills it (SIGKILL) as soon as it says it took its snapshot. */
async function packKilledAfterSnapshot(args: string[]): Promise<string> {
  const child = spawn(process.execPath, [THINBD, 'archive', 'pack', ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
  let stderr = '';
  child.stderr.on('data', (chunk: Buffer) => {
    stderr += chunk.toString();
    if (/through its read-only snapshot/.test(stderr)) child.kill('SIGKILL');
  });
  const signal = await new Promise<NodeJS.Signals | null>((resolve) => child.once('exit', (_code, received) => resolve(received)));
  assert.equal(signal, 'SIGKILL', `the pack ended before it was killed: ${stderr}`);
  return stderr;
}

before(() => {
  ok(['archive', 'init', '--store', store]);
});

after(() => dir.remove());

describe('on a served pool', () => {
  let pool: string;
  let server: ServeProcess;
  before(async () => {
    pool = makePool('served');
    server = await startServe(pool);
  });
  after(async () => {
    assert.equal(await server.stop(), 0, server.output());
  });

  test('a pack that fails leaves no snapshot, with or without --keep-snapshot; a pack that succeeds then keeps its own', () => {
    const unchanged = names(pool);
    const cases: Array<[string, string[], RegExp]> = [
      ['--delta-from of no volume', ['--delta-from', 'nosuch'], /--delta-from: no volume named nosuch/],
      ['a missing store', ['--store', join(dir.path, 'nothing')], /No archive store at/],
      ['a stream name that is taken', ['--name', 'served.s0'], /A stream named served\.s0 already exists/],
      ['--delta-from never packed', ['--delta-from', 'ro'], /--delta-from ro: no stream in .* was packed from this volume/],
      ['--delta-from a writable volume', ['--delta-from', 'rw'], /--delta-from rw: the volume is writable/],
    ];
    for (const keep of [['--keep-snapshot'], []]) {
      for (const [what, args, pattern] of cases) {
        const result = thinbd(['archive', 'pack', '--pool', pool, 'v', '--store', store, '--name', 's1', ...keep, ...args]);
        assert.equal(result.code, 1, `${what}: ${result.stderr}`);
        assert.deepEqual(names(pool), unchanged, `${what} ${keep.join('')}: no snapshot left`);
        assert.match(result.stderr, pattern, what);
      }
    }
    const packed = thinbd(['archive', 'pack', '--pool', pool, 'v', '--store', store, '--name', 's1', '--keep-snapshot', '--delta-from', 'v.0']);
    assert.equal(packed.code, 0, packed.stderr);
    const kept = volume(pool, 's1');
    assert.equal(kept?.readOnly, true);
    assert.equal(kept.labels[PACK_SNAPSHOT_LABEL], undefined, 'a kept snapshot is not marked as a pack\'s');
  });

  test('a pack killed after its snapshot leaves it marked; the same command run again removes it and completes', async () => {
    for (const [stream, keep] of [['k1', true], ['k2', false]] as const) {
      const args = ['--pool', pool, 'big', '--store', store, '--name', stream, ...(keep ? ['--keep-snapshot'] : [])];
      await packKilledAfterSnapshot(args);
      const leftover = volume(pool, stream);
      assert.equal(leftover?.readOnly, true, `${stream} was left`);
      assert.equal(JSON.parse(leftover.labels[PACK_SNAPSHOT_LABEL] ?? '{}').stream, stream);
      const again = thinbd(['archive', 'pack', ...args]);
      assert.equal(again.code, 0, again.stderr);
      assert.match(again.stderr, new RegExp(`removing ${stream}, left by a pack that did not finish`));
      const ended = volume(pool, stream);
      if (keep) {
        assert.equal(ended?.readOnly, true);
        assert.equal(ended.labels[PACK_SNAPSHOT_LABEL], undefined);
      } else {
        assert.equal(ended, undefined);
      }
    }
    ok(['archive', 'verify', '--store', store, 'k1']);
  });

  test('a pack interrupted by SIGINT, SIGTERM or SIGHUP after its snapshot removes it and stores no stream', async () => {
    // Ctrl-C used to leave the snapshot (marked as a killed pack's), pinning the volume's space
    // until a pack of the same stream name ran again: never, with the default names (VOLUME.<time>).
    for (const [stream, signal] of [['i1', 'SIGINT'], ['i2', 'SIGTERM'], ['i3', 'SIGHUP']] as const) {
      const child = spawn(process.execPath, [THINBD, 'archive', 'pack', '--pool', pool, 'big', '--store', store, '--name', stream], { stdio: ['ignore', 'pipe', 'pipe'] });
      let stderr = '';
      let sent = false;
      child.stderr.on('data', (chunk: Buffer) => {
        stderr += chunk.toString();
        if (!sent && /through its read-only snapshot/.test(stderr)) sent = child.kill(signal);
      });
      const code = await new Promise<number | null>((resolve) => child.once('exit', (exitCode) => resolve(exitCode)));
      assert.equal(code, 1, `the pack ended before it was interrupted: ${stderr}`);
      assert.match(stderr, new RegExp(`Pack of big into stream ${stream} interrupted by ${signal}`));
      assert.equal(volume(pool, stream), undefined, `${stream}: no snapshot left`);
      assert.doesNotMatch(ok(['archive', 'list', '--store', store]), new RegExp(`^${stream} `, 'm'), `${stream}: no stream stored`);
    }
  });

  test('a volume named as the stream that no pack left is refused and kept', () => {
    ok(['create', '--pool', pool, 'mine', '--size', '1M']);
    // Marked by a pack that still runs (this process stands for it), or for another stream.
    ok(['create', '--pool', pool, 'marked', '--size', '1M', '--label', `${PACK_SNAPSHOT_LABEL}=${JSON.stringify({ stream: 'busy', host: hostname(), pid: process.pid })}`]);
    ok(['snapshot', '--pool', pool, 'marked', 'busy', '--read-only']);
    ok(['snapshot', '--pool', pool, 'marked', 'other', '--read-only']);
    // A snapshot kept by a pack that succeeded, whose stream was removed since.
    ok(['archive', 'pack', '--pool', pool, 'v', '--store', store, '--name', 'kept', '--keep-snapshot']);
    ok(['archive', 'rm', '--store', store, 'kept']);
    const unchanged = names(pool);
    const cases: Array<[string, RegExp]> = [
      ['mine', /A volume named mine already exists and is not a snapshot left by a pack/],
      ['other', /A volume named other already exists and is not a snapshot left by a pack/],
      ['kept', /A volume named kept already exists and is not a snapshot left by a pack/],
      ['busy', new RegExp(`Volume busy is the snapshot of a pack of busy still running \\(pid ${process.pid}\\)`)],
    ];
    for (const [name, pattern] of cases) {
      const result = thinbd(['archive', 'pack', '--pool', pool, 'v', '--store', store, '--name', name, '--keep-snapshot']);
      assert.equal(result.code, 1, result.stderr);
      assert.match(result.stderr, pattern);
      assert.deepEqual(names(pool), unchanged, `${name} is kept`);
    }
  });
});

describe('on a pool served read-only', () => {
  test('a writable volume is refused saying why and what to pack instead; a read-only snapshot packs', async () => {
    const pool = makePool('served-ro');
    const server = await startServe(pool, ['--read-only']);
    try {
      const refused = thinbd(['archive', 'pack', '--pool', pool, 'v', '--store', store, '--name', 'ro.s1']);
      assert.equal(refused.code, 1, refused.stderr);
      assert.match(refused.stderr, /v is writable, and a pack reads a writable volume through a read-only snapshot it takes, which this pool cannot \(.*read-only.*\): pack a read-only snapshot of v instead, or open the pool writable/);
      const packed = thinbd(['archive', 'pack', '--pool', pool, 'ro', '--store', store, '--name', 'ro.s1']);
      assert.equal(packed.code, 0, packed.stderr);
    } finally {
      assert.equal(await server.stop(), 0, server.output());
    }
  });
});

describe('on a pool this process opens', () => {
  test('--keep-snapshot keeps a read-only snapshot of the state packed, to be the next --delta-from; a failed pack keeps none, a killed one is cleaned up', async () => {
    const pool = makePool('unserved');
    const unchanged = names(pool);
    const failed = thinbd(['archive', 'pack', '--pool', pool, 'v', '--store', store, '--name', 'u1', '--keep-snapshot', '--delta-from', 'nosuch']);
    assert.equal(failed.code, 1);
    assert.match(failed.stderr, /--delta-from: no volume named nosuch/);
    assert.deepEqual(names(pool), unchanged);

    const packed = thinbd(['archive', 'pack', '--pool', pool, 'v', '--store', store, '--name', 'u1', '--keep-snapshot', '--json']);
    assert.equal(packed.code, 0, packed.stderr);
    assert.match(packed.stderr, /packing v through its read-only snapshot u1 \(kept\)/);
    const kept = volume(pool, 'u1');
    assert.equal(kept?.readOnly, true);
    assert.equal(kept.labels[PACK_SNAPSHOT_LABEL], undefined);
    const next = JSON.parse(ok(['archive', 'pack', '--pool', pool, 'v', '--store', store, '--name', 'u2', '--delta-from', 'u1', '--json'])) as { parent?: string; bytesRead: number };
    assert.equal(next.parent, 'u1');
    assert.equal(next.bytesRead, 0, 'nothing changed since u1');
    assert.equal(volume(pool, 'u2'), undefined, 'no snapshot without --keep-snapshot');

    const args = ['--pool', pool, 'big', '--store', store, '--name', 'u3', '--keep-snapshot'];
    await packKilledAfterSnapshot(args);
    assert.equal(JSON.parse(volume(pool, 'u3')?.labels[PACK_SNAPSHOT_LABEL] ?? '{}').stream, 'u3', 'a killed pack leaves its marked snapshot');
    const again = thinbd(['archive', 'pack', ...args]);
    assert.equal(again.code, 0, again.stderr);
    assert.match(again.stderr, /removing u3, left by a pack that did not finish/);
    assert.equal(volume(pool, 'u3')?.labels[PACK_SNAPSHOT_LABEL], undefined);
  });

  test('a killed pack of a stream named by default (VOLUME.<time>) leaves a snapshot the next pack of any stream removes', async () => {
    const pool = makePool('unnamed');
    const args = ['--pool', pool, 'big', '--store', store, '--keep-snapshot'];
    const stderr = await packKilledAfterSnapshot(args);
    const stream = /through its read-only snapshot (\S+)/.exec(stderr)?.[1] ?? '';
    assert.ok(stream.startsWith('big.'), stderr);
    assert.equal(JSON.parse(volume(pool, stream)?.labels[PACK_SNAPSHOT_LABEL] ?? '{}').stream, stream, 'a killed pack leaves its marked snapshot');
    // The next pack is of another stream (a default name of a later second, or any name: named
    // here, as a pack within the same second would get the same default name); the leftover's
    // stream is never packed again.
    const again = thinbd(['archive', 'pack', '--pool', pool, 'big', '--store', store, '--name', 'big.later', '--keep-snapshot']);
    assert.equal(again.code, 0, again.stderr);
    assert.match(again.stderr, new RegExp(`removing ${stream.replace(/\./g, '\\.')}, left by a pack of it that did not finish`));
    assert.equal(volume(pool, stream), undefined, `${stream} was removed`);
    const kept = volumes(pool).filter((entry) => entry.name.startsWith('big.'));
    assert.deepEqual(kept.map((entry) => entry.name), ['big.later'], 'only the new pack\'s snapshot is kept');
    assert.equal(kept[0]!.labels[PACK_SNAPSHOT_LABEL], undefined);
  });

  test('a snapshot taken through the pool service keeps its source\'s labels beside those it is given (these win)', async () => {
    const pool = await createPool(join(dir.path, 'labels'), 64 * MiB);
    try {
      await pool.createVolume('v', { sizeBytes: MiB, labels: { role: 'base', stage: 'live' } });
      const service = new LocalPoolService(pool, { closePool: false });
      await service.snapshot({ source: 'v', name: 's', readOnly: true, labels: { stage: 'packing' } });
      await service.snapshot({ source: 'v', name: 't' });
      const labels = new Map(pool.list().map((info) => [info.name, info.labels]));
      assert.deepEqual(labels.get('s'), { role: 'base', stage: 'packing' });
      assert.deepEqual(labels.get('t'), { role: 'base', stage: 'live' });
      assert.deepEqual(labels.get('v'), { role: 'base', stage: 'live' });
    } finally {
      await pool.close();
    }
  });

  test('a pack that fails while it reads removes its snapshot, even with keep', async () => {
    const poolDir = join(dir.path, 'library');
    const pool = await createPool(poolDir, 64 * MiB);
    const libraryStore = join(dir.path, 'library-store');
    try {
      await initArchive({ store: libraryStore, averageChunkBytes: 64 * 1024, zstdLevel: 3 });
      const source = await pool.createVolume('w', { sizeBytes: 4 * MiB, labels: { owner: 'test' } });
      await source.write(0, contentBytes(4 * MiB, 3));
      const sources = poolSources(pool);
      const failing = packVolume({
        store: libraryStore,
        volume: 'w',
        name: 'w1',
        access: snapshotAccess({
          pool: new LocalPoolService(pool, { closePool: false }),
          volumes: pool.list(),
          identify: (name) => sources(name).identity,
          volume: 'w',
          stream: 'w1',
          keep: true,
          onNote: () => {},
          withSources: (work) => work(sources),
        }),
        onProgress: () => {
          throw new Error('the store went away');
        },
      });
      await assert.rejects(failing, /the store went away/);
      assert.deepEqual(pool.list().map((info) => info.name), ['w']);
    } finally {
      await pool.close();
    }
  });
});
