// S3 access shared by everything that reads or writes objects in a bucket (the archive store,
// image import from `s3://` sources).
//
// - `parseS3Url` reads `s3://BUCKET/PREFIX` (the AWS CLI's spelling). A prefix names a folder:
//   it is empty or ends with `/`, so `s3://b/backups` and `s3://b/backups/` are the same place.
// - `S3Bucket.connect` makes a client lazily: the AWS SDK costs ~80 ms to load, and commands
//   that never touch S3 must not pay it. Credentials come from the SDK's standard chain
//   (environment, shared config and credentials files, SSO, container and instance roles).
// - Endpoint: an explicit `endpoint` (the CLI's `--endpoint`), else `AWS_ENDPOINT_URL_S3`, else
//   `AWS_ENDPOINT_URL` (the variables the AWS CLI and SDKs read), else AWS itself. With an endpoint
//   the client uses path-style addressing (`http://host/bucket/key`), which S3-compatible servers
//   (MinIO, Ceph RGW, s3rver, Garage) accept where virtual-hosted names would need wildcard DNS;
//   and it sends checksums only where the operation requires them, since such servers may not
//   know the newer CRC headers.
// - Retries: the SDK's standard mode (exponential backoff with jitter, throttling and 5xx and
//   network errors retried) with S3_ATTEMPTS_MAX attempts per request. The SDK retries a request
//   only until its reply's headers arrive; a GET whose body breaks off (a connection reset, or
//   one silent for S3_IDLE_MS_MAX) is sent again here, as often and with the same backoff.
// - Errors become ThinError naming the object's URL: THIN_NOT_FOUND for a missing key or bucket,
//   THIN_IO for the rest (with the SDK's error as `cause`).
import type { Readable } from 'node:stream';
import type { S3Client } from '@aws-sdk/client-s3';
import { ThinError, assert } from '../errors.ts';
import { setTimeout as sleep } from 'node:timers/promises';
import { S3_ATTEMPTS_MAX, S3_BODY_RETRY_BASE_MS, S3_CONNECT_MS_MAX, S3_IDLE_MS_MAX, S3_MULTIPART_PART_BYTES, S3_MULTIPART_PARTS_IN_FLIGHT_MAX } from '../constants.ts';

export interface S3Location {
  bucket: string;
  /** '' or a path ending in '/'. */
  prefix: string;
}

/** True when `text` is an `s3://` URL (any case of the scheme). */
export function isS3Url(text: string): boolean {
  return /^s3:\/\//i.test(text);
}

// Bucket names as S3 allows them (3–63 characters; lower case, digits, dots and hyphens), plus
// upper case and underscores, which older buckets and S3-compatible servers use.
const BUCKET_PATTERN = /^[A-Za-z0-9][A-Za-z0-9._-]{1,62}$/;

/** Parses `s3://BUCKET[/PREFIX]`; THIN_INVALID names what is wrong. */
export function parseS3Url(text: string): S3Location {
  if (!isS3Url(text)) throw new ThinError('THIN_INVALID', `Not an s3:// URL: '${text}'`);
  const rest = text.slice('s3://'.length);
  const slash = rest.indexOf('/');
  const bucket = slash === -1 ? rest : rest.slice(0, slash);
  let prefix = slash === -1 ? '' : rest.slice(slash + 1);
  if (!BUCKET_PATTERN.test(bucket)) {
    throw new ThinError('THIN_INVALID', `Invalid bucket name '${bucket}' in ${text}: 3 to 63 letters, digits, dots, hyphens or underscores`);
  }
  if (prefix.split('/').some((part, index, parts) => part === '' && index < parts.length - 1)) {
    throw new ThinError('THIN_INVALID', `Invalid prefix '${prefix}' in ${text}: empty path segment`);
  }
  if (prefix !== '' && !prefix.endsWith('/')) prefix += '/';
  return { bucket, prefix };
}

export function formatS3Url(location: S3Location, key = ''): string {
  return `s3://${location.bucket}/${location.prefix}${key}`;
}

export interface S3ConnectOptions {
  /** An S3-compatible server's URL (`http://127.0.0.1:9000`); default from the environment, then AWS. */
  endpoint?: string;
  /** Default: the SDK's (AWS_REGION, the shared config), or us-east-1 with an endpoint. */
  region?: string;
  /** Default: true with an endpoint, false for AWS. */
  forcePathStyle?: boolean;
  /** How long a request's socket may stay silent before the attempt fails (default S3_IDLE_MS_MAX). */
  idleTimeoutMs?: number;
}

