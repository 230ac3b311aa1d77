// The corpus of damaged pools: one module per damage, each with the script that makes it.
import type { CorpusEntry } from './entry.ts';
import { entry as mappingLeafBitFlip } from './mapping-leaf-bit-flip.ts';
import { entry as mappingInternalBitFlip } from './mapping-internal-bit-flip.ts';
import { entry as mappingInternalAndLeafBitFlip } from './mapping-internal-and-leaf-bit-flip.ts';
import { entry as deviceTreeBitFlip } from './device-tree-bit-flip.ts';
import { entry as detailsBitFlip } from './details-bit-flip.ts';
import { entry as spaceMapBitFlip } from './space-map-bit-flip.ts';
import { entry as superblocksNewestTorn } from './superblocks-newest-torn.ts';
import { entry as superblocksAllGone } from './superblocks-all-gone.ts';
import { entry as superblocksGoneNewestTreeDamaged } from './superblocks-gone-newest-tree-damaged.ts';
import { entry as dataRefcountLeak } from './data-refcount-leak.ts';
import { entry as dataRefcountDouble } from './data-refcount-double.ts';
import { entry as mappingPastDataDevice } from './mapping-past-data-device.ts';
import { entry as compactLeafBadBases } from './compact-leaf-bad-bases.ts';
import { entry as denseEntryMisplaced } from './dense-entry-misplaced.ts';
import { entry as misdirectedWrite } from './misdirected-write.ts';
import { entry as staleNode } from './stale-node.ts';
import { entry as truncatedMetadata } from './truncated-metadata.ts';
import { entry as metadataSpaceMapRootBitFlip } from './metadata-space-map-root-bit-flip.ts';

export const corpus: CorpusEntry[] = [
  mappingLeafBitFlip,
  mappingInternalBitFlip,
  mappingInternalAndLeafBitFlip,
  deviceTreeBitFlip,
  detailsBitFlip,
  spaceMapBitFlip,
  superblocksNewestTorn,
  superblocksAllGone,
  superblocksGoneNewestTreeDamaged,
  dataRefcountLeak,
  dataRefcountDouble,
  mappingPastDataDevice,
  compactLeafBadBases,
  denseEntryMisplaced,
  misdirectedWrite,
  staleNode,
  truncatedMetadata,
  metadataSpaceMapRootBitFlip,
];
