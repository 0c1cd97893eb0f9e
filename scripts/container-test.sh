#!/usr/bin/env bash
# nsrun inside Docker and podman containers, without --privileged: the recipe of docs/deploy.md.
#
#   scripts/container-test.sh (as root) NSRUN_BINARY BUSYBOX_ROOTFS [--bench [RUNS [ROUNDS]]]
#
# Starts a private dockerd (its own data root, exec root, pidfile and socket under a temp dir,
# no bridge, no iptables; it stops with this script, and by itself after 15 minutes or when this
# script is gone), builds an image holding nsrun and the busybox rootfs from a tarball (FROM
# scratch: nothing is pulled), and checks, as uid 1000 inside the container:
#   1. Docker's defaults: `nsrun doctor` names what is missing (the seccomp calls, the masked
#      /proc) and exits 1; a run fails with the recipe in one line.
#   2. The recipe (seccomp profile from `nsrun doctor --seccomp-profile docker`,
#      systempaths=unconfined, no capability added): doctor exits 0 and a run is confined
#      (read-only root, own pid and net namespaces, seccomp on).
#   3. podman with `--security-opt unmask=/proc/*`: with its default seccomp profile doctor
#      names the one call it refuses (sethostname); with the profile from
#      `nsrun doctor --seccomp-profile podman` doctor exits 0 and a run is confined.
# With --bench it also measures start-up (hyperfine, `nsrun run --rootfs -- /bin/true`, RUNS
# runs per round, default 30) as uid 1000 inside the recipe container and on the host,
# alternating for ROUNDS rounds (default 9), and prints the medians.
# Prints "N passed, M failed"; exits non-zero on any failure.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)
nsrun=$(realpath "${1:?usage: container-test.sh NSRUN_BINARY BUSYBOX_ROOTFS [--bench RUNS]}")
rootfs=$(realpath "${2:?busybox rootfs}")
bench=0
rounds=9
if [[ ${3:-} == --bench ]]; then bench=${4:-30}; rounds=${5:-9}; fi
[[ $(id -u) == 0 ]] || { echo "container-test.sh: needs root (it starts a private dockerd): run it as root (sudo $0)" >&2; exit 1; }
for tool in dockerd docker podman; do
  command -v "$tool" >/dev/null || { echo "container-test.sh: $tool missing (apt-get install docker.io podman)" >&2; exit 1; }
done
docker=/usr/bin/docker # Debian's client, matching its daemon

tmp=$(mktemp -d /tmp/nsrun-ct.XXXXXX)
chmod 755 "$tmp"
dockerd_pid=
passed=0
failed=0
cleanup() {
  set +e
  if [[ -n $dockerd_pid ]]; then
    "$docker" -H "unix://$tmp/docker.sock" rm -f $("$docker" -H "unix://$tmp/docker.sock" ps -aq) >/dev/null 2>&1
    kill "$dockerd_pid" 2>/dev/null
    for _ in $(seq 100); do kill -0 "$dockerd_pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$dockerd_pid" 2>/dev/null
    stop_containerd
  fi
  podman_ rm -af >/dev/null 2>&1
  # Overlay mounts of both engines live under $tmp: unmount before removing.
  grep -o " $tmp/[^ ]*" /proc/self/mountinfo | sort -r | xargs -r -n1 umount -l 2>/dev/null
  rm -rf "$tmp"
}
trap cleanup EXIT

log() { printf '\n-- %s\n' "$*"; }
pass() { passed=$((passed + 1)); echo "ok: $*"; }
fail() { failed=$((failed + 1)); echo "FAILED: $*"; }
expect() { # expect DESCRIPTION COMMAND... : the command must succeed
  local what=$1; shift
  if "$@"; then pass "$what"; else fail "$what"; fi
}

podman_() {
  podman --root "$tmp/podman/root" --runroot "$tmp/podman/run" --tmpdir "$tmp/podman/tmp" \
    --cgroup-manager cgroupfs --events-backend file "$@"
}

