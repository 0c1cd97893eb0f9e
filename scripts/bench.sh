#!/usr/bin/env bash
# nsrun's benchmark suite: nsrun against docker, podman, crun, runc, bubblewrap and the bare
# namespace floor, side by side on this machine, with a Markdown report and PNG charts.
#
#   scripts/bench.sh                 # everything (as root: installs, starts a private dockerd
#                                    # and a registry, ~10-15 min on 2 cores)
#   scripts/bench.sh --quick         # 3 runs, busybox only, no docker: under a minute
#   scripts/bench.sh --only startup,concurrent --runs 30
#   scripts/bench.sh --check ...     # parse the options, print the plan, run nothing
#
# Scenarios (docs: the README's "Benchmarks"):
#   startup     warm start of `true` and `sh -c 'echo hi'` from a cached busybox image: nsrun
#               (root; rootless with subordinate ids; rootless single id), docker run, podman run
#               (root, rootless), crun and runc on a bundle (root, rootless), bwrap, and the floor
#               `unshare -Urmpnf --mount-proc`
#   confined    full default confinement (seccomp, capabilities, memory + pids limits): nsrun vs
#               crun and runc with Docker's seccomp profile (ours, converted to the OCI form) and
#               the same limits
#   concurrent  50 runs at once (xargs -P 50) for each runtime
#   pull        cold pull + unpack of a ~100 MB, 4-layer Debian image (debootstrap from the apt
#               mirror this machine uses): nsrun pull, docker pull, podman pull, skopeo copy +
#               umoci unpack, and the floor (tar -xzf of the same blobs); and a warm re-pull
#   memory      peak resident memory of nsrun during a run and during a pull, against the docker
#               CLI plus its containerd shim
#
# Output: benches/results/<date>-<host>.md (median, min, max and the ratio to nsrun for every
# row) and benches/results/<date>-<host>-<scenario>.png, plus copies named latest-*.{md,png}
# that the README shows. Everything it starts (registry, dockerd, containers) it stops; the
# cgroups the runtimes make are kept below this process's own cgroup and removed after.
#
# Environment: NSRUN_BIN and PUSH_ROOTFS use prebuilt binaries instead of a release build (CI
# passes its debug build); NSRUN_REGISTRY_PORT (default 5600) moves the registry;
# NSRUN_BENCH_USER (default nsrun-test) is the unprivileged user of the rootless rows.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)

usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; }
die() { echo "bench.sh: $*" >&2; exit 2; }
log() { printf '\n== %s\n' "$*" >&2; }

all_scenarios=(startup confined concurrent pull memory)
quick=false
runs=""
only=""
out=benches/results
install=true
check=false
while (($#)); do
  case $1 in
  --quick) quick=true ;;
  --runs)
    [[ ${2:-} =~ ^[1-9][0-9]*$ ]] || die "--runs needs a positive whole number, got '${2:-}'"
    runs=$2
    shift
    ;;
  --only)
    [[ -n ${2:-} ]] || die "--only needs a comma-separated list of: ${all_scenarios[*]}"
    only=$2
    shift
    ;;
  --out)
    [[ -n ${2:-} ]] || die "--out needs a directory"
    out=$2
    shift
    ;;
  --no-install) install=false ;;
  --check) check=true ;;
  -h | --help)
    usage
    exit 0
    ;;
  *) die "unknown option '$1' (see --help)" ;;
  esac
  shift
done
if $quick; then
  runs=${runs:-3}
  only=${only:-startup}
else
  runs=${runs:-20}
  only=${only:-$(
    IFS=,
    echo "${all_scenarios[*]}"
  )}
fi
IFS=, read -r -a scenarios <<<"$only"
for s in "${scenarios[@]}"; do
  [[ " ${all_scenarios[*]} " == *" $s "* ]] || die "unknown scenario '$s' (expected: ${all_scenarios[*]})"
done
want() { [[ ",$only," == *",$1,"* ]]; }
root=false
[[ $(id -u) == 0 ]] && root=true
if ! $quick && ! $root; then
  die "the full suite runs as root (it installs packages, starts dockerd, compares rootful runtimes); --quick runs as anyone"