export interface S3ObjectInfo {
  /** The key below the bucket's location prefix. */
  key: string;
  sizeBytes: number;
}

/** The endpoint an S3 client should use: the explicit one, then the environment's. */
export function resolveS3Endpoint(explicit: string | undefined, env: NodeJS.ProcessEnv = process.env): string | undefined {
  const endpoint = explicit ?? env['AWS_ENDPOINT_URL_S3'] ?? env['AWS_ENDPOINT_URL'];
  if (endpoint === undefined || endpoint === '') return undefined;
  try {
    const url = new URL(endpoint);
    if (url.protocol !== 'http:' && url.protocol !== 'https:') throw new Error('not http or https');
  } catch (error) {
    throw new ThinError('THIN_INVALID', `Invalid S3 endpoint '${endpoint}': ${(error as Error).message}`, { cause: error });
  }
  return endpoint;
}

type Sdk = typeof import('@aws-sdk/client-s3');

/**
 * One bucket location (bucket + prefix) and a client for it. Keys passed to the methods are
 * relative to the prefix.
 */
export class S3Bucket {
  readonly location: S3Location;
  readonly client: S3Client;
  readonly #sdk: Sdk;

  private constructor(location: S3Location, client: S3Client, sdk: Sdk) {
    this.location = location;
    this.client = client;
    this.#sdk = sdk;
  }

  /** Loads the SDK (once per process) and makes a client for `url` (`s3://BUCKET/PREFIX`). */
  static async connect(url: string | S3Location, options: S3ConnectOptions = {}): Promise<S3Bucket> {
    const location = typeof url === 'string' ? parseS3Url(url) : url;
    // The SDK warns on every Node 20 run that its releases after January 2027 need Node 22; this
    // build pins a release that supports Node 20 (README), so the warning would only be noise.
    process.env['AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED'] ??= 'true';
    const sdk = await import('@aws-sdk/client-s3');
    const endpoint = resolveS3Endpoint(options.endpoint);
    const region = options.region ?? process.env['AWS_REGION'] ?? process.env['AWS_DEFAULT_REGION'] ?? (endpoint === undefined ? undefined : 'us-east-1');
    const client = new sdk.S3Client({
      ...(endpoint === undefined ? {} : { endpoint, requestChecksumCalculation: 'WHEN_REQUIRED', responseChecksumValidation: 'WHEN_REQUIRED' }),
      ...(region === undefined ? {} : { region }),
      forcePathStyle: options.forcePathStyle ?? endpoint !== undefined,
      maxAttempts: S3_ATTEMPTS_MAX,
      retryMode: 'standard',
      requestHandler: { connectionTimeout: S3_CONNECT_MS_MAX, socketTimeout: options.idleTimeoutMs ?? S3_IDLE_MS_MAX },
    });
    return new S3Bucket(location, client, sdk);
  }

  /** The object's full key in the bucket. */
  fullKey(key: string): string {
    return this.location.prefix + key;
  }

  url(key = ''): string {
    return formatS3Url(this.location, key);
  }

  async get(key: string): Promise<Uint8Array> {
    return await this.#fetch(key, undefined);
  }

  /** Bytes [beginBytes, endBytes) of the object (a ranged GET); fewer only if the object is shorter. */
  async getRange(key: string, beginBytes: number, endBytes: number): Promise<Uint8Array> {
    assert(Number.isSafeInteger(beginBytes) && beginBytes >= 0 && endBytes > beginBytes, `a byte range ${beginBytes}..${endBytes}`);
    return await this.#fetch(key, `bytes=${beginBytes}-${endBytes - 1}`, beginBytes, endBytes);
  }

