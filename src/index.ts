// thinbd's library API for Node users: pools and volumes, the NBD server and the daemon that
// ties them together, and the tools (check, list, import/export, dump/restore, delta, repair).
export { Pool, Volume, METADATA_FILE_NAME, DATA_FILE_NAME } from './pool/pool.ts';
export type {
  PoolCreateOptions,
  PoolOpenOptions,
  CreateVolumeOptions,
  SnapshotOptions,
  PoolFiles,
  PoolStatus,
  PoolMode,
  VolumeInfo,
  VolumeUsage,
  PoolCounters,
  CommitTimer,
} from './pool/pool.ts';
export type { BlockFile } from './io/block-file.ts';
export { FileBlockFile } from './io/file.ts';
export { MemoryBlockFile } from './io/memory.ts';
export { CountingBlockFile } from './io/counting.ts';
export { ThinError, isThinError, type ThinErrorCode } from './errors.ts';

export { NbdServer, type NbdServerOptions, type NbdListenAddress } from './nbd/server.ts';
export { MapExportRegistry, type NbdExport, type NbdExportRegistry, type NbdExtent } from './nbd/backend.ts';
export { PoolServer, type ServeOptions } from './daemon/serve.ts';
export { VolumeExport } from './daemon/volume-export.ts';

export { checkPool, type CheckReport, type CheckProblem } from './tools/check.ts';
export { listVolumes, type VolumeListing } from './tools/list.ts';
export { importRaw, exportRaw } from './tools/transfer.ts';
export { dumpPool } from './tools/dump/pool-dump.ts';
export { XmlDumpWriter } from './tools/dump/xml.ts';
export { JsonDumpWriter } from './tools/dump/json.ts';
export { HumanDumpWriter } from './tools/dump/human.ts';
export { restorePool } from './tools/restore.ts';
export { writePoolDelta } from './tools/delta.ts';
export { repairPool } from './tools/repair.ts';
export { packMetadata, unpackMetadata } from './tools/pack.ts';
export { estimateMetadataSize } from './tools/metadata-size.ts';

export {
  initArchive,
  packVolume,
  unpackVolume,
  listArchive,
  verifyArchive,
  removeArchiveStream,
  gcArchive,
  type PackResult,
  type PackCommandOptions,
  type UnpackCommandOptions,
  type StoreOptions,
} from './archive/commands.ts';
export type { UnpackResult } from './archive/unpack.ts';
export type { StoreListing, StreamListing, VerifyReport, GcReport } from './archive/maintenance.ts';
export { S3Bucket, parseS3Url, isS3Url, type S3Location, type S3ConnectOptions } from './io/s3.ts';

export { importImage, measureImage, IMAGE_LABELS, type ImageImportOptions, type ImageImportResult, type ImportedLayer, type ImageFormat } from './image/import.ts';
export { listImages, type ImageListing } from './image/catalog.ts';
export { imageStats, type ImageStats, type ImageStatsEntry, type ImageStatsOptions } from './image/stats.ts';
export { sourceOpeners } from './image/remote.ts';
