#!/usr/bin/env bash
# Start-up benchmark: `nsrun run --rootfs R -- /bin/true` against bubblewrap doing the same
# (fresh namespaces, read-only root, /proc, /dev, /tmp), measured side by side by hyperfine.
# Reports medians and the ratio. Target (issue 2): nsrun within 1.5x of bwrap.
#
#   scripts/bench.sh [RUNS]          # as the calling user (root or not)
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-50}
for tool in hyperfine bwrap python3; do
  command -v "$tool" >/dev/null || { echo "bench.sh: needs $tool (apt-get install hyperfine bubblewrap python3)" >&2; exit 1; }
done
cargo build --release --quiet
work=$(mktemp -d /tmp/nsrun-bench.XXXXXX)
trap 'rm -rf "$work"' EXIT
chmod 755 "$work"
scripts/mkrootfs-busybox.sh "$work/rootfs"
nsrun=$(pwd)/target/release/nsrun
R=$work/rootfs
hyperfine -N --warmup 5 --runs "$runs" --export-json "$work/out.json" \
  -n nsrun "$nsrun run --rootfs $R -- /bin/true" \
  -n bwrap "bwrap --unshare-all --ro-bind $R / --proc /proc --dev /dev --tmpfs /tmp -- /bin/true" >/dev/null
python3 - "$work/out.json" <<'PY'
import json, sys
res = {r["command"]: r for r in json.load(open(sys.argv[1]))["results"]}
med = {k: v["median"] * 1e3 for k, v in res.items()}
for k, v in med.items():
    print(f"{k:6} median {v:6.2f} ms  (min {res[k]['min']*1e3:.2f}, max {res[k]['max']*1e3:.2f}, runs {len(res[k]['times'])})")
print(f"nsrun/bwrap = {med['nsrun'] / med['bwrap']:.2f}  (target <= 1.5)")
PY
