// The ObjectStore conformance suite against both stores: a directory, and an S3 bucket prefix on
// a local S3-compatible server (s3rver on 127.0.0.1).
import { after, before } from 'node:test';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { DirectoryObjectStore } from '../../src/archive/directory-store.ts';
import { S3ObjectStore } from '../../src/archive/s3-store.ts';
import { startS3Server, type LocalS3Server } from '../io/s3-server.ts';
import { storeConformance } from './store.conformance.ts';

const root = mkdtempSync(join(tmpdir(), 'thinbd-store-'));
let server: LocalS3Server | undefined;
let count = 0;

before(async () => {
  server = await startS3Server({ buckets: ['conformance'] });
  Object.assign(process.env, server.env);
});

after(async () => {
  await server?.stop();
  rmSync(root, { recursive: true, force: true });
});

storeConformance({
  name: 'directory',
  create: async () => DirectoryObjectStore.open(join(root, `store-${(count += 1)}`)),
});

storeConformance({
  name: 's3',
  create: async () => S3ObjectStore.open(`s3://conformance/store-${(count += 1)}`, { endpoint: server!.endpoint }),
});
