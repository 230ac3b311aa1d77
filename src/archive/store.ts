// The object store an archive lives in: a flat namespace of immutable objects under keys such as
// `packs/3f/3fa2…` (docs/format.md, "Archive store"). Two implementations: a directory
// (directory-store.ts) and an S3 bucket prefix (s3-store.ts), held to one contract by one
// conformance suite (test/archive/store.conformance.ts):
//
// - put(key, data) makes the object visible whole or not at all, replacing any object there
//   (the directory store writes a temporary file, syncs it and renames it; S3 shows an object
//   only once its PUT or multipart upload completes).
// - putNew(key, data) is put that refuses (returns false) when the key exists: how a stream name
//   is claimed. Atomic in a directory (link(2)); on S3 a conditional PUT (If-None-Match: *),
//   which AWS S3 honours; a server that ignores the condition lets a later writer win (see
//   docs/format.md F-AR-STREAM-5).
// - get / getRange read an object or a byte range of it; a missing key is THIN_NOT_FOUND.
//   getRange may read into a buffer the caller gives (the directory store does; S3 answers in a
//   buffer of its own): unpack reads gigabytes of packs through a few reused buffers, where fresh
//   ones cost a page fault per 4 KiB (docs/benchmarks.md, "Archive").
// - list(prefix) yields every key under a prefix that ends in '/', with sizes, in key order; an
//   object deleted while the listing runs (a lock released, a stream removed) may be left out.
// - delete(key) removes an object; a missing one is not an error.
// - openWriter(key), where a store has it, writes an object in parts as they come and then
//   commits it as put does: how pack objects reach a directory without being assembled in memory
//   (on a virtual machine, first-touched memory cost far more than writing the same bytes to a
//   file: docs/benchmarks.md, "Archive"). S3 uploads a pack whole, from memory.
// Keys are relative paths of [A-Za-z0-9._-] segments joined by '/'. This module is the contract
// only, which the implementations import; open-store.ts picks one for a store's name.
import { ThinError } from '../errors.ts';

export interface StoredObject {
  key: string;
  sizeBytes: number;
}

/** An object being written in parts (ObjectStore.openWriter). */
export interface ObjectWriter {
  /** Appends bytes (in the order of the calls, which may overlap); they are copied (or written out) when it resolves. */
  write(bytes: Uint8Array): Promise<void>;
  /** write() of the parts end to end, in one system call where it can: each is written out (not copied) when it resolves. */
  writeParts(parts: readonly Uint8Array[]): Promise<void>;
  /** Makes the object visible, whole, as put does: durable when it resolves (after every write has). */
  commit(): Promise<void>;
  /** Drops what was written; the key is left as it was. */
  abort(): Promise<void>;
}

export interface ObjectStore {
  /** Where the store is, as the user named it (a directory path or an s3:// URL). */
  readonly url: string;
  get(key: string): Promise<Uint8Array>;
  /**
   * Bytes [beginBytes, endBytes) of an object; THIN_NOT_FOUND if absent, fewer bytes if it is
   * shorter. With `into` (at least endBytes - beginBytes long) the result may be a view of it.
   */
  getRange(key: string, beginBytes: number, endBytes: number, into?: Uint8Array): Promise<Uint8Array>;
  put(key: string, data: Uint8Array): Promise<void>;
  /** Like put, but false (and nothing written) when the key already exists. */
  putNew(key: string, data: Uint8Array): Promise<boolean>;
  list(prefix: string): AsyncIterable<StoredObject>;
  delete(key: string): Promise<void>;
  /** Where the store can take an object in parts: a writer for `key` (nothing visible until commit). */
  openWriter?(key: string): Promise<ObjectWriter>;
  /**
   * Where the store can say more than a listing of its keys (a path through a file, a directory
   * of other files): refuses a place `archive init` must not make a store in, naming why.
   */
  checkNewStorePlace?(): Promise<void>;
  /**
   * Where a missing object may mean a missing place (an S3 bucket): throws naming the place when
   * it cannot be reached, so that a store found missing is not told to be made where it cannot be.
   */
  checkPlace?(): Promise<void>;
  /**
   * Where a store keeps what killed writers left (a directory's temporary files, S3's multipart
   * uploads never completed): removes it, of the keys `owned` says are the archive's, and returns
   * how many writes it dropped. Only while no writer runs (gc holds the exclusive store lock).
   */
  removeUnfinished?(owned: (key: string) => boolean): Promise<number>;
  close(): Promise<void>;
}

const KEY_PATTERN = /^[A-Za-z0-9._+-]+(\/[A-Za-z0-9._+-]+)*$/;

/** Keys are built by the archive code, never taken from input: a bad one is a bug. */
export function checkKey(key: string): void {
  if (!KEY_PATTERN.test(key) || key.split('/').some((part) => part === '.' || part === '..')) {
    throw new ThinError('THIN_INVALID', `Invalid object key '${key}'`);
  }
}

export function checkPrefix(prefix: string): void {
  if (prefix !== '' && (!prefix.endsWith('/') || !KEY_PATTERN.test(prefix.slice(0, -1)))) {
    throw new ThinError('THIN_INVALID', `Invalid key prefix '${prefix}'`);
  }
}
