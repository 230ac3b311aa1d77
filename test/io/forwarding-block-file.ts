// A block file that passes every call on to another one. Tests extend it and override only the
// calls they watch or break (record writes and syncs, fail on demand, ignore close), so each
// such file says what it changes and nothing else.
//
// It is src/io's CountingBlockFile, the one wrapper there that forwards every call, with the
// inner file's own type kept for tests that reach past the BlockFile interface: a forwarding
// class written out here would repeat that one line for line. Its counters come along unused.
import type { BlockFile } from '../../src/io/block-file.ts';
import { CountingBlockFile } from '../../src/io/counting.ts';

export class ForwardingBlockFile<Inner extends BlockFile = BlockFile> extends CountingBlockFile {
  declare readonly inner: Inner;

  constructor(inner: Inner) {
    super(inner);
  }
}