# --- a private dockerd ------------------------------------------------------------------------
log "starting a private dockerd"
mkdir -p "$tmp/data" "$tmp/exec"
# timeout: it stops by itself after 15 minutes whatever happens to us; the watcher below stops it
# as soon as this script is gone (even after SIGKILL).
timeout --kill-after=10 900 dockerd \
  --data-root "$tmp/data" --exec-root "$tmp/exec" --pidfile "$tmp/docker.pid" \
  -H "unix://$tmp/docker.sock" --bridge none --iptables=false --ip-masq=false \
  --userland-proxy=false --log-level warn >"$tmp/dockerd.log" 2>&1 &
dockerd_pid=$!
me=$$
# dockerd's own containerd goes with a SIGTERMed dockerd, not with a SIGKILLed one: the watcher
# ends it too.
stop_containerd() {
  local pid
  pid=$(cat "$tmp/exec/containerd/containerd.pid" 2>/dev/null) || return 0
  kill "$pid" 2>/dev/null
}
( while kill -0 "$me" 2>/dev/null && kill -0 "$dockerd_pid" 2>/dev/null; do sleep 1; done
  kill "$dockerd_pid" 2>/dev/null; sleep 10; stop_containerd ) >/dev/null 2>&1 &
D() { "$docker" -H "unix://$tmp/docker.sock" "$@"; }
for _ in $(seq 300); do D version >/dev/null 2>&1 && break; sleep 0.1; done
D version --format 'dockerd {{.Server.Version}}' || { cat "$tmp/dockerd.log"; exit 1; }

# --- the image: nsrun, its libraries, the busybox rootfs, a worker user -----------------------
log "building the image (FROM scratch)"
img=$tmp/img
mkdir -p "$img/usr/local/bin" "$img/etc" "$img/tmp" "$img/rootfs"
cp -a "$rootfs/." "$img/"            # busybox, for a shell in the worker's container
cp -a "$rootfs/." "$img/rootfs/"     # the rootfs nsrun runs tools on
cp "$nsrun" "$img/usr/local/bin/nsrun"
for lib in $(ldd "$nsrun" | grep -o '/[^ ]*'); do
  mkdir -p "$img$(dirname "$lib")"
  cp -L "$lib" "$img$lib"
done
if ((bench)); then
  cp "$(command -v hyperfine)" "$img/usr/local/bin/"
  for lib in $(ldd "$(command -v hyperfine)" | grep -o '/[^ ]*'); do
    mkdir -p "$img$(dirname "$lib")"; cp -L "$lib" "$img$lib"
  done
fi
printf 'root:x:0:0::/root:/bin/sh\nworker:x:1000:1000::/tmp:/bin/sh\n' >"$img/etc/passwd"
printf 'root:x:0:\nworker:x:1000:\n' >"$img/etc/group"
chmod 1777 "$img/tmp"
tar -C "$img" -cf "$tmp/img.tar" .
D import --change 'ENV NSRUN_ROOT=/tmp/nsrun' --change 'ENV HOME=/tmp' "$tmp/img.tar" nsrun-ct:test >/dev/null
mkdir -p "$tmp/podman/root" "$tmp/podman/run" "$tmp/podman/tmp"
podman_ import -q --change 'ENV NSRUN_ROOT=/tmp/nsrun' --change 'ENV HOME=/tmp' "$tmp/img.tar" localhost/nsrun-ct:test >/dev/null

"$nsrun" doctor --seccomp-profile docker >"$tmp/nsrun-seccomp.json"
recipe=(--user 1000:1000 --network none --security-opt "seccomp=$tmp/nsrun-seccomp.json"
  --security-opt systempaths=unconfined)
# What a confined run shows from inside: read-only root, seccomp, its own pid and net namespaces.
probe='touch /x 2>/dev/null && echo root=rw || echo root=ro; grep Seccomp: /proc/self/status;
  echo pid=$$; echo net=$(sed 1,2d /proc/self/net/dev | cut -d: -f1 | tr -d " " | tr "\n" " ")'
confined_ok() { # OUTPUT: the probe's output must show full confinement
  grep -qx 'root=ro' <<<"$1" && grep -qP '^Seccomp:\t2$' <<<"$1" &&
    grep -qx 'pid=2' <<<"$1" && grep -qx 'net=lo' <<<"$1"
}

