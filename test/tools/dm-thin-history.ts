// Seeded random dm-thin pool histories, played on a model of the kernel's semantics
// (drivers/md/dm-thin-metadata.c) and rendered as thin_dump XML: create_thin, create_snap (pool time
// +1, origin's snap_time set), writes (a block shared with a snapshot — snap_time > mapping time —
// gets a new data block at the current time; an exclusive one is rewritten in place), discards,
// deletes and set_transaction_id. Allocation prefers the block after the previous one, so devices
// hold long runs as well as scattered blocks.
import { Rng } from '../sim/rng.ts';

export interface ModelMapping {
  dataBlock: number;
  time: number;
}

export interface ModelDevice {
  devId: number;
  transaction: number;
  creationTime: number;
  snapTime: number;
  mappings: Map<number, ModelMapping>;
}

export interface ModelPool {
  seed: number;
  time: number;
  transaction: number;
  dataBlockSizeSectors: number;
  nrDataBlocks: number;
  devices: Map<number, ModelDevice>;
  refCounts: Uint32Array;
}

export interface HistoryOptions {
  steps?: number;
  nrDataBlocks?: number;
  /** Virtual blocks per device that writes touch. */
  deviceBlocks?: number;
  /** Largest dev id drawn (dm-thin allows 24 bits). */
  devIdMax?: number;
}

export function generateHistory(seed: number, options: HistoryOptions = {}): ModelPool {
  const rng = new Rng(seed);
  const nrDataBlocks = options.nrDataBlocks ?? rng.range(256, 4096);
  const deviceBlocks = options.deviceBlocks ?? rng.range(16, Math.min(2048, nrDataBlocks));
  const devIdMax = options.devIdMax ?? (rng.chance(0.5) ? 16 : 2 ** 24 - 1);
  const pool: ModelPool = {
    seed,
    time: 0,
    transaction: rng.range(0, 5),
    dataBlockSizeSectors: rng.pick([128, 256, 1024, 2048]),
    nrDataBlocks,
    devices: new Map(),
    refCounts: new Uint32Array(nrDataBlocks),
  };
  let cursor = rng.int(nrDataBlocks);

  const allocate = (): number | undefined => {
    if (rng.chance(0.05)) cursor = rng.int(nrDataBlocks);
    for (let tried = 0; tried < nrDataBlocks; tried += 1) {
      const block = (cursor + tried) % nrDataBlocks;
      if (pool.refCounts[block] === 0) {
        cursor = (block + 1) % nrDataBlocks;
        pool.refCounts[block] = 1;
        return block;
      }
    }
    return undefined;
  };
  const release = (block: number): void => {
    pool.refCounts[block] = (pool.refCounts[block] ?? 0) - 1;
  };
  const freshId = (): number => {
    for (;;) {
      const id = rng.int(devIdMax + 1);
      if (!pool.devices.has(id)) return id;
    }
  };
  const anyDevice = (): ModelDevice | undefined => (pool.devices.size === 0 ? undefined : rng.pick([...pool.devices.values()]));

  const steps = options.steps ?? rng.range(5, 40);
  for (let step = 0; step < steps; step += 1) {
    const roll = rng.float();
    const device = anyDevice();
    if (device === undefined || roll < 0.12) {
      const devId = freshId();
      pool.devices.set(devId, { devId, transaction: pool.transaction, creationTime: pool.time, snapTime: pool.time, mappings: new Map() });
    } else if (roll < 0.25 && pool.devices.size < 12) {
      const devId = freshId();
      pool.time += 1;
      device.snapTime = pool.time;
      const mappings = new Map<number, ModelMapping>();
      for (const [block, mapping] of device.mappings) {
        mappings.set(block, { ...mapping });
        pool.refCounts[mapping.dataBlock] = (pool.refCounts[mapping.dataBlock] ?? 0) + 1;
      }
      pool.devices.set(devId, { devId, transaction: pool.transaction, creationTime: pool.time, snapTime: pool.time, mappings });
    } else if (roll < 0.75) {
      const begin = rng.int(deviceBlocks);
      const count = Math.min(deviceBlocks - begin, rng.chance(0.5) ? rng.range(1, 4) : rng.range(1, 200));
      for (let block = begin; block < begin + count; block += 1) {
        const existing = device.mappings.get(block);
        if (existing !== undefined && !(device.snapTime > existing.time)) continue; // exclusive: in place
        const dataBlock = allocate();
        if (dataBlock === undefined) break; // out of data space: the write fails, as in the kernel
        if (existing !== undefined) release(existing.dataBlock);
        device.mappings.set(block, { dataBlock, time: pool.time });
      }
    } else if (roll < 0.87) {
      const begin = rng.int(deviceBlocks);
      const count = rng.range(1, 64);
      for (let block = begin; block < begin + count; block += 1) {
        const existing = device.mappings.get(block);
        if (existing === undefined) continue;
        release(existing.dataBlock);
        device.mappings.delete(block);
      }
    } else if (roll < 0.95) {
      if (pool.devices.size > 1) {
        for (const mapping of device.mappings.values()) release(mapping.dataBlock);
        pool.devices.delete(device.devId);
      }
    } else {
      pool.transaction += 1;
    }
  }
  return pool;
}

/** The device's mappings in origin order. */
export function sortedMappings(device: ModelDevice): Array<[number, ModelMapping]> {
  return [...device.mappings.entries()].sort((a, b) => a[0] - b[0]);
}

/**
 * Renders the model as thin_restore input. Devices come in random order; mappings in origin order,
 * cut into single_mapping and range_mapping elements at random (never merging what thin_dump would
 * not merge), so the reader and thin_dump's run-merging both get exercised.
 */
export function historyXml(pool: ModelPool, rng = new Rng(pool.seed ^ 0x5eed)): string {
  const lines: string[] = [];
  lines.push(
    `<superblock uuid="" time="${pool.time}" transaction="${pool.transaction}" flags="0" version="2" data_block_size="${pool.dataBlockSizeSectors}" nr_data_blocks="${pool.nrDataBlocks}">`,
  );
  const devices = [...pool.devices.values()];
  for (let index = devices.length - 1; index > 0; index -= 1) {
    const other = rng.int(index + 1);
    [devices[index], devices[other]] = [devices[other] as ModelDevice, devices[index] as ModelDevice];
  }
  for (const device of devices) {
    lines.push(
      `  <device dev_id="${device.devId}" mapped_blocks="${device.mappings.size}" transaction="${device.transaction}" creation_time="${device.creationTime}" snap_time="${device.snapTime}">`,
    );
    const mappings = sortedMappings(device);
    let index = 0;
    while (index < mappings.length) {
      const [origin, first] = mappings[index] as [number, ModelMapping];
      let length = 1;
      const lengthMax = rng.chance(0.3) ? 1 : rng.range(1, 300);
      while (length < lengthMax && index + length < mappings.length) {
        const [nextOrigin, next] = mappings[index + length] as [number, ModelMapping];
        if (nextOrigin !== origin + length || next.dataBlock !== first.dataBlock + length || next.time !== first.time) break;
        length += 1;
      }
      lines.push(
        length === 1
          ? `    <single_mapping origin_block="${origin}" data_block="${first.dataBlock}" time="${first.time}"/>`
          : `    <range_mapping origin_begin="${origin}" data_begin="${first.dataBlock}" length="${length}" time="${first.time}"/>`,
      );
      index += length;
    }
    lines.push('  </device>');
  }
  lines.push('</superblock>');
  return `${lines.join('\n')}\n`;
}
