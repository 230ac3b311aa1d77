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

/** dm-thin, LVM and thin_dump count data block sizes in 512-byte sectors. */
export const SECTOR_BYTES = 512;

/** Progress calls on long walks: often enough for a bar, rare enough to cost nothing. */
export const PROGRESS_EXTENTS_STEP = 65536;
/** Metadata blocks between two progress calls of metadata pack. */
export const PROGRESS_BLOCKS_STEP = 4096;

/**
 * Data blocks up to which check and restore count data references in one byte per block (16 MiB
 * at most, a 1 TiB pool of 64 KiB blocks) instead of sorting every reference: a scattered pool has
 * one reference per block, and sorting a million of them was a sixth of a check's time.
 */
export const DENSE_REFERENCE_BLOCKS_MAX = 16 * 1024 * 1024;

// Raw image import and export (thinbd import / export).
/** Bytes read or written per step: large enough to amortize calls, small enough to keep memory flat. */
export const TRANSFER_CHUNK_BYTES = 1024 * 1024;
/** Volume writes in flight during import: keeps the data file busy without unbounded buffering. */
export const TRANSFER_WRITES_IN_FLIGHT_MAX = 8;

// ---- host files (src/io/file.ts) ----

/**
 * The most one pwrite of a buffered write on the main thread writes; a larger write goes in
 * pieces. The kernel sizes the page-cache folios of a buffered write by its length (ext4's large
 * folios, Linux 6.x): a pwrite of 2 MiB or more gets 2 MiB folios, and on the virtual machine the
 * benchmarks run on copying into those took ~6x the kernel time of 1 MiB pieces (most likely guest
 * memory the host had not backed yet; docs/benchmarks.md "Image import: larger writes").
 */
export const FILE_WRITE_PIECE_BYTES_MAX = 1024 * 1024;
/**
 * Writes to a regular file of at least this many bytes, on 4 KiB boundaries of memory, file and
 * length, go around the page cache (O_DIRECT, io/file.ts). Only unpack's writes into a new volume
 * are placed so (archive/unpack.ts): bulk data not read back soon, whose copy into page cache
 * pages the host had not backed took a third of unpack's CPU in the benchmark on the machine the
 * benchmarks run on (docs/benchmarks.md, "A machine where memory is dear"). A client's writes and
 * an image import's stay buffered (the import was slower direct, the same section).
 */
export const FILE_DIRECT_WRITE_BYTES_MIN = 256 * 1024;

// ---- S3 (src/io/s3.ts) ----

/** Tries per S3 request (the SDK's standard retry mode backs off between them): rides out throttling and brief outages. */
export const S3_ATTEMPTS_MAX = 5;
/** A connection to S3 not made by then is retried as a failed attempt (a host that drops SYNs would otherwise wait for the kernel, minutes). */
export const S3_CONNECT_MS_MAX = 10_000;
/**
 * A request whose socket stays silent this long (no reply, or a body that stops mid-way) is
 * abandoned and retried: S3 answers within seconds, and without a bound a stalled connection
 * hangs the command for ever.
 */
export const S3_IDLE_MS_MAX = 60_000;
/** First backoff before a GET whose body broke off is tried again; doubled per attempt, with full jitter (the SDK's own rule). */
export const S3_BODY_RETRY_BASE_MS = 100;
/** Multipart part size: above S3's 5 MiB minimum part, and objects up to one part go up in a single PUT. */
export const S3_MULTIPART_PART_BYTES = 8 * 1024 * 1024;
/** Parts of one multipart upload sent at once: keeps a link busy without holding many parts in memory. */
export const S3_MULTIPART_PARTS_IN_FLIGHT_MAX = 4;

// ---- archive (src/archive) ----

