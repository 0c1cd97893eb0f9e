#!/usr/bin/env bash
# `nsrun serve` against the Docker Engine API, side by side on this machine: runs per second of
# `/bin/true` from a cached busybox image, at concurrency 1, 8 and 32, with p50/p99 latency of a
# whole run, both over a unix socket. Goal (issue 13): >= 20x Docker's rate, p99 < 50 ms at 32.
#
#   sudo scripts/bench-serve.sh                      # ~3 min: both APIs, 15 s per level
#   sudo scripts/bench-serve.sh --seconds 5 --concurrency 1,8 --no-docker
#
# nsrun: one `POST /v1/runs?wait=true` per run. Docker: create + start + wait + remove, what
# `docker run --rm --network none IMAGE /bin/true` asks the Engine API (minus attach), against a
# private dockerd of this script's own (its own data root and socket, no bridge, no iptables,
# cgroups below ours), as scripts/bench.sh starts it. The load generator is scripts/serve-load.mjs
# (Node, plain node:http, one keep-alive connection per worker, the first CONCURRENCY runs are
# warm-up). Levels alternate sides (nsrun c1, docker c1, nsrun c8, …) so both see the same load.
#
# Output: benches/results/serve-<date>-<host>.md and serve-latest.md (--out DIR to move them).
# Environment: NSRUN_BIN and PUSH_ROOTFS use prebuilt binaries instead of a release build;
# NSRUN_REGISTRY_PORT (default 5630) moves the registry.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)

usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; }
die() { echo "bench-serve.sh: $*" >&2; exit 2; }
log() { printf '\n== %s\n' "$*" >&2; }

seconds=15
levels=1,8,32
out=benches/results
with_docker=true
while (($#)); do
  case $1 in
  --seconds)
    [[ ${2:-} =~ ^[1-9][0-9]*$ ]] || die "--seconds needs a positive whole number, got '${2:-}'"
    seconds=$2
    shift
    ;;
  --concurrency)
    [[ ${2:-} =~ ^[1-9][0-9]*(,[1-9][0-9]*)*$ ]] || die "--concurrency needs a list like 1,8,32, got '${2:-}'"
    levels=$2
    shift
    ;;
  --out)
    [[ -n ${2:-} ]] || die "--out needs a directory"
    out=$2
    shift
    ;;
  --no-docker) with_docker=false ;;
  -h | --help)
    usage
    exit 0
    ;;
  *) die "unknown option '$1' (see --help)" ;;
  esac
  shift
done
[[ $(id -u) == 0 ]] || die "run as root (it starts a private dockerd and compares rootful runs)"

pkgs=(docker-registry busybox-static python3 curl nodejs)
$with_docker && pkgs+=(docker.io)
missing=()
for p in "${pkgs[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
# A node from elsewhere (nodesource, nvm) will do.
if command -v node >/dev/null; then
  missing=("${missing[@]/nodejs/}")
  mapfile -t missing < <(printf '%s\n' "${missing[@]}" | grep -v '^$' || true)
