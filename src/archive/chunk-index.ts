// The in-memory index of every chunk in a store: SHA-256 → (pack, offset, stored size, raw size,
// flags, place in its frame). It must fit in RAM for terabytes of stored data, so it is one
// open-addressing hash table in a Uint32Array rather than a Map of objects (a Map entry with a
// string key and an object value costs ~200 bytes): each slot is 13 words, 52 bytes — the whole
// hash (so a dedup decision never rests on a partial match), a pack number (into a table of pack
// ids), the offset and stored size of the chunk's piece (its frame, or its raw bytes), the raw
// size and flags, and where the chunk starts in its frame's decompressed bytes. The table doubles
// when it is 3/4 full, so a chunk costs 52 bytes / load: 69 to 139 bytes, ~92 on average. At the
// default 64 KiB average chunk that is about 1.55 GB of RAM per TiB of distinct volume data
// (16.8 million chunks) (docs/format.md F-AR-IDX-2).
//
// SHA-256 output is uniform, so the hash's first word picks the slot; linear probing.
import { assert } from '../errors.ts';
import { ENTRY_FLAGS_AT, ENTRY_FRAME_OFFSET_AT, ENTRY_OFFSET_AT, ENTRY_RAW_AT, ENTRY_STORED_AT, ENTRY_V2_BYTES, HASH_BYTES, type ChunkEntry, type PackEntryBytes } from './format.ts';

const SLOT_WORDS = 13;
export const CHUNK_INDEX_SLOT_BYTES = SLOT_WORDS * 4;
const INITIAL_SLOTS = 1024;

export interface ChunkLocation {
  packId: string;
  offsetBytes: number;
  storedBytes: number;
  rawBytes: number;
  flags: number;
  /** Where the chunk starts in its frame's decompressed bytes (0 when it is alone in its piece). */
  frameOffsetBytes: number;
}

export class ChunkIndex {
  #slots: Uint32Array;
  #mask: number;
  #count = 0;
  readonly #packIds: string[] = [];
  readonly #packNumbers = new Map<string, number>();
  readonly #probe = new Uint32Array(8);
  readonly #probeBytes = new Uint8Array(this.#probe.buffer);

  constructor(expectedChunks = 0) {
    let size = INITIAL_SLOTS;
    while (size * 0.75 < expectedChunks) size *= 2;
    this.#slots = new Uint32Array(size * SLOT_WORDS);
    this.#mask = size - 1;
  }

  get size(): number {
    return this.#count;
  }

  /** Bytes of memory the table holds. */
  get memoryBytes(): number {
    return this.#slots.byteLength;
  }

  packNumber(packId: string): number {
    let number = this.#packNumbers.get(packId);
    if (number === undefined) {
      number = this.#packIds.length;
      this.#packIds.push(packId);
      this.#packNumbers.set(packId, number);
    }
    return number;
  }