/** Average chunk size of new stores (`archive init --chunk-size`), chosen by measurement: docs/benchmarks.md "Archive". */
export const ARCHIVE_CHUNK_AVERAGE_BYTES_DEFAULT = 64 * 1024;
/** Chunk average sizes a store may use: below 4 KiB the index outgrows RAM, above 1 MiB small changes cost whole megabytes. */
export const ARCHIVE_CHUNK_AVERAGE_BYTES_MIN = 4 * 1024;
export const ARCHIVE_CHUNK_AVERAGE_BYTES_MAX = 1024 * 1024;
/**
 * zstd level of new stores (`archive init --level`), chosen by measurement: with frames of ~16
 * chunks level 2 stores 0.95x restic's bytes for the pack CPU level 3 took with a frame per
 * chunk; level 3 frames store 3 % less for 1.12x the pack CPU, more than the pack-time goal
 * leaves (docs/benchmarks.md "Archive: frames of several chunks").
 */
export const ARCHIVE_ZSTD_LEVEL_DEFAULT = 2;
/**
 * A stream segment covers this many average chunks of volume (1 GiB at 64 KiB chunks): a changed
 * block rewrites only its segment's chunk list, and a segment's encoding stays below
 * ARCHIVE_CHUNK_RAW_BYTES_MAX whatever the chunk sizes (F-AR-SEG-1, F-AR-SEG-3).
 */
export const ARCHIVE_SEGMENT_AVERAGE_CHUNKS = 16384;
/** Payload bytes after which a pack object is closed: megabytes, so S3 sees few PUTs, and an interrupted pack loses little. */
export const ARCHIVE_PACK_TARGET_BYTES = 16 * 1024 * 1024;
/** Largest pack object a reader accepts (F-AR-PACK-4): a target pack plus one maximal chunk, with room. */
export const ARCHIVE_PACK_BYTES_MAX = 256 * 1024 * 1024;
/** Largest raw chunk a reader accepts: four times the largest average (F-AR-CDC-2), and a segment's encoding stays below it (F-AR-SEG-3). */
export const ARCHIVE_CHUNK_RAW_BYTES_MAX = 4 * 1024 * 1024;
/**
 * Raw bytes pack gathers into one zstd frame: adjacent new chunks of a job, up to this much
 * together (one chunk larger than it is a frame alone). One frame per 64 KiB chunk stored 1.01x
 * restic's bytes; frames of ~16 chunks compress the same data 8-10 % smaller for the same CPU
 * (F-AR-CHUNK-2; docs/benchmarks.md, "The stored-bytes goal and zstd's parameters").
 */
export const ARCHIVE_FRAME_TARGET_BYTES = 1024 * 1024;
/** Largest decompressed frame a reader accepts (F-AR-CHUNK-2): what a damaged frame header may make it allocate. */
export const ARCHIVE_FRAME_RAW_BYTES_MAX = 4 * 1024 * 1024;
/** Largest stream root object (F-AR-STREAM-2): a segment list for the largest volume fits with room. */
export const ARCHIVE_STREAM_ROOT_BYTES_MAX = 64 * 1024 * 1024;
/** Largest index object a reader accepts. */
export const ARCHIVE_INDEX_BYTES_MAX = 1024 * 1024 * 1024;
/**
 * Pack reads and chunks a volume in jobs of this many bytes, each cut at multiples of it in the
 * volume, so jobs are independent (they run on worker threads) and the same data at the same
 * place is cut the same way in every pack. One extra cut per 8 MiB costs little dedup.
 */
export const ARCHIVE_JOB_BYTES = 8 * 1024 * 1024;
/**
 * Ranges of a volume shorter than a job (an incremental's changed runs) are read into one job
 * end to end up to this many bytes: fewer round trips to the worker threads, while the pages of
 * the job buffers touched stay few (docs/benchmarks.md, "Archive: the incremental's pipeline").
 */
export const ARCHIVE_JOB_GATHER_BYTES = 2 * 1024 * 1024;
/**
 * Bytes a pack expects to read (an incremental) up to which it chunks, hashes and compresses on
 * its own thread rather than start worker threads. Each worker costs ~20 ms of CPU to start and
 * compiles the chunker again; on two quiet cores the bench's incremental (64 MiB read) took as
 * long either way and ~0.1 s less CPU on this thread alone, and under other load it was ~0.1 s
 * sooner (docs/benchmarks.md, "Archive: the incremental on the main thread").
 */
