// A local S3-compatible server for tests (s3rver, an npm package): listens on 127.0.0.1 at the
// port given (0: any free one), stores objects under the directory given, creates the buckets
// named, prints {"port": N} on stdout when ready, and exits on SIGTERM or when its parent's pipe
// closes. Run with `node --openssl-legacy-provider`: s3rver makes ListObjectsV2 continuation tokens
// with DES, which OpenSSL 3 only offers through its legacy provider.
'use strict';
const fs = require('node:fs');
const path = require('node:path');
const S3rver = require('s3rver');

const [directory, port, ...buckets] = process.argv.slice(2);
const server = new S3rver({
  address: '127.0.0.1',
  port: Number(port ?? 0),
  directory,
  silent: true,
  configureBuckets: buckets.map((name) => ({ name })),
});
// s3rver implements neither ListMultipartUploads nor AbortMultipartUpload; AWS S3 has both and
// `archive gc` uses them to drop what killed packs left. Here they read and remove the upload
// directories s3rver keeps (<directory>/<bucket>/._S3rver_uploads/<uploadId>/key), ahead of
// s3rver's own routes. A bucket whose name ends in -no-upload-listing refuses the listing.
const xml = (text) => text.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;');
server.middleware.unshift(async (ctx, next) => {
  const url = new URL(ctx.url, 'http://localhost');
  const [bucket, ...keyParts] = url.pathname.split('/').filter((part) => part !== '').map(decodeURIComponent);
  if (bucket === undefined) return next();
  const uploadsDir = path.join(directory, bucket, '._S3rver_uploads');
  if (ctx.method === 'GET' && keyParts.length === 0 && url.searchParams.has('uploads')) {
    if (bucket.endsWith('-no-upload-listing')) {
      // As AWS answers credentials without s3:ListBucketMultipartUploads.
      ctx.status = 403;
      ctx.type = 'application/xml';
      ctx.body = '<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>AccessDenied</Code><Message>Access Denied</Message></Error>';
      return undefined;
    }
    const prefix = url.searchParams.get('prefix') ?? '';
    const uploads = [];
    for (const id of fs.existsSync(uploadsDir) ? fs.readdirSync(uploadsDir) : []) {
      const keyFile = path.join(uploadsDir, id, 'key');
      if (!fs.existsSync(keyFile)) continue;
      const key = fs.readFileSync(keyFile, 'utf8');
      if (key.startsWith(prefix)) uploads.push({ key, id, initiated: fs.statSync(keyFile).mtime.toISOString() });
    }
    uploads.sort((a, b) => (a.key < b.key ? -1 : a.key > b.key ? 1 : 0));
    ctx.type = 'application/xml';
    ctx.body =
      '<?xml version="1.0" encoding="UTF-8"?>\n<ListMultipartUploadsResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">' +
      `<Bucket>${xml(bucket)}</Bucket><Prefix>${xml(prefix)}</Prefix><MaxUploads>1000</MaxUploads><IsTruncated>false</IsTruncated>` +
      uploads.map((u) => `<Upload><Key>${xml(u.key)}</Key><UploadId>${xml(u.id)}</UploadId><Initiated>${u.initiated}</Initiated></Upload>`).join('') +
      '</ListMultipartUploadsResult>';
    return undefined;
  }
  const uploadId = url.searchParams.get('uploadId');
  if (ctx.method === 'DELETE' && keyParts.length > 0 && uploadId !== null) {
    const uploadDir = path.join(uploadsDir, path.basename(uploadId));
    if (!fs.existsSync(uploadDir)) {
      ctx.status = 404;
      ctx.type = 'application/xml';
      ctx.body = `<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>NoSuchUpload</Code><Message>The specified upload does not exist.</Message><UploadId>${xml(uploadId)}</UploadId></Error>`;
      return undefined;
    }
    fs.rmSync(uploadDir, { recursive: true, force: true });
    ctx.status = 204;
    return undefined;
  }
  return next();
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