# --- 1. Docker's defaults: doctor says what is missing, a run refuses with the recipe ---------
log "docker, default settings (uid 1000)"
set +e
out=$(D run --rm --user 1000:1000 --network none nsrun-ct:test nsrun doctor 2>&1); code=$?
set -e
echo "$out"
expect "doctor exits 1 under Docker's defaults" test "$code" = 1
expect "doctor names the seccomp calls Docker refuses" grep -q '^FAIL  seccomp .*refuses clone (EPERM), unshare (EPERM), mount (EPERM), umount2 (EPERM)' <<<"$out"
expect "doctor's fix is the recipe, not a sysctl" bash -c 'grep -A1 "^FAIL  seccomp" <<<"$1" | grep -q "fix: .*--seccomp-profile docker.*systempaths=unconfined"' _ "$out"
expect "doctor names the masked /proc too" grep -q '^FAIL  proc .*path(s) under /proc are covered' <<<"$out"
expect "doctor does not blame a sysctl" bash -c '! grep -A1 "^FAIL" <<<"$1" | grep -q sysctl' _ "$out"
set +e
out=$(D run --rm --user 1000:1000 --network none nsrun-ct:test nsrun run --rootfs /rootfs -- /bin/true 2>&1); code=$?
set -e
echo "$out"
expect "a run exits 125" test "$code" = 125
expect "a run fails in one line with the recipe" bash -c '[[ $(wc -l <<<"$1") == 1 ]] && grep -q "seccomp filter refuses clone.*nsrun doctor --seccomp-profile docker.*systempaths=unconfined.*never --privileged" <<<"$1"' _ "$out"

# Docker's seccomp profile without the /proc unmask: seccomp passes, /proc is named.
log "docker, nsrun's profile but a masked /proc (uid 1000)"
set +e
out=$(D run --rm --user 1000:1000 --network none --security-opt "seccomp=$tmp/nsrun-seccomp.json" nsrun-ct:test nsrun doctor 2>&1); code=$?
set -e
echo "$out"
expect "doctor exits 1 behind a masked /proc" test "$code" = 1
expect "doctor names the masked /proc and that --proc host-bind works" grep -q '^FAIL  proc .*a fresh /proc is refused.*`--proc host-bind` works' <<<"$out"
expect "the seccomp check passes with nsrun's profile" grep -q '^ok    seccomp' <<<"$out"
set +e
out=$(D run --rm --user 1000:1000 --network none --security-opt "seccomp=$tmp/nsrun-seccomp.json" nsrun-ct:test \
  nsrun run --proc host-bind --rootfs /rootfs -- /bin/sh -c "$probe" 2>&1); code=$?
set -e
echo "$out"
expect "--proc host-bind runs confined there" confined_ok "$out"

# --- 2. the recipe ------------------------------------------------------------------------------
log "docker, the recipe: ${recipe[*]}"
set +e
out=$(D run --rm "${recipe[@]}" nsrun-ct:test nsrun doctor 2>&1); code=$?
set -e
echo "$out"
expect "doctor exits 0 with the recipe" test "$code" = 0
out=$(D run --rm "${recipe[@]}" nsrun-ct:test nsrun run --rootfs /rootfs -- /bin/sh -c "$probe" 2>&1) || true
echo "$out"
expect "a run is confined with the recipe (read-only root, seccomp, own pid and net ns)" confined_ok "$out"
caps_default=$(D run --rm --user 1000:1000 --network none nsrun-ct:test grep CapBnd /proc/self/status)
caps_recipe=$(D run --rm "${recipe[@]}" nsrun-ct:test grep CapBnd /proc/self/status)
expect "the recipe adds no capability ($caps_recipe)" test "$caps_default" = "$caps_recipe"

# --- 3. podman with unmask=/proc/* -------------------------------------------------------------
log "podman, its default seccomp profile and --security-opt unmask=/proc/* (uid 1000)"
# podman raises RLIMIT_NOFILE and RLIMIT_NPROC by default, which needs CAP_SYS_RESOURCE (a
# sandboxed CI root may lack it): ask for lower ones. runc, because crun refuses hybrid cgroups.
podman_opts=(run --rm --runtime runc --ulimit nofile=4096:4096 --ulimit nproc=4096:4096
  --user 1000:1000 --network none)
