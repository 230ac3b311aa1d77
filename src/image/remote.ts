// Openers for remote image sources that need more than Node's fetch: s3://BUCKET/KEY.
import type { SourceOpeners } from './source.ts';

export interface RemoteOptions {
  /** S3-compatible endpoint (default $AWS_ENDPOINT_URL). */
  endpoint?: string;
}

export function sourceOpeners(_options: RemoteOptions = {}): SourceOpeners {
  return {};
}
