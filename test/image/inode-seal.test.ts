// The parsing thread leaves the inode table's checksums to the main thread (ext4/inodes.ts
// sealInodeTable, parse-thread.ts): the file system it writes that way, sealed block run by block
// run as the main thread gets them, must be byte for byte the one written with the checksums inline.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { applyTar } from '../../src/image/apply.ts';
import { BufferPool, WriteQueue, type BlockTarget } from '../../src/image/block-target.ts';
import { ByteInput } from '../../src/image/byte-input.ts';
import { DataStream } from '../../src/image/data-stream.ts';
import { BLOCK_SIZE_BYTES, INODES_PER_BLOCK } from '../../src/image/ext4/format.ts';
import { sealInodeTable } from '../../src/image/ext4/inodes.ts';
import { writeFilesystem, type UnsealedInodeTable } from '../../src/image/ext4/writer.ts';
import { TarReader } from '../../src/image/tar.ts';
import { FsTree } from '../../src/image/tree.ts';
import { tarArchive, type TarSpec } from './tar-writer.ts';

const NOW = 1_765_000_000;

function sampleSpecs(): TarSpec[] {
  const specs: TarSpec[] = [{ path: 'etc/', type: 'dir' }, { path: 'etc/hostname', data: 'box\n' }];
  // A directory of 3,000 names (an htree) and enough inodes for several 64 KiB writes of the table.
  for (let index = 0; index < 3000; index++) specs.push({ path: `many/${String(index).padStart(5, '0')}-${'x'.repeat(20)}`, data: `${index}` });
  specs.push(
    { path: 'links/short', type: 'symlink', linkPath: '../etc/hostname' },
    { path: 'links/long', type: 'symlink', linkPath: `${'l'.repeat(200)}/target` },
    { path: 'links/hard', type: 'hardlink', linkPath: 'etc/hostname' },
    { path: 'dev/null', type: 'char', major: 1, minor: 3 },
    { path: 'dev/fifo', type: 'fifo' },
    { path: 'attrs/small', data: 'a', pax: { 'SCHILY.xattr.user.small': 'v' } },
    { path: 'attrs/large', data: 'b', pax: { 'SCHILY.xattr.user.large': 'v'.repeat(600) } },
  );
  return specs;
}

/** The blocks written, by number, the inode table sealed per write when `unsealed`. */
async function writeImage(unsealed: boolean): Promise<Map<number, Uint8Array>> {
  const blocks = new Map<number, Uint8Array>();
  let table: UnsealedInodeTable | undefined;
  let sealedWrites = 0;
  const target: BlockTarget = {
    write: async (offsetBytes, bytes) => {
      const first = offsetBytes / BLOCK_SIZE_BYTES;
      const copy = Uint8Array.from(bytes);
      if (table !== undefined && first >= table.beginBlock && first < table.endBlock) {
        sealInodeTable(copy, (first - table.beginBlock) * INODES_PER_BLOCK + 1, table.fsSeed);
        sealedWrites++;
      }
      for (let block = 0; block < copy.length / BLOCK_SIZE_BYTES; block++) blocks.set(first + block, copy.subarray(block * BLOCK_SIZE_BYTES, (block + 1) * BLOCK_SIZE_BYTES));
    },
    discard: async () => undefined,
  };
  // 64 KiB buffers: the table (~190 blocks) goes in several writes, each sealed from its own first inode.
  const queue = new WriteQueue(target, 4);
  const buffers = new BufferPool(64 * 1024, 6);
  const tree = new FsTree(NOW);
  const data = new DataStream(queue, { beginBlock: 1024, limitBlock: 2 ** 30, limitReason: 'test', alignBytes: 64 * 1024, buffers });
  const archive = tarArchive(sampleSpecs());
  let given = false;
  const chunks = { next: async () => (given ? undefined : ((given = true), archive)) };
  await applyTar(new TarReader(new ByteInput(chunks)), { tree, data }, { stream: '', layered: false });
  await data.finish();
  const options = { dataEndBlock: data.cursorBlock, uuid: new Uint8Array(16).fill(7), hashSeed: Uint32Array.of(1, 2, 3, 4), nowSeconds: NOW, label: 'seal' };
  await writeFilesystem(queue, buffers, tree, options, unsealed ? (placed) => (table = placed) : undefined);
  await queue.drain();
  if (unsealed) assert.ok(sealedWrites >= 3, `the table went in ${sealedWrites} writes`);
  return blocks;
}

test('an inode table sealed by its writer is byte for byte the one sealed inline', async () => {
  const inline = await writeImage(false);
  const sealed = await writeImage(true);
  assert.deepEqual([...sealed.keys()].sort((a, b) => a - b), [...inline.keys()].sort((a, b) => a - b));
  for (const [block, bytes] of inline) assert.ok(Buffer.from(bytes).equals(sealed.get(block)!), `block ${block} differs`);
});
