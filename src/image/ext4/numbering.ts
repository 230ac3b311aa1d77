// Inode numbers for the tree: 2 the root, 11 lost+found (made when the image has none, as mke2fs
// makes it), then directory by directory, depth first: a directory's entries get consecutive
// numbers, so listing a directory and stat-ing what it holds reads few inode table blocks (what
// `find` and `ls -l` do). A file with several names is numbered where it is first met.
import { ThinError } from '../../errors.ts';
import { displayPath, newNode, type FsNode, type FsTree } from '../tree.ts';
import { FIRST_INODE, ROOT_INODE } from './format.ts';

export const LOST_AND_FOUND = 'lost+found';

export interface Numbering {
  /** Nodes by inode number (undefined for reserved numbers). */
  nodes: Array<FsNode | undefined>;
  /** Each directory's parent's inode number. */
  parentIno: Uint32Array;
  /** Each directory's subdirectory count (for its link count). */
  subdirs: Uint32Array;
  lostAndFound: FsNode;
  /** The highest inode number used. */
  inodesUsed: number;
}

/** Numbers the tree's nodes (once per tree: numbers are stored in the nodes). */
export function numberInodes(tree: FsTree, nowSeconds: number): Numbering {
  const root = tree.root;
  let lostAndFound = root.children!.get(LOST_AND_FOUND);
  if (lostAndFound === undefined) {
    lostAndFound = newNode('dir');
    lostAndFound.permissions = 0o700;
    lostAndFound.links = 1;
    lostAndFound.mtimeSeconds = lostAndFound.atimeSeconds = lostAndFound.ctimeSeconds = nowSeconds;
    root.children!.set(LOST_AND_FOUND, lostAndFound);
    tree.nodeCount++;
  } else if (lostAndFound.kind !== 'dir') {
    throw new ThinError('THIN_IMAGE_INVALID', `Invalid image: /${LOST_AND_FOUND} is a ${lostAndFound.kind}; ext4 keeps a directory there for e2fsck`);
  }
  const nodes: Array<FsNode | undefined> = new Array(FIRST_INODE + tree.nodeCount).fill(undefined);
  const parents = new Uint32Array(FIRST_INODE + tree.nodeCount);
  const subdirs = new Uint32Array(FIRST_INODE + tree.nodeCount);
  root.ino = ROOT_INODE;
  nodes[ROOT_INODE] = root;
  parents[ROOT_INODE] = ROOT_INODE;
  lostAndFound.ino = FIRST_INODE;
  nodes[FIRST_INODE] = lostAndFound;
  parents[FIRST_INODE] = ROOT_INODE;
  let next = FIRST_INODE + 1;
  const pending: FsNode[] = [root];
  const found: FsNode[] = [];
  while (pending.length > 0) {
    const dir = pending.pop()!;
    found.length = 0;
    // forEach: no iterator result per child in unoptimized code (ext4/directory.ts planDirectory).
    dir.children!.forEach((child) => {
      if (child.ino === 0) {
        child.ino = next;
        nodes[next] = child;
        parents[next] = dir.ino;
        next++;
      }
      if (child.kind === 'dir') {
        subdirs[dir.ino]!++;
        found.push(child);
      }
    });
    // Depth first, in entry order: reversed onto the stack.
    for (let index = found.length - 1; index >= 0; index--) pending.push(found[index]!);
  }
  return { nodes, parentIno: parents, subdirs, lostAndFound, inodesUsed: next - 1 };
}

/** Where a node is, for messages (walks up from the node; only on errors). */
export function pathOf(numbering: Numbering, node: FsNode): string {
  const names: string[] = [];
  let current = node;
  for (let guard = 0; guard < 4096 && current.ino !== ROOT_INODE; guard++) {
    const parent = numbering.nodes[numbering.parentIno[current.ino]!];
    if (parent === undefined) break;
    for (const [name, child] of parent.children!) {
      if (child === current) {
        names.push(name);
        break;
      }
    }
    current = parent;
  }
  return `/${displayPath(names.reverse().join('/'))}`;
}
