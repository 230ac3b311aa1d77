// What the real server's log says about a failing disk (`thinbd serve --inject`): a data write the
// medium refuses is moved and the client sees success, yet the log must say the data file went
// degraded (it said nothing: only errors a client saw were logged); and a pool that fails a commit
// and is stopped at once must log its change to needs-check and say it closed without a final
// commit (it said "pool committed and closed", and the mode change was lost when the stop came
// before the next periodic look). What was flushed before the failure is there after a restart.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { requireTools, run } from '../nbd/helpers.ts';
import { thinbd } from '../cli/run-thinbd.ts';
import { startServe } from './serve-process.ts';

requireTools('qemu-io');
const SECTORS_PER_BLOCK = (64 * 1024) / 512;
const work = mkdtempSync(join(tmpdir(), 'thinbd-failing-log-'));
const pool = join(work, 'pool');
after(() => rmSync(work, { recursive: true, force: true }));

interface LogLine {
  level: string;
  event: string;
  message: string;
  device?: string;
  state?: string;
}

function lines(output: string): LogLine[] {
  return output
    .split('\n')
    .filter((line) => line.startsWith('{'))
    .map((line) => JSON.parse(line) as LogLine);
}

function rules(name: string, list: object[]): string {
  const path = join(work, name);
  writeFileSync(path, JSON.stringify({ rules: list }));
  return path;
}

test('a remapped write is logged as the data file going degraded; a failed commit is logged before the stop, which says nothing was committed', async () => {
  assert.equal(thinbd(['pool', 'create', '--pool', pool, '--data-size', '64M']).code, 0);
  assert.equal(thinbd(['create', '--pool', pool, 'v', '--size', '16M']).code, 0);

  // The first 8 data blocks refuse writes: the client's writes go elsewhere and succeed.
  const refusing = rules('data.json', [{ file: 'data', op: 'write', beginSector: 0, endSector: 8 * SECTORS_PER_BLOCK }]);
  const first = await startServe(pool, ['--inject', refusing, '--log-format', 'json']);
  await run('qemu-io', ['-f', 'raw', '-c', 'write -P 0x5a 0 1M', '-c', 'flush', first.uri('v')]);
  await first.waitForOutput(/"event":"pool\.device_health"/);
  assert.equal(await first.stop(), 0, first.output());
  // A look during the refused write's narrowing may see its errors before its bad ranges (H-DEG-2,
  // then H-DEG-1): one line per look, the last one naming the bad ranges.
  const health = lines(first.output()).filter((line) => line.event === 'pool.device_health');
  assert.ok(health.length >= 1 && health.every((line) => line.device === 'data' && line.state === 'degraded' && line.level === 'warn'), first.output());
  assert.match(health[0]!.message, /^data file .*\/data: health degraded \(was ok\): H-DEG-[12]: /);
  assert.match(health.at(-1)!.message, /^data file .*\/data: health degraded.*: H-DEG-1: \d+ bad range\(s\)/);
  assert.match(lines(first.output()).at(-1)!.message, /^stopped: pool committed and closed$/);

  // Every metadata sync fails: the next commit fails, and the server is stopped right after.
  const failingSync = rules('sync.json', [{ file: 'metadata', op: 'sync' }]);
  const second = await startServe(pool, ['--inject', failingSync, '--log-format', 'json']);
  const refused = await run('qemu-io', ['-f', 'raw', '-c', 'write -P 0x66 2M 64k', '-c', 'flush', second.uri('v')], { allowFailure: true });
  assert.match(refused.stdout + refused.stderr, /failed: Input\/output error/);
  assert.equal(await second.stop(), 0, second.output());
  const events = lines(second.output());
  const modeChanged = events.findIndex((line) => line.event === 'pool.mode_changed');
  const stopped = events.findIndex((line) => line.event === 'serve.stopped');
  assert.ok(modeChanged >= 0 && modeChanged < stopped, second.output());
  assert.match(events[modeChanged]!.message, /to needs-check: .*Cannot sync .*\/metadata: EIO/);
  assert.ok(events.some((line) => line.event === 'pool.device_health' && line.device === 'metadata' && line.state === 'failing'), second.output());
  assert.equal(events[stopped]!.level, 'error');
  assert.match(events[stopped]!.message, /^stopped: pool closed without a final commit, since the pool needs a check: .*; run thinbd check$/);

  // Without faults: what was flushed before is there, and the pool checks clean.
  const third = await startServe(pool, ['--log-format', 'json']);
  await run('qemu-io', ['-f', 'raw', '-r', '-c', 'read -P 0x5a 0 1M', third.uri('v')]);
  assert.equal(await third.stop(), 0, third.output());
  const check = thinbd(['check', '--pool', pool]);
  assert.equal(check.code, 0, check.stdout + check.stderr);
});
