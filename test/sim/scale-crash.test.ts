// Power cuts across a long workload at scale (docs/fault-model.md G3, G5, G6, G12): per seed,
// some hundreds of NBD requests and management calls (scale-workload.ts) on a pool whose big
// volume has a three-level mapping tree, reaching leaf splits and copy-on-write through a shared
// three-level tree, flushes of more than 101 logged changes, a full delta log ring and its wrap,
// commits started by the dirty-block limit, idle rollups on commit timer ticks, and ENOSPC. The
// trace is too long to cut at every event: power is cut at a seeded sample of its crash points,
// a few crash images each, and every recovered pool is held to the oracle of nbd-crash.test.ts
// (volume-oracle.ts: the sectors the workload touched and a sample of the rest), opens read-write
// and checks clean. The test fails unless the workloads reached every feature above.
//
// Nightly: THINBD_SCALE_SEEDS=N (default 2) and THINBD_SCALE_POINTS=P (crash points per seed,
// default 60). Replay: THINBD_SEED=S (one seed), with THINBD_CRASH_POINT=K THINBD_VARIANT=V for
// one state. Seeds that found bugs go into regressions.json under "scale-crash".
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { NBD_ENOSPC } from '../../src/nbd/protocol.ts';
import { campaignTestSeeds, runCampaigns } from './crash-harness.ts';
import { runNbdCampaign } from './nbd-campaign.ts';
import { describeNbdOp } from './nbd-workload.ts';
import { BLOCK_SIZE_SECTORS } from './pool-bases.ts';
import { SCALE_DIRTY_BLOCKS_MAX, makeScaleBase, mappingTreeDepth, scaleWorkloadOf, traceFeatures, type TraceFeatures } from './scale-workload.ts';

const SEED_COUNT = Number(process.env['THINBD_SCALE_SEEDS'] ?? 2);
const CRASH_POINTS = Number(process.env['THINBD_SCALE_POINTS'] ?? 60);
const OPS_TARGET = 700;
const VARIANTS_PER_POINT = 2;
const ROOT_SEED = Number(process.env['THINBD_ROOT_SEED'] ?? 20261202);

interface Reached extends TraceFeatures {
  ops: number;
  dirtyLimitCommits: number;
  rollups: number;
  enospc: number;
}

test('power cuts sampled across long NBD workloads at scale lose nothing promised and leave a clean pool', async (t) => {
  const base = await makeScaleBase();
  assert.equal(await mappingTreeDepth(base.images, 'big'), 3, 'the starting pool has a three-level mapping tree');
  const { seeds, replaying } = campaignTestSeeds('scale-crash', ROOT_SEED, SEED_COUNT);
  const reached: Reached[] = [];
  const totals = await runCampaigns(seeds, async (seed) => {
    const ops = scaleWorkloadOf(seed, base, OPS_TARGET);
    const result = await runNbdCampaign(seed, {
      images: base.images,
      volumes: base.volumes,
      ops,
      name: `scale workload of ${ops.length} ops (${ops.slice(0, 4).map(describeNbdOp).join('; ')} ...)`,
      variantsPerPoint: VARIANTS_PER_POINT,
      crashPointSample: CRASH_POINTS,
      poolOptions: { metadataDirtyBlocksMax: SCALE_DIRTY_BLOCKS_MAX },
      blockSizeSectors: BLOCK_SIZE_SECTORS,
      onWorkloadDone: ({ errors, pool, machine }) => {
        const counters = pool.status().counters;
        reached.push({
          ...traceFeatures(machine.events),
          ops: ops.length,
          dirtyLimitCommits: counters.dirtyLimitCommits,
          rollups: counters.rollups,
          enospc: errors.filter((error) => error === NBD_ENOSPC).length,
        });
      },
    });
    t.diagnostic(
      `seed ${seed}: ${ops.length} ops, ${result.eventCount} events, ${result.distinctCrashPointCount} crash points cut, ` +
        `${result.distinctImageCount} distinct crash images, ${result.statesTested} recovered, in ${(result.durationMs / 1000).toFixed(1)} s`,
    );
    return result;
  });
  t.diagnostic(
    `scale crash: ${seeds.length} workloads, ${totals.eventCount} events, ${totals.distinctImageCount} distinct crash images, ` +
      `${totals.statesTested} recovered and checked, in ${(totals.durationMs / 1000).toFixed(1)} s; reached ${JSON.stringify(reached)}`,
  );
  if (totals.failures.length > 0) assert.fail(`${totals.failures.length} of ${seeds.length} workloads failed:\n\n${totals.failures.join('\n\n')}`);
  if (replaying) return;
  const sum = (key: keyof Reached): number => reached.reduce((total, entry) => total + entry[key], 0);
  assert.ok(reached.every((entry) => entry.ops >= 300), 'hundreds of operations per seed');
  assert.ok(sum('multiRecordFlushes') > 0, 'a flush logged more than 101 changes');
  assert.ok(sum('fullRing') > 0, 'the delta log ring filled');
  assert.ok(sum('ringWraps') > 0, 'the delta log ring wrapped');
  assert.ok(sum('dirtyLimitCommits') > 0, 'the dirty-block limit started a commit');
  assert.ok(sum('enospc') > 0, 'a write ran out of data space');
});
