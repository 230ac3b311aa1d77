// `thinbd list --tree`: volumes drawn as their snapshot genealogy with mapped and exclusive space;
// --json keeps the flat list. A removed origin leaves its snapshots as roots, and a new volume
// given the removed origin's name does not adopt them.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { thinbd, thinbdJson } from './run-thinbd.ts';
import { volumeTree, type VolumeListing } from '../../src/tools/list.ts';

let work: string;
let pool: string;

/** Rows of the tree table: the name (tree drawing and all), then the four columns after it. */
function treeRows(text: string): string[][] {
  return text
    .trimEnd()
    .split('\n')
    .map((line) => {
      const match = /^(.*?)\s+(\S+)\s+(\S+)\s+(\S+)\s+(\S+)$/.exec(line);
      assert.ok(match, `not a table row: ${line}`);
      return match.slice(1);
    });
}

function ok(args: string[]): string {
  const result = thinbd([...args, '--pool', pool]);
  assert.equal(result.code, 0, `thinbd ${args.join(' ')}: ${result.stderr}`);
  return result.stdout;
}

before(() => {
  work = mkdtempSync(join(tmpdir(), 'thinbd-tree-'));
  pool = join(work, 'pool');
  ok(['pool', 'create', '--data-size', '64M', '--block-size', '64K']);
  const image = join(work, 'image.raw');
  writeFileSync(image, Buffer.alloc(256 * 1024, 7));
  ok(['import', 'base', image]);
  ok(['snapshot', 'base', 'nightly', '--read-only']);
  ok(['snapshot', 'base', 'test']);
  ok(['snapshot', 'nightly', 'restore']);
  ok(['create', 'scratch', '--size', '1M']);
  // test gets 128 KiB of its own: exclusive space shows it.
  writeFileSync(image, Buffer.alloc(128 * 1024, 9));
  ok(['import', 'test', image]);
});
after(() => rmSync(work, { recursive: true, force: true }));

test('list --tree draws each volume under its origin, with mapped and exclusive space', () => {
  const cells = treeRows(ok(['list', '--tree']));
  assert.deepEqual(cells[0], ['NAME', 'SIZE', 'MAPPED', 'EXCLUSIVE', 'MODE']);
  assert.deepEqual(
    cells.slice(1).map((row) => [row[0], row[2], row[3], row[4]]),
    [
      ['base', '256K', '0B', 'rw'],
      ['├── nightly', '256K', '0B', 'ro'],
      ['│   └── restore', '256K', '0B', 'rw'],
      ['└── test', '256K', '128K', 'rw'],
      ['scratch', '0B', '0B', 'rw'],
    ],
  );
});

test('list --tree --json is the flat list, each volume naming its origin and origin id', () => {
  const volumes = thinbdJson<VolumeListing[]>(['list', '--pool', pool, '--tree']);
  const byName = new Map(volumes.map((volume) => [volume.name, volume]));
  assert.equal(volumes.length, 5);
  assert.equal(byName.get('restore')!.origin, 'nightly');
  assert.equal(byName.get('restore')!.originId, byName.get('nightly')!.id);
  assert.equal(byName.get('base')!.originId, null);
});

test('a removed origin leaves its snapshots as roots, and a new volume with its name does not adopt them', () => {
  ok(['remove', 'nightly']);
  ok(['create', 'nightly', '--size', '1M']);
  const names = treeRows(ok(['list', '--tree'])).slice(1).map((row) => row[0]);
  // Roots oldest first: restore was made before scratch and the new nightly.
  assert.deepEqual(names, ['base', '└── test', 'restore (snapshot of removed nightly)', 'scratch', 'nightly']);
  // The flat table says the same: restore's origin is the removed nightly, not the new one.
  const restore = ok(['list']).split('\n').find((line) => line.startsWith('restore '));
  assert.match(restore ?? '', /\snightly \(removed\)\s/);
});

test('volumeTree orders siblings oldest first and never loops on an origin id that points back', () => {
  const volume = (id: number, name: string, originId: number | null, createdAt: string): VolumeListing => ({
    name, id, sizeBytes: 1, mappedBytes: 0, exclusiveBytes: 0, sharedBytes: 0,
    origin: originId === null ? null : `v${originId}`, originId, readOnly: false, createdAt, labels: {}, hidden: false,
  });
  const roots = volumeTree([
    volume(3, 'late', 1, '2026-01-03T00:00:00Z'),
    volume(1, 'root', null, '2026-01-01T00:00:00Z'),
    volume(2, 'early', 1, '2026-01-02T00:00:00Z'),
    // Corrupt or hand-made details: an origin newer than its snapshot is not followed.
    volume(4, 'odd', 5, '2026-01-04T00:00:00Z'),
    volume(5, 'odder', 4, '2026-01-05T00:00:00Z'),
  ]);
  assert.deepEqual(roots.map((node) => node.volume.name), ['root', 'odd']);
  assert.deepEqual(roots[0]!.children.map((node) => node.volume.name), ['early', 'late']);
  assert.deepEqual(roots[1]!.children.map((node) => node.volume.name), ['odder']);
});
