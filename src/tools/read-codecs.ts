// The device tree and mapping tree codecs of the tools that only read a pool (check, dump and
// delta through PoolView, repair's salvage, the superblock scan). They have no retain/release:
// nothing these tools walk is ever changed, so no reference count may move.
import type { ValueCodec } from '../pdata/index.ts';
import {
  DEVICE_TREE_KIND,
  DEVICE_VALUE_SIZE_BYTES,
  EXTENT_VALUE_SIZE_BYTES,
  MAPPING_TREE_KIND,
  packDeviceValue,
  packExtent,
  unpackDeviceValue,
  unpackExtent,
  type DeviceValue,
} from '../pool/codecs.ts';
import type { Extent } from '../pool/ranges.ts';

export const deviceReadCodec: ValueCodec<DeviceValue> = {
  treeKind: DEVICE_TREE_KIND,
  sizeBytes: DEVICE_VALUE_SIZE_BYTES,
  pack: packDeviceValue,
  unpack: unpackDeviceValue,
};

/**
 * Mapping tree values whose data blocks must lie below dataBlockCount: the data space, or
 * Number.MAX_SAFE_INTEGER for a tool that judges a mapping past the data device on its own,
 * so that it costs that mapping and not the whole leaf holding it.
 */
export function extentReadCodec(dataBlockCount: number): ValueCodec<Extent> {
  return {
    treeKind: MAPPING_TREE_KIND,
    sizeBytes: EXTENT_VALUE_SIZE_BYTES,
    pack: packExtent,
    unpack: (view, offsetBytes) => unpackExtent(view, offsetBytes, dataBlockCount),
  };
}
