#!/usr/bin/env bash
# Cold pull + unpack of a ~100 MB multi-layer Debian image from a local registry:
# nsrun pull vs skopeo copy (and podman pull / docker pull where installed), medians of RUNS runs,
# wall time and peak RSS (/usr/bin/time -v). Also the flattened-vs-overlay cache measurement
# (examples/cache_layout).
#
#   scripts/bench-pull.sh [RUNS]  (as root)        # default 5 runs
#
# The Debian rootfs is built once with debootstrap (minbase, bookworm, from the apt mirror) and
# cached as target/bench-pull/debian-rootfs.tar (git-ignored). A registry is started with
# scripts/registry.sh unless NSRUN_TEST_REGISTRY points at one. Runs as root (debootstrap, and
# dropping the page cache between runs so that every pull is cold).
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)
runs=${1:-5}
die() { echo "bench-pull.sh: $*" >&2; exit 1; }
[[ $(id -u) == 0 ]] || die "needs root (it starts a registry and compares with docker and podman): run it as root (sudo $0)"
[[ -x /usr/bin/time ]] || die "/usr/bin/time missing: apt-get install time"
command -v debootstrap >/dev/null || die "debootstrap missing: apt-get install debootstrap"

cache=$repo/target/bench-pull
mkdir -p "$cache"
work=$(mktemp -d /tmp/nsrun-bench-pull.XXXXXX)
started_registry=false
cleanup() {
  if $started_registry; then scripts/registry.sh stop "$work" || true; fi
  rm -rf "$work"
}
trap cleanup EXIT

# --- the image -----------------------------------------------------------------------------------
scripts/mkrootfs-debian.sh "$cache/debian-rootfs.tar"
mkdir "$work/rootfs"
tar -C "$work/rootfs" -xf "$cache/debian-rootfs.tar"
echo "rootfs: $(du -sh "$work/rootfs" | cut -f1), $(find "$work/rootfs" | wc -l) files"

cargo build --release --quiet --bin nsrun --example push_rootfs --example cache_layout --example lookup_time
nsrun=$repo/target/release/nsrun

if [[ -z ${NSRUN_TEST_REGISTRY:-} ]]; then
  scripts/registry.sh start "$work" >/dev/null
  started_registry=true
  # shellcheck disable=SC1091
  source "$work/registry.env"
fi
ref=$NSRUN_TEST_REGISTRY/bench/debian:bookworm
"$repo/target/release/examples/push_rootfs" "$work/rootfs" "$ref" --layers 4 --cmd /bin/bash >/dev/null
echo "pushed $ref as 4 gzip layers"

drop_caches() { sync; echo 3 >/proc/sys/vm/drop_caches 2>/dev/null || true; }

# measure NAME CMD... : appends "wall_seconds rss_kb" to $work/NAME.times
measure() {
  local name=$1
  shift
  drop_caches
  /usr/bin/time -v "$@" >/dev/null 2>"$work/time.out" || { cat "$work/time.out" >&2; die "$name failed"; }
  local wall rss
  wall=$(awk -F': ' '/Elapsed \(wall clock\)/ {n=split($2,a,":"); s=0; for(i=1;i<=n;i++) s=s*60+a[i]; print s}' "$work/time.out")
  rss=$(awk -F': ' '/Maximum resident set size/ {print $2}' "$work/time.out")
  echo "$wall $rss" >>"$work/$name.times"
}

median() { sort -n | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }

tools=(nsrun)
for i in $(seq 1 "$runs"); do
  rm -rf "$work/nsrun-root"
  measure nsrun "$nsrun" pull -q --root "$work/nsrun-root" "$ref"
done
du_nsrun=$(du -sh "$work/nsrun-root/images" | cut -f1)
lookup=$("$repo/target/release/examples/lookup_time" "$work/nsrun-root" "$ref" 2000)

if command -v skopeo >/dev/null; then
  tools+=(skopeo)
  for i in $(seq 1 "$runs"); do
    rm -rf "$work/skopeo-dir"
    measure skopeo skopeo copy -q --src-tls-verify=false "docker://$ref" "oci:$work/skopeo-dir:latest"
  done
fi
if command -v podman >/dev/null; then
  tools+=(podman)
  for i in $(seq 1 "$runs"); do
    rm -rf "$work/podman"
    measure podman podman --root "$work/podman/root" --runroot "$work/podman/run" --storage-driver overlay \
      pull -q --tls-verify=false "$ref"
  done
fi
if command -v docker >/dev/null && docker info >/dev/null 2>&1; then
  tools+=(docker)
  for i in $(seq 1 "$runs"); do
    docker rmi -f "$ref" >/dev/null 2>&1 || true
    measure docker docker pull -q "$ref"
  done
fi

echo
echo "cold pull of $ref, median of $runs runs:"
printf '%-8s %10s %14s\n' tool wall_s peak_rss_MB
for t in "${tools[@]}"; do
  w=$(cut -d' ' -f1 "$work/$t.times" | median)
  r=$(cut -d' ' -f2 "$work/$t.times" | median)
  printf '%-8s %10.2f %14.1f\n' "$t" "$w" "$(echo "$r / 1024" | bc -l)"
done
echo "(skopeo copy only fetches blobs into an OCI layout; it does not unpack. nsrun pull unpacks: $du_nsrun on disk.)"
echo "cached-image resolution for nsrun run IMAGE: $lookup"

echo
echo "flattened vs overlay of layers (examples/cache_layout):"
"$repo/target/release/examples/cache_layout" "$work/rootfs" 4 "$work/layout"
