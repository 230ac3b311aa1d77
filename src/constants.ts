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

// ---- NBD limits (src/nbd) ----

/** Largest READ/WRITE payload: the spec's portable maximum (2^25) that every client honours; qemu uses the same. */
export const NBD_PAYLOAD_BYTES_MAX = 32 * 1024 * 1024;
/** Options one connection may send before transmission: nbdinfo --list sends one INFO per export, so room for many exports; bounds a peer that never starts. */
export const NBD_HANDSHAKE_OPTIONS_MAX = 1024;
/** Bytes of one option's data: a 4096-byte export name (the spec's string maximum) plus info requests and meta-context queries. */
export const NBD_OPTION_DATA_BYTES_MAX = 16 * 1024;
/** Time from accept to transmission; a peer that dawdles longer holds a connection slot for nothing. */
export const NBD_HANDSHAKE_MS_MAX = 10_000;
/** Requests in flight per connection: deeper than fio's QD 64 example and nbdkit's 16 workers, so clients never wait on us. */
export const NBD_REQUESTS_IN_FLIGHT_MAX = 128;
/** Payload bytes one connection holds in memory (write data received, read replies not yet sent): two maximum-size requests. */
export const NBD_CONNECTION_BYTES_IN_FLIGHT_MAX = 2 * NBD_PAYLOAD_BYTES_MAX;
/** Payload bytes all connections together hold in memory: bounds the server, whatever the connection count. */
export const NBD_SERVER_BYTES_IN_FLIGHT_MAX = 512 * 1024 * 1024;
/** How long a connection may leave its replies unread while we hold requests for it, before it is cut off. */
export const NBD_REPLY_STALL_MS_MAX = 30_000;
/** Connections served at once: each costs buffers and a slot in the in-flight budget. */
export const NBD_CONNECTIONS_MAX = 128;
/** Extents in one BLOCK_STATUS reply: the spec asks for at most 2^20; 2^16 keeps the reply at 512 KiB. */
export const NBD_BLOCK_STATUS_EXTENTS_MAX = 65536;
/** Chunks (data and holes) in one structured READ reply; past it the rest of the range goes as one data chunk. */
export const NBD_READ_CHUNKS_MAX = 256;
/** Bytes of a human-readable error message sent to a client; the spec caps strings at 4096. */
export const NBD_ERROR_MESSAGE_BYTES_MAX = 512;
/** Preferred I/O size advertised when an export has none: the page size, what the spec suggests by default. */
export const NBD_BLOCK_SIZE_PREFERRED_BYTES_DEFAULT = 4096;
