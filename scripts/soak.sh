#!/usr/bin/env bash
# Nightly-sized durability runs, beyond what `npm test` can afford on a 2-core CI machine (README,
# docs/fault-model.md section 5). Each part is the `npm test` file with its size raised by the
# environment variable it reads; seeds are fresh per run (the root seed is printed) unless set.
#   npm run fuzz              the NBD fuzzer, THINBD_FUZZ_INPUTS inputs (default 1,000,000)
#   npm run soak              the fuzzer and every crash campaign, sized up
#   npm run soak -- PART...   some of: fuzz nbd-crash scale-crash mutants fs-crash pool-crash
#                             journal-crash io-errors model
# Sizes: THINBD_FUZZ_INPUTS, THINBD_NBD_SESSIONS (default 2000), THINBD_SCALE_SEEDS (default 20)
# and THINBD_SCALE_POINTS (default 200), THINBD_CREATE_FS_SEEDS, THINBD_RESTORE_FS_SEEDS,
# THINBD_REPAIR_FS_SEEDS, THINBD_UNPACK_FS_SEEDS and THINBD_UNPACK_FS_POINTS (default 20, 10, 10,
# 10, 200), THINBD_CAMPAIGNS (4000), THINBD_JOURNAL_CAMPAIGNS (6000), THINBD_IO_POSITIONS (all),
# MODEL_SEEDS (2000); THINBD_ROOT_SEED fixes the campaigns' seeds.
set -euo pipefail
cd "$(dirname "$0")/.."

parts=("$@")
[ "${#parts[@]}" -eq 0 ] && parts=(fuzz nbd-crash scale-crash mutants fs-crash pool-crash journal-crash io-errors model)
root_seed=${THINBD_ROOT_SEED:-$(( (RANDOM << 15 | RANDOM) ))}
run() { # run FILE: one test file, no per-test time limit
  node --import tsx --test --test-timeout=0 --test-reporter=spec "$1"
}
for part in "${parts[@]}"; do
  started=$SECONDS
  case "$part" in
    fuzz) THINBD_FUZZ_INPUTS=${THINBD_FUZZ_INPUTS:-1000000} run test/nbd/fuzz.test.ts ;;
    nbd-crash) THINBD_ROOT_SEED=$root_seed THINBD_NBD_SESSIONS=${THINBD_NBD_SESSIONS:-2000} run test/sim/nbd-crash.test.ts ;;
    scale-crash) THINBD_ROOT_SEED=$root_seed THINBD_SCALE_SEEDS=${THINBD_SCALE_SEEDS:-20} THINBD_SCALE_POINTS=${THINBD_SCALE_POINTS:-200} run test/sim/scale-crash.test.ts ;;
    mutants) run test/sim/mutants.test.ts ;;
    fs-crash)
      THINBD_ROOT_SEED=$root_seed THINBD_CREATE_FS_SEEDS=${THINBD_CREATE_FS_SEEDS:-20} run test/sim/create-fs-crash.test.ts
      THINBD_ROOT_SEED=$root_seed THINBD_RESTORE_FS_SEEDS=${THINBD_RESTORE_FS_SEEDS:-10} run test/sim/restore-fs-crash.test.ts
      THINBD_ROOT_SEED=$root_seed THINBD_REPAIR_FS_SEEDS=${THINBD_REPAIR_FS_SEEDS:-10} run test/sim/repair-fs-crash.test.ts
      THINBD_ROOT_SEED=$root_seed THINBD_UNPACK_FS_SEEDS=${THINBD_UNPACK_FS_SEEDS:-10} THINBD_UNPACK_FS_POINTS=${THINBD_UNPACK_FS_POINTS:-200} run test/sim/unpack-fs-crash.test.ts
      ;;
    pool-crash) THINBD_ROOT_SEED=$root_seed THINBD_CAMPAIGNS=${THINBD_CAMPAIGNS:-4000} run test/sim/pool-crash.test.ts ;;
    journal-crash) THINBD_ROOT_SEED=$root_seed THINBD_JOURNAL_CAMPAIGNS=${THINBD_JOURNAL_CAMPAIGNS:-6000} run test/sim/journal-crash.test.ts ;;
    io-errors) THINBD_IO_POSITIONS=${THINBD_IO_POSITIONS:-all} run test/sim/io-errors.test.ts ;;
    model) MODEL_SEEDS=${MODEL_SEEDS:-2000} MODEL_SEED=${MODEL_SEED:-$root_seed} run test/pool/model.test.ts ;;
    *) echo "soak: unknown part $part (fuzz, nbd-crash, scale-crash, mutants, fs-crash, pool-crash, journal-crash, io-errors, model)" >&2; exit 2 ;;
  esac
  echo "soak: $part took $((SECONDS - started)) s (root seed $root_seed)"
done
