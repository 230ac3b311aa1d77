// The crash campaigns catch broken pools (mutation testing of the durability tests): each mutant
// (src/pool/mutants.ts) removes one ordering or check that crash safety rests on, and the NBD
// session campaign (nbd-campaign.ts, the campaign of nbd-crash.test.ts, same oracle, same seeds)
// must fail on it within a bounded number of sessions. A campaign that also passed on a broken
// pool would prove nothing. The failure must be the oracle's or the checker's verdict on a
// recovered pool (an AssertionError naming what was lost), not a crash of the harness.
//
// THINBD_MUTANT=<name> runs one mutant only.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { POOL_MUTANTS, type PoolMutant } from '../../src/pool/pool.ts';
import { campaignSeeds } from './crash-harness.ts';
import { makeSessionBases } from './nbd-sessions.ts';
import { runSessionCampaign } from './nbd-campaign.ts';

const ROOT_SEED = 20261201; // the seeds of nbd-crash.test.ts, in the same order
/** Sessions tried per mutant before the test gives up on catching it. */
const SESSIONS_MAX = 200;
const OPS_MAX = 7;
const VARIANTS_PER_POINT = 3;

const only = process.env['THINBD_MUTANT'];
const mutants = POOL_MUTANTS.filter((mutant) => only === undefined || only === mutant);

/** The first session (by index) whose campaign fails on the mutant, with the failure. */
async function firstCatch(mutant: PoolMutant): Promise<{ index: number; seed: number; message: string } | undefined> {
  const bases = await makeSessionBases();
  const seeds = campaignSeeds(ROOT_SEED, SESSIONS_MAX);
  for (const [index, seed] of seeds.entries()) {
    try {
      await runSessionCampaign(seed, bases, { opsMax: OPS_MAX, variantsPerPoint: VARIANTS_PER_POINT, poolOptions: { mutant } });
    } catch (error) {
      const message = error instanceof Error ? error.message : String(error);
      const cause = error instanceof Error ? error.cause : undefined;
      assert.ok(
        cause instanceof assert.AssertionError,
        `the campaign of seed ${seed} failed on mutant ${mutant}, but not by the oracle's or checker's verdict: ${message}`,
      );
      return { index, seed, message };
    }
  }
  return undefined;
}

for (const mutant of mutants) {
  test(`the NBD crash campaign catches the ${mutant} mutant`, async (t) => {
    const caught = await firstCatch(mutant);
    assert.ok(caught !== undefined, `${SESSIONS_MAX} sessions passed on a pool with the ${mutant} mutant`);
    t.diagnostic(`${mutant}: caught by session ${caught.index + 1} (seed ${caught.seed}): ${caught.message.split('\n')[0]}`);
  });
}

test('POOL_MUTANTS names the four mutants the campaigns must catch', () => {
  assert.deepEqual([...POOL_MUTANTS].sort(), [
    'flush-ack-before-metadata-sync',
    'in-place-write-to-shared-block',
    'no-data-sync-before-log-record',
    'replay-skips-last-record',
  ]);
});
