#!/bin/bash
# Server cost of one fio workload: IOPS, the server's CPU time and CPU per operation, for thinbd,
# qemu-nbd (qcow2), nbdkit (file) or node-floor (bench/node-floor-server.ts: the least a Node NBD
# server can do per request), on a fresh 1 GiB export on a Unix socket. CPU for a fixed
# amount of I/O is far steadier than IOPS on a shared machine, so engine changes are judged by it
# (docs/benchmarks.md); `--profile DIR` writes a `node --cpu-prof` profile of the thinbd server.
#
#   bench/server-cost.sh [--server thinbd|qemu-nbd|nbdkit|node-floor] [--fill] [--snapshot] [--qd N]
#                        [--profile DIR] [--thinbd PATH] [--block-size B] RW BS IOSIZE
#
#   --fill       write the whole export with 1 MiB writes first, in a server run of its own
#                (so the measured run and its profile hold only the workload)
#   --snapshot   with --fill: fio writes to a snapshot of the filled volume (qcow2: an overlay)
#   --thinbd     another build's bin/thinbd, to compare builds side by side
#   --block-size thinbd's data block size (pool create --block-size), e.g. 128k
# Example: bench/server-cost.sh --fill --snapshot randwrite 4k 200M
set -euo pipefail

server=thinbd fill= snapshot= qd=32 profile= block_size= thinbd="$(cd "$(dirname "$0")/.." && pwd)/bin/thinbd"
while [ $# -gt 3 ]; do
  case "$1" in
    --server) server=$2; shift 2 ;;
    --fill) fill=1; shift ;;
    --snapshot) snapshot=1; fill=1; shift ;;
    --qd) qd=$2; shift 2 ;;
    --profile) profile=$(realpath "$2"); shift 2 ;;
    --thinbd) thinbd=$(realpath "$2"); shift 2 ;;
    --block-size) block_size=$2; shift 2 ;;
    *) echo "server-cost: unknown option $1" >&2; exit 2 ;;
  esac
done
[ $# -eq 3 ] || { sed -n '2,16p' "$0" >&2; exit 2; }
rw=$1 bs=$2 iosize=$3

dir=$(mktemp -d "${TMPDIR:-/tmp}/thinbd-cost-XXXXXX")
pid=
cleanup() { [ -n "$pid" ] && kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null; rm -rf "$dir"; }
trap cleanup EXIT
socket=$dir/nbd.sock
uri="nbd+unix:///vol0?socket=$socket"

start() { # start SERVER-COMMAND...: runs it in the background and waits for the socket
  rm -f "$socket"
  "$@" >"$dir/server.log" 2>&1 &
  pid=$!
  for _ in $(seq 300); do [ -S "$socket" ] && return; kill -0 "$pid" 2>/dev/null || break; sleep 0.05; done
  echo "server-cost: the server did not listen on $socket:" >&2; cat "$dir/server.log" >&2; exit 1
}
stop() { kill -TERM "$pid"; wait "$pid" || true; pid=; }
filler() { fio --name=fill --ioengine=nbd --uri="$uri" --rw=write --bs=1M --iodepth=8 --output-format=terse >/dev/null; }

case $server in
  thinbd)
    node "$thinbd" pool create --pool "$dir/pool" --data-size 3G ${block_size:+--block-size "$block_size"} >/dev/null
    node "$thinbd" create --pool "$dir/pool" vol0 --size 1G >/dev/null
    if [ -n "$fill" ]; then start node "$thinbd" serve --pool "$dir/pool" --socket "$socket"; filler; stop; fi
    export_name=vol0
    if [ -n "$snapshot" ]; then node "$thinbd" snapshot --pool "$dir/pool" vol0 snap >/dev/null; export_name=snap; fi
    uri="nbd+unix:///$export_name?socket=$socket"
    start node ${profile:+--cpu-prof --cpu-prof-dir="$profile"} "$thinbd" serve --pool "$dir/pool" --socket "$socket" ;;
  qemu-nbd)
    qemu-img create -q -f qcow2 "$dir/base.qcow2" 1G
    image=$dir/base.qcow2
    if [ -n "$fill" ]; then start qemu-nbd -f qcow2 -k "$socket" -t -e 8 -x vol0 "$image"; filler; stop; fi
    if [ -n "$snapshot" ]; then qemu-img create -q -f qcow2 -b "$image" -F qcow2 "$dir/overlay.qcow2"; image=$dir/overlay.qcow2; fi
    start qemu-nbd -f qcow2 -k "$socket" -t -e 8 -x vol0 "$image" ;;
  nbdkit)
    [ -z "$snapshot" ] || { echo "server-cost: nbdkit file has no snapshots" >&2; exit 2; }
    truncate -s 1G "$dir/disk.raw"
    if [ -n "$fill" ]; then start nbdkit -f -U "$socket" -e vol0 file "$dir/disk.raw"; filler; stop; fi
    start nbdkit -f -U "$socket" -e vol0 file "$dir/disk.raw" ;;
  node-floor)
    [ -z "$snapshot" ] || { echo "server-cost: node-floor has no snapshots" >&2; exit 2; }
    truncate -s 1G "$dir/disk.raw"
    floor=("$(cd "$(dirname "$0")" && pwd)/node-floor-server.ts" "$socket" "$dir/disk.raw")
    if [ -n "$fill" ]; then start node --import tsx "${floor[@]}"; filler; stop; fi
    start node --import tsx "${floor[@]}" ;;
  *) echo "server-cost: --server takes thinbd, qemu-nbd, nbdkit or node-floor" >&2; exit 2 ;;
esac

cpu_ticks() { awk '{print $14 + $15}' "/proc/$pid/stat"; }
before=$(cpu_ticks)
fio --name=cost --ioengine=nbd --uri="$uri" --rw="$rw" --bs="$bs" --iodepth="$qd" --io_size="$iosize" \
  --output-format=json >"$dir/fio.json"
after=$(cpu_ticks)
stop
ticks_per_second=$(getconf CLK_TCK)
python3 - "$dir/fio.json" "$(( after - before ))" "$ticks_per_second" "$server $rw $bs qd$qd ${snapshot:+after-snapshot }${fill:+filled}" <<'EOF'
import json, sys
text = open(sys.argv[1]).read()
job = json.loads(text[text.index('{'):])['jobs'][0]
ops = job['read']['total_ios'] + job['write']['total_ios']
cpu_ms = int(sys.argv[2]) * 1000 / int(sys.argv[3])
iops = job['read']['iops'] + job['write']['iops']
print(f"{sys.argv[4].strip()}: {iops:.0f} IOPS, server CPU {cpu_ms:.0f} ms for {ops} ops, {cpu_ms * 1000 / max(ops, 1):.1f} µs per op")
EOF
