// thinbd → dm-thin: pools built through the CLI and through seeded random library histories
// (volumes, snapshots of snapshots, writes on both sides, discards, removals, shrinking resizes)
// are dumped; thin_restore 0.9.0 accepts the XML, thin_check passes on the result, and thin_dump
// of it is our dump exactly, once thinbd's volume comments are set aside. thin_ls agrees with
// thinbd's usage counts and thin_delta with thinbd's delta. And thinbd → thinbd: a dump restored
// over the same data reads back every volume byte for byte, with names, sizes, labels and origins.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { readFileSync, readdirSync, writeFileSync } from 'node:fs';
import { resolve } from 'node:path';
import { Pool } from '../../src/pool/pool.ts';
import { dumpPool } from '../../src/tools/dump/pool-dump.ts';
import { XmlDumpWriter } from '../../src/tools/dump/xml.ts';
import { StringSink } from '../../src/tools/dump/sink.ts';
import { writePoolDelta } from '../../src/tools/delta.ts';
import { restorePool } from '../../src/tools/restore.ts';
import { checkPool } from '../../src/tools/check.ts';
import { Rng } from '../sim/rng.ts';
import { Scratch, requireThinTools, runTool, thinRestore, toolOutput } from './thin-tools.ts';

const MAIN = resolve(import.meta.dirname, '..', '..', 'src', 'cli', 'main.ts');
const BLOCK = 64 * 1024;

/** Runs the CLI from source (no build needed), as a user would run bin/thinbd. */
function cli(args: string[]): { code: number | null; stdout: string; stderr: string } {
  const code = `const { main } = await import(${JSON.stringify(MAIN)}); process.exitCode = await main(process.argv.slice(1));`;
  const result = spawnSync(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', code, ...args], {
    encoding: 'utf8',
    maxBuffer: 256 * 1024 * 1024,
    timeout: 120_000,
  });
  return { code: result.status, stdout: result.stdout, stderr: result.stderr };
}

function cliOk(args: string[]): string {
  const result = cli(args);
  assert.equal(result.code, 0, `thinbd ${args.join(' ')}: ${result.stderr}`);
  return result.stdout;
}

function withoutComments(xml: string): string {
  return xml
    .split('\n')
    .filter((line) => !line.includes('<!-- thinbd:volume'))
    .join('\n');
}

/** thin_ls's DEV, MAPPED_BLOCKS, EXCLUSIVE_BLOCKS, SHARED_BLOCKS rows, by dev id. */
function thinLs(metadata: string): number[][] {
  const text = toolOutput('thin_ls', ['-o', 'DEV,MAPPED_BLOCKS,EXCLUSIVE_BLOCKS,SHARED_BLOCKS', '--no-headers', metadata]);
  return text
    .split('\n')
    .filter((line) => line.trim() !== '')
    .map((line) => line.trim().split(/\s+/).map(Number))
    .sort((a, b) => a[0]! - b[0]!);
}

/** Checks one thinbd pool against thin-provisioning-tools through its dump. Returns the dump. */
async function assertDmThinAgrees(scratch: Scratch, dir: string, label: string): Promise<string> {
  const sink = new StringSink();
  const summary = await dumpPool(dir, new XmlDumpWriter(sink));
  assert.deepEqual(summary.warnings, [], label);
  const ours = sink.text;
  const metadata = thinRestore(scratch, ours, `${label}.bin`);
  const check = runTool('thin_check', [metadata]);
  assert.equal(check.status, 0, `${label}: thin_check: ${check.stderr}`);
  assert.equal(toolOutput('thin_dump', [metadata]), withoutComments(ours), `${label}: thin_dump of our restored dump`);

  const pool = await Pool.open(dir, { readOnly: true });
  let ids: number[];
  try {
    const usage = [...pool.usage().entries()].sort((a, b) => a[0] - b[0]).map(([id, u]) => [id, u.mappedBlocks, u.exclusiveBlocks, u.sharedBlocks]);
    assert.deepEqual(usage, thinLs(metadata), `${label}: usage vs thin_ls`);
    ids = pool.list().map((info) => info.id);
  } finally {
    await pool.close();
  }
  // Every ordered pair of a small pool; an even spread of about 8 pairs of a larger one.
  const pairs = ids.flatMap((left) => ids.map((right) => [left, right] as const));
  const stride = Math.max(1, Math.floor(pairs.length / 8));
  for (let index = 0; index < pairs.length; index += stride) {
    const [left, right] = pairs[index]!;
    {
      const expected = toolOutput('thin_delta', ['--snap1', String(left), '--snap2', String(right), metadata]);
      const delta = new StringSink();
      await writePoolDelta(dir, String(left), String(right), delta, { format: 'xml' });
      assert.equal(delta.text, expected, `${label}: delta ${left} ${right}`);
    }
  }
  return ours;
}