  /** The object's body as a stream (for large objects read once, such as an image tarball). */
  async getStream(key: string): Promise<Readable> {
    try {
      const reply = await this.client.send(new this.#sdk.GetObjectCommand({ Bucket: this.location.bucket, Key: this.fullKey(key) }));
      return reply.Body as Readable;
    } catch (error) {
      throw this.#error('read', key, error);
    }
  }

  async #fetch(key: string, range: string | undefined, beginBytes = 0, endBytes = 0): Promise<Uint8Array> {
    try {
      let reply;
      let bytes: Uint8Array;
      for (let attempt = 1; ; attempt++) {
        reply = await this.client.send(
          new this.#sdk.GetObjectCommand({ Bucket: this.location.bucket, Key: this.fullKey(key), ...(range === undefined ? {} : { Range: range }) }),
        );
        const body = reply.Body;
        if (body === undefined) throw new Error('the reply has no body');
        try {
          bytes = await body.transformToByteArray();
          break;
        } catch (error) {
          if (attempt >= S3_ATTEMPTS_MAX) throw new Error(`the reply's body broke off ${S3_ATTEMPTS_MAX} times, the last time with: ${(error as Error).message}`, { cause: error });
          await sleep(Math.random() * S3_BODY_RETRY_BASE_MS * 2 ** (attempt - 1));
        }
      }
      if (range === undefined || bytes.length <= endBytes - beginBytes) return bytes;
      // More than asked for: a server that ignores Range (no Content-Range, the whole object) or,
      // like s3rver, answers `bytes=0-0` with the whole object. Cut the range out of what came.
      const sent = /^bytes (\d+)-\d+\/\d+$/.exec(reply.ContentRange ?? '');
      const sentBegin = sent === null ? 0 : Number(sent[1]);
      if (sentBegin > beginBytes) throw new Error(`asked for bytes from ${beginBytes}, the server sent from ${sentBegin}`);
      return bytes.subarray(beginBytes - sentBegin, endBytes - sentBegin);
    } catch (error) {
      throw this.#error('read', key, error);
    }
  }

