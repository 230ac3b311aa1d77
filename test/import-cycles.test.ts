// No import cycle in src/, type-only imports included: a cycle means two modules that cannot be
// understood or tested one without the other (the B+tree once imported the transaction manager
// that imports it). A failure names one cycle, module by module.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readdirSync, readFileSync, statSync } from 'node:fs';
import { dirname, join, relative, resolve } from 'node:path';

const root = resolve(import.meta.dirname, '..', 'src');

function* sourceFiles(dir: string): Generator<string> {
  for (const entry of readdirSync(dir)) {
    const path = join(dir, entry);
    if (statSync(path).isDirectory()) yield* sourceFiles(path);
    else if (path.endsWith('.ts')) yield path;
  }
}

/** Relative imports of a module: `import`, `import type`, `export … from` and `import(…)`. */
function importsOf(file: string, text: string): string[] {
  return [...text.matchAll(/(?:from|import)\s*\(?\s*['"](\.[^'"]+)['"]/g)].map((match) => resolve(dirname(file), match[1]!));
}

/** One cycle through the graph, as a list of modules from a module back to itself; undefined when there is none. */
function findCycle(graph: Map<string, string[]>): string[] | undefined {
  const state = new Map<string, 'open' | 'done'>();
  const path: string[] = [];
  const visit = (node: string): string[] | undefined => {
    state.set(node, 'open');
    path.push(node);
    for (const next of graph.get(node) ?? []) {
      if (!graph.has(next)) continue;
      if (state.get(next) === 'open') return [...path.slice(path.indexOf(next)), next];
      if (state.get(next) === undefined) {
        const found = visit(next);
        if (found !== undefined) return found;
      }
    }
    path.pop();
    state.set(node, 'done');
    return undefined;
  };
  for (const node of graph.keys()) {
    if (state.get(node) !== undefined) continue;
    const found = visit(node);
    if (found !== undefined) return found;
  }
  return undefined;
}

test('findCycle finds a cycle of type imports and none in a tree of imports', () => {
  const withCycle = new Map([
    ['a.ts', ['b.ts']],
    ['b.ts', ['c.ts']],
    ['c.ts', ['a.ts']],
  ]);
  assert.deepEqual(findCycle(withCycle), ['a.ts', 'b.ts', 'c.ts', 'a.ts']);
  assert.equal(findCycle(new Map([['a.ts', ['b.ts', 'c.ts']], ['b.ts', ['c.ts']], ['c.ts', []]])), undefined);
  assert.deepEqual(importsOf('/x/a.ts', "import type { B } from './b.ts';\nexport { C } from '../c.ts';"), ['/x/b.ts', '/c.ts']);
});

test('no module in src imports itself through others (type imports included)', () => {
  const graph = new Map<string, string[]>();
  for (const file of sourceFiles(root)) graph.set(file, importsOf(file, readFileSync(file, 'utf8')));
  assert.ok(graph.size > 50, 'the source tree was found');
  const cycle = findCycle(graph);
  assert.equal(cycle?.map((file) => relative(root, file)).join(' -> '), undefined);
});
