// An object store under an S3 bucket prefix (src/io/s3.ts does the talking): keys map to
// `PREFIX + key`. S3 shows an object only when its upload completed, so put needs no temporary
// object; pack objects of several megabytes go up as multipart uploads with retried parts.
import { S3Bucket, type S3ConnectOptions } from '../io/s3.ts';
import { checkKey, checkPrefix, type ObjectStore, type StoredObject } from './store.ts';

export class S3ObjectStore implements ObjectStore {
  readonly url: string;
  readonly bucket: S3Bucket;

  private constructor(bucket: S3Bucket) {
    this.bucket = bucket;
    this.url = bucket.url();
  }

  static async open(url: string, options: S3ConnectOptions = {}): Promise<S3ObjectStore> {
    return new S3ObjectStore(await S3Bucket.connect(url, options));
  }

  async checkPlace(): Promise<void> {
    await this.bucket.checkBucket();
  }

  async get(key: string): Promise<Uint8Array> {
    checkKey(key);
    return await this.bucket.get(key);
  }

  async getRange(key: string, beginBytes: number, endBytes: number): Promise<Uint8Array> {
    checkKey(key);
    return await this.bucket.getRange(key, beginBytes, endBytes);
  }

  async put(key: string, data: Uint8Array): Promise<void> {
    checkKey(key);
    await this.bucket.put(key, data);
  }

  async putNew(key: string, data: Uint8Array): Promise<boolean> {
    checkKey(key);
    return await this.bucket.putNew(key, data);
  }

  async *list(prefix: string): AsyncGenerator<StoredObject> {
    checkPrefix(prefix);
    yield* this.bucket.list(prefix);
  }

  async delete(key: string): Promise<void> {
    checkKey(key);
    await this.bucket.delete(key);
  }

  async removeUnfinished(owned: (key: string) => boolean): Promise<number> {
    return await this.bucket.abortUnfinishedUploads(owned);
  }

  async close(): Promise<void> {
    this.bucket.close();
  }
}
