// Power cuts under the NBD server (docs/fault-model.md G1, G5, G6): seeded NBD clients on up to
// three connections send WRITE (with and without FUA), TRIM, WRITE_ZEROES and FLUSH to volume
// exports of a pool on simulated disks, all in one process (nbd-workload.ts), while the commit
// timer ticks and now and then a snapshot is taken under them. The machine loses power at every
// event of every session (before and after every write, completion and sync of either disk), in
// several crash images each (unsynced writes kept, lost or torn), and each recovered pool must:
//   - open read-write (replaying the delta log and rolling it up);
//   - hold every write covered by an acknowledged FLUSH and every acknowledged FUA write, and
//     nothing that was never written there (volume-oracle.ts);
//   - pass checkPool with no problem at all.
// The SIGKILL test (test/daemon/kill.test.ts) cannot show this: a killed process leaves the page
// cache, so a server that acknowledged a FLUSH before the data reached the disk would pass it.
//
// Replay a failure: THINBD_SEED=S node --import tsx --test test/sim/nbd-crash.test.ts (add
// THINBD_CRASH_POINT=K THINBD_VARIANT=V for one state). Seeds that found bugs go into
// regressions.json under "nbd-crash". THINBD_NBD_SESSIONS sets the number of sessions (a soak).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { campaignTestSeeds, runCampaigns } from './crash-harness.ts';
import { makeSessionBases } from './nbd-sessions.ts';
import { runSessionCampaign } from './nbd-campaign.ts';

const SESSION_COUNT = Number(process.env['THINBD_NBD_SESSIONS'] ?? 220);
const OPS_MAX = 7;
/** Crash images per distinct crash point. */
const VARIANTS_PER_POINT = 3;
const ROOT_SEED = Number(process.env['THINBD_ROOT_SEED'] ?? 20261201);
/** The floors for one CI run. */
const SESSIONS_MIN = 200;

test('a power cut at any event of NBD sessions on several connections loses no flushed or FUA write and leaves a clean pool', async (t) => {
  const bases = await makeSessionBases();
  const { seeds, replaying } = campaignTestSeeds('nbd-crash', ROOT_SEED, SESSION_COUNT);
  const totals = await runCampaigns(seeds, (seed) => runSessionCampaign(seed, bases, { opsMax: OPS_MAX, variantsPerPoint: VARIANTS_PER_POINT }));
  t.diagnostic(
    `nbd crash: ${seeds.length} sessions, ${totals.eventCount} events, ${totals.distinctCrashPointCount} distinct crash points, ` +
      `${totals.distinctImageCount} distinct crash images, ${totals.statesTested} recovered and checked, ` +
      `in ${(totals.durationMs / 1000).toFixed(1)} s; ${totals.failures.length} sessions failed`,
  );
  if (totals.failures.length > 0) assert.fail(`${totals.failures.length} of ${seeds.length} sessions failed:\n\n${totals.failures.join('\n\n')}`);
  if (!replaying) assert.ok(seeds.length >= SESSIONS_MIN, `only ${seeds.length} sessions; the floor is ${SESSIONS_MIN}`);
});
