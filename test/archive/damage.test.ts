// Damage to a store, through the real CLI: a flipped byte in a chunk, a deleted pack object, a
// truncated stream index. `archive verify` names each (stream, chunk and offset), exits 1, and
// `archive unpack` refuses and leaves the target volume exactly as it was. Files that are not the
// store's (under streams/) are named by verify and stop nothing else.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { cpSync, mkdirSync, readFileSync, readdirSync, rmSync, statSync, truncateSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { createHash } from 'node:crypto';
import { thinbd, thinbdJson } from '../cli/run-thinbd.ts';
import { Archive } from '../../src/archive/archive.ts';
import { CHUNK_FLAG_SEGMENT, hashHex, packIdOfKey } from '../../src/archive/format.ts';
import { MiB, contentBytes, tempDir } from './helpers.ts';

const dir = tempDir('archive-damage');
const pool = join(dir.path, 'pool');
const pristine = join(dir.path, 'pristine');

function ok(args: string[]): string {
  const result = thinbd(args);
  assert.equal(result.code, 0, `thinbd ${args.join(' ')}: ${result.stderr}`);
  return result.stdout;
}

function volumeDigest(name: string): string {
  const file = join(dir.path, `${name}.img`);
  rmSync(file, { force: true });
  ok(['export', '--pool', pool, name, file]);
  const digest = createHash('sha256').update(readFileSync(file)).digest('hex');
  rmSync(file);
  return digest;
}

function files(root: string): string[] {
  const found: string[] = [];
  const walk = (path: string) => {
    for (const entry of readdirSync(path)) {
      const full = join(path, entry);
      if (statSync(full).isDirectory()) walk(full);
      else found.push(full);
    }
  };
  walk(root);
  return found.sort();
}

before(() => {
  ok(['pool', 'create', '--pool', pool, '--data-size', '1G']);
  ok(['create', '--pool', pool, 'vol', '--size', '32M']);
  const image = join(dir.path, 'image');
  writeFileSync(image, contentBytes(12 * MiB, 7));
  ok(['import', '--pool', pool, 'vol', image]);
  ok(['snapshot', '--pool', pool, 'vol', 'vol.1', '--read-only']);
  ok(['archive', 'init', '--store', pristine, '--chunk-size', '16k']);
  ok(['archive', 'pack', '--pool', pool, 'vol.1', '--store', pristine, '--name', 's1']);
  // The target of the refused unpacks: an existing volume with other contents.
  writeFileSync(image, contentBytes(3 * MiB, 99));
  ok(['import', '--pool', pool, 'target', image]);
});

after(() => dir.remove());

/** A fresh copy of the packed store, for one kind of damage. */
function damagedCopy(label: string): string {
  const store = join(dir.path, label);
  cpSync(pristine, store, { recursive: true });
  return store;
}

function assertUnpackRefused(store: string, pattern: RegExp): void {
  const before = volumeDigest('target');
  const refused = thinbd(['archive', 'unpack', '--pool', pool, '--store', store, 's1', 'target']);
  assert.equal(refused.code, 1, `${refused.stdout}\n${refused.stderr}`);
  assert.match(refused.stderr, pattern);
  assert.equal(volumeDigest('target'), before, 'the target volume is unchanged');
  const fresh = thinbd(['archive', 'unpack', '--pool', pool, '--store', store, 's1', 'newvol']);
  assert.equal(fresh.code, 1);
  const names = thinbdJson<Array<{ name: string }>>(['list', '--pool', pool]).map((entry) => entry.name);
  assert.deepEqual(names.filter((name) => name === 'newvol' || name.endsWith('.unpacking')), [], 'no volume left behind');
  assert.deepEqual(thinbd(['check', '--pool', pool]).code, 0);
}

test('the intact store verifies and unpacks', () => {
  const report = thinbdJson<{ problems: string[]; chunksChecked: number }>(['archive', 'verify', '--store', pristine]);
  assert.deepEqual(report.problems, []);
  assert.ok(report.chunksChecked > 100);
});

