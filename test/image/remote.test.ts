// Sources other than a local file: http(s) URLs (a local server; ranged reads for a docker/OCI
// archive's index and layers) and s3://BUCKET/KEY (a local S3-compatible server), plain, gzip and
// zstd; and image stats over a directory and an S3 prefix.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import http from 'node:http';
import path from 'node:path';
import zlib from 'node:zlib';
import { createRequire } from 'node:module';
import type { AddressInfo } from 'node:net';
import { run, tempDir } from '../nbd/helpers.ts';
import { THINBD, thinbd } from '../cli/run-thinbd.ts';
import { startS3Server, type LocalS3Server } from '../io/s3-server.ts';
import { S3Bucket } from '../../src/io/s3.ts';
import { imageStats } from '../../src/image/stats.ts';
import { sh } from './helpers.ts';
import { ociArchive, tarArchive, type TarSpec } from './tar-writer.ts';

const require = createRequire(import.meta.url);
const zstd = require('zstd-napi') as typeof import('zstd-napi');

let work: { path: string; remove(): void };
let server: http.Server;
let baseUrl: string;
let s3: LocalS3Server;
const ranges: string[] = [];
const files = new Map<string, Buffer>();
/** /private/NAME serves NAME, only with this Basic authentication; the Authorization header of each request for one. */
const PRIVATE_AUTHORIZATION = `Basic ${Buffer.from('fleet:pa ss/word').toString('base64')}`;
const privateAuthorizations: Array<string | undefined> = [];

const FLAT: TarSpec[] = [
  { path: 'etc/', type: 'dir' },
  { path: 'etc/motd', data: 'served over the network\n' },
  { path: 'usr/bin/big', data: Buffer.alloc(3 * 1024 * 1024, 0x5a), mode: 0o755 },
];
const LAYER_2: TarSpec[] = [
  { path: 'etc/.wh.motd', data: '' },
  { path: 'etc/issue', data: 'layer two\n' },
];

