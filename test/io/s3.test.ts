// src/io/s3.ts: URL parsing, endpoint resolution, and every object operation against a local
// S3-compatible server (s3rver on 127.0.0.1), including multipart uploads and paginated listing.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { S3Bucket, parseS3Url, resolveS3Endpoint, formatS3Url } from '../../src/io/s3.ts';
import { S3_ATTEMPTS_MAX, S3_MULTIPART_PART_BYTES } from '../../src/constants.ts';
import { isThinError } from '../../src/errors.ts';
import { startS3Server, type LocalS3Server } from './s3-server.ts';

describe('parseS3Url', () => {
  test('a bucket alone has an empty prefix', () => {
    assert.deepEqual(parseS3Url('s3://backups'), { bucket: 'backups', prefix: '' });
    assert.deepEqual(parseS3Url('s3://backups/'), { bucket: 'backups', prefix: '' });
  });

  test('a prefix always ends with a slash', () => {
    assert.deepEqual(parseS3Url('s3://backups/hosts/a'), { bucket: 'backups', prefix: 'hosts/a/' });
    assert.deepEqual(parseS3Url('S3://backups/hosts/a/'), { bucket: 'backups', prefix: 'hosts/a/' });
    assert.equal(formatS3Url(parseS3Url('s3://b1b/x/y'), 'k'), 's3://b1b/x/y/k');
  });

  test('bad URLs are refused with the reason', () => {
    assert.throws(() => parseS3Url('/tmp/store'), /Not an s3:\/\/ URL/);
    assert.throws(() => parseS3Url('s3://a/x'), /Invalid bucket name 'a'/);
    assert.throws(() => parseS3Url('s3://bucket/x//y'), /empty path segment/);
    assert.throws(() => parseS3Url('s3:///x'), /Invalid bucket name ''/);
  });
});

describe('resolveS3Endpoint', () => {
  test('the explicit endpoint wins, then AWS_ENDPOINT_URL_S3, then AWS_ENDPOINT_URL', () => {
    const env = { AWS_ENDPOINT_URL: 'http://a:1', AWS_ENDPOINT_URL_S3: 'http://b:2' };
    assert.equal(resolveS3Endpoint('http://c:3', env), 'http://c:3');
    assert.equal(resolveS3Endpoint(undefined, env), 'http://b:2');
    assert.equal(resolveS3Endpoint(undefined, { AWS_ENDPOINT_URL: 'http://a:1' }), 'http://a:1');
    assert.equal(resolveS3Endpoint(undefined, {}), undefined);
  });

  test('an endpoint that is not an http(s) URL is refused', () => {
    assert.throws(() => resolveS3Endpoint('ftp://x', {}), /Invalid S3 endpoint 'ftp:\/\/x'/);
    assert.throws(() => resolveS3Endpoint('not a url', {}), /Invalid S3 endpoint/);
  });
});

