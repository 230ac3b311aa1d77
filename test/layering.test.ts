// Layers import only downwards (docs/internals.md, "Layers"): a lower layer that imports a higher one fails here.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readdirSync, readFileSync, statSync } from 'node:fs';
import { join, relative, resolve, dirname } from 'node:path';

const root = resolve(import.meta.dirname, '..', 'src');
// Each layer may import itself and the layers listed after it.
// A layer being built may be named in ARRIVING until its folder exists, so that its rules are
// fixed before it lands; the last test fails when a layer listed here has no folder and is not
// arriving, or arrived and is still marked so.
const ARRIVING = new Set<string>();
const allowed: Record<string, string[]> = {
  io: [],
  pdata: ['io'],
  journal: ['pdata', 'io'],
  pool: ['journal', 'pdata', 'io'],
  nbd: [],
  tools: ['pool', 'journal', 'pdata', 'io'],
  archive: ['pool', 'journal', 'pdata', 'io', 'tools'],
  image: ['pool', 'journal', 'pdata', 'io', 'tools', 'archive'],
  daemon: ['nbd', 'tools', 'pool', 'journal', 'pdata', 'io'],
  cli: ['daemon', 'nbd', 'tools', 'pool', 'journal', 'pdata', 'io', 'archive', 'image'],
};
// Shared by every layer: the constants, the error type, the library's entry point and util/
// (small helpers with no layer of their own, such as the zstd binding).
const shared = new Set(['constants.ts', 'errors.ts', 'index.ts', 'util']);

function* sourceFiles(dir: string): Generator<string> {
  for (const entry of readdirSync(dir)) {
    const path = join(dir, entry);
    if (statSync(path).isDirectory()) yield* sourceFiles(path);
    else if (path.endsWith('.ts')) yield path;
  }
}

function layerOf(path: string): string {
  return relative(root, path).split('/')[0] ?? '';
}

test('every import in src points to the same layer, a lower layer, or shared modules', () => {
  const violations: string[] = [];
  for (const file of sourceFiles(root)) {
    const from = layerOf(file);
    if (shared.has(from)) continue;
    assert.ok(from in allowed, `src/${from} is not a layer known to test/layering.test.ts`);
    const text = readFileSync(file, 'utf8');
    for (const match of text.matchAll(/(?:from|import)\s*\(?\s*['"](\.[^'"]+)['"]/g)) {
      const target = resolve(dirname(file), match[1] ?? '');
      const to = layerOf(target);
      if (to === from || shared.has(to) || allowed[from]?.includes(to)) continue;
      violations.push(`${relative(root, file)} imports ${relative(root, target)} (${from} -> ${to})`);
    }
  }
  assert.deepEqual(violations, []);
});

test('every layer listed exists as a folder of src, unless it is still arriving', () => {
  const folders = new Set(readdirSync(root).filter((entry) => statSync(join(root, entry)).isDirectory()));
  for (const layer of Object.keys(allowed)) {
    if (ARRIVING.has(layer)) assert.ok(!folders.has(layer), `src/${layer} exists: take it off ARRIVING in test/layering.test.ts`);
    else assert.ok(folders.has(layer), `test/layering.test.ts lists a layer src/${layer} that does not exist`);
  }
});
