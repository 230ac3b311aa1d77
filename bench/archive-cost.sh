#!/bin/bash
# CPU of `thinbd archive pack` and `unpack` for several builds and zstd levels, in turn on one
# volume, with restic's `backup --stdin` once a round: stored bytes, wall and user/sys CPU of each
# whole command. CPU is far steadier than wall time on a shared machine, so store format and level
# changes are judged by it (docs/benchmarks.md "Archive: frames of several chunks"). The volume is
# the one `npm run bench -- archive` uses: a 2 GiB ext4 image made by `mkfs.ext4 -d /usr/share`.
#
#   bench/archive-cost.sh [--rounds N] LABEL=THINBD:LEVEL ...
# Example (another worktree's build at level 3 against this one at levels 3 and 2):
#   bench/archive-cost.sh before=/tmp/base/bin/thinbd:3 frames3=bin/thinbd:3 frames2=bin/thinbd:2
set -euo pipefail

rounds=3
if [ "${1:-}" = --rounds ]; then rounds=$2; shift 2; fi
[ $# -ge 1 ] || { echo "usage: $0 [--rounds N] LABEL=THINBD:LEVEL ..." >&2; exit 2; }
for tool in mkfs.ext4 restic /usr/bin/time; do command -v "$tool" >/dev/null || { echo "$0 needs $tool" >&2; exit 2; }; done
variants=("$@")
work=$(mktemp -d /tmp/thinbd-archive-cost-XXXXXX)
trap 'rm -rf "$work"' EXIT
first=${variants[0]#*=}; first=${first%:*}
truncate -s 2G "$work/image"
mkfs.ext4 -q -F -d /usr/share "$work/image"
node "$first" pool create --pool "$work/pool" --data-size 8G >/dev/null
node "$first" import --pool "$work/pool" vol "$work/image" >/dev/null
node "$first" snapshot --pool "$work/pool" vol v1 --read-only >/dev/null
timed() { { /usr/bin/time -f "%e s wall, %U s user, %S s sys" "$@" >/dev/null; } 2>&1 | tail -1; }
for ((round = 1; round <= rounds; round++)); do
  # Each round starts with the next variant, so none always runs first.
  for ((k = 0; k < ${#variants[@]}; k++)); do
    variant=${variants[$(( (k + round) % ${#variants[@]} ))]}
    label=${variant%%=*} spec=${variant#*=}
    thinbd=${spec%:*} level=${spec##*:}
    store=$work/store target=$work/target
    rm -rf "$store" "$target"
    node "$thinbd" archive init --store "$store" --level "$level" >/dev/null
    pack=$(timed node "$thinbd" archive pack --pool "$work/pool" v1 --store "$store" --name s1)
    stored=$(du -sb "$store" | cut -f1)
    node "$thinbd" pool create --pool "$target" --data-size 8G >/dev/null
    unpack=$(timed node "$thinbd" archive unpack --pool "$target" --store "$store" s1 vol)
    echo "round $round $label: stored $stored bytes; pack $pack; unpack $unpack; load $(cut -d' ' -f1 /proc/loadavg)"
  done
  rm -rf "$work/repo" "$work/cache"
  export RESTIC_PASSWORD=bench RESTIC_CACHE_DIR=$work/cache
  restic init -q --repo "$work/repo"
  backup=$(timed sh -c "restic -q --repo '$work/repo' backup --stdin --stdin-filename image < '$work/image'")
  echo "round $round restic: stored $(du -sb "$work/repo" | cut -f1) bytes; backup $backup"
done