export const ARCHIVE_INLINE_BYTES_MAX = 8 * ARCHIVE_JOB_BYTES;
/**
 * Jobs read and being chunked at once by worker threads: enough to keep every worker busy. Each
 * job holds two 8 MiB buffers whose pages are touched once; 4 rather than 6 took the bench's full
 * pack from 2.64 to 2.40 s and 0.37 s less CPU on a machine where a page fault costs ~10 µs
 * (docs/benchmarks.md, "A machine where memory is dear").
 */
export const ARCHIVE_JOBS_IN_FLIGHT_MAX = 4;
/**
 * Jobs in flight for a pack done on its own thread (ARCHIVE_INLINE_BYTES_MAX): one being read
 * while the other is chunked and stored; more only touch more buffer pages.
 */
export const ARCHIVE_INLINE_JOBS_IN_FLIGHT_MAX = 2;
/** Pack objects uploading at once: overlaps upload with chunking without holding many packs in memory. */
export const ARCHIVE_UPLOADS_IN_FLIGHT_MAX = 2;
/**
 * Packs of a directory store being synced into place at once: written as they came, each holds
 * only its descriptor. At ARCHIVE_UPLOADS_IN_FLIGHT_MAX, the pack writer waited for a sync of
 * 10–30 ms before the next pack of an incremental could take a job's chunks (docs/benchmarks.md,
 * "Archive: the incremental's start, branch inc2").
 */
export const ARCHIVE_COMMITS_IN_FLIGHT_MAX = 8;
/**
 * Raw bytes of chunks unpack fetches and holds at once (one window): few large ranged reads,
 * bounded memory. 4 MiB rather than 16: the (ahead + 1) window buffers' pages are touched once
 * each, and where a page fault costs ~10 µs the smaller windows took unpack's CPU from 3.2 to
 * 2.6 s and its time 5–10% lower (docs/benchmarks.md, "A machine where memory is dear").
 */
export const ARCHIVE_UNPACK_WINDOW_BYTES = 4 * 1024 * 1024;
/**
 * Windows unpack fetches ahead of the one it writes into a new volume: the reads and the
 * decoding on the worker threads keep going while the main thread writes (one ahead left the
 * workers idle half the time). Memory: (this + 1) windows.
 */
export const ARCHIVE_UNPACK_WINDOWS_AHEAD = 3;
/**
 * Largest pool block unpack holds back whole in memory while the windows that fill it come (a new
 * volume's partial block, written once complete rather than provisioned and then written again).
 * Larger blocks (up to 1 GiB) are written as the windows come: memory stays at the windows.
 */
export const ARCHIVE_UNPACK_HELD_BLOCK_BYTES_MAX = 16 * 1024 * 1024;
/** Ranged reads of a pack are joined across gaps up to this size: one GET instead of several. */
export const ARCHIVE_READ_GAP_BYTES_MAX = 1024 * 1024;
/**
 * Raw bytes of chunks one joined read holds at most: each read is decoded as one job on one
 * worker thread, so a window is cut into several, which every worker decodes at once (a window
 * read as one range kept one worker busy and the others idle).
 */
export const ARCHIVE_READ_RAW_BYTES_MAX = 4 * 1024 * 1024;
/** A pack object written this many packs ago without an index object is covered by one (bounds what a killed pack leaves for the next run to re-read). */
export const ARCHIVE_PACKS_PER_INDEX_MAX = 64;
/** How often a running command refreshes its store lock. */
export const ARCHIVE_LOCK_REFRESH_MS = 5 * 60 * 1000;
/** A lock not refreshed for this long belongs to a dead process on some host (restic's rule). */
export const ARCHIVE_LOCK_STALE_MS = 30 * 60 * 1000;
/** gc rewrites a pack whose live chunks hold less than this share of its bytes (restic prunes at a similar share). */
export const ARCHIVE_GC_REPACK_LIVE_FRACTION_MAX = 0.5;

// ---- NBD limits (src/nbd) ----

/** Largest READ/WRITE payload: the spec's portable maximum (2^25) that every client honours; qemu uses the same. */
export const NBD_PAYLOAD_BYTES_MAX = 32 * 1024 * 1024;
/**
 * The buffer every socket of a server reads into (NbdServer.#accept): a 1 MiB WRITE arrives in
 * four reads instead of sixteen of Node's default 64 KiB.
 */
