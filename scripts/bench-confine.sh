#!/usr/bin/env bash
# Confinement overhead: `nsrun run --rootfs R -- /bin/true` with the default seccomp profile,
# default capabilities and cgroup limits, against `--security-opt seccomp=unconfined` and no
# limits, measured side by side by hyperfine. Also shows what the BPF cache saves, by running the
# default profile with its cache emptied before every run.
# Reports medians. Target (issue 4): confined - bare <= 1 ms median.
#
#   scripts/bench-confine.sh [RUNS]      # as root (cgroups) or as a user (rlimit fallback)
#   NSRUN_BIN=/path/to/nsrun scripts/bench-confine.sh   # a prebuilt binary (no cargo build)
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-100}
for tool in hyperfine python3; do
  command -v "$tool" >/dev/null || { echo "bench-confine.sh: needs $tool (apt-get install hyperfine python3)" >&2; exit 1; }
done
if [[ -z ${NSRUN_BIN:-} ]]; then cargo build --release --quiet; fi
work=$(mktemp -d /tmp/nsrun-bench-confine.XXXXXX)
trap 'rm -rf "$work"' EXIT
chmod 755 "$work"
scripts/mkrootfs-busybox.sh "$work/rootfs"
nsrun=${NSRUN_BIN:-$(pwd)/target/release/nsrun}
R=$work/rootfs
S=$work/state
limits="--memory 512m --pids-limit 1024 --cpus 1"
hyperfine -N --warmup 10 --runs "$runs" --export-json "$work/out.json" \
  -n bare "$nsrun run --root $S --rootfs $R --security-opt seccomp=unconfined -- /bin/true" \
  -n seccomp "$nsrun run --root $S --rootfs $R -- /bin/true" \
  -n confined "$nsrun run --root $S --rootfs $R $limits -- /bin/true" \
  -n seccomp-uncached "$nsrun run --root $work/uncached --rootfs $R -- /bin/true" \
  --prepare true --prepare true --prepare true --prepare "rm -rf $work/uncached/seccomp" \
  >/dev/null 2>"$work/err" || { cat "$work/err" >&2; exit 1; }
# The same, with runs 50 ms apart, as a worker's jobs are: on cgroup v1 the first write to a
# cgroup.procs after a quiet spell waits for an RCU grace period (cgroup_threadgroup_rwsem), which
# back-to-back runs do not see.
hyperfine -N --warmup 5 --runs "$((runs / 2))" --export-json "$work/spaced.json" --prepare "sleep 0.05" \
  -n bare-spaced "$nsrun run --root $S --rootfs $R --security-opt seccomp=unconfined -- /bin/true" \
  -n confined-spaced "$nsrun run --root $S --rootfs $R $limits -- /bin/true" \
  >/dev/null 2>"$work/err" || { cat "$work/err" >&2; exit 1; }
python3 - "$work/out.json" "$(id -u)" "$work/spaced.json" <<'PY'
import json, sys
res = {r["command"]: r for f in (sys.argv[1], sys.argv[3]) for r in json.load(open(f))["results"]}
med = {k: v["median"] * 1e3 for k, v in res.items()}
for k, v in med.items():
    r = res[k]
    print(f"{k:16} median {v:6.2f} ms  (min {r['min']*1e3:.2f}, max {r['max']*1e3:.2f}, runs {len(r['times'])})")
who = "root: cgroup v1/v2" if sys.argv[2] == "0" else "unprivileged: rlimit fallback unless delegated"
d = med["confined"] - med["bare"]
print(f"confined - bare = {d:+.2f} ms  (target <= 1 ms; {who})")
print(f"seccomp  - bare = {med['seccomp'] - med['bare']:+.2f} ms  (cached BPF)")
print(f"spaced 50 ms: confined - bare = {med['confined-spaced'] - med['bare-spaced']:+.2f} ms  (cgroup attach after a quiet spell)")
print(f"uncached - seccomp = {med['seccomp-uncached'] - med['seccomp']:+.2f} ms  (what the BPF cache saves)")
PY
