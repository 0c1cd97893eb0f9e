#!/usr/bin/env bash
# The main job on a fresh Debian/Ubuntu machine: install what nsrun needs, build it, and run a
# busybox container with it (as root, then as an unprivileged user if one is given).
#
#   sudo scripts/quickstart.sh
set -euo pipefail
cd "$(dirname "$0")/.."
[[ $(id -u) == 0 ]] || { echo "quickstart.sh: run as root (it installs packages)" >&2; exit 1; }
pkgs=(busybox-static libseccomp-dev pkg-config uidmap gcc)
missing=()
for p in "${pkgs[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if ((${#missing[@]})); then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi
cargo build --release --quiet
work=$(mktemp -d /tmp/nsrun-quickstart.XXXXXX)
trap 'rm -rf "$work"' EXIT
chmod 755 "$work"
scripts/mkrootfs-busybox.sh "$work/rootfs"
set -x
target/release/nsrun run --rootfs "$work/rootfs" --hostname quickstart --stats -- \
  /bin/sh -c 'echo "hello from $(hostname): uid $(id -u), pid $$, $(ls /proc | grep -c "^[0-9]") processes visible"'