export const NBD_SOCKET_READ_BUFFER_BYTES = 256 * 1024;
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
/** Times an export that answers block status a part at a time is asked again for the rest of one request. */
export const NBD_BLOCK_STATUS_ASKS_MAX = 64;
/** Chunks (data and holes) in one structured READ reply; past it the rest of the range goes as one data chunk. */
export const NBD_READ_CHUNKS_MAX = 256;
/**
 * Connections the metrics endpoint (`serve --metrics`) holds at once. Prometheus scrapes a target
 * over one kept-alive connection, so a few scrapers and a curl fit; past it a connection is closed
 * at accept, so whoever can reach the endpoint cannot spend the descriptors the pool and NBD need.
 */
export const METRICS_CONNECTIONS_MAX = 16;
/** Time a metrics client has to send a whole request: one that dawdles holds one of METRICS_CONNECTIONS_MAX. */
export const METRICS_REQUEST_MS_MAX = 10_000;
/** Bytes of a human-readable error message sent to a client; the spec caps strings at 4096. */
export const NBD_ERROR_MESSAGE_BYTES_MAX = 512;
/** Longest PSK username: the bound Node's pskCallback and OpenSSL accept (RFC 4279 allows 2^16, no client uses more). */
export const NBD_TLS_PSK_IDENTITY_BYTES_MAX = 128;
/** Longest pre-shared key: the bound Node and OpenSSL accept; psktool makes 32-byte keys. */
export const NBD_TLS_PSK_KEY_BYTES_MAX = 256;
/** Preferred I/O size: the page size, what the spec suggests by default; thinbd's volumes advertise it, and an export that declares none gets it. */
export const NBD_BLOCK_SIZE_PREFERRED_BYTES_DEFAULT = 4096;

// ---- pdata: metadata blocks, B+trees, space maps, superblock copies (docs/format.md) ----

/**
 * A client's flush syncs on the main thread (BlockFile SyncOptions.inline) when no other request
 * is in flight and at most this much data was written since the last sync: the sync then waits
 * for little more than the disk's cache flush, and the event loop has nothing else to do. Larger
 * syncs, and any sync with requests in flight, go to a worker thread.
 */
export const INLINE_SYNC_DIRTY_BYTES_MAX = 1024 * 1024;

/**
 * Block-sized scratch buffers the pool keeps for copy-on-write and partly written new blocks:
 * 16 MiB holds 256 of 64 KiB (more than the requests in flight on a busy server), none of 1 GiB.
 * Beyond it buffers are allocated per write and left to the garbage collector.
 */
export const COPY_BUFFERS_RETAINED_BYTES_MAX = 16 * 1024 * 1024;

/** Bytes of the header every metadata block starts with (checksum, type, own number, transaction, pool). */
export const METADATA_BLOCK_HEADER_BYTES = 32;

/**
 * On-disk format version written in every superblock copy; open refuses others (THIN_FORMAT).
 * Version 2 reserves the delta log's ring (DELTA_LOG_FIRST_BLOCK_NR ..): in version 1 pools those
 * blocks may hold tree nodes. Version 3 names the metadata mirror in the superblock and holds bad
 * ranges in the pool's payload (docs/format.md "Metadata mirror", "Bad ranges"). Version 4 lets
 * mapping tree leaves be compact (docs/format.md "Compact leaf"). Version 5 lets a delta log record
 * carry a remap's bytes and flag the data sync before it (docs/format.md "Delta log", F-LOG-9): a
 * build that reads up to 4 would take such a record for the end of the log and drop it. Version 6
 * lets the data space map hold dense entries, the counts of 8 blocks in one entry (docs/format.md
 * "Dense counts"): a build that reads up to 5 could not read them.
 */