test('a flipped byte in a frame of several chunks names the chunks it breaks, only those; unpack refuses and changes nothing', async () => {
  const store = damagedCopy('flipped');
  const archive = await Archive.open(store);
  const { index } = await archive.loadIndex();
  await archive.close();
  // A data chunk past the start of a frame that holds others (F-AR-CHUNK-2).
  const entries = [...index.entries()];
  const victim = entries.find((entry) => (entry.location.flags & CHUNK_FLAG_SEGMENT) === 0 && entry.location.frameOffsetBytes > 0)!;
  assert.ok(victim !== undefined, 'pack put several chunks in one frame');
  const samePiece = (location: typeof victim.location) => location.packId === victim.location.packId && location.offsetBytes === victim.location.offsetBytes;
  const members = new Set(entries.filter((entry) => samePiece(entry.location)).map((entry) => hashHex(entry.hash)));
  assert.ok(members.size >= 4, `${members.size} chunks in the frame`);
  const packFile = files(join(store, 'packs')).find((file) => file.endsWith(victim.location.packId))!;
  const bytes = readFileSync(packFile);
  bytes[victim.location.offsetBytes + Math.floor(victim.location.storedBytes / 2)]! ^= 0x01;
  writeFileSync(packFile, bytes);
  const verify = thinbd(['archive', 'verify', '--store', store, '--json']);
  assert.equal(verify.code, 1);
  const problems = (JSON.parse(verify.stdout) as { problems: string[] }).problems;
  assert.ok(problems.length >= 1);
  const named = new Set<string>();
  for (const problem of problems) {
    const match = new RegExp(`^stream s1, chunk ([0-9a-f]{64}) at offset \\d+: damaged in pack packs/../${victim.location.packId} at byte ${victim.location.offsetBytes}`).exec(problem);
    assert.ok(match !== null, problem);
    named.add(match[1]!);
  }
  for (const chunk of named) assert.ok(members.has(chunk), `${chunk} is in the damaged frame`);
  // The same problems as fields, beside each message.
  const details = (JSON.parse(verify.stdout) as { problemDetails: Array<{ message: string; kind: string; stream: string; chunk: string; offset: number; what: string }> }).problemDetails;
  assert.deepEqual(details.map((detail) => detail.message), problems);
  for (const detail of details) {
    assert.equal(detail.kind, 'chunk');
    assert.equal(detail.stream, 's1');
    assert.ok(members.has(detail.chunk), detail.chunk);
    assert.equal(detail.message, `stream s1, chunk ${detail.chunk} at offset ${detail.offset}: ${detail.what}`);
    assert.match(detail.what, /^damaged in pack/);
  }
  const human = thinbd(['archive', 'verify', '--store', store]);
  assert.match(human.stderr, /problems in/);
  assertUnpackRefused(store, /stream s1, chunk [0-9a-f]{64} at offset \d+: damaged/);
});

test('a deleted pack object is named by verify (each chunk it held), and unpack refuses before writing', () => {
  const store = damagedCopy('deleted');
  const packs = files(join(store, 'packs'));
  assert.ok(packs.length >= 1);
  const victim = packs[0]!;
  rmSync(victim);
  const report = thinbd(['archive', 'verify', '--store', store, '--json']);
  assert.equal(report.code, 1);
  const problems = (JSON.parse(report.stdout) as { problems: string[] }).problems;
  assert.ok(problems.length > 0);
  for (const problem of problems) assert.match(problem, /^stream s1, (chunk [0-9a-f]{64} at offset \d+|segment \d+ \(chunk [0-9a-f]{64}\)): missing from the store/);
  const details = (JSON.parse(report.stdout) as { problemDetails: Array<{ message: string; kind: string; stream: string; chunk: string; what: string }> }).problemDetails;
  assert.deepEqual(details.map((detail) => detail.message), problems);
  for (const detail of details) {
    assert.ok(detail.kind === 'chunk' || detail.kind === 'segment', detail.kind);
    assert.equal(detail.stream, 's1');
    assert.match(detail.chunk, /^[0-9a-f]{64}$/);
    assert.match(detail.what, /missing from the store/);
  }
  assert.ok(packIdOfKey(`packs/${victim.split('/').slice(-2).join('/')}`));
  assertUnpackRefused(store, /stream s1, .*missing from the store/);
});

