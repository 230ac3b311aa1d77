import { test } from 'node:test';
import assert from 'node:assert/strict';
import { formatSize, parseSize, SizeSyntaxError } from '../../src/cli/sizes.ts';

test('sizes take bytes or binary units', () => {
  assert.equal(parseSize('512'), 512);
  assert.equal(parseSize('64k'), 64 * 1024);
  assert.equal(parseSize('64K'), 64 * 1024);
  assert.equal(parseSize('10M'), 10 * 1024 ** 2);
  assert.equal(parseSize('4G'), 4 * 1024 ** 3);
  assert.equal(parseSize('1T'), 1024 ** 4);
  assert.equal(parseSize('2GiB'), 2 * 1024 ** 3);
  assert.equal(parseSize('2Gi'), 2 * 1024 ** 3);
  assert.equal(parseSize('512Mi'), 512 * 1024 ** 2);
  assert.equal(parseSize('1.5k'), 1536);
});

test('a bad size names what is wrong', () => {
  assert.throws(() => parseSize('12Q'), SizeSyntaxError);
  assert.throws(() => parseSize('1i'), /unknown unit 'i'/);
  assert.throws(() => parseSize('1Qi'), /unknown unit 'Qi'/);
  assert.throws(() => parseSize(''), /not a number/);
  assert.throws(() => parseSize('-5'), /not a number/);
  assert.throws(() => parseSize('1.3'), /whole number of bytes/);
  assert.throws(() => parseSize('99999999P'), /too large/);
});

test('sizes print with the largest unit that keeps them short', () => {
  assert.equal(formatSize(0), '0B');
  assert.equal(formatSize(1536), '1.5K');
  assert.equal(formatSize(64 * 1024), '64K');
  assert.equal(formatSize(16 * 1024 ** 3), '16G');
});
