// docs/format.md's numbered rules and the code that checks them stay in step: every rule it
// states (**F-…**) is cited somewhere in src/, and every rule src/ cites is stated there, ranges
// such as F-POOL-10..12 included.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readdirSync, readFileSync, statSync } from 'node:fs';
import { join, resolve } from 'node:path';

const root = resolve(import.meta.dirname, '..');

function* sourceFiles(dir: string): Generator<string> {
  for (const entry of readdirSync(dir)) {
    const path = join(dir, entry);
    if (statSync(path).isDirectory()) yield* sourceFiles(path);
    else if (path.endsWith('.ts')) yield path;
  }
}

/** Rule ids a text cites: F-SB-3, F-AR-PACK-2, and every id of a range F-SB-1..4 or F-BLK-1 .. F-BLK-6. */
function citedRules(text: string): Set<string> {
  const cited = new Set<string>();
  for (const match of text.matchAll(/F-([A-Z]+(?:-[A-Z]+)*)-(\d+)(?:\s*\.\.\s*(?:F-\1-)?(\d+))?/g)) {
    const [, kind, first, last] = match;
    for (let number = Number(first); number <= Number(last ?? first); number++) cited.add(`F-${kind}-${number}`);
  }
  return cited;
}

function order(ids: Iterable<string>): string[] {
  return [...ids].sort((a, b) => a.localeCompare(b, 'en', { numeric: true }));
}

test('citedRules reads single rules and ranges', () => {
  assert.deepEqual(
    order(citedRules('F-SB-3; F-POOL-10..12, F-AR-PACK-2 and F-BLK-1 .. F-BLK-2')),
    ['F-AR-PACK-2', 'F-BLK-1', 'F-BLK-2', 'F-POOL-10', 'F-POOL-11', 'F-POOL-12', 'F-SB-3'],
  );
});

test('every rule docs/format.md states is cited in src/, and every rule src/ cites is stated', () => {
  const format = readFileSync(join(root, 'docs', 'format.md'), 'utf8');
  const stated = new Set([...format.matchAll(/\*\*(F-[A-Z]+(?:-[A-Z]+)*-\d+)\*\*/g)].map((match) => match[1]!));
  assert.ok(stated.size > 50, 'docs/format.md states its rules as **F-…**');
  const cited = new Set<string>();
  for (const file of sourceFiles(join(root, 'src'))) for (const id of citedRules(readFileSync(file, 'utf8'))) cited.add(id);
  assert.deepEqual(order([...stated].filter((id) => !cited.has(id))), [], 'rules stated in docs/format.md that no code in src/ cites');
  assert.deepEqual(order([...cited].filter((id) => !stated.has(id))), [], 'rules src/ cites that docs/format.md does not state');
});

test('the versions and magic numbers docs/format.md states are the ones the code writes and reads', async () => {
  const format = readFileSync(join(root, 'docs', 'format.md'), 'utf8');
  const { METADATA_FORMAT_VERSION, METADATA_FORMAT_VERSIONS_READ } = await import('../src/constants.ts');
  const { SUPERBLOCK_MAGIC } = await import('../src/pdata/superblock.ts');
  const { POOL_PAYLOAD_MAGIC, POOL_FORMAT_VERSION } = await import('../src/pool/codecs.ts');
  const { DELTA_LOG_MAGIC } = await import('../src/journal/log.ts');
  assert.match(format, new RegExp(`\\*\\*Metadata format version: ${METADATA_FORMAT_VERSION}\\*\\*`));
  const superblockVersion = /\| 36 \| 4 \| `formatVersion` \| [^|]*?(\d+) \(`METADATA_FORMAT_VERSION`/.exec(format);
  assert.equal(Number(superblockVersion?.[1]), METADATA_FORMAT_VERSION, 'the superblock table names the version every commit writes');
  const read = /\*\*F-SB-3\*\*[^*]*?other than (\d+) to (\d+) \(`METADATA_FORMAT_VERSIONS_READ`\)/.exec(format);
  assert.deepEqual([Number(read?.[1]), Number(read?.[2])], [METADATA_FORMAT_VERSIONS_READ[0], METADATA_FORMAT_VERSIONS_READ.at(-1)], 'F-SB-3 names the versions open reads');
  assert.deepEqual(METADATA_FORMAT_VERSIONS_READ, Array.from({ length: Number(read?.[2]) - Number(read?.[1]) + 1 }, (_, index) => Number(read?.[1]) + index));
  for (const [name, magic] of [['SUPERBLOCK_MAGIC', SUPERBLOCK_MAGIC], ['POOL_PAYLOAD_MAGIC', POOL_PAYLOAD_MAGIC], ['DELTA_LOG_MAGIC', DELTA_LOG_MAGIC]] as const) {
    assert.ok(format.includes(`0x${magic.toString(16)}`), `${name} 0x${magic.toString(16)}`);
  }
  assert.match(format, new RegExp(`\`formatVersion\` \\| pool format version, ${POOL_FORMAT_VERSION} \\|`));
});
