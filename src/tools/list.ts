// What `thinbd list` reports for each volume: its identity and its space, counted as thin_ls
// counts it (a data block referenced by more than one volume's mappings is shared).
import type { Pool } from '../pool/pool.ts';

/**
 * The label that marks a volume thinbd keeps for itself (the image block index): `list` leaves
 * it out unless asked for `--all`, and `serve` exports it only when named, as LVM hides its
 * internal volumes from `lvs` without `-a`. Its value says what the volume is for.
 */
export const HIDDEN_LABEL = 'thinbd.hidden';

/** Whether a volume with these labels is one of thinbd's own (see HIDDEN_LABEL). */
export function isHiddenVolume(labels: Readonly<Record<string, string>> | undefined): boolean {
  return labels?.[HIDDEN_LABEL] !== undefined;
}

export interface VolumeListing {
  name: string;
  id: number;
  sizeBytes: number;
  mappedBytes: number;
  exclusiveBytes: number;
  sharedBytes: number;
  origin: string | null;
  /** The origin's volume id: tells a removed origin from a later volume given its name. */
  originId: number | null;
  readOnly: boolean;
  createdAt: string;
  labels: Record<string, string>;
  /** One of thinbd's own volumes (HIDDEN_LABEL): listed only with `--all`. */
  hidden: boolean;
}

export function listVolumes(pool: Pool): VolumeListing[] {
  const blockSizeBytes = pool.status().blockSizeBytes;
  const usage = pool.usage();
  return pool.list().map((info) => {
    const counts = usage.get(info.id) ?? { mappedBlocks: 0, exclusiveBlocks: 0, sharedBlocks: 0 };
    return {
      name: info.name,
      id: info.id,
      sizeBytes: info.sizeBytes,
      mappedBytes: counts.mappedBlocks * blockSizeBytes,
      exclusiveBytes: counts.exclusiveBlocks * blockSizeBytes,
      sharedBytes: counts.sharedBlocks * blockSizeBytes,
      origin: info.origin ?? null,
      originId: info.originId ?? null,
      readOnly: info.readOnly,
      createdAt: info.createdAt,
      labels: info.labels ?? {},
      hidden: isHiddenVolume(info.labels),
    };
  });
}

/** A volume and the snapshots taken of it, as `thinbd list --tree` draws them. */
export interface VolumeTreeNode {
  volume: VolumeListing;
  /** Snapshots of this volume, oldest first. */
  children: VolumeTreeNode[];
  /** The volume this one was snapshotted from no longer exists (it is drawn as a root). */
  originRemoved: boolean;
}

/**
 * The snapshot genealogy: each volume under the volume it was snapshotted from (matched by id,
 * so a removed origin's name reused by a new volume does not adopt its snapshots), oldest first.
 * A volume whose origin was removed becomes a root of its own.
 */
export function volumeTree(volumes: readonly VolumeListing[]): VolumeTreeNode[] {
  const byId = new Map<number, VolumeTreeNode>();
  for (const volume of volumes) byId.set(volume.id, { volume, children: [], originRemoved: false });
  const roots: VolumeTreeNode[] = [];
  const older = (a: VolumeTreeNode, b: VolumeTreeNode) => a.volume.createdAt.localeCompare(b.volume.createdAt) || a.volume.id - b.volume.id;
  for (const node of [...byId.values()].sort(older)) {
    const { originId, origin } = node.volume;
    const parent = originId === null ? undefined : byId.get(originId);
    // An origin's id is always older than its snapshot's: a parent that is not would be a cycle.
    if (parent !== undefined && parent !== node && older(parent, node) < 0) parent.children.push(node);
    else {
      node.originRemoved = origin !== null;
      roots.push(node);
    }
  }
  return roots;
}
