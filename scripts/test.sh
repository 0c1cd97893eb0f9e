#!/usr/bin/env bash
# Runs nsrun's whole test suite on a fresh Debian/Ubuntu machine, as root AND as an unprivileged
# user: installs what the tests need, creates the user, builds the busybox rootfs, starts the test
# registries, builds, runs every test twice, and stops what it started.
#
#   scripts/test.sh            # everything, as root (sudo scripts/test.sh from another user)
#   scripts/test.sh --quick    # skip fmt/clippy
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)
quick=false
[[ ${1:-} == --quick ]] && quick=true

log() { printf '\n== %s\n' "$*"; }
die() { echo "test.sh: $*" >&2; exit 1; }
[[ $(id -u) == 0 ]] || die "needs root to install packages, create the user nsrun-test and run the suite as root and as that user: run it as root (sudo $0)"

# --- packages ------------------------------------------------------------------------------------
pkgs=(busybox-static libseccomp-dev pkg-config uidmap docker-registry openssl apache2-utils gcc libc6-dev util-linux procps libcap2-bin hyperfine bubblewrap gnuplot-nox
  docker.io podman passt slirp4netns nftables iproute2 curl)
missing=()
for p in "${pkgs[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if ((${#missing[@]})); then
  log "installing ${missing[*]}"
  apt-get update -qq
  # Installing docker.io must not start a system dockerd: the container test starts its own.
  no_policy=false
  if [[ ! -e /usr/sbin/policy-rc.d ]]; then
    no_policy=true
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
    chmod 755 /usr/sbin/policy-rc.d
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  if $no_policy; then rm -f /usr/sbin/policy-rc.d; fi
fi
command -v cargo >/dev/null || die "cargo not found (install Rust with rustup)"
# The TypeScript client's tests (Node >= 18; Debian 12's nodejs is 18). A node from elsewhere
# (nodesource) brings its own npm, which Debian's npm package would conflict with.
if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
  log "installing nodejs npm"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm >/dev/null
fi
if ! dpkg -s python3-yaml >/dev/null 2>&1; then # scripts/check-deploy-doc.py
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-yaml >/dev/null
fi

# --- the unprivileged user -----------------------------------------------------------------------
user=nsrun-test
id "$user" >/dev/null 2>&1 || useradd -m "$user"
# Subordinate ids, so the rootless run covers the newuidmap range mapping too.
grep -q "^$user:" /etc/subuid || usermod --add-subuids 300000-365535 "$user"
grep -q "^$user:" /etc/subgid || usermod --add-subgids 300000-365535 "$user"
# Rootless --network private needs /dev/net/tun (pasta, slirp4netns); these VMs ship it 0600,
# most distributions 0666. Machine set-up, like the user above; nsrun says so when it is 0600.
if [[ -c /dev/net/tun ]]; then chmod 0666 /dev/net/tun; fi

# --- fixtures ------------------------------------------------------------------------------------
state=$(mktemp -d /tmp/nsrun-test.XXXXXX)
chmod 755 "$state"
started_registry=false
cleanup() {
  if $started_registry; then scripts/registry.sh stop "$state" || true; fi
  rm -rf "$state"
}
trap cleanup EXIT

log "building the busybox rootfs"
scripts/mkrootfs-busybox.sh "$state/rootfs"
export NSRUN_TEST_ROOTFS=$state/rootfs

if [[ -x scripts/registry.sh ]]; then
  log "starting test registries"
  scripts/registry.sh start "$state"
  started_registry=true
  set -a
  # shellcheck disable=SC1091
  source "$state/registry.env"
  set +a
fi
if [[ -x scripts/build-probe.sh ]]; then
  scripts/build-probe.sh "$state/probe"
  export NSRUN_TEST_PROBE=$state/probe
fi

# --- build ---------------------------------------------------------------------------------------
if ! $quick; then
  log "cargo fmt --check, clippy, doc"
  cargo fmt --all -- --check
  cargo clippy --all-targets --quiet -- -D warnings
  RUSTDOCFLAGS="-D warnings" cargo doc --no-deps --quiet
fi
# Tests skipped for a missing precondition append a line here (tests/support/mod.rs); counted at
# the end. Writable by the unprivileged user too.
export NSRUN_TEST_SKIP_LOG=$state/skipped.log
: >"$NSRUN_TEST_SKIP_LOG"
chmod 666 "$NSRUN_TEST_SKIP_LOG"