test('a flipped byte in a pack trailer is named by verify (its chunks still read: the index lists them)', () => {
  const store = damagedCopy('trailer');
  const packFile = files(join(store, 'packs'))[0]!;
  const key = `packs/${packFile.split('/').slice(-2).join('/')}`;
  const bytes = readFileSync(packFile);
  // The trailer's last entry, just before the 48-byte footer.
  bytes[bytes.length - 48 - 10]! ^= 0x01;
  writeFileSync(packFile, bytes);
  for (const args of [[], ['s1']]) {
    const verify = thinbd(['archive', 'verify', '--store', store, ...args, '--json']);
    assert.equal(verify.code, 1, verify.stderr);
    const report = JSON.parse(verify.stdout) as { problems: string[]; problemDetails: Array<{ kind: string; object?: string; what: string }> };
    assert.equal(report.problems.length, 1, report.problems.join('\n'));
    assert.match(report.problems[0]!, new RegExp(`^pack ${key}: .*trailer`));
    assert.equal(report.problemDetails[0]!.kind, 'object');
    assert.equal(report.problemDetails[0]!.object, key);
  }
});

test('a truncated stream index is named by verify, and unpack refuses', () => {
  const store = damagedCopy('truncated');
  const root = join(store, 'streams', 's1');
  truncateSync(root, statSync(root).size - 30);
  const verify = thinbd(['archive', 'verify', '--store', store]);
  assert.equal(verify.code, 1);
  assert.match(verify.stdout, /stream s1: truncated stream index|stream s1: the stream index fails its SHA-256/);
  const listed = thinbd(['archive', 'list', '--store', store]);
  assert.match(listed.stderr, /damaged: stream s1/);
  assertUnpackRefused(store, /stream s1: (truncated stream index|the stream index fails its SHA-256)/);
});

test("a truncated pack: verify and unpack state the pack's size and where the chunk ends", () => {
  const store = damagedCopy('truncated-pack');
  const pack = files(join(store, 'packs')).sort((a, b) => statSync(b).size - statSync(a).size)[0]!;
  const sizeBytes = Math.floor(statSync(pack).size / 2);
  truncateSync(pack, sizeBytes);
  const key = `packs/${pack.split('/').slice(-2).join('/')}`;
  const stated = new RegExp(`its pack ${key} is truncated \\(${sizeBytes} bytes; this chunk needs at least (\\d+)\\)`);
  const verify = thinbd(['archive', 'verify', '--store', store, '--json']);
  assert.equal(verify.code, 1);
  const reported = (JSON.parse(verify.stdout) as { problems: string[] }).problems;
  // The pack's own trailer is checked too (its footer is gone with its end), besides each chunk it cut off.
  assert.ok(reported.some((problem) => problem.startsWith(`pack ${key}: no pack footer at its end`)), verify.stdout);
  const problems = reported.filter((problem) => problem.includes(' is truncated ('));
  assert.ok(problems.length >= 1, verify.stdout);
  for (const problem of problems) {
    const match = stated.exec(problem);
    assert.ok(match !== null, problem);
    assert.ok(Number(match[1]) > sizeBytes, problem);
  }
  assertUnpackRefused(store, stated);
});

test("files under streams/ that no stream can be named (an editor's, a copy tool's) stop nothing; verify names them", () => {
  const store = damagedCopy('stray');
  writeFileSync(join(store, 'streams', '.s1.swp'), 'x');
  mkdirSync(join(store, 'streams', 'dir'));
  writeFileSync(join(store, 'streams', 'dir', 's2'), 'y');
  assert.match(ok(['archive', 'list', '--store', store]), /^1 streams;/m);
  const verify = thinbd(['archive', 'verify', '--store', store, '--json']);
  assert.equal(verify.code, 1);
  const report = JSON.parse(verify.stdout) as { streamsChecked: number; problemDetails: Array<{ kind: string; object?: string; what: string }> };
  assert.equal(report.streamsChecked, 1);
  assert.deepEqual(
    report.problemDetails.map(({ kind, object, what }) => ({ kind, object, what })),
    ['streams/.s1.swp', 'streams/dir/s2'].map((object) => ({ kind: 'object', object, what: "not a stream root's name (no stream can have it)" })),
  );
  ok(['archive', 'pack', '--pool', pool, 'vol', '--store', store, '--name', 's2', '--delta-from', 'vol.1']);
  assert.match(ok(['archive', 'gc', '--store', store]), /for 2 streams/);
});
