#!/usr/bin/env bash
# The main job on a fresh Debian/Ubuntu machine: install what nsrun needs, build it, start a local
# OCI registry, publish a busybox image to it, and run that image with nsrun: pulled, verified,
# unpacked into the cache, then run in a fresh sandbox (then once more, from the cache).
#
#   scripts/quickstart.sh          # as root (sudo scripts/quickstart.sh from another user)
#
# The registry listens on 127.0.0.1:${NSRUN_REGISTRY_PORT:-5300} and is stopped at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
[[ $(id -u) == 0 ]] || { echo "quickstart.sh: needs root to install packages with apt-get: run it as root (sudo $0)" >&2; exit 1; }
pkgs=(busybox-static libseccomp-dev pkg-config uidmap gcc docker-registry openssl apache2-utils)
missing=()
for p in "${pkgs[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if ((${#missing[@]})); then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi
command -v cargo >/dev/null || { echo "quickstart.sh: cargo not found (install Rust with rustup)" >&2; exit 1; }

echo "== building nsrun"
cargo build --release --quiet
cargo build --release --quiet --example push_rootfs

work=$(mktemp -d /tmp/nsrun-quickstart.XXXXXX)
chmod 755 "$work"
export NSRUN_REGISTRY_PORT=${NSRUN_REGISTRY_PORT:-5300}
cleanup() { scripts/registry.sh stop "$work" >/dev/null 2>&1 || true; rm -rf "$work"; }
trap cleanup EXIT

echo "== starting a registry on 127.0.0.1:$NSRUN_REGISTRY_PORT"
scripts/registry.sh start "$work" >/dev/null
image=127.0.0.1:$NSRUN_REGISTRY_PORT/tools/busybox:latest

echo "== publishing $image (busybox from Debian's busybox-static)"
scripts/mkrootfs-busybox.sh "$work/rootfs"
target/release/examples/push_rootfs "$work/rootfs" "$image" --cmd /bin/sh --cmd -c \
  --cmd 'echo "hello from $(hostname): uid $(id -u), $(ls -d /proc/[0-9]* | wc -l) processes visible, root is $(grep " / " /proc/mounts | cut -d" " -f4 | cut -d, -f1)"'

echo "== nsrun run $image  (pull, verify, unpack, run)"
target/release/nsrun run --pull always --hostname quickstart --stats "$image"
echo "== nsrun $image -- id  (from the cache)"
target/release/nsrun --stats "$image" -- id
echo "== nsrun images"
target/release/nsrun images