  /** The object's size, or undefined when there is no such object. */
  async head(key: string): Promise<{ sizeBytes: number } | undefined> {
    try {
      const reply = await this.client.send(new this.#sdk.HeadObjectCommand({ Bucket: this.location.bucket, Key: this.fullKey(key) }));
      return { sizeBytes: reply.ContentLength ?? 0 };
    } catch (error) {
      if (isMissing(error)) return undefined;
      throw this.#error('look up', key, error);
    }
  }

  /**
   * Stores `data` as the object `key` (replacing it). Objects larger than one multipart part go up
   * in parts, several at once, each retried on its own; an upload that fails is aborted so no
   * parts are left behind. S3 makes an object visible only when it is complete.
   */
  async put(key: string, data: Uint8Array): Promise<void> {
    try {
      if (data.length <= S3_MULTIPART_PART_BYTES) {
        await this.client.send(new this.#sdk.PutObjectCommand({ Bucket: this.location.bucket, Key: this.fullKey(key), Body: data }));
        return;
      }
      const { Upload } = await import('@aws-sdk/lib-storage');
      const upload = new Upload({
        client: this.client,
        params: { Bucket: this.location.bucket, Key: this.fullKey(key), Body: data },
        partSize: S3_MULTIPART_PART_BYTES,
        queueSize: S3_MULTIPART_PARTS_IN_FLIGHT_MAX,
        leavePartsOnError: false,
      });
      await upload.done();
    } catch (error) {
      throw this.#error('write', key, error);
    }
  }

  /**
   * Stores `data` as `key` only if no object has that key: a conditional PUT (If-None-Match: *),
   * which AWS S3 makes atomic. False when the key exists. A server that ignores the condition is
   * caught when the key existed before the call (a HEAD first), not when two writers race.
   */
  async putNew(key: string, data: Uint8Array): Promise<boolean> {
    if ((await this.head(key)) !== undefined) return false;
    try {
      await this.client.send(new this.#sdk.PutObjectCommand({ Bucket: this.location.bucket, Key: this.fullKey(key), Body: data, IfNoneMatch: '*' }));
      return true;
    } catch (error) {
      const status = (error as { $metadata?: { httpStatusCode?: number } } | null)?.$metadata?.httpStatusCode;
      if (status === 412 || status === 409) return false;
      throw this.#error('write', key, error);
    }
  }

  /** Every object whose key starts with `prefix` (relative to the location), in key order, pageKeys per request (S3's limit: 1000). */
  async *list(prefix = '', pageKeys?: number): AsyncGenerator<S3ObjectInfo> {
    let continuationToken: string | undefined;
    do {
      let reply;
      try {
        reply = await this.client.send(
          new this.#sdk.ListObjectsV2Command({
            Bucket: this.location.bucket,
            Prefix: this.fullKey(prefix),
            ...(pageKeys === undefined ? {} : { MaxKeys: pageKeys }),
            ...(continuationToken === undefined ? {} : { ContinuationToken: continuationToken }),
          }),
        );
      } catch (error) {
        throw this.#error('list', prefix, error);
      }
      for (const object of reply.Contents ?? []) {
        if (object.Key === undefined || !object.Key.startsWith(this.location.prefix)) continue;
        yield { key: object.Key.slice(this.location.prefix.length), sizeBytes: object.Size ?? 0 };
      }
      continuationToken = reply.IsTruncated === true ? reply.NextContinuationToken : undefined;
    } while (continuationToken !== undefined);
  }

  /** Deletes the object; deleting a missing object is not an error (S3's own rule). */
  async delete(key: string): Promise<void> {
    try {
      await this.client.send(new this.#sdk.DeleteObjectCommand({ Bucket: this.location.bucket, Key: this.fullKey(key) }));
    } catch (error) {
      if (isMissing(error)) return;
      throw this.#error('delete', key, error);
    }
  }

  /**
   * Aborts the multipart uploads begun under the location's prefix and never completed, of keys
   * `owned` says are the caller's (what a killed writer leaves: S3 keeps, and bills, their parts
   * until they are aborted); returns how many. Only while no writer of those keys runs.
   */
  async abortUnfinishedUploads(owned: (key: string) => boolean): Promise<number> {
    let aborted = 0;
    let keyMarker: string | undefined;
    let uploadIdMarker: string | undefined;
    for (;;) {
      let reply;
      try {
        reply = await this.client.send(
          new this.#sdk.ListMultipartUploadsCommand({
            Bucket: this.location.bucket,
            Prefix: this.location.prefix,
            ...(keyMarker === undefined ? {} : { KeyMarker: keyMarker }),
            ...(uploadIdMarker === undefined ? {} : { UploadIdMarker: uploadIdMarker }),
          }),
        );
      } catch (error) {
        throw this.#error('list the unfinished uploads under', '', error);
      }
      for (const upload of reply.Uploads ?? []) {
        if (upload.Key === undefined || upload.UploadId === undefined || !upload.Key.startsWith(this.location.prefix)) continue;
        const key = upload.Key.slice(this.location.prefix.length);
        if (!owned(key)) continue;
        try {
          await this.client.send(new this.#sdk.AbortMultipartUploadCommand({ Bucket: this.location.bucket, Key: upload.Key, UploadId: upload.UploadId }));
        } catch (error) {
          if (!isMissing(error)) throw this.#error('abort the unfinished upload of', key, error);
          continue; // completed or aborted since the listing
        }
        aborted += 1;
      }
      if (reply.IsTruncated !== true || (reply.NextKeyMarker === undefined && reply.NextUploadIdMarker === undefined)) return aborted;
      keyMarker = reply.NextKeyMarker;
      uploadIdMarker = reply.NextUploadIdMarker;
    }
  }

  /** Whether the bucket exists and these credentials may reach it (THIN_NOT_FOUND / THIN_IO otherwise). */
  async checkBucket(): Promise<void> {
    try {
      await this.client.send(new this.#sdk.HeadBucketCommand({ Bucket: this.location.bucket }));
    } catch (error) {
      // A HEAD reply has no body, so a missing bucket comes back as a bare NotFound.
      if (isMissing(error)) throw new ThinError('THIN_NOT_FOUND', `Cannot reach ${this.url('')}: no such bucket ${this.location.bucket}`, { cause: error });
      throw this.#error('reach bucket of', '', error);
    }
  }

  close(): void {
    this.client.destroy();
  }

  #error(what: string, key: string, error: unknown): ThinError {
    if (error instanceof ThinError) return error;
    const name = (error as { name?: string } | null)?.name ?? '';
    const message = error instanceof Error ? error.message : String(error);
    // The SDK's error names say what went wrong (AccessDenied, InvalidAccessKeyId); a bare Error does not.
    let detail = name !== '' && name !== 'Error' && !message.includes(name) ? `${name}: ${message}` : message;
    if (name === 'CredentialsProviderError') {
      // "Could not load credentials from any providers" names neither what is missing nor where it is looked for.
      detail = `no AWS credentials found (${message}): set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE, or run where the AWS standard chain finds some`;
    }
    if (isMissing(error)) return new ThinError('THIN_NOT_FOUND', `Cannot ${what} ${this.url(key)}: no such ${name === 'NoSuchBucket' ? 'bucket' : 'object'}`, { cause: error });
    return new ThinError('THIN_IO', `Cannot ${what} ${this.url(key)}: ${detail}`, { cause: error });
  }
}

function isMissing(error: unknown): boolean {
  const name = (error as { name?: string } | null)?.name;
  const status = (error as { $metadata?: { httpStatusCode?: number } } | null)?.$metadata?.httpStatusCode;
  return name === 'NoSuchKey' || name === 'NotFound' || name === 'NoSuchBucket' || status === 404;
}