test('a pool built through the CLI dumps to XML that thin_restore accepts, thin_check passes and thin_dump repeats', async () => {
  requireThinTools();
  const scratch = new Scratch();
  try {
    const dir = scratch.path('pool');
    const rng = new Rng(77);
    const image = (name: string, bytes: number): string => {
      const path = scratch.path(name);
      writeFileSync(path, rng.bytes(bytes));
      return path;
    };
    cliOk(['pool', 'create', '--pool', dir, '--data-size', '32M', '--block-size', '64k']);
    cliOk(['create', '--pool', dir, 'base', '--size', '4M', '--label', 'role=golden']);
    cliOk(['import', '--pool', dir, 'base', image('a', 20 * BLOCK)]);
    cliOk(['snapshot', '--pool', dir, 'base', 'vm1']);
    cliOk(['import', '--pool', dir, 'vm1', image('b', 3 * BLOCK + 100), '--offset', String(5 * BLOCK)]);
    cliOk(['import', '--pool', dir, 'base', image('c', 2 * BLOCK), '--offset', String(12 * BLOCK)]);
    cliOk(['snapshot', '--pool', dir, 'vm1', 'vm1-snap']);
    cliOk(['import', '--pool', dir, 'vm1-snap', image('d', BLOCK), '--offset', String(30 * BLOCK)]);
    cliOk(['create', '--pool', dir, 'scratch', '--size', '1M']);
    cliOk(['import', '--pool', dir, 'scratch', image('e', 4 * BLOCK)]);
    cliOk(['remove', '--pool', dir, 'vm1']);
    cliOk(['resize', '--pool', dir, 'base', '--size', '640k', '--allow-shrink']);

    const ours = await assertDmThinAgrees(scratch, dir, 'cli');
    assert.match(ours, /thinbd:volume \{"name":"vm1\\u002dsnap","sizeBytes":4194304,"origin":"vm1"/);

    // The CLI's own outputs: dump to a file equals the library's dump; delta and metadata size run.
    const xmlPath = scratch.path('cli-dump.xml');
    cliOk(['dump', '--pool', dir, '-o', xmlPath]);
    assert.equal(readFileSync(xmlPath, 'utf8'), ours);
    assert.match(cliOk(['delta', '--pool', dir, 'base', 'vm1-snap']), /<diff left="1" right="3">/);
    const json = JSON.parse(cliOk(['delta', '--pool', dir, 'base', 'vm1-snap', '--format', 'json'])) as { diff: Array<{ kind: string }> };
    assert.ok(json.diff.some((run) => run.kind === 'different'));
    assert.match(cliOk(['dump', '--pool', dir, '--format', 'human']), /^begin superblock: "", 2, /);
  } finally {
    scratch.remove();
  }
});

test('the CLI refuses bad tool arguments with exit code 2 and failures with exit code 1, leaving no pool behind', () => {
  const scratch = new Scratch();
  try {
    const xml = scratch.path('bad.xml');
    writeFileSync(xml, '<superblock uuid="" time="0" transaction="1" data_block_size="128" nr_data_blocks="10">\n  <device dev_id="1" mapped_blocks="1" transaction="1" creation_time="0" snap_time="0">\n    <single_mapping origin_block="0" data_block="10" time="0"/>\n  </device>\n</superblock>\n');
    const dir = scratch.path('never');
    assert.equal(cli(['restore', '--pool', dir, '-i', xml]).code, 2, 'neither --data nor --data-size');
    assert.equal(cli(['restore', '--pool', dir, '-i', xml, '--data', xml, '--data-size', '1M']).code, 2, 'both');
    assert.equal(cli(['dump', '--pool', dir, '--format', 'yaml']).code, 2);
    assert.equal(cli(['metadata', 'size', '--data-size', 'lots']).code, 2);
    const failed = cli(['restore', '--pool', dir, '-i', xml, '--data-size', '1M']);
    assert.equal(failed.code, 1);
    assert.match(failed.stderr, /^thinbd: restore: line 3: mapping to data block 10 runs past the end of the data device/);
    assert.deepEqual(readdirSync(scratch.dir).filter((name) => name.startsWith('never')), [], 'no pool and no temporary directory left');
    // An input that is not a file that reads: one line naming it, not a system call's error or a damaged pack.
    const inputs: Array<[string[], RegExp]> = [
      [['restore', '--pool', dir, '-i', scratch.dir, '--data-size', '1M'], /^thinbd: Cannot read .*: it is a directory, not a thin_dump XML file\n$/],
      [['restore', '--pool', dir, '-i', scratch.path('missing.xml'), '--data-size', '1M'], /^thinbd: Cannot read .*missing\.xml: no such file\n$/],
      [['metadata', 'unpack', '--pool', dir, '-i', scratch.dir], /^thinbd: Cannot read .*: it is a directory, not a metadata pack\n$/],
      [['metadata', 'unpack', '--pool', dir, '-i', scratch.path('missing.pack')], /^thinbd: Cannot read .*missing\.pack: no such file\n$/],
    ];
    for (const [args, message] of inputs) {
      const refused = cli(args);
      assert.equal(refused.code, 1, args.join(' '));
      assert.match(refused.stderr, message);
    }
    assert.deepEqual(readdirSync(scratch.dir).filter((name) => name.startsWith('never')), [], 'no pool left by a refused input');
    assert.match(cliOk(['metadata', 'size', '--data-size', '1T', '--block-size', '64k', '--volumes', '1']), /dm-thin: .*\(545398784 bytes\)/);
  } finally {
    scratch.remove();
  }
});

/** A seeded random history through the library: the operations a CLI user or an NBD client would cause. */
async function randomPool(dir: string, seed: number): Promise<void> {
  const rng = new Rng(seed);
  const pool = await Pool.create(dir, { dataSizeBytes: 16 * 1024 * 1024, blockSizeBytes: BLOCK });
  try {
    const names: string[] = [];
    let counter = 0;
    const fresh = (): string => `v${(counter += 1)}`;
    for (let step = 0; step < 40; step += 1) {
      const roll = rng.float();
      if (names.length === 0 || roll < 0.12) {
        const name = fresh();
        await pool.createVolume(name, { sizeBytes: rng.range(1, 64) * BLOCK - rng.int(2) * 512, labels: rng.chance(0.5) ? { seed: String(seed) } : {} });
        names.push(name);
        continue;
      }
      const name = rng.pick(names);
      const volume = pool.volume(name);
      const sizeBytes = volume.sizeBytes;
      if (roll < 0.25 && names.length < 10) {
        const snap = fresh();
        await pool.snapshot(name, snap, { readOnly: rng.chance(0.2) });
        names.push(snap);
      } else if (roll < 0.65) {
        if (volume.readOnly) continue;
        const offset = rng.int(sizeBytes);
        const length = Math.min(sizeBytes - offset, rng.range(1, 6 * BLOCK));
        await volume.write(offset, rng.bytes(length));
      } else if (roll < 0.78) {
        if (volume.readOnly) continue;
        const offset = rng.int(sizeBytes);
        await volume.discard(offset, Math.min(sizeBytes - offset, rng.range(1, 8 * BLOCK)));
      } else if (roll < 0.86) {
        if (volume.readOnly) continue;
        await pool.resizeVolume(name, rng.range(1, 64) * BLOCK);
      } else if (roll < 0.93 && names.length > 1) {
        await pool.removeVolume(name);
        names.splice(names.indexOf(name), 1);
      } else {
        await pool.flush();
      }
    }
  } finally {
    await pool.close();
  }
}

test('for 8 seeded random library histories, thin_restore, thin_check, thin_dump, thin_ls and thin_delta agree with thinbd', async () => {
  requireThinTools();
  const scratch = new Scratch();
  try {
    for (let seed = 4000; seed < 4008; seed += 1) {
      const dir = scratch.path(`pool-${seed}`);
      await randomPool(dir, seed);
      await assertDmThinAgrees(scratch, dir, `seed ${seed}`);
    }
  } finally {
    scratch.remove();
  }
});

test('a thinbd dump restored over the same data reads back every volume byte for byte, with its names, sizes, labels and origins', async () => {
  const scratch = new Scratch();
  try {
    for (let seed = 5000; seed < 5004; seed += 1) {
      const dir = scratch.path(`pool-${seed}`);
      await randomPool(dir, seed);
      const first = new StringSink();
      await dumpPool(dir, new XmlDumpWriter(first));
      const copy = scratch.path(`copy-${seed}`);
      const summary = await restorePool([first.text], { dir: copy, data: { path: `${dir}/data` } });
      assert.deepEqual(summary.warnings, [], `seed ${seed}`);
      assert.deepEqual((await checkPool(copy)).problems, [], `seed ${seed}: check of the copy`);
      const second = new StringSink();
      await dumpPool(copy, new XmlDumpWriter(second));
      const noTransactions = (xml: string): string => xml.replace(/ transaction="\d+"/g, '');
      assert.equal(noTransactions(second.text), noTransactions(first.text), `seed ${seed}: dump of the copy`);

      const original = await Pool.open(dir, { readOnly: true });
      const restored = await Pool.open(copy, { readOnly: true });
      try {
        const strip = (infos: ReturnType<Pool['list']>) => infos.map(({ originId: _originId, ...info }) => info);
        assert.deepEqual(strip(restored.list()), strip(original.list()), `seed ${seed}: volumes`);
        for (const info of original.list()) {
          const a = new Uint8Array(info.sizeBytes);
          const b = new Uint8Array(info.sizeBytes);
          await original.volume(info.name).read(0, a);
          await restored.volume(info.name).read(0, b);
          assert.ok(Buffer.from(a).equals(Buffer.from(b)), `seed ${seed}: contents of ${info.name}`);
        }
      } finally {
        await original.close();
        await restored.close();
      }
    }
  } finally {
    scratch.remove();
  }
});
