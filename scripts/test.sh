#!/usr/bin/env bash
# The test command (README: `npm test`). Works on a fresh Debian machine with only Node.js and
# npm: installs npm packages, the Debian tools the interop tests drive, builds, then runs every
# test. A missing prerequisite fails loudly here; no test skips because a tool is absent.
#   --no-system   skip the apt-get step (for a quick local run; interop tests then fail if tools are missing)
#   FILES...      run only these test files
set -euo pipefail
cd "$(dirname "$0")/.."

system=1
files=()
for arg in "$@"; do
  case "$arg" in
    --no-system) system=0 ;;
    *) files+=("$arg") ;;
  esac
done

# Debian packages and one command each provides, to tell whether it is installed. make, g++ and
# python3 build zstd-napi (node-gyp) during `npm ci`; Node's headers come with Debian's nodejs.
debian_packages=(
  "make:make" "g++:g++" "python3:python3"
  "qemu-utils:qemu-img" "qemu-utils:qemu-io" "libnbd-bin:nbdinfo" "libnbd-bin:nbdcopy"
  "nbdfuse:nbdfuse" "fuse3:fusermount3" "nbdkit:nbdkit" "fio:fio"
  "thin-provisioning-tools:thin_check" "e2fsprogs:mkfs.ext4" "util-linux:losetup" "util-linux:setpriv"
)
if [ "$system" = 1 ]; then
  missing=()
  for pair in "${debian_packages[@]}"; do
    command -v "${pair#*:}" >/dev/null 2>&1 || missing+=("${pair%%:*}")
  done
  if [ "${#missing[@]}" -gt 0 ]; then
    if [ "$(id -u)" != 0 ]; then
      echo "test: needs Debian packages ${missing[*]} and is not root to install them" >&2
      exit 1
    fi
    echo "test: installing Debian packages: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends $(printf '%s\n' "${missing[@]}" | sort -u) >/dev/null
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
# Build first: bin/thinbd runs dist/, and test/index.test.ts type-checks the built package.
npx tsc -p tsconfig.build.json
npx tsc -p tsconfig.json --noEmit

if [ "${#files[@]}" -eq 0 ]; then
  mapfile -t files < <(find test -name '*.test.ts' | sort)
fi
exec node --import tsx --test --test-concurrency=2 --test-timeout=600000 "${files[@]}"