fi
user=${NSRUN_BENCH_USER:-nsrun-test}
with_docker=false
$quick || with_docker=true
if $check; then
  echo "scenarios: ${scenarios[*]}"
  echo "runs: $runs"
  echo "output: $out"
  echo "docker: $with_docker"
  echo "root: $root (rootless rows as: $($root && echo "$user" || id -un))"
  exit 0
fi

# --- a private mount namespace on hybrid hosts -----------------------------------------------------
# crun refuses a cgroup2 mount without controllers beside v1 ("cgroups in hybrid mode not
# supported"); hide /sys/fs/cgroup/unified from everything the suite starts, in a mount
# namespace of our own. nsrun decides the same either way (no v2 controllers there).
if $root && [[ -z ${NSRUN_BENCH_PRIVATE_NS:-} ]] && mountpoint -q /sys/fs/cgroup/unified 2>/dev/null; then
  export NSRUN_BENCH_PRIVATE_NS=1
  exec unshare -m --propagation private -- bash -c 'umount /sys/fs/cgroup/unified && exec "$0" "$@"' "$0" \
    --runs "$runs" --only "$only" --out "$out" $($quick && echo --quick) $($install || echo --no-install)
fi

# --- what it compares against ----------------------------------------------------------------------
pkgs=(hyperfine bubblewrap docker-registry busybox-static gnuplot-nox python3 uidmap util-linux)
$quick || pkgs+=(docker.io podman crun runc skopeo umoci debootstrap time)
if $install; then
  missing=()
  for p in "${pkgs[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
  if ((${#missing[@]})); then
    $root || die "missing packages ${missing[*]}: run as root, or install them"
    log "installing ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  fi
fi
for t in hyperfine bwrap gnuplot python3; do command -v "$t" >/dev/null || die "needs $t"; done

# --- build -----------------------------------------------------------------------------------------
if [[ -z ${NSRUN_BIN:-} || -z ${PUSH_ROOTFS:-} ]]; then
  log "building nsrun (release)"
  cargo build --release --quiet --bin nsrun --example push_rootfs
fi
nsrun=$(realpath "${NSRUN_BIN:-target/release/nsrun}")
push_rootfs=$(realpath "${PUSH_ROOTFS:-target/release/examples/push_rootfs}")

work=$(mktemp -d /tmp/nsrun-bench.XXXXXX)
chmod 755 "$work"
export NSRUN_REGISTRY_PORT=${NSRUN_REGISTRY_PORT:-5600}
dockerd_pid=""
cg_made=()
cleanup() {
  set +e
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
docker_bin=/usr/bin/docker
docker_() { "$docker_bin" -H "unix://$work/docker.sock" "$@"; }

# Rootless rows run as $user (the suite itself runs as root to set things up).
if $root; then
  id "$user" >/dev/null 2>&1 || useradd -m "$user"
  grep -q "^$user:" /etc/subuid || usermod --add-subuids 300000-365535 "$user"
  grep -q "^$user:" /etc/subgid || usermod --add-subgids 300000-365535 "$user"
  mkdir -p "$work/xdg"
  chown "$user:" "$work/xdg"
  chmod 700 "$work/xdg"
  uhome=$(getent passwd "$user" | cut -d: -f6)
  asuser="setpriv --reuid=$user --regid=$user --init-groups env -i PATH=/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin HOME=$uhome XDG_RUNTIME_DIR=$work/xdg"
else
  asuser="env"
fi

# A cgroup below ours, in every v1 hierarchy, for the runtimes to put their cgroups in (we never
# touch a cgroup we did not make). The deepest of our paths, when it is below ours in each.
cgparent=""
if $root && ! $quick; then
  deepest=$(awk -F: '$2 ~ /(^|,)(memory|pids|cpu)(,|$)/ {print $3}' /proc/self/cgroup | awk '{print length, $0}' | sort -n | tail -1 | cut -d' ' -f2)
  ok=true
  while IFS=: read -r _ ctrls path; do
    [[ -n $ctrls ]] || continue # every v1 hierarchy: runc and crun make cgroups in all of them
    [[ $deepest == "$path" || $deepest == "${path%/}/"* ]] || ok=false
  done </proc/self/cgroup
  if $ok; then
    cgparent=${deepest%/}/nsrun-bench-$$
    # The runtimes make cgparent/<theirs> in every v1 hierarchy; where our cgroup there is
    # shallower than `deepest`, the levels in between are made too: remember what existed, so
    # cleanup removes exactly what was made.
    for h in /sys/fs/cgroup/*/; do
      [[ -f $h/cgroup.procs ]] || continue
      p=""
      for comp in ${cgparent//\// }; do
        p+=/$comp
        [[ -d ${h%/}$p ]] || { cg_made+=("${h%/}$p"); break; }
      done
    done
    for c in memory pids cpu,cpuacct; do
      [[ -d /sys/fs/cgroup/$c ]] && mkdir -p "/sys/fs/cgroup/$c$cgparent"
    done
  else
    echo "bench.sh: our v1 cgroups differ per controller; the confined crun/runc rows are skipped" >&2
  fi
fi

# --- images ----------------------------------------------------------------------------------------
log "busybox rootfs, registry on 127.0.0.1:$NSRUN_REGISTRY_PORT"
scripts/mkrootfs-busybox.sh "$work/busybox" >/dev/null
chmod -R a+rX "$work/busybox"
scripts/registry.sh start "$work" >/dev/null
img=127.0.0.1:$NSRUN_REGISTRY_PORT/bench/busybox:1
"$push_rootfs" "$work/busybox" "$img" >/dev/null
"$nsrun" pull -q --root "$work/cache-root" "$img" >/dev/null
mkdir -p "$work/cache-user"
$root && chown "$user:" "$work/cache-user"
$asuser "$nsrun" pull -q --root "$work/cache-user" "$img" >/dev/null

# OCI bundles for crun/runc: the same rootfs, `crun spec` (rootless: --rootless), our command.
# make_bundle DIR ROOTLESS CONFINED
make_bundle() {
  local dir=$1 rootless=$2 confined=$3
  mkdir -p "$dir"
  # runc's rootless spec carries the uid/gid mappings runc wants; crun's spec suits both otherwise.
  local tool=crun
  [[ $rootless == true && $dir == *runc* ]] && tool=runc
  (cd "$dir" && if $rootless; then $tool spec --rootless; else $tool spec; fi)
  BENCH_ROOTFS=$work/busybox python3 - "$dir/config.json" "$rootless" "$confined" "$cgparent" "$repo/profiles/default.json" <<'PY'
import json, os, sys
path, rootless, confined, cgparent, profile = sys.argv[1:6]
c = json.load(open(path))
c["process"]["terminal"] = False
c["process"]["args"] = ["/bin/true"]
c["root"] = {"path": os.environ["BENCH_ROOTFS"], "readonly": True}  # runc refuses a symlink
c["hostname"] = "bench"
if rootless != "true" and cgparent:
    c["linux"]["cgroupsPath"] = cgparent + "/" + os.path.basename(os.path.dirname(path))
if confined == "true":
    c["linux"]["resources"] = {"memory": {"limit": 256 << 20}, "pids": {"limit": 256}}
    # Our Docker-format profile, resolved for the bundle's capabilities, in the OCI form.
    p = json.load(open(profile))
    caps = set(c["process"]["capabilities"]["bounding"])
    arch = p["archMap"][0]
    rules = []
    for r in p["syscalls"]:
        inc, exc = r.get("includes", {}), r.get("excludes", {})
        if inc.get("caps") and not set(inc["caps"]) <= caps:
            continue
        if exc.get("caps") and set(exc["caps"]) & caps:
            continue
        # Docker's arch names, as the profile's includes/excludes use them.
        short = {"SCMP_ARCH_X86_64": ["amd64", "x86", "x32"], "SCMP_ARCH_AARCH64": ["arm64", "arm"]}.get(arch["architecture"], [])
        if inc.get("arches") and not set(inc["arches"]) & set(short):
            continue
        if exc.get("arches") and set(exc["arches"]) & set(short):
            continue
        rule = {"names": r["names"], "action": r["action"]}
        for k in ("args", "errnoRet"):
            if k in r:
                rule[k] = r[k]
        rules.append(rule)
    c["linux"]["seccomp"] = {
        "defaultAction": p["defaultAction"],
        "defaultErrnoRet": p.get("defaultErrnoRet", 1),
        "architectures": [arch["architecture"]] + arch["subArchitectures"],
        "syscalls": rules,
    }
json.dump(c, open(path, "w"), indent=1)
PY
  $rootless && chown -R "$user:" "$dir"
  return 0
}

have() { command -v "$1" >/dev/null; }
if ! $quick; then
  have crun && make_bundle "$work/b-crun" false false && make_bundle "$work/b-crun-c" false true
  have runc && make_bundle "$work/b-runc" false false && make_bundle "$work/b-runc-c" false true
  have crun && make_bundle "$work/b-crun-u" true false
  have runc && make_bundle "$work/b-runc-u" true false
fi

if $with_docker; then
  log "starting a private dockerd"
  mkdir -p "$work/docker" "$work/docker-exec"
  dockerd_args=(--data-root "$work/docker" --exec-root "$work/docker-exec" -H "unix://$work/docker.sock"
    --pidfile "$work/docker.pid" --bridge none --iptables=false --ip6tables=false
    --insecure-registry "127.0.0.1:$NSRUN_REGISTRY_PORT" --exec-opt native.cgroupdriver=cgroupfs)
  [[ -n $cgparent ]] && dockerd_args+=(--cgroup-parent "$cgparent/docker")
  # It stops by itself after 2 hours should this script be killed before its cleanup.
  timeout 7200 dockerd "${dockerd_args[@]}" >"$work/dockerd.log" 2>&1 &
  dockerd_pid=$!
  for _ in $(seq 100); do docker_ info >/dev/null 2>&1 && break; sleep 0.2; done
  docker_ info >/dev/null 2>&1 || { tail -5 "$work/dockerd.log" >&2; die "dockerd did not start"; }
  docker_ pull -q "$img" >/dev/null
fi
podman_root=(podman --root "$work/podman/root" --runroot "$work/podman/run" --storage-driver overlay
  --cgroup-manager cgroupfs --events-backend file --tmpdir "$work/podman/tmp")
podman_user="podman --root $work/podman-u/root --runroot $work/xdg/podman-run --storage-driver overlay --cgroup-manager cgroupfs --events-backend file --tmpdir $work/xdg/podman-tmp"
podman_ok=false
if ! $quick && have podman; then
  "${podman_root[@]}" pull -q --tls-verify=false "$img" >/dev/null && podman_ok=true
  mkdir -p "$work/podman-u"
  chown "$user:" "$work/podman-u"
  $asuser $podman_user pull -q --tls-verify=false "$img" >/dev/null || podman_ok=false
fi
podman_cg=()
[[ -n $cgparent ]] && podman_cg=(--cgroup-parent "$cgparent/podman")
# podman's default rlimits (nofile 1048576, nproc 4194304) are above the hard limits of many
# hosts, which root without CAP_SYS_RESOURCE (a container, this VM) cannot raise (crun:
# "setrlimit RLIMIT_NOFILE: Operation not permitted"): ask for modest ones, as docker gives.
podman_ul="--ulimit nofile=1024:1024 --ulimit nproc=4096:4096"
podman_cg+=($podman_ul)

# --- measuring -------------------------------------------------------------------------------------
mkdir -p "$work/json"
# bench SCENARIO HYPERFINE_ARGS... -- NAME CMD NAME CMD ...: one hyperfine run, rows side by side.
# Each row is tried once first: one that fails on this host is left out and named in the report
# with its error, rather than sinking the scenario.
mkdir -p "$work/failed"
bench() {
  local scenario=$1
  shift
  local hf=()
  while [[ $1 != -- ]]; do hf+=("$1"); shift; done
  shift
  local args=()
  while (($#)); do
    if bash -c "$2" >/dev/null 2>"$work/row.err" </dev/null; then
      args+=(-n "$1" "$2")
    else
      printf '%s\t%s\n' "$1" "$(grep -v '^\s*$' "$work/row.err" | tail -1 | cut -c1-160)" >>"$work/failed/$scenario"
      echo "bench.sh: $scenario: '$1' fails here, left out: $(tail -1 "$work/row.err")" >&2
    fi
    shift 2
  done
  ((${#args[@]})) || die "scenario $scenario: every row failed"
  hyperfine "${hf[@]}" --export-json "$work/json/$scenario.json" "${args[@]}" >"$work/$scenario.log" 2>&1 ||
    { cat "$work/$scenario.log" >&2; die "scenario $scenario failed"; }
}

# The crun/runc bundle of a command is named after a short hash of it (see bundle_for).
cmd_hash() { echo "$1" | md5sum | cut -c1-6; }

# startup_rows CMD...: the warm-start rows for one command
startup_rows() {
  local c="$*" rows=()
  rows+=("nsrun" "$nsrun run --root $work/cache-root --pull never $img $c")
  if $root; then
    rows+=("nsrun rootless subid" "$asuser $nsrun run --root $work/cache-user --pull never --userns subid $img $c")
    rows+=("nsrun rootless single" "$asuser $nsrun run --root $work/cache-user --pull never --userns single $img $c")
  fi
  $with_docker && rows+=("docker run" "$docker_bin -H unix://$work/docker.sock run --rm --network none $img $c")
  if $podman_ok; then
    rows+=("podman run" "${podman_root[*]} run --rm --network none ${podman_cg[*]} $img $c")
    rows+=("podman rootless" "$asuser $podman_user run --rm --network none $podman_ul $img $c")
  fi
  if ! $quick; then
    local b
    for b in crun runc; do
      have $b || continue
      rows+=("$b" "$b --root $work/state-$b run --bundle $work/b-$b-$(cmd_hash "$c") x")
      rows+=("$b rootless" "$asuser $b --root $work/xdg/state-$b run --bundle $work/b-$b-u-$(cmd_hash "$c") x")
    done
  fi
  rows+=("bwrap" "bwrap --unshare-all --ro-bind $work/busybox / --proc /proc --dev /dev --tmpfs /tmp -- $c")
  $root && rows+=("bwrap rootless" "$asuser bwrap --unshare-all --ro-bind $work/busybox / --proc /proc --dev /dev --tmpfs /tmp -- $c")
  rows+=("floor (unshare)" "unshare -Urmpnf --mount-proc --root $work/busybox $c")
  printf '%s\n' "${rows[@]}"
}
# Bundles per command (crun/runc take the command from config.json).
bundle_for() {
  local c=$1 h b
  h=$(cmd_hash "$c")
  for b in crun runc; do
    have $b || continue
    for v in "" "-u"; do
      [[ -d $work/b-$b$v ]] || continue
      cp -a "$work/b-$b$v" "$work/b-$b$v-$h"
      python3 - "$work/b-$b$v-$h/config.json" "$c" <<'PY'
import json, shlex, sys
c = json.load(open(sys.argv[1]))
c["process"]["args"] = shlex.split(sys.argv[2])
json.dump(c, open(sys.argv[1], "w"), indent=1)
PY
    done
  done
}

if ! $quick; then
  bundle_for "true"
  bundle_for "sh -c 'echo hi'"
fi

if want startup; then
  for c in "true" "sh -c 'echo hi'"; do
    log "startup: $c"
    mapfile -t rows < <(startup_rows "$c")
    tag=$([[ $c == true ]] && echo startup-true || echo startup-echo)
    bench "$tag" -N --warmup 3 --runs "$runs" -- "${rows[@]}"
  done
fi

if want confined; then
  log "confined: seccomp + capabilities + memory and pids limits"
  rows=("nsrun" "$nsrun run --root $work/cache-root --pull never --memory 256m --pids-limit 256 $img true")
  rows+=("nsrun unconfined" "$nsrun run --root $work/cache-root --pull never --security-opt seccomp=unconfined $img true")
  if [[ -n $cgparent ]]; then
    have crun && rows+=("crun" "crun --root $work/state-crun run --bundle $work/b-crun-c x")
    have runc && rows+=("runc" "runc --root $work/state-runc run --bundle $work/b-runc-c x")
  fi
  have crun && rows+=("crun unconfined" "crun --root $work/state-crun run --bundle $work/b-crun-$(cmd_hash true) x")
  bench confined -N --warmup 3 --runs "$runs" -- "${rows[@]}"
fi

if want concurrent; then
  log "concurrent: 50 runs at once"
  n=50
  # One bundle per container: each needs a cgroup path of its own (below ours).
  conc_bundles() {
    local b=$1 i
    for i in $(seq "$n"); do
      mkdir -p "$work/conc-$b/$i"
      python3 - "$work/b-$b-$(cmd_hash true)/config.json" "$work/conc-$b/$i/config.json" "$i" <<'PY'
import json, sys
c = json.load(open(sys.argv[1]))
if "cgroupsPath" in c["linux"]:
    c["linux"]["cgroupsPath"] += "-" + sys.argv[3]
json.dump(c, open(sys.argv[2], "w"))
PY
    done
  }
  crun_c() { echo "seq $n | xargs -P $n -I{} $1 --root $work/state-$1 run --bundle $work/conc-$1/{} c{}"; }
  if ! $quick; then
    have crun && conc_bundles crun
    have runc && conc_bundles runc
  fi
  rows=("nsrun" "seq $n | xargs -P $n -I{} $nsrun run --root $work/cache-root --pull never $img true")
  $root && rows+=("nsrun rootless subid" "seq $n | xargs -P $n -I{} $asuser $nsrun run --root $work/cache-user --pull never $img true")
  $with_docker && rows+=("docker run" "seq $n | xargs -P $n -I{} $docker_bin -H unix://$work/docker.sock run --rm --network none $img true")
  $podman_ok && rows+=("podman run" "seq $n | xargs -P $n -I{} ${podman_root[*]} run --rm --network none ${podman_cg[*]} $img true")
  if ! $quick; then
    have crun && rows+=("crun" "$(crun_c crun)")
    have runc && rows+=("runc" "$(crun_c runc)")
  fi
  rows+=("bwrap" "seq $n | xargs -P $n -I{} bwrap --unshare-all --ro-bind $work/busybox / --proc /proc --dev /dev --tmpfs /tmp -- true")
  bench concurrent --shell=bash --warmup 1 --runs "$(( runs < 5 ? runs : 5 ))" -- "${rows[@]}"
fi

if want pull; then
  log "pull: the Debian image (debootstrap, once)"
  cache=$repo/target/bench-pull
  mkdir -p "$cache"
  scripts/mkrootfs-debian.sh "$cache/debian-rootfs.tar"
  mkdir "$work/debian"
  tar -C "$work/debian" -xf "$cache/debian-rootfs.tar"
  deb=127.0.0.1:$NSRUN_REGISTRY_PORT/bench/debian:bookworm
  "$push_rootfs" "$work/debian" "$deb" --layers 4 --cmd /bin/bash >/dev/null
  rm -rf "$work/debian"
  # The same blobs, for the floor: what unpacking alone costs.
  skopeo copy -q --src-tls-verify=false "docker://$deb" "oci:$work/deb-oci:latest"
  manifest=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["manifests"][0]["digest"].split(":")[1])' "$work/deb-oci/index.json")
  blobs=$(python3 -c 'import json,sys; print(" ".join(l["digest"].split(":")[1] for l in json.load(open(sys.argv[1]))["layers"]))' "$work/deb-oci/blobs/sha256/$manifest")
  floor_cmd="mkdir -p $work/floor && for l in $blobs; do tar -xzf $work/deb-oci/blobs/sha256/\$l -C $work/floor; done"
  drop="sync; echo 3 > /proc/sys/vm/drop_caches"
  rows=("nsrun pull" "$nsrun pull -q --root $work/pull-nsrun $deb")
  $with_docker && rows+=("docker pull" "$docker_bin -H unix://$work/docker.sock pull -q $deb")
  have podman && rows+=("podman pull" "${podman_root[*]} pull -q --tls-verify=false $deb")
  rows+=("skopeo copy + umoci unpack" "skopeo copy -q --src-tls-verify=false docker://$deb oci:$work/pull-skopeo:latest && umoci raw unpack --rootless --image $work/pull-skopeo:latest $work/pull-umoci")
  rows+=("skopeo copy (download only)" "skopeo copy -q --src-tls-verify=false docker://$deb oci:$work/pull-skopeo2:latest")
  rows+=("floor (tar -xzf)" "$floor_cmd")
  prep="rm -rf $work/pull-nsrun $work/pull-skopeo $work/pull-skopeo2 $work/pull-umoci $work/floor; "
  $with_docker && prep+="$docker_bin -H unix://$work/docker.sock rmi -f $deb >/dev/null 2>&1; "
  have podman && prep+="${podman_root[*]} rmi -f $deb >/dev/null 2>&1; "
  prep+="$drop"
  log "pull: cold"
  bench pull-cold --shell=bash --runs "$(( runs < 5 ? runs : 5 ))" --prepare "$prep" -- "${rows[@]}"
  log "pull: warm (manifest unchanged)"
  "$nsrun" pull -q --root "$work/pull-nsrun" "$deb" >/dev/null
  rows=("nsrun pull" "$nsrun pull -q --root $work/pull-nsrun $deb")
  $with_docker && { docker_ pull -q "$deb" >/dev/null; rows+=("docker pull" "$docker_bin -H unix://$work/docker.sock pull -q $deb"); }
  have podman && { "${podman_root[@]}" pull -q --tls-verify=false "$deb" >/dev/null; rows+=("podman pull" "${podman_root[*]} pull -q --tls-verify=false $deb"); }
  bench pull-warm -N --warmup 2 --runs "$runs" -- "${rows[@]}"
fi

if want memory; then
  log "memory: peak RSS"
  mem=$work/memory.tsv
  : >"$mem"
  peak() { /usr/bin/time -f %M "$@" 2>&1 >/dev/null | tail -1; }
  for _ in 1 2 3; do
    echo "nsrun run (nsrun + tool)	$(peak "$nsrun" run --root "$work/cache-root" --pull never "$img" true)" >>"$mem"
    if $with_docker; then
      echo "docker run (CLI only)	$(peak "$docker_bin" -H "unix://$work/docker.sock" run --rm --network none "$img" true)" >>"$mem"
    fi
  done
  if $with_docker; then
    docker_ run -d --rm --network none --name nsrun-bench-mem "$img" sleep 5 >/dev/null
    sleep 1
    shim=$(ps -C containerd-shim-runc-v2 -o rss= | sort -n | tail -1)
    echo "docker containerd-shim (per container)	${shim:-0}" >>"$mem"
    docker_ rm -f nsrun-bench-mem >/dev/null 2>&1 || true
  fi
  if want pull; then
    rm -rf "$work/pull-nsrun"
    sync
    echo 3 >/proc/sys/vm/drop_caches
    echo "nsrun pull (cold, Debian)	$(peak "$nsrun" pull -q --root "$work/pull-nsrun" "$deb")" >>"$mem"
  fi
fi

# --- report ----------------------------------------------------------------------------------------
host=$(hostname -s)
stamp=$(date -u +%Y-%m-%d)
mkdir -p "$out"
base=$out/$stamp-$host
log "report: $base.md"
python3 - "$work/json" "$base" "$runs" "$($quick && echo quick || echo full)" "$(uname -r)" "$(nproc)" "${mem:-}" <<'PY'
import json, os, subprocess, sys
jdir, base, runs, mode, kernel, cpus, mem = sys.argv[1:8]
fdir = os.path.join(os.path.dirname(jdir), "failed")
order = ["startup-true", "startup-echo", "confined", "concurrent", "pull-cold", "pull-warm"]
titles = {
    "startup-true": "Warm start: `true` from a cached busybox image",
    "startup-echo": "Warm start: `sh -c 'echo hi'`",
    "confined": "Full default confinement (seccomp, capabilities, --memory 256m --pids-limit 256)",
    "concurrent": "50 concurrent runs (xargs -P 50), whole batch",
    "pull-cold": "Cold pull + unpack of a ~100 MB 4-layer Debian image (page cache dropped)",
    "pull-warm": "Re-pull with an unchanged manifest",
}
lines = [f"# nsrun benchmarks, {os.path.basename(base)}", "",
         f"Mode {mode}; {runs} runs per row unless noted; Linux {kernel}, {cpus} CPUs; hyperfine medians "
         "measured side by side in one run. Ratio = row / nsrun (lower is faster).", ""]
charts = []
for sc in order:
    f = os.path.join(jdir, sc + ".json")
    if not os.path.exists(f):
        continue
    res = json.load(open(f))["results"]
    ref = next((r["median"] for r in res if r["command"] in ("nsrun", "nsrun pull")), res[0]["median"])
    unit, scale = ("s", 1) if max(r["median"] for r in res) > 2 else ("ms", 1e3)
    lines += [f"## {titles[sc]}", "", f"| runtime | median ({unit}) | min | max | runs | ratio to nsrun |", "|---|---|---|---|---|---|"]
    rows = []
    for r in res:
        m = r["median"]
        lines.append(f"| {r['command']} | {m*scale:.2f} | {r['min']*scale:.2f} | {r['max']*scale:.2f} | {len(r['times'])} | {m/ref:.2f} |")
        rows.append((r["command"], m * scale))
    lines.append("")
    ff = os.path.join(fdir, sc)
    if os.path.exists(ff):
        lines.append("Left out, failing on this host:")
        for l in open(ff):
            name, _, err = l.rstrip("\n").partition("\t")
            lines.append(f"- {name}: `{err}`")
        lines.append("")
    dat = f"{base}-{sc}.dat"
    with open(dat, "w") as d:
        for name, v in rows:
            d.write(f'"{name}" {v}\n')
    png = f"{base}-{sc}.png"
    logscale = "set logscale y" if max(v for _, v in rows) / max(min(v for _, v in rows), 1e-9) > 30 else "unset logscale y"
    script = f"""
set terminal pngcairo size 900,420 noenhanced font ',10'
set output '{png}'
set title "{titles[sc].replace('`', '')}"
set style data histograms
set style fill solid 0.8 border -1
set boxwidth 0.7
set ylabel 'median ({unit})'
{logscale}
set xtics rotate by -30 scale 0
set grid ytics
unset key
plot '{dat}' using 2:xtic(1) linecolor rgb '#3a6ea5', '' using 0:2:(sprintf('%.2f', $2)) with labels offset 0,0.7
"""
    p = subprocess.run(["gnuplot"], input=script, text=True, capture_output=True)
    os.remove(dat)
    if p.returncode == 0:
        charts.append(png)
        lines += [f"![{sc}]({os.path.basename(png)})", ""]
    else:
        lines += [f"(chart failed: {p.stderr.strip().splitlines()[-1] if p.stderr.strip() else 'gnuplot error'})", ""]
if mem and os.path.exists(mem) and os.path.getsize(mem):
    from statistics import median
    vals = {}
    for l in open(mem):
        k, v = l.rstrip("\n").split("\t")
        vals.setdefault(k, []).append(int(v or 0))
    lines += ["## Peak resident memory (GNU time %M; median of 3)", "", "| what | peak RSS (MiB) |", "|---|---|"]
    for k, v in vals.items():
        lines.append(f"| {k} | {median(v)/1024:.1f} |")
    lines.append("")
open(base + ".md", "w").write("\n".join(lines))
print("\n".join(lines))
PY
for f in "$base".md "$base"-*.png; do
  [[ -e $f ]] || continue
  cp "$f" "$out/latest${f#"$base"}"
done
sed -i "s|($(basename "$base")-|(latest-|g" "$out/latest.md"
