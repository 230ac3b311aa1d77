// Opening the object store a name points at: an `s3://BUCKET/PREFIX` URL or a directory path. Kept
// apart from the contract (store.ts) that both implementations import, so that no import cycle
// forms; the S3 implementation (and the AWS SDK behind it) loads only when an S3 store is opened.
import { isS3Url, type S3ConnectOptions } from '../io/s3.ts';
import type { ObjectStore } from './store.ts';

export interface OpenStoreOptions extends Pick<S3ConnectOptions, 'endpoint'> {}

/** The store named by `spec`: an `s3://BUCKET/PREFIX` URL, or else a directory path. */
export async function openObjectStore(spec: string, options: OpenStoreOptions = {}): Promise<ObjectStore> {
  if (isS3Url(spec)) {
    const { S3ObjectStore } = await import('./s3-store.ts');
    return await S3ObjectStore.open(spec, options);
  }
  const { DirectoryObjectStore } = await import('./directory-store.ts');
  return DirectoryObjectStore.open(spec);
}