before(async () => {
  work = tempDir('image-remote');
  files.set('/flat.tar.gz', zlib.gzipSync(tarArchive(FLAT)));
  files.set('/flat.tar.zst', Buffer.from(zstd.compress(tarArchive(FLAT))));
  files.set('/oci.tar', ociArchive([{ tar: tarArchive(FLAT) }, { tar: tarArchive(LAYER_2) }], { docker: true }));
  server = http.createServer((request, response) => {
    const { pathname } = new URL(request.url ?? '/', 'http://localhost');
    if (pathname.startsWith('/private/')) {
      privateAuthorizations.push(request.headers.authorization);
      if (request.headers.authorization !== PRIVATE_AUTHORIZATION) {
        response.writeHead(401, { 'www-authenticate': 'Basic' }).end();
        return;
      }
    }
    const body = files.get(pathname.replace(/^\/private\//, '/'));
    if (body === undefined) {
      response.writeHead(404).end();
      return;
    }
    const range = /^bytes=(\d+)-(\d+)$/.exec(request.headers.range ?? '');
    if (range !== null) {
      ranges.push(request.headers.range!);
      const begin = Number(range[1]);
      const end = Math.min(body.length - 1, Number(range[2]));
      response.writeHead(206, { 'content-length': end - begin + 1, 'content-range': `bytes ${begin}-${end}/${body.length}`, 'accept-ranges': 'bytes' });
      response.end(body.subarray(begin, end + 1));
      return;
    }
    response.writeHead(200, { 'content-length': body.length, 'accept-ranges': 'bytes' });
    response.end(body);
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  baseUrl = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  s3 = await startS3Server({ buckets: ['images'] });
  // This process uploads the test's objects with the same credentials a child thinbd gets.
  Object.assign(process.env, s3.env);
  const bucket = await S3Bucket.connect('s3://images/', { endpoint: s3.endpoint });
  try {
    for (const [name, body] of files) await bucket.put(`fleet${name}`, body);
  } finally {
    bucket.close();
  }
});

after(async () => {
  await new Promise((resolve) => server?.close(resolve));
  await s3?.stop();
  work?.remove();
});

function newPool(name: string): string {
  const pool = path.join(work.path, `pool-${name}`);
  assert.equal(thinbd(['pool', 'create', '--pool', pool, '--data-size', '1G']).code, 0);
  return pool;
}

/**
 * Imports (without blocking this process: the http server runs in it), exports, checks with
 * e2fsck, and returns a reader of files in the image (debugfs).
 */
async function importAndRead(pool: string, name: string, source: string, env: Record<string, string> = {}): Promise<(file: string) => string> {
  Object.assign(process.env, env);
  const result = await run(process.execPath, [THINBD, 'image', 'import', '--pool', pool, name, source, '--json'], { allowFailure: true });
  assert.equal(result.code, 0, result.stderr);
  const raw = path.join(work.path, `${name}.raw`);
  assert.equal(thinbd(['export', '--pool', pool, name, raw]).code, 0);
  const fsck = sh('e2fsck', ['-fn', raw], { allowFailure: true });
  assert.equal(fsck.code, 0, fsck.stdout);
  return (file) => sh('debugfs', ['-R', `cat ${file}`, raw]).stdout;
}

test('an http URL streams a gzip archive, and serves a docker archive by ranges (index first, then layers)', async () => {
  const pool = newPool('http');
  const flat = await importAndRead(pool, 'flat', `${baseUrl}/flat.tar.gz`);
  assert.equal(flat('/etc/motd'), 'served over the network\n');
  assert.equal(flat('/usr/bin/big').length, 3 * 1024 * 1024);
  ranges.length = 0;
  const layered = await importAndRead(pool, 'layered', `${baseUrl}/oci.tar`);
  assert.equal(layered('/etc/issue'), 'layer two\n');
  assert.equal(layered('/etc/motd'), '');
  assert.ok(ranges.length > 0, 'the archive was read by ranges');
  const missing = await run(process.execPath, [THINBD, 'image', 'import', '--pool', pool, 'missing', `${baseUrl}/nothing.tar`], { allowFailure: true });
  assert.equal(missing.code, 1);
  assert.match(missing.stderr, /HTTP 404/);
});

test('credentials in an http URL go as Basic authentication, ranged reads too; no output, error or image label shows them or a presigned query', async () => {
  const pool = newPool('secret');
  const secrets = /pa%20ss|pa ss|word|SIGSECRET|AKIDSECRET/;
  const host = baseUrl.slice('http://'.length);
  const source = `http://fleet:pa%20ss%2Fword@${host}/private/oci.tar?X-Amz-Credential=AKIDSECRET&X-Amz-Signature=SIGSECRET`;
  ranges.length = 0;
  const imported = await run(process.execPath, [THINBD, 'image', 'import', '--pool', pool, 'private', source], { allowFailure: true });
  assert.equal(imported.code, 0, imported.stderr);
  assert.ok(ranges.length > 0, 'the archive was read by ranges');
  assert.ok(privateAuthorizations.length > ranges.length && privateAuthorizations.every((value) => value === PRIVATE_AUTHORIZATION), 'every request was authenticated');
  assert.doesNotMatch(imported.stdout + imported.stderr, secrets);
  assert.match(imported.stdout, new RegExp(`Imported http://\\*\\*\\*@${host}/private/oci\\.tar\\?\\*\\*\\* into`));
  const listed = await run(process.execPath, [THINBD, 'image', 'ls', '--pool', pool, '--json']);
  assert.equal((JSON.parse(listed.stdout) as Array<{ source: string }>)[0]!.source, `http://***@${host}/private/oci.tar?***`);

  const volumesBefore = (await run(process.execPath, [THINBD, 'list', '--pool', pool, '--json'])).stdout;
  const refused = await run(process.execPath, [THINBD, 'image', 'import', '--pool', pool, 'refused', source.replace('pa%20ss', 'wrong')], { allowFailure: true });
  assert.equal(refused.code, 1);
  assert.match(refused.stderr, /^thinbd: Cannot fetch http:\/\/\*\*\*@.*: HTTP 401 Unauthorized\n$/);
  assert.doesNotMatch(refused.stderr, secrets);
  // A port nothing listens on: the reason is named (fetch alone says only "fetch failed").
  const closed = http.createServer();
  await new Promise<void>((resolve) => closed.listen(0, '127.0.0.1', resolve));
  const closedPort = (closed.address() as AddressInfo).port;
  await new Promise((resolve) => closed.close(resolve));
  const unreachable = await run(process.execPath, [THINBD, 'image', 'import', '--pool', pool, 'unreachable', source.replace(host, `127.0.0.1:${closedPort}`)], { allowFailure: true });
  assert.equal(unreachable.code, 1);
  assert.match(unreachable.stderr, /: fetch failed: .*ECONNREFUSED/);
  assert.doesNotMatch(unreachable.stderr, secrets);
  assert.equal((await run(process.execPath, [THINBD, 'list', '--pool', pool, '--json'])).stdout, volumesBefore);
});

test('s3://BUCKET/KEY reads zstd and gzip archives and a docker archive from a local S3-compatible server', async () => {
  const pool = newPool('s3');
  const zst = await importAndRead(pool, 'zst', 's3://images/fleet/flat.tar.zst', s3.env);
  assert.equal(zst('/etc/motd'), 'served over the network\n');
  const summary = JSON.parse(thinbd(['image', 'ls', '--pool', pool, '--json']).stdout) as Array<{ name: string; format: string; source: string }>;
  assert.deepEqual(summary.map((image) => [image.name, image.format, image.source]), [['zst', 'tar+zstd', 's3://images/fleet/flat.tar.zst']]);
  const layered = await importAndRead(pool, 'layered', 's3://images/fleet/oci.tar', s3.env);
  assert.equal(layered('/etc/issue'), 'layer two\n');
  const viaOption = thinbd(['image', 'import', '--pool', pool, 'gz', 's3://images/fleet/flat.tar.gz', '--endpoint', s3.endpoint], { env: { AWS_ACCESS_KEY_ID: 'S3RVER', AWS_SECRET_ACCESS_KEY: 'S3RVER', AWS_REGION: 'us-east-1' } });
  assert.equal(viaOption.code, 0, viaOption.stderr);
  const missing = thinbd(['image', 'import', '--pool', pool, 'missing', 's3://images/fleet/none.tar'], { env: s3.env });
  assert.equal(missing.code, 1);
  assert.match(missing.stderr, /no such object/);
  const noBucket = thinbd(['image', 'import', '--pool', pool, 'missing', 's3://nobucket/fleet/flat.tar'], { env: s3.env });
  assert.equal(noBucket.code, 1);
  assert.match(noBucket.stderr, /no such bucket nobucket/);
  assert.deepEqual((JSON.parse(thinbd(['list', '--pool', pool, '--json']).stdout) as Array<{ name: string }>).map((volume) => volume.name).filter((name) => !name.startsWith('layer.')).sort(), ['gz', 'layered', 'zst']);
});

test('an S3 source without credentials or past an endpoint that refuses connections is refused in one line saying which, and nothing is made', () => {
  const pool = newPool('s3-errors');
  const home = path.join(work.path, 'no-aws-home');
  fs.mkdirSync(home, { recursive: true });
  // Nothing in the AWS standard chain: no keys, no profile files, no instance metadata.
  const noCredentials = {
    ...s3.env,
    AWS_ACCESS_KEY_ID: '',
    AWS_SECRET_ACCESS_KEY: '',
    HOME: home,
    AWS_SHARED_CREDENTIALS_FILE: path.join(home, 'credentials'),
    AWS_CONFIG_FILE: path.join(home, 'config'),
    AWS_EC2_METADATA_DISABLED: 'true',
  };
  for (const args of [
    ['image', 'import', '--pool', pool, 'x', 's3://images/fleet/flat.tar'],
    ['image', 'stats', 's3://images/fleet/'],
  ]) {
    const result = thinbd(args, { env: noCredentials });
    assert.equal(result.code, 1, result.stderr);
    assert.match(result.stderr, /^thinbd: Cannot [a-z ]+ s3:\/\/images\/fleet\/[a-z.]*: no AWS credentials found \([^)]*\): set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE[^\n]*\n$/);
  }
  const refused = thinbd(['image', 'import', '--pool', pool, 'x', 's3://images/fleet/flat.tar', '--endpoint', 'http://127.0.0.1:1'], { env: s3.env });
  assert.equal(refused.code, 1);
  assert.match(refused.stderr, /^thinbd: Cannot look up s3:\/\/images\/fleet\/flat\.tar: connect ECONNREFUSED 127\.0\.0\.1:1\n$/);
  assert.equal(thinbd(['list', '--pool', pool, '--all', '--json']).stdout.trim(), '[]');
});

test('a corrupt zstd stream is refused naming the compressed offset, and nothing is left behind', () => {
  const pool = newPool('bad-zstd');
  const good = files.get('/flat.tar.zst')!;
  const bad = Buffer.from(good);
  for (let index = 30; index < 90; index++) bad[index] = bad[index]! ^ 0x55;
  const result = thinbd(['image', 'import', '--pool', pool, 'bad', '-'], { input: bad });
  assert.equal(result.code, 1);
  assert.match(result.stderr, /the zstd data is corrupt or truncated \(after \d+ compressed bytes\)/);
  assert.equal(thinbd(['list', '--pool', pool, '--json']).stdout.trim(), '[]');
});

test('image stats sums a directory and an S3 prefix, and with --deep reads each image for its files and pool space', () => {
  const dir = path.join(work.path, 'bucket-copy');
  fs.mkdirSync(path.join(dir, 'fleet'), { recursive: true });
  for (const [name, body] of files) fs.writeFileSync(path.join(dir, 'fleet', name.slice(1)), body);
  const local = JSON.parse(thinbd(['image', 'stats', dir, '--json', '--top', '2']).stdout) as { count: number; totalBytes: number; maxBytes: number; minBytes: number; largest: Array<{ key: string }> };
  const sizes = [...files.values()].map((body) => body.length);
  assert.equal(local.count, 3);
  assert.equal(local.totalBytes, sizes.reduce((a, b) => a + b, 0));
  assert.equal(local.maxBytes, Math.max(...sizes));
  assert.equal(local.minBytes, Math.min(...sizes));
  assert.equal(local.largest.length, 2);
  const remote = JSON.parse(thinbd(['image', 'stats', 's3://images/fleet/', '--deep', '--json'], { env: s3.env }).stdout) as {
    count: number;
    totalBytes: number;
    files: number;
    largest: Array<{ key: string; files: number; fileBytes: number; poolBytes: number }>;
    errors: unknown[];
  };
  assert.equal(remote.count, 3);
  assert.equal(remote.totalBytes, local.totalBytes);
  assert.deepEqual(remote.errors, []);
  const oci = remote.largest.find((entry) => entry.key === 'oci.tar')!;
  assert.equal(oci.files, 2);
  assert.equal(oci.fileBytes, 3 * 1024 * 1024 + 'layer two\n'.length);
  assert.ok(oci.poolBytes >= 3 * 1024 * 1024 && oci.poolBytes < 8 * 1024 * 1024, `pool bytes ${oci.poolBytes}`);
  const text = thinbd(['image', 'stats', dir, '--deep']);
  assert.match(text.stdout, /^3 images, /);
  assert.match(text.stdout, /importing each alone would take/);
});

test('image stats counts more images than a call takes arguments (130,000)', async () => {
  const directory = path.join(work.path, 'many-images');
  fs.mkdirSync(directory);
  const gzipMagic = Buffer.from([0x1f, 0x8b]);
  const count = 130_000;
  for (let index = 0; index < count; index++) fs.writeFileSync(path.join(directory, `${index}.tar.gz`), index === 7 ? Buffer.concat([gzipMagic, gzipMagic]) : gzipMagic);
  const stats = await imageStats(directory, { top: 1, deep: false });
  assert.equal(stats.count, count);
  assert.deepEqual([stats.minBytes, stats.maxBytes, stats.totalBytes], [2, 4, 2 * count + 2]);
  assert.deepEqual(stats.largest, [{ key: '7.tar.gz', sizeBytes: 4 }]);
  fs.rmSync(directory, { recursive: true });
});