log "module layering (no import cycle in src/)"
scripts/check-layering.py
log "building tests"
cargo build --quiet --all-targets
exes=$(cargo test --no-run --message-format=json 2>/dev/null |
  python3 -c 'import json,sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["profile"]["test"]:
        print(m["executable"])')
[[ -n $exes ]] || die "no test executables were built"

# --- as root -------------------------------------------------------------------------------------
log "tests as root"
export NSRUN_BIN=$repo/target/debug/nsrun
cargo test --quiet --no-fail-fast 2>&1
# The Runtime suites again with every Runtime keeping a warm pool of helpers (issue #14): a
# pooled run must behave exactly like a cold one (tests/warm_pool.rs compares confinement).
log "Runtime tests through a warm pool (NSRUN_WARM_POOL=2)"
NSRUN_WARM_POOL=2 cargo test --quiet --no-fail-fast --test runner --test runner_big --test embedding 2>&1

# --- the TypeScript client (clients/typescript) against a real `nsrun serve` ---------------------
log "TypeScript client: npm ci, build, node --test (as root)"
(cd clients/typescript && npm ci --no-audit --no-fund --loglevel=error && npm run --silent build)
export NSRUN_TEST_IMAGE=$NSRUN_TEST_REGISTRY/tsclient/busybox:latest
target/debug/examples/push_rootfs "$NSRUN_TEST_ROOTFS" "$NSRUN_TEST_IMAGE" >/dev/null
(cd clients/typescript && node --test test/*.test.mjs)
log "docs/deploy.md: the compose file and systemd unit"
scripts/check-deploy-doc.py

# --- inside Docker and podman containers (the worker runs as uid 1000 in there) -------------------
log "nsrun inside Docker and podman containers"
scripts/container-test.sh target/debug/nsrun "$NSRUN_TEST_ROOTFS"

# The benchmark suite's quick mode (its option parsing is tests/bench_script.rs): it must keep
# working, though its figures mean nothing on a debug build.
log "scripts/bench.sh --quick (debug build)"
# Its registries (three ports) sit right after the test registries' three when NSRUN_REGISTRY_PORT
# moves them, so that parallel runs of this script on one machine (bases 10 apart) do not collide.
bench_port=5610
[[ -n ${NSRUN_REGISTRY_PORT:-} ]] && bench_port=$((NSRUN_REGISTRY_PORT + 5))
NSRUN_BIN=$repo/target/debug/nsrun PUSH_ROOTFS=$repo/target/debug/examples/push_rootfs \
  NSRUN_REGISTRY_PORT=$bench_port scripts/bench.sh --quick --out "$state/bench" >"$state/bench.log" 2>&1 ||
  { cat "$state/bench.log"; die "scripts/bench.sh --quick failed"; }
grep -q '^| nsrun | ' "$state/bench/latest.md" || die "bench.sh --quick wrote no nsrun row"
ls "$state"/bench/latest-startup-true.png >/dev/null || die "bench.sh --quick drew no chart"

# --- as the unprivileged user --------------------------------------------------------------------
# The checkout may sit in a directory the user cannot read: copy the binaries out.
mkdir -p "$state/bin" "$state/scripts"
cp scripts/bench.sh "$state/scripts/"
cp target/debug/nsrun "$state/bin/"
for exe in $exes; do cp "$exe" "$state/bin/"; done
chmod -R a+rX "$state"
log "tests as $user ($(id -u "$user"))"
fail=0
for exe in $exes; do
  name=$(basename "$exe")
  echo "-- $name (as $user)"
  (cd "$state" && setpriv --reuid="$user" --regid="$user" --init-groups \
    env -i PATH=/usr/local/bin:/usr/bin:/bin HOME="$(getent passwd "$user" | cut -d: -f6)" \
    CI="${CI:-}" RUST_BACKTRACE=1 NSRUN_BIN="$state/bin/nsrun" NSRUN_TEST_ROOTFS="$NSRUN_TEST_ROOTFS" \
    NSRUN_TEST_BENCH_SCRIPT="$state/scripts/bench.sh" \
    NSRUN_TEST_SKIP_LOG="$NSRUN_TEST_SKIP_LOG" \
    ${NSRUN_TEST_PROBE:+NSRUN_TEST_PROBE=$NSRUN_TEST_PROBE} \
    $(env | grep -E '^NSRUN_TEST_REGISTRY' | tr '\n' ' ') \
    "$state/bin/$name" --test-threads=2) || fail=1
done
mkdir -p "$state/tsclient"
cp -r clients/typescript/{package.json,dist,test,node_modules} "$state/tsclient/"
chmod -R a+rX "$state/tsclient"
echo "-- TypeScript client (as $user)"
(cd "$state/tsclient" && setpriv --reuid="$user" --regid="$user" --init-groups \
  env -i PATH=/usr/local/bin:/usr/bin:/bin HOME="$(getent passwd "$user" | cut -d: -f6)" \
  CI="${CI:-}" NSRUN_BIN="$state/bin/nsrun" NSRUN_TEST_IMAGE="$NSRUN_TEST_IMAGE" \
  $(env | grep -E '^NSRUN_TEST_REGISTRY' | tr '\n' ' ') \
  node --test test/*.test.mjs) || fail=1
skips() {
  local n
  n=$(wc -l <"$NSRUN_TEST_SKIP_LOG")
  log "$n test(s) skipped for a missing precondition (root and $user passes)"
  cat "$NSRUN_TEST_SKIP_LOG"
}
skips
((fail == 0)) || die "some tests failed as $user"
log "all tests passed as root and as $user"