# podman's default profile allows all nsrun needs but sethostname: doctor names exactly that.
set +e
out=$(podman_ "${podman_opts[@]}" --security-opt 'unmask=/proc/*' localhost/nsrun-ct:test nsrun doctor 2>&1); code=$?
set -e
echo "$out"
expect "podman defaults + unmask: doctor exits 1" test "$code" = 1
expect "podman defaults + unmask: doctor names sethostname, and only it" grep -qx 'FAIL  seccomp      1 filter(s); it refuses sethostname (EPERM)' <<<"$out"
expect "podman defaults + unmask: /proc is fine" grep -q '^ok    proc ' <<<"$out"
"$nsrun" doctor --seccomp-profile podman >"$tmp/nsrun-seccomp-podman.json"
log "podman, the recipe: --security-opt seccomp=<--seccomp-profile podman> --security-opt unmask=/proc/*"
podman_run=("${podman_opts[@]}" --security-opt "seccomp=$tmp/nsrun-seccomp-podman.json"
  --security-opt 'unmask=/proc/*' localhost/nsrun-ct:test)
set +e
out=$(podman_ "${podman_run[@]}" nsrun doctor 2>&1); code=$?
set -e
echo "$out"
expect "podman: doctor exits 0 with the recipe" test "$code" = 0
out=$(podman_ "${podman_run[@]}" nsrun run --rootfs /rootfs -- /bin/sh -c "$probe" 2>&1) || true
echo "$out"
expect "podman: a run is confined" confined_ok "$out"

# --- start-up, inside the recipe container and on the host --------------------------------------
if ((bench)); then
  log "start-up: nsrun run --rootfs ROOTFS -- /bin/true, $rounds rounds of $bench runs each side (hyperfine medians)"
  cid=$(D run -d "${recipe[@]}" nsrun-ct:test sleep 600)
  inside() {
    D exec "$cid" hyperfine -N --warmup 5 --runs "$bench" --export-json /tmp/h.json --style none \
      'nsrun run --rootfs /rootfs -- /bin/true' >/dev/null 2>&1
    D exec "$cid" cat /tmp/h.json | grep -o '"median": *[0-9.e-]*' | head -1 | grep -o '[0-9.e-]*$'
  }
  host() {
    setpriv --reuid=1000 --regid=1000 --clear-groups env -i PATH=/usr/bin:/bin HOME=/tmp NSRUN_ROOT=$tmp/bench/root \
      hyperfine -N --warmup 5 --runs "$bench" --export-json "$tmp/bench/h.json" --style none \
      "$img/usr/local/bin/nsrun run --rootfs $rootfs -- /bin/true" >/dev/null 2>&1
    grep -o '"median": *[0-9.e-]*' "$tmp/bench/h.json" | head -1 | grep -o '[0-9.e-]*$'
  }
  mkdir -p "$tmp/bench"; chown 1000:1000 "$tmp/bench"
  # Side by side, alternating round by round, so that both see the same machine load; the
  # median over rounds of each side and of the per-round ratio is the figure.
  results=()
  for round in $(seq "$rounds"); do
    i=$(inside); h=$(host)
    results+=("$i" "$h")
    python3 -c "import sys; i,h=float(sys.argv[1]),float(sys.argv[2]); print(f'round $round: container {i*1e3:.2f} ms, host {h*1e3:.2f} ms, ratio {i/h:.3f}')" "$i" "$h"
  done
  python3 - "${results[@]}" <<'PY'
import statistics as st, sys
v = [float(x) for x in sys.argv[1:]]
c, h = v[0::2], v[1::2]
print(f"median over {len(c)} rounds: container {st.median(c)*1e3:.2f} ms, host {st.median(h)*1e3:.2f} ms, "
      f"ratio {st.median([a / b for a, b in zip(c, h)]):.3f} (container / host; goal <= 1.10)")
PY
  D rm -f "$cid" >/dev/null
fi

echo
echo "$passed passed, $failed failed"
((failed == 0))
