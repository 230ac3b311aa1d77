// The pool's value codecs read u64 fields as exact numbers: up to 2^53 − 1, and a value past that
// is refused as corrupt, naming it.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { isThinError } from '../../src/errors.ts';
import { getU64 } from '../../src/pool/codecs.ts';

test('a u64 field reads exactly up to 2^53 - 1, and a larger one is refused naming its value', () => {
  const view = new DataView(new ArrayBuffer(8));
  for (const value of [0n, 1n, 0xffff_ffffn, 0x1_0000_0000n, BigInt(Number.MAX_SAFE_INTEGER)]) {
    view.setBigUint64(0, value, true);
    assert.equal(getU64(view, 0, 'extent data block'), Number(value));
  }
  for (const value of [BigInt(Number.MAX_SAFE_INTEGER) + 1n, 0xffff_ffff_ffff_ffffn]) {
    view.setBigUint64(0, value, true);
    assert.throws(
      () => getU64(view, 0, 'extent data block'),
      (error) => isThinError(error, 'THIN_CORRUPT_NODE') && error.message.includes(`extent data block is ${value},`),
    );
  }
});
