// The peer harness runs end to end: one round of one short row, thinbd alone and with the Node
// floor server (bench/node-floor-server.ts, which must then serve fio). No figure is checked
// (benchmarks are never timed assertions); only that the harness starts the server, drives fio,
// stops the server and prints its table. fio and the built CLI are prerequisites (the test command
// installs and builds them): missing, the test fails saying so.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';

const ROOT = resolve(import.meta.dirname, '..');
const haveFio = spawnSync('fio', ['--version']).status === 0;
const haveBuild = existsSync(join(ROOT, 'dist', 'cli', 'main.js'));

/** One round of the in-place write row, one second, with these servers; fails if the harness does. */
function runRow(servers: string): { stdout: string; stderr: string } {
  assert.ok(haveFio, 'fio is not installed (scripts/test.sh installs it)');
  assert.ok(haveBuild, 'dist/ is not built (npm run build)');
  const result = spawnSync(
    process.execPath,
    ['--import', 'tsx', join(ROOT, 'bench', 'run.ts'), 'rw4k', '--rounds', '1', '--seconds', '1', '--servers', servers],
    // A hang guard only: at load 20 on 2 cores a one-second row took over 120 s end to end.
    { cwd: ROOT, encoding: 'utf8', timeout: 600_000 },
  );
  assert.equal(result.status, 0, result.stderr);
  return result;
}

test('the peer harness runs one round of a row and prints its table', () => {
  const result = runRow('thinbd');
  assert.match(result.stdout, /\| randwrite 4k qd32 \| in-place write path \| \d+ \| – \| – \| – \| – \| [\d.]+ \/ – \/ – \| \d+ \/ – \/ – \|/);
  assert.match(result.stderr, /round 1 randwrite 4k qd32 thinbd: \d+ IOPS/);
});

test('the peer harness adds the Node floor server when --servers names it', () => {
  const result = runRow('thinbd,node-floor');
  assert.match(result.stdout, /\| thinbd IOPS \| qemu-nbd IOPS \| nbdkit IOPS \| node-floor IOPS \| thinbd\/qemu-nbd \| thinbd\/nbdkit \| thinbd\/node-floor \|/);
  assert.match(result.stdout, /\| randwrite 4k qd32 \| in-place write path \| \d+ \| – \| – \| \d+ \| – \| – \| [\d.]+× \| [\d.]+ \/ – \/ – \/ [\d.]+ \| \d+ \/ – \/ – \/ \d+ \|/);
  assert.match(result.stderr, /round 1 randwrite 4k qd32 node-floor: \d+ IOPS/);
});

test('the image harness runs one quick round on a small tree and prints its table', () => {
  assert.ok(haveBuild, 'dist/ is not built (npm run build)');
  const work = mkdtempSync(join(tmpdir(), 'thinbd-bench-smoke-'));
  try {
    const tree = join(work, 'tree');
    mkdirSync(join(tree, 'etc'), { recursive: true });
    for (let index = 0; index < 50; index++) writeFileSync(join(tree, 'etc', `file-${index}`), 'x'.repeat(index * 100));
    const result = spawnSync(
      process.execPath,
      ['--import', 'tsx', join(ROOT, 'bench', 'run.ts'), 'image', '--rounds', '1', '--quick', '--corpus', tree, '--work', join(work, 'bench')],
      { cwd: ROOT, encoding: 'utf8', timeout: 300_000 },
    );
    assert.equal(result.status, 0, result.stderr);
    assert.match(result.stdout, /\| \*\*thinbd image import\*\* \(process start to exit, pool synced\) \| \*\*[\d.]+\*\* \| 1 \|/);
    assert.match(result.stdout, /\| `find \/ \\\| wc -l` on it, cold \((\d+) \/ \1 paths\)/);
    assert.match(result.stderr, /round 1: floor [\d.]+s kernel [\d.]+s thinbd [\d.]+s/);
  } finally {
    rmSync(work, { recursive: true, force: true });
  }
});
