// The data high-water mark's three values only move up and stay ordered: durable ≤ sealed ≤
// target ≤ block count (pool/high-water-mark.ts).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { HighWaterMark } from '../../src/pool/high-water-mark.ts';

test('the target is raised ahead, sealed by a commit, and durable when that commit ends', () => {
  const mark = new HighWaterMark(0, 4096);
  assert.equal(mark.raisePending, false);
  assert.equal(mark.raiseTarget(1024), 0);
  assert.deepEqual([mark.durable, mark.sealed, mark.target, mark.raisePending], [0, 0, 1024, true]);
  const sealed = mark.seal();
  assert.deepEqual([sealed, mark.raisePending], [1024, false]);
  mark.raiseTarget(2048); // a later raise while the first commit is still being written
  mark.committed(sealed);
  assert.deepEqual([mark.durable, mark.sealed, mark.target], [1024, 1024, 2048]);
  mark.assertInvariants();
});

test('the target never passes the data block count nor moves down', () => {
  const mark = new HighWaterMark(100, 1000);
  mark.raiseTarget(5000);
  assert.equal(mark.target, 1000);
  mark.raiseTarget(10);
  assert.equal(mark.target, 1000);
});

test('a commit that claims a mark never sealed is a bug, caught at once', () => {
  const mark = new HighWaterMark(0, 1000);
  mark.raiseTarget(500);
  assert.throws(() => mark.committed(500), /internal error.*never sealed/);
});