export const METADATA_FORMAT_VERSION = 6;
/**
 * Versions open reads. Every commit writes METADATA_FORMAT_VERSION, so the first commit of a read-write
 * open upgrades an older pool: a version 2 pool gets its mirror; a version 2 or 3 pool's wide
 * mapping leaves stay readable and are rewritten compact as they change (version 4: compact leaves,
 * docs/format.md "Compact leaf"), which builds that read only up to 3 refuse. A version 2..4 pool's
 * log holds no carried bytes, and its records read as version 5 records without flags; the data
 * space map of a version 2..5 pool gets dense entries where its counts change often (version 6,
 * "Dense counts"). Builds that read only up to 4 refuse version 5, and those up to 5 version 6.
 */
export const METADATA_FORMAT_VERSIONS_READ: readonly number[] = [2, 3, 4, 5, 6];

/**
 * Metadata block numbers of the superblock copies: far apart (256 KiB, 4 MiB, 64 MiB) because
 * latent sector errors cluster. Generation g goes to the copies whose index has g's parity, so
 * each pair spans megabytes and the other pair still holds g-1 whole while g is written.
 */
export const SUPERBLOCK_BLOCK_NRS: readonly number[] = [0, 64, 1024, 16384];

/** Metadata blocks for trees beyond the last superblock copy in the smallest metadata file. */
export const METADATA_TREE_BLOCKS_MIN = 1024;
/** Smallest metadata file: must hold every superblock copy plus room for trees (the file is sparse). */
export const METADATA_BLOCK_COUNT_MIN = SUPERBLOCK_BLOCK_NRS[SUPERBLOCK_BLOCK_NRS.length - 1]! + METADATA_TREE_BLOCKS_MIN;
/** Largest metadata file: 16 GiB as dm-thin; the in-memory reference counts are 4 bytes per block (64 MiB). */
export const METADATA_BLOCK_COUNT_MAX = 4 * 1024 * 1024;
/** Default metadata file: 1 GiB sparse, so a pool almost never has to grow it. */
export const METADATA_BLOCK_COUNT_DEFAULT = 256 * 1024;

/** Largest opaque superblock payload the layer above may store (the rest of the block is pdata's). */
export const SUPERBLOCK_PAYLOAD_BYTES_MAX = 3968;

/** Clean metadata blocks kept in memory (32 MiB); dirty blocks are pinned until written. */
export const METADATA_CACHE_BLOCKS_MAX = 8192;

/**
 * Most metadata blocks a read-only walk reads in one call (1 MiB): a tree's next leaves, when they
 * lie close together. One read per block cost a scattered pool's check more than a tenth of its
 * time in system calls; a larger span would mostly read blocks the walk does not want.
 */
export const METADATA_READ_AHEAD_BLOCKS_MAX = 256;
/** Spans read ahead kept at once: delta walks two trees side by side, each reading its own leaves. */
export const METADATA_READ_AHEAD_SPANS = 2;
/**
 * Most metadata blocks a commit writes in one call (1 MiB) when they are neighbours: a restore
 * commits thousands of blocks in a row, and a write each (a thread-pool round trip each) was much
 * of its time.
 */
export const METADATA_WRITE_RUN_BLOCKS_MAX = 256;

/** Dirty metadata blocks after which the layer above should commit (a soft limit it checks). */
export const METADATA_DIRTY_BLOCKS_SOFT_MAX = 4096;

/**
 * Free metadata blocks kept back from ordinary allocation so that sealing a transaction (which
 * shadows space-map nodes) can always finish: running out of metadata must never corrupt.
 */
export const METADATA_COMMIT_RESERVE_BLOCKS = 256;

/** Deepest B+tree accepted (levels incl. the leaf); 168-way internal nodes make 9 levels hold 2^63 keys. */
export const BTREE_DEPTH_MAX = 12;

/** Rounds of folding reference counts into the metadata space map before sealing gives up (a bug). */
export const SPACE_MAP_FOLD_ROUNDS_MAX = 64;

// The control socket (thinbd commands talking to a running `thinbd serve`).
/** One JSON request line: requests are small (names, sizes); anything bigger is hostile. */
export const CONTROL_REQUEST_BYTES_MAX = 64 * 1024;
/** How long a command waits for a live server to accept before opening the pool files itself. */
export const CONTROL_CONNECT_TIMEOUT_MS = 2000;

