// Every limit and layout constant of thinbd, each with the reason for its value.

/** Metadata block size: one page, the unit dm-thin and most filesystems checksum and write. */
export const METADATA_BLOCK_SIZE_BYTES = 4096;

/** Data block size bounds: dm-thin's range (128 sectors to 2^21 sectors), so any pool can move to dm-thin. */
export const DATA_BLOCK_SIZE_BYTES_MIN = 64 * 1024;
export const DATA_BLOCK_SIZE_BYTES_MAX = 1024 * 1024 * 1024;
/** Default data block size until the benchmark issue chooses one by measurement. */
export const DATA_BLOCK_SIZE_BYTES_DEFAULT = 64 * 1024;

/** Default data space of a new pool (a sparse file, so it costs nothing until written). */
export const DATA_SIZE_BYTES_DEFAULT = 16 * 1024 ** 3;

/** Largest volume: keeps every byte offset an exact JavaScript number (< 2^53) with room to add. */
export const VOLUME_SIZE_BYTES_MAX = 2 ** 50;

/** Volume names: what users type and what NBD clients see as export names. */
export const VOLUME_NAME_LENGTH_MAX = 128;
export const VOLUME_NAME_PATTERN = /^[A-Za-z0-9][A-Za-z0-9._+-]*$/;
