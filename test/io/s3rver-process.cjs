// A local S3-compatible server for tests (s3rver, an npm package): listens on 127.0.0.1 at the
// port given (0: any free one), stores objects under the directory given, creates the buckets
// named, prints {"port": N} on stdout when ready, and exits on SIGTERM or when its parent's pipe
// closes. Run with `node --openssl-legacy-provider`: s3rver makes ListObjectsV2 continuation tokens
// with DES, which OpenSSL 3 only offers through its legacy provider.
'use strict';
const S3rver = require('s3rver');

const [directory, port, ...buckets] = process.argv.slice(2);
const server = new S3rver({
  address: '127.0.0.1',
  port: Number(port ?? 0),
  directory,
  silent: true,
  configureBuckets: buckets.map((name) => ({ name })),
});
server.run().then(
  (address) => process.stdout.write(`${JSON.stringify({ port: address.port })}\n`),
  (error) => {
    process.stderr.write(`s3rver: ${error.stack ?? error}\n`);
    process.exit(1);
  },
);
const stop = () => server.close().finally(() => process.exit(0));
process.on('SIGTERM', stop);
process.on('SIGINT', stop);
process.stdin.on('end', stop);
process.stdin.resume();