// ---- tools: dump, restore, delta (src/tools) ----
/** Text a dump writer buffers before handing it to its stream: amortizes writes, keeps memory flat for any pool. */
export const DUMP_OUTPUT_BUFFER_BYTES = 64 * 1024;
/** Bytes restore reads from its input per step; the events of one step are all that is held. */
export const RESTORE_INPUT_CHUNK_BYTES = 64 * 1024;
/** Bytes restore reads from an input file per read: one thread-pool round trip per 64 KiB was much of a large restore's waiting. */
export const RESTORE_FILE_READ_BYTES = 1024 * 1024;
/**
 * Metadata blocks restore keeps cached: it writes each tree node once and reads back only roots
 * and the leaves that out-of-order mappings go into; the pool's 8192 (32 MiB) was dead weight.
 */
export const RESTORE_METADATA_CACHE_BLOCKS = 1024;
/** Largest dm-thin device id: the kernel's MAX_DEV_ID is 24 bits (drivers/md/dm-thin-metadata.h). */
export const DM_THIN_DEV_ID_MAX = 2 ** 24 - 1;
/** Largest time dm-thin keeps with a mapping: 24 bits of the block_time word (drivers/md/dm-thin-metadata.c, pack_block_time). */
export const DM_THIN_MAPPING_TIME_MAX = 2 ** 24 - 1;
/** Mapping runs of thin-provisioning-tools 1.x `<def>` sections held in memory to expand `<ref>`s (16 bytes each: 256 MiB). */
export const RESTORE_SHARED_RUNS_MAX = 16 * 1024 * 1024;

// ---- pool: thin semantics (src/pool, docs/format.md "Space and the data high-water mark") ----

/**
 * Data blocks by which the high-water mark is raised when a write needs a block above it: each
 * raise costs a commit before the write, so it is large (64 MiB of 64 KiB blocks per commit).
 */
export const DATA_HIGH_WATER_MARK_STEP_BLOCKS = 1024;

/**
 * Most data blocks kept back from new provisioning for copy-on-write of shared blocks (the
 * reserve is 1 % of the pool up to this): enough for a burst of writes to snapshotted blocks
 * while the operator is told to grow the pool, small enough not to waste a large pool.
 */
export const DATA_BLOCKS_RESERVED_MAX = 256;

// ---- failing disks (src/pool/bad-blocks.ts, remap.ts, health.ts) ----

/**
 * Tries of a data read the medium refuses before its sectors are declared unreadable: drives retry
 * internally for seconds already, so a few more tries catch a transient error without stalling a
 * request for long.
 */
export const READ_ATTEMPTS_MAX = 3;
/**
 * Sectors a failing range must span before the narrowing (pool/bad-blocks.ts) halves it; a
 * shorter one is tried sector by sector. A refused 4 KiB write (8 sectors) then costs at most 8
 * more attempts instead of up to 15 (1 + 2 + 4 + 8 when every sector is bad), and on a real
 * failing drive each refused I/O may cost the drive's own retries.
 */
export const NARROW_SECTORS_ONE_BY_ONE_MAX = 8;
/**
 * Bad ranges the check at the end of every commit looks at, in turn (pool/core.ts
 * assertInvariants): checking all of them, each with a lookup in the data space map, made every
 * remap on a dying disk cost more than the one before it. The whole table is still checked at
 * open, at every mode change, growth and full commit's seal, and at close.
 */
export const BAD_RANGES_CHECKED_PER_COMMIT = 32;
/**
 * Blocks a write refused by the medium is tried on before the request fails: a second bad block
 * in a row is already rare; four in a row means the device fails every write.
 */
export const REMAP_TARGETS_MAX = 4;

/**
 * Most data blocks a spare area keeps written ahead for remaps (pool/spare-area.ts; off unless a
 * pool is opened with remapSpareBlocks, `serve --remap-spares`): a refill (one batch of writes,
 * one sync) comes once per half of it used, so a burst of remaps meets one refill in eight;
 * bounded by REMAP_SPARE_BYTES_MAX and by 1/16 of the pool.
 */
export const REMAP_SPARE_BLOCKS_MAX = 16;

