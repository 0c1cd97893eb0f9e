#!/usr/bin/env bash
# Networking benchmark: start-up of `--network private` against `none` (root and rootless), and
# against `podman run --network pasta|slirp4netns` (rootless, same rootfs); throughput of a 1 GiB
# download from a test host in a network namespace of its own (veth), through private mode (pasta
# and slirp4netns), pasta alone, and host mode. Root only (it builds the test host); nothing
# leaves the machine.
#
#   sudo scripts/bench-net.sh [RUNS]      # default 30 start-up runs, 5 downloads each
#
# Needs: hyperfine, passt, slirp4netns, nftables, busybox-static, python3; podman for its rows
# (skipped with a note when missing). NSRUN_BIN overrides the release build.
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-30}
user=${NSRUN_BENCH_USER:-nsrun-test}
[[ $(id -u) == 0 ]] || { echo "bench-net.sh: run as root" >&2; exit 2; }
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
  rm -rf "$state"
}
trap cleanup EXIT
cp "$NSRUN_BIN" "$state/nsrun"
scripts/mkrootfs-busybox.sh "$state/rootfs" >/dev/null
chmod -R a+rX "$state"
[[ -c /dev/net/tun ]] && chmod 0666 /dev/net/tun
bin=$state/nsrun rootfs=$state/rootfs
as_user() { setpriv --reuid="$user" --regid="$user" --init-groups env -i PATH=/usr/bin:/bin HOME="$state" XDG_RUNTIME_DIR="$state/xdg" "$@"; }
mkdir -p "$state/xdg" && chown "$user" "$state/xdg"

echo "== start-up, root ($runs runs)"
hyperfine -N -w 3 -r "$runs" --export-markdown "$state/root.md" \
  "$bin run --rootfs $rootfs --network none -- /bin/true" \
  "$bin run --rootfs $rootfs --network private -- /bin/true" \
  "$bin run --rootfs $rootfs --network private --net-helper slirp4netns -- /bin/true" >/dev/null
cat "$state/root.md"

echo "== start-up, rootless as $user ($runs runs)"
cmds=("$bin run --rootfs $rootfs --network none -- /bin/true"
  "$bin run --rootfs $rootfs --network private -- /bin/true"
  "$bin run --rootfs $rootfs --network private --net-helper slirp4netns -- /bin/true")
if command -v podman >/dev/null; then
  for n in none pasta slirp4netns; do
    cmds+=("podman run --rm --network $n --rootfs $rootfs /bin/true")
  done
  as_user podman run --rm --network none --rootfs "$rootfs" /bin/true || echo "(podman rootless failed)"
else
  echo "(podman not installed: its rows are left out)"
fi
(cd "$state" && as_user hyperfine -N -w 3 -r "$runs" --export-markdown "$state/user.md" "${cmds[@]}" >/dev/null)
cat "$state/user.md"

echo "== 1 GiB download from a test host (veth, own namespace)"
ip netns add "$ns"
ip link add nsb$$h type veth peer name nsb$$i
ip link set nsb$$i netns "$ns"
ip addr add 203.0.113.1/24 dev nsb$$h && ip link set nsb$$h up
ip -n "$ns" addr add 203.0.113.2/24 dev nsb$$i
ip -n "$ns" link set nsb$$i up && ip -n "$ns" link set lo up
ip netns exec "$ns" python3 -c '
import socket
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("203.0.113.2", 9000)); s.listen(8)
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
get='nc 203.0.113.2 9000 > /dev/null'
hyperfine -N -w 1 -r 5 --export-markdown "$state/tput.md" \
  "$bin run --rootfs $rootfs --network host -- /bin/sh -c '$get'" \
  "$bin run --rootfs $rootfs --network private -- /bin/sh -c '$get'" \
  "$bin run --rootfs $rootfs --network private --net-helper slirp4netns -- /bin/sh -c '$get'" \
  "pasta -q -f --runas 0 --config-net -t none -u none -T none -U none -- $rootfs/bin/busybox sh -c '$rootfs/bin/busybox $get'" >/dev/null
cat "$state/tput.md"
