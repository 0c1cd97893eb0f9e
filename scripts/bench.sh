#!/usr/bin/env bash
# Start-up benchmark, measured side by side by hyperfine:
#   nsrun-rootfs  nsrun run --rootfs R -- /bin/true
#   nsrun-image   nsrun run IMAGE -- /bin/true      (the same busybox, cached: no network)
#   bwrap         bwrap --unshare-all --ro-bind R / --proc /proc --dev /dev --tmpfs /tmp -- /bin/true
# Reports medians and ratios. Targets: nsrun-rootfs within 1.5x of bwrap (issue 2); a cached image
# adds <= 2 ms over --rootfs (issue 3).
#
#   scripts/bench.sh [RUNS]     # as root or as a user; needs hyperfine, bubblewrap, docker-registry
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-50}
for tool in hyperfine bwrap python3; do
  command -v "$tool" >/dev/null || { echo "bench.sh: needs $tool (apt-get install hyperfine bubblewrap python3)" >&2; exit 1; }
done
cargo build --release --quiet
cargo build --release --quiet --example push_rootfs
work=$(mktemp -d /tmp/nsrun-bench.XXXXXX)
chmod 755 "$work"
export NSRUN_REGISTRY_PORT=${NSRUN_REGISTRY_PORT:-5400}
cleanup() { scripts/registry.sh stop "$work" >/dev/null 2>&1 || true; rm -rf "$work"; }
trap cleanup EXIT
scripts/mkrootfs-busybox.sh "$work/rootfs"
nsrun=$(pwd)/target/release/nsrun
R=$work/rootfs

# The same rootfs as an image, pulled once into a cache of the benchmark's own.
scripts/registry.sh start "$work" >/dev/null
image=127.0.0.1:$NSRUN_REGISTRY_PORT/bench/busybox:1
target/release/examples/push_rootfs "$R" "$image" >/dev/null
export NSRUN_ROOT=$work/cache
"$nsrun" pull -q "$image" >/dev/null

hyperfine -N --warmup 5 --runs "$runs" --export-json "$work/out.json" \
  -n nsrun-rootfs "$nsrun run --rootfs $R -- /bin/true" \
  -n nsrun-image "$nsrun run --pull never $image -- /bin/true" \
  -n bwrap "bwrap --unshare-all --ro-bind $R / --proc /proc --dev /dev --tmpfs /tmp -- /bin/true" >/dev/null
python3 - "$work/out.json" <<'PY'
import json, sys
res = {r["command"]: r for r in json.load(open(sys.argv[1]))["results"]}
med = {k: v["median"] * 1e3 for k, v in res.items()}
for k, v in med.items():
    print(f"{k:13} median {v:6.2f} ms  (min {res[k]['min']*1e3:.2f}, max {res[k]['max']*1e3:.2f}, runs {len(res[k]['times'])})")
print(f"nsrun-rootfs / bwrap       = {med['nsrun-rootfs'] / med['bwrap']:.2f}   (target <= 1.5)")
print(f"nsrun-image - nsrun-rootfs = {med['nsrun-image'] - med['nsrun-rootfs']:+.2f} ms (target <= 2 ms)")
PY