/** Most bytes of spares (1 MiB: sixteen 64 KiB blocks); at least one block whatever its size. */
export const REMAP_SPARE_BYTES_MAX = 1024 * 1024;
/**
 * Bad ranges at which a device is reported failing rather than degraded: after its first
 * reallocations a drive is many times likelier to die soon (Pinheiro et al., FAST'07), and this
 * many says the failures are not isolated.
 */
export const HEALTH_BAD_RANGES_FAILING_MIN = 64;
/** A device whose p99 latency exceeds this (over at least HEALTH_LATENCY_SAMPLES_MIN operations) is degraded: a drive retrying reads internally. */
export const HEALTH_LATENCY_P99_MS_DEGRADED = 1000;
export const HEALTH_LATENCY_SAMPLES_MIN = 100;
/**
 * Default scrub rate (thinbd scrub --rate): a background read that leaves most of a disk to the
 * clients. 64 MB/s in the option's unit (10^6 bytes), as the README and `thinbd help scrub` state it.
 */
export const SCRUB_RATE_BYTES_PER_SECOND_DEFAULT = 64 * 1000 * 1000;
/** Bytes a scrub reads at a time: large reads, small stalls between them. */
export const SCRUB_CHUNK_BYTES = 1024 * 1024;

// ---- pool: space policy (src/pool/space-policy.ts, docs/format.md "Pool superblock payload") ----

/**
 * Default data low-water mark: 10 % of the data space. Below it a file-backed pool grows by
 * itself, and when it cannot grow the operator is told once. dm-thin leaves the mark to its user
 * (the hosts that tuned it for container images set 32 MiB on a 2 GiB pool, 1.6 %) and LVM's
 * usual autoextend threshold is 70-80 % full; 10 % keeps minutes of writes in hand on a busy pool
 * of any size, which is what the operator or a script needs to act, and stays above the 1 %
 * copy-on-write reserve (F-POOL-42) so the warning comes before any write can fail.
 */
export const DATA_LOW_WATER_PERCENT_DEFAULT = 10;
/**
 * Default metadata low-water mark: 5 % of the metadata, at least METADATA_LOW_WATER_BLOCKS_MIN.
 * Below it metadata grows by itself, and new volumes and snapshots (which can multiply metadata)
 * are refused while it cannot, so writes keep their room.
 */
export const METADATA_LOW_WATER_PERCENT_DEFAULT = 5;
/** 8 MiB: twice METADATA_RECOVERY_RESERVE_BLOCKS, so the mark is met well before writes are refused. */
export const METADATA_LOW_WATER_BLOCKS_MIN = 2048;
/**
 * Free metadata blocks (4 MiB, dm-thin's metadata low-water threshold) that only changes which
 * free space may use: remove, resize down, discard. A write that needs metadata fails with ENOSPC
 * before it would take them, so what frees space always has room to run (F-POOL-47).
 */
export const METADATA_RECOVERY_RESERVE_BLOCKS = 1024;
/** Default growth step of the data file: 20 % of its size (LVM's thin_pool_autoextend_percent default). */
export const DATA_GROW_STEP_PERCENT_DEFAULT = 20;
/** Metadata grows by a quarter of its size, at least METADATA_GROW_STEP_BLOCKS_MIN (16 MiB). */
export const METADATA_GROW_STEP_PERCENT = 25;
export const METADATA_GROW_STEP_BLOCKS_MIN = 4096;
/**
 * The host file system's space a pool leaves to others when it grows by itself (data-max and
 * metadata-max "auto"): 5 % of that file system (the share ext4 keeps for root, on top of that
 * reserve, since the free space counted is what unprivileged users may take), at least 256 MiB and
 * at most 16 GiB.
 */
export const HOST_FREE_MARGIN_PERCENT = 5;
export const HOST_FREE_MARGIN_BYTES_MIN = 256 * 1024 ** 2;
export const HOST_FREE_MARGIN_BYTES_MAX = 16 * 1024 ** 3;
/** `--when-full queue` without seconds waits this long: dm-thin's no_space_timeout default (60 s). */
export const WHEN_FULL_QUEUE_SECONDS_DEFAULT = 60;
/** Longest queue wait: an hour; a write held longer is a client that has long given up. */
export const WHEN_FULL_QUEUE_SECONDS_MAX = 3600;
/**
 * Bytes given back to the host by one fallocate(PUNCH_HOLE) call: the file system frees them in
 * one go, and the blocks are held from the allocator until the call returns, so the hold is short.
 */
