// Openers for remote image sources that need more than Node's fetch: s3://BUCKET/KEY, through the
// S3 helper (src/io/s3.ts: the standard credential chain, AWS_ENDPOINT_URL or --endpoint for
// S3-compatible stores). The object is streamed; ranged GETs serve random access (a docker/OCI
// archive's index, then its layers in order).
import { ThinError } from '../errors.ts';
import { S3Bucket, parseS3Url } from '../io/s3.ts';
import type { RemoteObject, SourceOpeners } from './source.ts';

export interface RemoteOptions {
  /** S3-compatible endpoint (default $AWS_ENDPOINT_URL_S3, then $AWS_ENDPOINT_URL). */
  endpoint?: string;
}

/** s3://BUCKET/KEY as a bucket location and a key (a key, unlike a prefix, has no trailing slash). */
export function parseS3ObjectUrl(url: string): { bucket: string; key: string } {
  const rest = url.slice('s3://'.length);
  const slash = rest.indexOf('/');
  const bucket = parseS3Url(`s3://${slash < 0 ? rest : rest.slice(0, slash)}`).bucket;
  const key = slash < 0 ? '' : rest.slice(slash + 1);
  if (key === '' || key.endsWith('/')) throw new ThinError('THIN_INVALID', `${url} names no object (s3://BUCKET/KEY)`);
  return { bucket, key };
}

export function sourceOpeners(options: RemoteOptions = {}): SourceOpeners {
  return {
    s3: async (url: string): Promise<RemoteObject> => {
      const { bucket, key } = parseS3ObjectUrl(url);
      const s3 = await S3Bucket.connect({ bucket, prefix: '' }, options.endpoint === undefined ? {} : { endpoint: options.endpoint });
      try {
        const info = await s3.head(key);
        if (info === undefined) {
          await s3.checkBucket(); // a missing bucket is named as one, not as a missing object
          throw new ThinError('THIN_NOT_FOUND', `Cannot read ${url}: no such object`);
        }
        const stream = await s3.getStream(key);
        return {
          stream,
          totalBytes: info.sizeBytes,
          close: () => {
            stream.destroy();
            s3.close();
          },
          readRange: (beginBytes, endBytes) => s3.getRange(key, beginBytes, endBytes),
        };
      } catch (error) {
        s3.close();
        throw error;
      }
    },
  };
}
