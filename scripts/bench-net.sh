#!/usr/bin/env bash
# Networking benchmark: start-up of `--network private` against `none` (root and rootless), and
# against `podman run --network pasta|slirp4netns` (rootless, same rootfs); throughput of a 1 GiB
# download from a test host in a network namespace of its own (veth), through private mode (pasta
# and slirp4netns), pasta alone, and host mode. Root only (it builds the test host); nothing
# leaves the machine.
#
#   scripts/bench-net.sh [RUNS]  (as root)      # default 30 start-up runs, 5 downloads each
#
# Needs: hyperfine, passt, slirp4netns, nftables, busybox-static, python3; podman for its rows
# (skipped with a note when missing). NSRUN_BIN overrides the release build.
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-30}
user=${NSRUN_BENCH_USER:-nsrun-test}
[[ $(id -u) == 0 ]] || { echo "bench-net.sh: needs root (it compares root and rootless runs): run it as root (sudo $0)" >&2; exit 2; }
if [[ -z ${NSRUN_BIN:-} ]]; then
  cargo build --release --quiet
  NSRUN_BIN=target/release/nsrun
fi
state=$(mktemp -d /tmp/nsrun-bench-net.XXXXXX)
chmod 755 "$state"
ns=nsrun-bench-$$
srv_pid=""
cleanup() {
  [[ -n $srv_pid ]] && kill "$srv_pid" 2>/dev/null
  ip netns del "$ns" 2>/dev/null || true
  # rootless podman leaves its pause process behind
  [[ -f ${home:-/nonexistent}/xdg/libpod/tmp/pause.pid ]] && kill "$(cat "$home/xdg/libpod/tmp/pause.pid")" 2>/dev/null
  rm -rf "$state"
}
# hyperfine's JSON -> "median  min  max  command" per row
medians() {
  python3 -c 'import json,statistics,sys
for r in json.load(open(sys.argv[1]))["results"]:
    t=sorted(r["times"]); print("| %.1f ms | %.1f | %.1f | `%s` |" % (statistics.median(t)*1e3, t[0]*1e3, t[-1]*1e3, r["command"]))' "$1"
}
trap cleanup EXIT
cp "$NSRUN_BIN" "$state/nsrun"
scripts/mkrootfs-busybox.sh "$state/rootfs" >/dev/null
chmod -R a+rX "$state"
[[ -c /dev/net/tun ]] && chmod 0666 /dev/net/tun
bin=$state/nsrun rootfs=$state/rootfs
home=$state/home
mkdir -p "$home/xdg" && chown -R "$user" "$home" && chmod 700 "$home/xdg"
as_user() { setpriv --reuid="$user" --regid="$user" --init-groups env -i PATH=/usr/bin:/bin HOME="$home" XDG_RUNTIME_DIR="$home/xdg" "$@"; }

echo "== start-up, root ($runs runs)"
hyperfine -N -w 3 -r "$runs" --export-json "$state/root.json" \
  "$bin run --rootfs $rootfs --network none -- /bin/true" \
  "$bin run --rootfs $rootfs --network private -- /bin/true" \
  "$bin run --rootfs $rootfs --network private --net-helper slirp4netns -- /bin/true" >/dev/null
medians "$state/root.json"

echo "== start-up, rootless as $user ($runs runs)"
cmds=("$bin run --rootfs $rootfs --network none -- /bin/true"
  "$bin run --rootfs $rootfs --network private -- /bin/true"
  "$bin run --rootfs $rootfs --network private --net-helper slirp4netns -- /bin/true")
if command -v podman >/dev/null; then
  # podman writes into a --rootfs (/etc/mtab): give it a copy the user owns.
  cp -a "$rootfs" "$home/podman-rootfs" && chown -R "$user" "$home/podman-rootfs"
  nets=(none slirp4netns)
  # runc and cgroupfs: crun refuses this machine's hybrid cgroups; podman's default rlimits
  # exceed the hard limits here.
  pod="podman --runtime runc --cgroup-manager cgroupfs --events-backend file run --rm --ulimit nofile=1024:1024 --ulimit nproc=4096:4096"
  # Debian 12's podman 4.3 predates --network pasta (4.4): the row is added where it exists.
  if (cd "$home" && as_user $pod --network pasta --rootfs "$home/podman-rootfs" /bin/true) >/dev/null 2>&1; then
    nets+=(pasta)
  else
    echo "(this podman has no --network pasta)"
  fi
  for n in "${nets[@]}"; do
    cmds+=("$pod --network $n --rootfs $home/podman-rootfs /bin/true")
  done
else
  echo "(podman not installed: its rows are left out)"
fi
(cd "$home" && as_user hyperfine -N -w 2 -r "$runs" --export-json "$home/user.json" "${cmds[@]}" >/dev/null)
medians "$home/user.json"

echo "== 1 GiB download from a test host (veth, own namespace)"
ip netns add "$ns"
ip link add nsb$$h type veth peer name nsb$$i
ip link set nsb$$i netns "$ns"
ip addr add 198.51.100.1/24 dev nsb$$h && ip link set nsb$$h up
ip -n "$ns" addr add 198.51.100.2/24 dev nsb$$i
ip -n "$ns" link set nsb$$i up && ip -n "$ns" link set lo up
ip netns exec "$ns" python3 -c '
import socket
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("198.51.100.2", 9000)); s.listen(8)
chunk = bytes(1 << 20)
while True:
    c, _ = s.accept()
    try:
        for _ in range(1024): c.sendall(chunk)
    except OSError: pass
    c.close()
' &
srv_pid=$!
sleep 0.5
# The client keeps its side open (a fifo nobody writes): pasta 2023-03 stops relaying a
# connection the namespace side has half-closed, which is what nc does when its stdin ends.
get() { echo "f=\$(mktemp -u); mkfifo \$f; $1 nc 198.51.100.2 9000 <\$f >/dev/null & exec 3>\$f; wait \$!; rm \$f"; }
for _ in $(seq 50); do ip netns exec "$ns" ss -ltn | grep -q :9000 && break; sleep 0.1; done
hyperfine -N -w 1 -r 3 --export-json "$state/tput.json" \
  "$bin run --rootfs $rootfs --network host -- /bin/sh -c '$(get /bin/busybox)'" \
  "$bin run --rootfs $rootfs --network private -- /bin/sh -c '$(get /bin/busybox)'" \
  "$bin run --rootfs $rootfs --network private --net-helper slirp4netns -- /bin/sh -c '$(get /bin/busybox)'" \
  "pasta -q -f --runas 0 --config-net -t none -u none -T none -U none -- /bin/sh -c '$(get "$rootfs/bin/busybox")'" >/dev/null
medians "$state/tput.json"