export const PUNCH_BYTES_PER_CALL_MAX = 256 * 1024 ** 2;

// thinbd serve.
/** Default NBD address: the IANA port, loopback only (exposing disks is the operator's choice). */
export const SERVE_HOST_DEFAULT = '127.0.0.1';
export const SERVE_PORT_DEFAULT = 10809;
/** How long a stopping server waits for clients' in-flight requests before cutting them off. */
export const SERVE_CLOSE_TIMEOUT_MS = 10_000;
/** How often the server looks at the pool's mode to log a change of state. */
export const SERVE_STATE_CHECK_MS = 5_000;

/**
 * How often an open pool commits when something changed and no client asked (dm-thin's
 * COMMIT_PERIOD is one second): bounds what a client that never flushes can lose.
 */
export const COMMIT_INTERVAL_MS_DEFAULT = 1000;
/**
 * Commit timer ticks after which logged changes are rolled up at the first tick that finds no
 * request in flight, even if requests keep arriving: a guest doing a little I/O every second
 * would otherwise never have a quiet interval, and blocks freed by logged discards would stay
 * pending until the ring filled.
 */
export const LOG_ROLLUP_TICKS_MAX = 10;

// ---- Delta log (src/journal, docs/format.md "Delta log") ----

/**
 * The delta log's ring: metadata blocks [DELTA_LOG_FIRST_BLOCK_NR, + DELTA_LOG_BLOCK_COUNT),
 * reserved at format time between superblock copies 0 and 1. 63 records between rollups make a
 * rollup's ~10 blocks cost about 0.16 blocks per flush (the target is 1.25 blocks per flush in
 * all), and replaying 63 blocks after a crash takes a few milliseconds.
 */
export const DELTA_LOG_FIRST_BLOCK_NR = 1;
export const DELTA_LOG_BLOCK_COUNT = 63;

/**
 * Log blocks one flush may write. A flush whose changes need more (thousands of scattered
 * ranges) rolls up instead: a full commit is then no more blocks than the record would be.
 */
export const DELTA_LOG_BLOCKS_PER_FLUSH_MAX = 8;

// ---- image import (src/image, docs/image.md) ----

/** Symlinks followed while resolving one archive path's directories: Linux's MAXSYMLINKS. */
export const IMAGE_SYMLINK_HOPS_MAX = 40;
/**
 * Bytes gathered before a write to the volume: whole 64 KiB pool blocks, few calls, bounded memory.
 * 4 MiB rather than 1: each write is a message between the import's threads and a pool write
 * (an allocation and a mapping per run), and a quarter as many cost 0.1-0.2 CPU seconds less on a
 * 638 MiB tar (docs/benchmarks.md "Image import: larger writes").
 */
export const IMAGE_WRITE_BUFFER_BYTES = 4 * 1024 * 1024;
/** Volume writes in flight during an import: with the buffer size, bounds the data held (16 MiB). */
export const IMAGE_WRITES_IN_FLIGHT_MAX = 4;
/** Largest pax or GNU long-name header accepted: room for many 64 KiB attributes, a bound on memory. */
export const IMAGE_TAR_HEADER_BYTES_MAX = 8 * 1024 * 1024;
/** Most segments in one sparse file's map. */
export const IMAGE_SPARSE_SEGMENTS_MAX = 1024 * 1024;
/** Bytes per read of a local image file (two such buffers alternate: one parsed while the other fills). */
export const IMAGE_READ_CHUNK_BYTES = 1024 * 1024;
/** Largest manifest, index or config JSON read from an image archive (they are kilobytes). */
export const IMAGE_JSON_BYTES_MAX = 4 * 1024 * 1024;
/** Bytes read after a tar's end-of-archive blocks (record padding) before the rest is left unread. */
export const IMAGE_TRAILER_BYTES_MAX = 16 * 1024 * 1024;
