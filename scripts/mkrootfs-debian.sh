#!/usr/bin/env bash
# A ~100 MB Debian rootfs for the pull benchmarks, as a tarball built once with debootstrap
# (minbase, bookworm) from the apt mirror this machine already uses, and kept.
#
#   scripts/mkrootfs-debian.sh TARBALL      # no-op when TARBALL exists; needs root, debootstrap
set -euo pipefail
out=${1:?usage: $0 TARBALL}
[[ -f $out ]] && exit 0
command -v debootstrap >/dev/null || { echo "mkrootfs-debian.sh: needs debootstrap (apt-get install debootstrap)" >&2; exit 1; }
mirror=$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
mirror=${mirror:-http://deb.debian.org/debian}
build=$out.build
rm -rf "$build"
echo "building the Debian rootfs with debootstrap from $mirror (once)" >&2
debootstrap --variant=minbase bookworm "$build" "$mirror" >"$out.log" 2>&1 ||
  { echo "mkrootfs-debian.sh: debootstrap failed, see $out.log" >&2; rm -rf "$build"; exit 1; }
# As Debian's own container images do: no package caches or index lists.
rm -rf "$build"/var/cache/apt/archives/*.deb "$build"/var/lib/apt/lists/*
tar -C "$build" -cf "$out.tmp" .
mv "$out.tmp" "$out"
rm -rf "$build"