fi
if ((${#missing[@]})); then
  log "installing ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

if [[ -z ${NSRUN_BIN:-} || -z ${PUSH_ROOTFS:-} ]]; then
  log "building nsrun (release)"
  cargo build --release --quiet --bin nsrun --example push_rootfs
fi
nsrun=$(realpath "${NSRUN_BIN:-target/release/nsrun}")
push_rootfs=$(realpath "${PUSH_ROOTFS:-target/release/examples/push_rootfs}")
"$nsrun" serve --help >/dev/null 2>&1 || die "$nsrun has no serve command"

work=$(mktemp -d /tmp/nsrun-bench-serve.XXXXXX)
chmod 755 "$work"
export NSRUN_REGISTRY_PORT=${NSRUN_REGISTRY_PORT:-5630}
docker_bin=/usr/bin/docker
docker_() { "$docker_bin" -H "unix://$work/docker.sock" "$@"; }
dockerd_pid=""
serve_pid=""
cg_made=()
cleanup() {
  set +e
  if [[ -n $serve_pid ]]; then
    kill "$serve_pid" 2>/dev/null
    for _ in $(seq 50); do kill -0 "$serve_pid" 2>/dev/null || break; sleep 0.2; done
    kill -9 "$serve_pid" 2>/dev/null
  fi
  if [[ -n $dockerd_pid ]]; then
    docker_ ps -aq 2>/dev/null | xargs -r "$docker_bin" -H "unix://$work/docker.sock" rm -f >/dev/null 2>&1
    kill "$dockerd_pid" 2>/dev/null
    for _ in $(seq 50); do kill -0 "$dockerd_pid" 2>/dev/null || break; sleep 0.2; done
    kill -9 "$dockerd_pid" 2>/dev/null
    umount -R "$work/docker" 2>/dev/null
  fi
  scripts/registry.sh stop "$work" >/dev/null 2>&1
  for d in "${cg_made[@]}"; do
    find "$d" -depth -type d -exec rmdir {} + 2>/dev/null
  done
  for m in $(awk -v w="$work" 'index($5, w) == 1 {print $5}' /proc/self/mountinfo | sort -r); do
    umount -l "$m" 2>/dev/null
  done
  rm -rf "$work" 2>/dev/null
}
trap cleanup EXIT

# A cgroup below ours in every v1 hierarchy for dockerd's containers (we never touch a cgroup we
# did not make), as scripts/bench.sh does.
cgparent=""
deepest=$(awk -F: '$2 ~ /(^|,)(memory|pids|cpu)(,|$)/ {print $3}' /proc/self/cgroup | awk '{print length, $0}' | sort -n | tail -1 | cut -d' ' -f2)
ok=true
while IFS=: read -r _ ctrls path; do
  [[ -n $ctrls ]] || continue
  [[ $deepest == "$path" || $deepest == "${path%/}/"* ]] || ok=false
done </proc/self/cgroup
if $with_docker; then
  $ok || die "our v1 cgroups differ per controller: no place below ours for dockerd's cgroups"
  cgparent=${deepest%/}/nsrun-bench-serve-$$
  for h in /sys/fs/cgroup/*/; do
    [[ -f $h/cgroup.procs ]] || continue
    p=""
    for comp in ${cgparent//\// }; do
      p+=/$comp
      [[ -d ${h%/}$p ]] || { cg_made+=("${h%/}$p"); break; }
    done
  done
fi

log "busybox image in a registry on 127.0.0.1:$NSRUN_REGISTRY_PORT"
scripts/mkrootfs-busybox.sh "$work/busybox" >/dev/null
scripts/registry.sh start "$work" >/dev/null
img=127.0.0.1:$NSRUN_REGISTRY_PORT/bench/busybox:1
"$push_rootfs" "$work/busybox" "$img" >/dev/null

log "nsrun serve on $work/nsrun.sock"
token=$("$nsrun" token new --tokens "$work/tokens.json" --tenant bench \
  --allow-image "127.0.0.1:$NSRUN_REGISTRY_PORT/bench/*" --max-concurrent 1000 | grep -o 'nsr_[A-Za-z0-9_-]*' | head -1)
[[ -n $token ]] || die "nsrun token new printed no token"
"$nsrun" pull -q --root "$work/cache" "$img" >/dev/null
timeout 3600 "$nsrun" serve --root "$work/cache" --max-concurrent 64 --listen "unix:$work/nsrun.sock" --tokens "$work/tokens.json" \
  >"$work/serve.log" 2>&1 &
serve_pid=$!
for _ in $(seq 100); do curl -sf --unix-socket "$work/nsrun.sock" http://x/healthz >/dev/null && break; sleep 0.1; done
curl -sf --unix-socket "$work/nsrun.sock" http://x/healthz >/dev/null || { tail -5 "$work/serve.log" >&2; die "nsrun serve did not start"; }

if $with_docker; then
  log "a private dockerd"
  mkdir -p "$work/docker" "$work/docker-exec"
  timeout 3600 dockerd --data-root "$work/docker" --exec-root "$work/docker-exec" -H "unix://$work/docker.sock" \
    --pidfile "$work/docker.pid" --bridge none --iptables=false --ip6tables=false \
    --insecure-registry "127.0.0.1:$NSRUN_REGISTRY_PORT" --exec-opt native.cgroupdriver=cgroupfs \
    --cgroup-parent "$cgparent/docker" >"$work/dockerd.log" 2>&1 &
  dockerd_pid=$!
  for _ in $(seq 100); do docker_ info >/dev/null 2>&1 && break; sleep 0.2; done
  docker_ info >/dev/null 2>&1 || { tail -5 "$work/dockerd.log" >&2; die "dockerd did not start"; }
  docker_ pull -q "$img" >/dev/null
fi

results=$work/results.jsonl
serve_main=$(pgrep -P "$serve_pid" -x nsrun | head -1)
# utime + stime + cutime + cstime of nsrun serve, in clock ticks.
serve_ticks() { awk '{print $14 + $15 + $16 + $17}' "/proc/$serve_main/stat"; }
load0=$(cut -d' ' -f1-3 /proc/loadavg)
IFS=, read -r -a conc <<<"$levels"
for c in "${conc[@]}"; do
  sides=(nsrun)
  $with_docker && sides+=(docker)
  for side in "${sides[@]}"; do
    sock=$work/nsrun.sock
    [[ $side == docker ]] && sock=$work/docker.sock
    log "$side, concurrency $c, ${seconds} s"
    t0=$(serve_ticks)
    NSRUN_TOKEN=$token node scripts/serve-load.mjs "$side" "$sock" "$img" "$c" "$seconds" >"$work/level.json" ||
      die "the $side load failed (serve log: $(tail -2 "$work/serve.log" | tr '\n' ' '))"
    # The server's CPU time (its threads and the helpers it reaped) over the level, warm-up included.
    python3 -c 'import json, sys; r = json.load(open(sys.argv[1])); r["serverCpuTicks"] = int(sys.argv[2]); print(json.dumps(r))' \
      "$work/level.json" "$(($(serve_ticks) - t0))" | tee -a "$results" >&2
  done
done

host=$(hostname -s)
stamp=$(date -u +%Y-%m-%d)
mkdir -p "$out"
report=$out/serve-$stamp-$host.md
load1=$(cut -d' ' -f1-3 /proc/loadavg)
python3 - "$results" "$seconds" "$(uname -r)" "$(nproc)" "$("$nsrun" --version)" "$(dockerd --version 2>/dev/null || true)" "$load0" "$load1" >"$report" <<'PY'
import json, sys
path, seconds, kernel, cpus, nsv, dv, load0, load1 = sys.argv[1:9]
rows = [json.loads(l) for l in open(path)]
by = {(r["api"], r["concurrency"]): r for r in rows}
levels = sorted({r["concurrency"] for r in rows})
print(f"# nsrun serve vs the Docker Engine API: /bin/true per run\n")
print(f"Linux {kernel}, {cpus} CPUs; {nsv}; {dv or 'no docker'}; {seconds} s per level after "
      "CONCURRENCY warm-up runs; one run of scripts/bench-serve.sh, sides alternating per level; "
      f"load average {load0} before, {load1} after (other work on the machine counts).\n")
print("| concurrency | nsrun runs/s | nsrun p50 (ms) | nsrun p99 (ms) | nsrun CPU/run (ms) | docker runs/s | docker p50 (ms) | docker p99 (ms) | nsrun / docker |")
print("|---|---|---|---|---|---|---|---|---|")
import os
tck = os.sysconf("SC_CLK_TCK")
def cpu(r):
    n = (r or {}).get("completed", 0)  # warm-up runs and those ending after the window included
    return "–" if not r or "serverCpuTicks" not in r or not n else f"{r['serverCpuTicks'] * 1000 / tck / n:.1f}"
for c in levels:
    n, d = by.get(("nsrun", c)), by.get(("docker", c))
    f = lambda r, k: "–" if r is None or r.get(k) is None else f"{r[k]:.1f}"
    ratio = f"{n['runsPerSecond'] / d['runsPerSecond']:.1f}x" if n and d and d["runsPerSecond"] else "–"
    print(f"| {c} | {f(n,'runsPerSecond')} | {f(n,'p50Ms')} | {f(n,'p99Ms')} | {cpu(n)} | {f(d,'runsPerSecond')} | {f(d,'p50Ms')} | {f(d,'p99Ms')} | {ratio} |")
errs = [r for r in rows if r["errors"]]
if errs:
    print("\nFailed runs (not counted): " + "; ".join(f"{r['api']} c{r['concurrency']}: {r['errors']} (first: `{r.get('firstError','')[:300]}`)" for r in errs))
none = [c for c in levels if ("docker", c) in by and by[("docker", c)]["runs"] == 0]
if none:
    print("\nDocker completed no run within the window at concurrency " + ", ".join(map(str, none)) + ".")
pairs = [(by[("nsrun", c)], by[("docker", c)]) for c in levels if ("nsrun", c) in by and ("docker", c) in by]
if not pairs:
    goal = "– (no Docker figures)"
else:
    goal = "met" if all(n["runsPerSecond"] >= 20 * d["runsPerSecond"] for n, d in pairs) else "NOT met"
    if none and goal == "met":
        goal += " (where Docker completed no run, its rate counts as 0)"
p99 = by.get(("nsrun", 32), {}).get("p99Ms")
print(f"\nGoal >= 20x Docker's rate at every level: {goal}; "
      f"p99 at concurrency 32 < 50 ms: {'–' if p99 is None else ('met' if p99 < 50 else 'NOT met')} ({p99} ms).")
PY
cp "$report" "$out/serve-latest.md"
cat "$report"