  /** Adds a chunk unless the index has it already (then the first location stays); true when added. */
  add(packId: string, entry: ChunkEntry): boolean {
    assert(entry.hash.length === HASH_BYTES, 'a chunk hash of the wrong size');
    if ((this.#count + 1) * 4 > (this.#mask + 1) * 3) this.#grow();
    const slot = this.#find(entry.hash);
    if (this.#occupied(slot)) return false;
    this.#write(slot, this.#probe, 0, this.packNumber(packId), entry);
    this.#count += 1;
    return true;
  }

  /**
   * add() for each entry of a pack where it lies (an index object's bytes, format.ts scanIndex):
   * no object per entry, as a store's index load reads millions. Returns the number added.
   */
  addEntries(run: PackEntryBytes): number {
    // The hashes are compared as words where they lie (entries begin at multiples of 4 bytes).
    const bytes = run.bytes.byteOffset % 4 === 0 ? run.bytes : run.bytes.slice();
    const words = new Uint32Array(bytes.buffer, bytes.byteOffset, bytes.byteLength >>> 2);
    const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    const packNumber = this.packNumber(run.packId);
    let added = 0;
    for (let index = 0; index < run.count; index += 1) {
      const entryAt = run.at + index * run.entryBytes;
      assert(entryAt % 4 === 0, 'an entry off a word boundary');
      if ((this.#count + 1) * 4 > (this.#mask + 1) * 3) this.#grow();
      const slot = this.#findWords(words, entryAt >>> 2);
      if (this.#occupied(slot)) continue;
      this.#write(slot, words, entryAt >>> 2, packNumber, {
        offsetBytes: view.getUint32(entryAt + ENTRY_OFFSET_AT, true),
        storedBytes: view.getUint32(entryAt + ENTRY_STORED_AT, true),
        rawBytes: view.getUint32(entryAt + ENTRY_RAW_AT, true),
        flags: view.getUint32(entryAt + ENTRY_FLAGS_AT, true),
        frameOffsetBytes: run.entryBytes === ENTRY_V2_BYTES ? view.getUint32(entryAt + ENTRY_FRAME_OFFSET_AT, true) : 0,
      });
      this.#count += 1;
      added += 1;
    }
    return added;
  }

  has(hash: Uint8Array): boolean {
    return this.#occupied(this.#find(hash));
  }

  get(hash: Uint8Array): ChunkLocation | undefined {
    const slot = this.#find(hash);
    if (!this.#occupied(slot)) return undefined;
    const at = slot * SLOT_WORDS;
    const slots = this.#slots;
    return {
      packId: this.#packIds[slots[at + 8]! - 1]!,
      offsetBytes: slots[at + 9]!,
      storedBytes: slots[at + 10]!,
      rawBytes: slots[at + 11]! & 0x00ffffff,
      flags: slots[at + 11]! >>> 24,
      frameOffsetBytes: slots[at + 12]!,
    };
  }

  /** Every chunk, with its location (order unspecified). */
  *entries(): Generator<{ hash: Uint8Array; location: ChunkLocation }> {
    const slots = this.#slots;
    for (let slot = 0; slot <= this.#mask; slot += 1) {
      if (!this.#occupied(slot)) continue;
      const at = slot * SLOT_WORDS;
      const hash = new Uint8Array(slots.buffer.slice(at * 4, at * 4 + HASH_BYTES));
      yield { hash, location: this.get(hash)! };
    }
  }

  // A slot is free when its pack number word is 0 (pack numbers are stored plus one).
  #occupied(slot: number): boolean {
    return this.#slots[slot * SLOT_WORDS + 8] !== 0;
  }

  #find(hash: Uint8Array): number {
    this.#probeBytes.set(hash);
    return this.#findWords(this.#probe, 0);
  }

  /** The slot of the hash in words [base, base + 8), or the free slot where it would go. */
  #findWords(words: Uint32Array, base: number): number {
    const slots = this.#slots;
    let slot = words[base]! & this.#mask;
    for (;;) {
      const at = slot * SLOT_WORDS;
      if (slots[at + 8] === 0) return slot;
      if (
        slots[at] === words[base] &&
        slots[at + 1] === words[base + 1] &&
        slots[at + 2] === words[base + 2] &&
        slots[at + 3] === words[base + 3] &&
        slots[at + 4] === words[base + 4] &&
        slots[at + 5] === words[base + 5] &&
        slots[at + 6] === words[base + 6] &&
        slots[at + 7] === words[base + 7]
      ) {
        return slot;
      }
      slot = (slot + 1) & this.#mask;
    }
  }

  /** Fills `slot` with the hash in words [base, base + 8) and the entry's location. */
  #write(slot: number, words: Uint32Array, base: number, packNumber: number, entry: { offsetBytes: number; storedBytes: number; rawBytes: number; flags: number; frameOffsetBytes: number }): void {
    // Raw sizes fit in 24 bits (ARCHIVE_CHUNK_RAW_BYTES_MAX is 4 MiB) and flags in 8.
    assert(entry.rawBytes < 1 << 24 && entry.flags < 256, 'a chunk entry that does not fit a slot');
    const at = slot * SLOT_WORDS;
    const slots = this.#slots;
    for (let word = 0; word < 8; word += 1) slots[at + word] = words[base + word]!;
    slots[at + 8] = packNumber + 1;
    slots[at + 9] = entry.offsetBytes;
    slots[at + 10] = entry.storedBytes;
    slots[at + 11] = (entry.rawBytes | (entry.flags << 24)) >>> 0;
    slots[at + 12] = entry.frameOffsetBytes;
  }

  #grow(): void {
    const old = this.#slots;
    const oldSlots = this.#mask + 1;
    this.#slots = new Uint32Array(oldSlots * 2 * SLOT_WORDS);
    this.#mask = oldSlots * 2 - 1;
    for (let slot = 0; slot < oldSlots; slot += 1) {
      const at = slot * SLOT_WORDS;
      if (old[at + 8] === 0) continue;
      const target = this.#findWords(old, at);
      this.#slots.set(old.subarray(at, at + SLOT_WORDS), target * SLOT_WORDS);
    }
  }
}
