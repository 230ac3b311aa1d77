// Options and option values shared by the commands: the --pool option, sizes, names.
import { resolve } from 'node:path';
import { Option } from '@commander-js/extra-typings';
import { UsageError } from './report.ts';
import { formatSize, parseSize, SizeSyntaxError } from './sizes.ts';
import { METADATA_BLOCK_COUNT_MAX, METADATA_BLOCK_COUNT_MIN, METADATA_BLOCK_SIZE_BYTES, VOLUME_NAME_LENGTH_MAX, VOLUME_NAME_PATTERN } from '../constants.ts';

export function sizeOption(optionName: string, text: string): number {
  try {
    return parseSize(text);
  } catch (error) {
    if (error instanceof SizeSyntaxError) throw new UsageError(`${optionName}: ${error.message}`);
    throw error;
  }
}

/**
 * A --metadata-size: a size from the smallest metadata file (its last superblock copy) to the
 * largest, checked here so that one out of range is a usage error (exit 2) naming the option, as
 * every other bad size is, before anything is opened or made.
 */
export function metadataSizeOption(text: string): number {
  const sizeBytes = sizeOption('--metadata-size', text);
  const [minBytes, maxBytes] = [METADATA_BLOCK_COUNT_MIN * METADATA_BLOCK_SIZE_BYTES, METADATA_BLOCK_COUNT_MAX * METADATA_BLOCK_SIZE_BYTES];
  if (sizeBytes < minBytes || sizeBytes > maxBytes) throw new UsageError(`--metadata-size: ${text} is not from ${formatSize(minBytes)} to ${formatSize(maxBytes)}`);
  return sizeBytes;
}

export function volumeName(what: string, text: string): string {
  if (text.length > VOLUME_NAME_LENGTH_MAX) {
    throw new UsageError(`Invalid ${what} '${text.slice(0, 20)}…': longer than ${VOLUME_NAME_LENGTH_MAX} characters`);
  }
  if (!VOLUME_NAME_PATTERN.test(text)) {
    throw new UsageError(
      `Invalid ${what} '${text}': use letters, digits and . _ + - and start with a letter or digit`,
    );
  }
  return text;
}

/**
 * The one --pool option every command that works on a pool takes (read with poolDirectory).
 * `note` says what the command wants of the directory, when it is more than holding a pool.
 */
export function poolOption(note?: string) {
  return new Option('--pool <dir>', `pool directory (default $THINBD_POOL, then ./pool)${note === undefined ? '' : `; ${note}`}`);
}

/** --pool, then $THINBD_POOL, then ./pool. */
export function poolDirectory(option: string | undefined): string {
  return resolve(option ?? process.env['THINBD_POOL'] ?? 'pool');
}

/** --label KEY=VALUE options as a record. */
export function parseLabels(texts: string[]): Record<string, string> {
  const labels: Record<string, string> = {};
  for (const text of texts) {
    const equals = text.indexOf('=');
    if (equals <= 0) throw new UsageError(`--label: '${text}' is not KEY=VALUE`);
    labels[text.slice(0, equals)] = text.slice(equals + 1);
  }
  return labels;
}