describe('S3Bucket against a local S3 server', () => {
  let server: LocalS3Server;
  let bucket: S3Bucket;

  before(async () => {
    server = await startS3Server({ buckets: ['thinbd-s3-test'] });
    // s3rver accepts any signature; the SDK needs some credentials to sign with.
    process.env['AWS_ACCESS_KEY_ID'] ??= 'S3RVER';
    process.env['AWS_SECRET_ACCESS_KEY'] ??= 'S3RVER';
    bucket = await S3Bucket.connect('s3://thinbd-s3-test/some/prefix', { endpoint: server.endpoint, region: 'us-east-1' });
  });

  after(async () => {
    bucket?.close();
    await server?.stop();
  });

  test('put, head, get and a ranged get round-trip bytes under the prefix', async () => {
    const data = randomBytes(100_000);
    await bucket.put('a/object', data);
    assert.deepEqual(await bucket.head('a/object'), { sizeBytes: data.length });
    assert.deepEqual(Buffer.from(await bucket.get('a/object')), data);
    assert.deepEqual(Buffer.from(await bucket.getRange('a/object', 1000, 1010)), data.subarray(1000, 1010));
    assert.equal(bucket.url('a/object'), 's3://thinbd-s3-test/some/prefix/a/object');
  });

  test('an object larger than one part goes up as a multipart upload and reads back whole', async () => {
    const data = randomBytes(S3_MULTIPART_PART_BYTES * 2 + 12345);
    await bucket.put('big', data);
    assert.deepEqual(await bucket.head('big'), { sizeBytes: data.length });
    assert.deepEqual(Buffer.from(await bucket.get('big')), data);
    const tailBegin = data.length - 100;
    assert.deepEqual(Buffer.from(await bucket.getRange('big', tailBegin, data.length)), data.subarray(tailBegin));
  });

  test('listing pages through every key below a prefix, in order', async () => {
    const keys = Array.from({ length: 7 }, (_, index) => `listed/k${index}`);
    for (const key of keys) await bucket.put(key, new Uint8Array([1, 2, 3]));
    const seen: string[] = [];
    for await (const object of bucket.list('listed/', 2)) {
      assert.equal(object.sizeBytes, 3);
      seen.push(object.key);
    }
    assert.deepEqual(seen, keys);
  });

  test('a missing object is THIN_NOT_FOUND naming its URL; head says undefined; delete is idempotent', async () => {
    await assert.rejects(bucket.get('nope'), (error: unknown) => isThinError(error, 'THIN_NOT_FOUND') && /s3:\/\/thinbd-s3-test\/some\/prefix\/nope/.test((error as Error).message));
    assert.equal(await bucket.head('nope'), undefined);
    await bucket.put('gone', new Uint8Array([9]));
    await bucket.delete('gone');
    await bucket.delete('gone');
    assert.equal(await bucket.head('gone'), undefined);
  });

  test('a GET whose body breaks off or stalls is sent again; one that always does fails naming the object', async () => {
    const data = randomBytes(200_000);
    await bucket.put('flaky', data);
    // In front of the server: the first `faulty` GETs of the object send half the body, then
    // close the connection or go silent.
    let faulty = 0;
    let gets = 0;
    let fault: 'close' | 'stall' = 'close';
    const proxy = http.createServer((request, response) => {
      const upstream = http.request(`${server.endpoint}${request.url}`, { method: request.method, headers: request.headers }, (reply) => {
        const parts: Buffer[] = [];
        reply.on('data', (part: Buffer) => parts.push(part));
        reply.on('end', () => {
          const body = Buffer.concat(parts);
          response.writeHead(reply.statusCode!, reply.headers);
          if (request.method !== 'GET' || !request.url!.includes('/flaky')) return void response.end(body);
          gets++;
          if (gets > faulty) return void response.end(body);
          response.write(body.subarray(0, body.length >> 1), () => {
            if (fault === 'close') response.socket!.destroy();
          });
        });
      });
      request.pipe(upstream);
    });
    await new Promise<void>((resolve) => proxy.listen(0, '127.0.0.1', resolve));
    const through = await S3Bucket.connect('s3://thinbd-s3-test/some/prefix', { endpoint: `http://127.0.0.1:${(proxy.address() as AddressInfo).port}`, idleTimeoutMs: 200 });
    try {
      for (const kind of ['close', 'stall'] as const) {
        fault = kind;
        gets = 0;
        faulty = S3_ATTEMPTS_MAX - 1;
        assert.deepEqual(Buffer.from(await through.get('flaky')), data, kind);
        assert.equal(gets, S3_ATTEMPTS_MAX, kind);
        gets = 0;
        faulty = S3_ATTEMPTS_MAX;
        await assert.rejects(through.get('flaky'), (error: unknown) => isThinError(error, 'THIN_IO') && /^Cannot read s3:\/\/thinbd-s3-test\/some\/prefix\/flaky: .*broke off 5 times/.test((error as Error).message));
        assert.equal(gets, S3_ATTEMPTS_MAX, kind);
      }
    } finally {
      through.close();
      proxy.closeAllConnections();
      await new Promise((resolve) => proxy.close(resolve));
    }
  });

  test('a missing bucket is THIN_NOT_FOUND', async () => {
    const other = await S3Bucket.connect('s3://no-such-bucket-here', { endpoint: server.endpoint });
    try {
      await assert.rejects(other.checkBucket(), (error: unknown) => isThinError(error, 'THIN_NOT_FOUND'));
    } finally {
      other.close();
    }
  });
});
