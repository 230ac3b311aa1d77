// The hashes ext4 stores: the directory index hash (half-MD4, unsigned-char variant, as the
// superblock's EXT2_FLAGS_UNSIGNED_HASH says) and the extended-attribute entry and block hashes.
// Algorithms as e2fsprogs' lib/ext2fs/dirhash.c and ext_attr.c describe them.

const K2 = 0o13240474631;
const K3 = 0o15666365641;

function rotl(value: number, shift: number): number {
  return ((value << shift) | (value >>> (32 - shift))) >>> 0;
}

// MD4's selection, majority and parity functions.
function F(x: number, y: number, z: number): number {
  return z ^ (x & (y ^ z));
}

function G(x: number, y: number, z: number): number {
  return ((x & y) + ((x ^ y) & z)) >>> 0;
}

function H(x: number, y: number, z: number): number {
  return x ^ y ^ z;
}

/** The cut-down MD4 transform over 8 input words; updates buf in place. */
function halfMd4Transform(buf: Uint32Array, input: Uint32Array): void {
  let a = buf[0]!;
  let b = buf[1]!;
  let c = buf[2]!;
  let d = buf[3]!;
  const i = input;
  // Round 1
  a = rotl((a + F(b, c, d) + i[0]!) >>> 0, 3);
  d = rotl((d + F(a, b, c) + i[1]!) >>> 0, 7);
  c = rotl((c + F(d, a, b) + i[2]!) >>> 0, 11);
  b = rotl((b + F(c, d, a) + i[3]!) >>> 0, 19);
  a = rotl((a + F(b, c, d) + i[4]!) >>> 0, 3);
  d = rotl((d + F(a, b, c) + i[5]!) >>> 0, 7);
  c = rotl((c + F(d, a, b) + i[6]!) >>> 0, 11);
  b = rotl((b + F(c, d, a) + i[7]!) >>> 0, 19);
  // Round 2
  a = rotl((a + G(b, c, d) + i[1]! + K2) >>> 0, 3);
  d = rotl((d + G(a, b, c) + i[3]! + K2) >>> 0, 5);
  c = rotl((c + G(d, a, b) + i[5]! + K2) >>> 0, 9);
  b = rotl((b + G(c, d, a) + i[7]! + K2) >>> 0, 13);
  a = rotl((a + G(b, c, d) + i[0]! + K2) >>> 0, 3);
  d = rotl((d + G(a, b, c) + i[2]! + K2) >>> 0, 5);
  c = rotl((c + G(d, a, b) + i[4]! + K2) >>> 0, 9);
  b = rotl((b + G(c, d, a) + i[6]! + K2) >>> 0, 13);
  // Round 3
  a = rotl((a + H(b, c, d) + i[3]! + K3) >>> 0, 3);
  d = rotl((d + H(a, b, c) + i[7]! + K3) >>> 0, 9);
  c = rotl((c + H(d, a, b) + i[2]! + K3) >>> 0, 11);
  b = rotl((b + H(c, d, a) + i[6]! + K3) >>> 0, 15);
  a = rotl((a + H(b, c, d) + i[1]! + K3) >>> 0, 3);
  d = rotl((d + H(a, b, c) + i[5]! + K3) >>> 0, 9);
  c = rotl((c + H(d, a, b) + i[0]! + K3) >>> 0, 11);
  b = rotl((b + H(c, d, a) + i[4]! + K3) >>> 0, 15);
  buf[0] = (buf[0]! + a) >>> 0;
  buf[1] = (buf[1]! + b) >>> 0;
  buf[2] = (buf[2]! + c) >>> 0;
  buf[3] = (buf[3]! + d) >>> 0;
}

/** e2fsprogs' str2hashbuf, unsigned variant: packs up to num*4 bytes of msg (a byte string) into words. */
function stringToHashWords(msg: string, begin: number, lengthBytes: number, out: Uint32Array, num: number): void {
  // Words are kept as int32 (| 0), not uint32 (>>> 0): the same 32 bits once stored in `out`, and
  // a uint32 of 2^31 or more is not an int32, which sent V8's optimized code back to the
  // interpreter ('lost precision') in every import.
  let pad = lengthBytes | (lengthBytes << 8);
  pad = pad | (pad << 16);
  let value = pad;
  const take = Math.min(lengthBytes, num * 4);
  let word = 0;
  for (let index = 0; index < take; index++) {
    value = (msg.charCodeAt(begin + index) + (value << 8)) | 0;
    if (index % 4 === 3) {
      out[word++] = value;
      value = pad;
    }
  }
  if (word < num) out[word++] = value;
  while (word < num) out[word++] = pad;
}

const hashBuf = new Uint32Array(4);
const hashInput = new Uint32Array(8);

/**
 * The htree hash of a name (a byte string; half-MD4 with the unsigned-char convention) under the superblock's
 * hash seed. The low bit is always clear: the index uses it to mark a hash continued in the next
 * leaf.
 */
export function dirNameHash(name: string, seed: Uint32Array): number {
  if (seed[0] === 0 && seed[1] === 0 && seed[2] === 0 && seed[3] === 0) {
    hashBuf[0] = 0x67452301;
    hashBuf[1] = 0xefcdab89;
    hashBuf[2] = 0x98badcfe;
    hashBuf[3] = 0x10325476;
  } else {
    hashBuf.set(seed);
  }
  let begin = 0;
  let left = name.length;
  while (left > 0) {
    stringToHashWords(name, begin, left, hashInput, 8);
    halfMd4Transform(hashBuf, hashInput);
    left -= 32;
    begin += 32;
  }
  return (hashBuf[1]! & ~1) >>> 0;
}

/** ext4_xattr_hash_entry: the name bytes (unsigned), then the value as little-endian words. */
export function xattrEntryHash(name: Uint8Array, value: Uint8Array): number {
  let hash = 0;
  for (const byte of name) hash = ((hash << 5) ^ (hash >>> 27) ^ byte) >>> 0;
  const words = Math.ceil(value.length / 4);
  for (let word = 0; word < words; word++) {
    let le = 0;
    for (let byte = 3; byte >= 0; byte--) le = (le * 256 + (value[word * 4 + byte] ?? 0)) >>> 0;
    hash = ((hash << 16) ^ (hash >>> 16) ^ le) >>> 0;
  }
  return hash;
}

/** ext4_xattr_rehash: the block hash over its entries' hashes in order. */
export function xattrBlockHash(entryHashes: readonly number[]): number {
  let hash = 0;
  for (const entryHash of entryHashes) {
    if (entryHash === 0) return 0;
    hash = ((hash << 16) ^ (hash >>> 16) ^ entryHash) >>> 0;
  }
  return hash;
}
