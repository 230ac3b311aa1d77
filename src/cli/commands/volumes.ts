// thinbd create | snapshot | remove | resize | list
import type { Command } from '@commander-js/extra-typings';
import type { Reporter } from '../report.ts';
import { UsageError, formatTable } from '../report.ts';
import { parseLabels, poolDirectory, poolOption, sizeOption, volumeName } from '../options.ts';
import { withService } from '../pool-access.ts';
import { formatSize } from '../sizes.ts';
import { VOLUME_SIZE_BYTES_MAX } from '../../constants.ts';
import { volumeTree, type VolumeListing, type VolumeTreeNode } from '../../tools/list.ts';

/**
 * `list --tree`: each volume under the one it was snapshotted from, drawn as `tree` draws
 * directories, with the space each node maps and holds alone (what removing it would free).
 */
function treeLines(volumes: readonly VolumeListing[]): string[] {
  const rows: string[][] = [];
  const visit = (node: VolumeTreeNode, prefix: string, branch: string): void => {
    const volume = node.volume;
    const removed = node.originRemoved ? ` (snapshot of removed ${volume.origin})` : '';
    rows.push([
      `${prefix}${branch}${volume.name}${removed}`,
      formatSize(volume.sizeBytes),
      formatSize(volume.mappedBytes),
      formatSize(volume.exclusiveBytes),
      volume.readOnly ? 'ro' : 'rw',
    ]);
    const childPrefix = prefix + (branch === '├── ' ? '│   ' : branch === '└── ' ? '    ' : '');
    node.children.forEach((child, index) => visit(child, childPrefix, index === node.children.length - 1 ? '└── ' : '├── '));
  };
  for (const root of volumeTree(volumes)) visit(root, '', '');
  return formatTable(['NAME', 'SIZE', 'MAPPED', 'EXCLUSIVE', 'MODE'], rows);
}


function volumeSize(text: string): number {
  const sizeBytes = sizeOption('--size', text);
  if (sizeBytes < 1) throw new UsageError(`--size: ${text} must be at least 1 byte`);
  if (sizeBytes > VOLUME_SIZE_BYTES_MAX) {
    throw new UsageError(`--size: ${text} is larger than the largest volume (${formatSize(VOLUME_SIZE_BYTES_MAX)})`);
  }
  return sizeBytes;
}

export function registerVolumeCommands(program: Command, reporter: Reporter): void {
  program
    .command('create')
    .description('create a thin volume')
    .argument('<name>', 'volume name')
    .addOption(poolOption())
    .requiredOption('--size <size>', 'virtual size, e.g. 10G')
    .option('--label <key=value...>', 'free-form labels kept with the volume', [] as string[])
    .action(async (nameText, options) => {
      const name = volumeName('volume name', nameText);
      const sizeBytes = volumeSize(options.size);
      const labels = parseLabels(options.label);
      const dir = poolDirectory(options.pool);
      const info = await withService(dir, 'write', (service) => service.createVolume({ name, sizeBytes, labels }));
      reporter.out(`Created volume ${name} (id ${info.id}, ${formatSize(sizeBytes)})`);
    });

  program
    .command('snapshot')
    .description('take an instant writable (or read-only) snapshot of a volume or snapshot')
    .argument('<source>', 'volume to snapshot')
    .argument('<name>', 'name of the new snapshot')
    .addOption(poolOption())
    .option('--read-only', 'make the snapshot read-only')
    .action(async (sourceText, nameText, options) => {
      const source = volumeName('source volume name', sourceText);
      const name = volumeName('snapshot name', nameText);
      const dir = poolDirectory(options.pool);
      const { id } = await withService(dir, 'write', (service) =>
        service.snapshot({ source, name, readOnly: Boolean(options.readOnly) }),
      );
      reporter.out(`Created snapshot ${name} of ${source} (id ${id}${options.readOnly ? ', read-only' : ''})`);
    });

  program
    .command('remove')
    .description('remove a volume or snapshot; its snapshots stay intact')
    .argument('<name>', 'volume name')
    .addOption(poolOption())
    .option('--force', 'remove even when NBD clients are connected to it')
    .action(async (nameText, options) => {
      const name = volumeName('volume name', nameText);
      await withService(poolDirectory(options.pool), 'write', (service) =>
        service.removeVolume({ name, force: Boolean(options.force) }),
      );
      reporter.out(`Removed volume ${name}`);
    });

  program
    .command('resize')
    .description('grow a volume, or shrink it with --allow-shrink (shrinking discards what lies past the new end)')
    .argument('<name>', 'volume name')
    .addOption(poolOption())
    .requiredOption('--size <size>', 'new virtual size')
    .option('--allow-shrink', 'allow a size below the current one, discarding the data past it')
    .action(async (nameText, options) => {
      const name = volumeName('volume name', nameText);
      const sizeBytes = volumeSize(options.size);
      const allowShrink = options.allowShrink === true;
      await withService(poolDirectory(options.pool), 'write', (service) => service.resizeVolume({ name, sizeBytes, allowShrink }));
      reporter.out(`Resized volume ${name} to ${formatSize(sizeBytes)}`);
    });

  program
    .command('list')
    .description('list volumes with their mapped, exclusive and shared space')
    .addOption(poolOption())
    .option('--json', 'print JSON (always the flat list, with origin and originId)')
    .option('--tree', 'draw the snapshot genealogy: each volume under the one it was snapshotted from')
    .option('--all', "also list thinbd's own hidden volumes (the image block index), marked hidden")
    .action(async (options) => {
      const listed = await withService(poolDirectory(options.pool), 'read', (service) => service.listVolumes(), reporter);
      const volumes = options.all ? listed : listed.filter((volume) => !volume.hidden);
      if (options.json) {
        reporter.json(volumes);
        return;
      }
      if (options.tree) {
        for (const line of treeLines(volumes)) reporter.out(line);
        return;
      }
      // A removed origin is said so: its name may belong to a newer volume by now (as in --tree).
      const ids = new Set(volumes.map((volume) => volume.id));
      const originCell = (volume: VolumeListing): string =>
        volume.origin === null ? '-' : volume.originId !== null && !ids.has(volume.originId) ? `${volume.origin} (removed)` : volume.origin;
      const rows = volumes.map((volume) => [
        volume.name,
        String(volume.id),
        formatSize(volume.sizeBytes),
        formatSize(volume.mappedBytes),
        formatSize(volume.exclusiveBytes),
        formatSize(volume.sharedBytes),
        originCell(volume),
        (volume.readOnly ? 'ro' : 'rw') + (volume.hidden ? ',hidden' : ''),
        volume.createdAt,
      ]);
      const header = ['NAME', 'ID', 'SIZE', 'MAPPED', 'EXCLUSIVE', 'SHARED', 'ORIGIN', 'MODE', 'CREATED'];
      for (const line of formatTable(header, rows)) reporter.out(line);
    });
}
