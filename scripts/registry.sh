#!/usr/bin/env bash
# Test registries: Debian's docker-registry on 127.0.0.1, three ways.
#
#   scripts/registry.sh start STATE_DIR   # plain HTTP :5000, htpasswd basic auth :5001, TLS :5002
#   scripts/registry.sh stop  STATE_DIR   # stops only the registries this script started
#
# `start` writes STATE_DIR/registry.env (source it with `set -a`):
#   NSRUN_TEST_REGISTRY=127.0.0.1:5000
#   NSRUN_TEST_REGISTRY_AUTH=127.0.0.1:5001   NSRUN_TEST_REGISTRY_CREDS=user:pass
#   NSRUN_TEST_REGISTRY_TLS=127.0.0.1:5002    NSRUN_TEST_REGISTRY_CA=STATE_DIR/registry/ca.pem
# Ports: NSRUN_REGISTRY_PORT (first of three, default 5000). Each registry also stops by itself
# after 3 hours (timeout), so a forgotten `stop` leaves nothing running for long.
set -euo pipefail

die() { echo "registry.sh: $*" >&2; exit 1; }
cmd=${1:-}
state=${2:-}
[[ -n $cmd && -n $state ]] || die "usage: $0 start|stop STATE_DIR"
dir=$state/registry
pidfile=$dir/pids

stop() {
  [[ -f $pidfile ]] || return 0
  while read -r pid; do
    # Only our own `timeout` wrappers: check the command line before signalling.
    if [[ -r /proc/$pid/cmdline ]] && tr '\0' ' ' <"/proc/$pid/cmdline" | grep -q "docker-registry serve $dir/"; then
      kill "$pid" 2>/dev/null || true
    fi
  done <"$pidfile"
  rm -f "$pidfile"
}

case $cmd in
stop)
  stop
  exit 0
  ;;
start) ;;
*) die "unknown command $cmd (start|stop)" ;;
esac

bin=/usr/bin/docker-registry
[[ -x $bin ]] || die "$bin missing: apt-get install docker-registry"
command -v openssl >/dev/null || die "openssl missing: apt-get install openssl"
command -v htpasswd >/dev/null || die "htpasswd missing: apt-get install apache2-utils"
command -v curl >/dev/null || die "curl missing: apt-get install curl"

stop
mkdir -p "$dir"
chmod 755 "$state" "$dir"
base=${NSRUN_REGISTRY_PORT:-5000}
p_plain=$base p_auth=$((base + 1)) p_tls=$((base + 2))
for p in $p_plain $p_auth $p_tls; do
  if (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
    die "port $p on 127.0.0.1 is in use (set NSRUN_REGISTRY_PORT to another base)"
  fi
done

# --- credentials and certificates ---------------------------------------------------------------
user=nsrun
pass=nsrun-test-pass
htpasswd -Bbn "$user" "$pass" >"$dir/htpasswd" 2>/dev/null
openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=nsrun test CA" \
  -keyout "$dir/ca.key" -out "$dir/ca.pem" \
  -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign 2>/dev/null
openssl req -newkey rsa:2048 -nodes -subj "/CN=localhost" -keyout "$dir/leaf.key" -out "$dir/leaf.csr" 2>/dev/null
printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n' >"$dir/leaf.ext"
openssl x509 -req -in "$dir/leaf.csr" -CA "$dir/ca.pem" -CAkey "$dir/ca.key" -CAcreateserial \
  -days 2 -extfile "$dir/leaf.ext" -out "$dir/leaf.pem" 2>/dev/null
chmod 644 "$dir/ca.pem" "$dir/htpasswd"

# --- configs ------------------------------------------------------------------------------------
config() { # name port http-extra top-extra
  mkdir -p "$dir/$1/data"
  cat >"$dir/$1/config.yml" <<EOF
version: 0.1
log:
  level: error
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: $dir/$1/data
  delete:
    enabled: true
http:
  addr: 127.0.0.1:$2
  secret: nsrun-test-$1
$3
$4
EOF
}
config plain "$p_plain" "" ""
config auth "$p_auth" "" "auth:
  htpasswd:
    realm: nsrun-test
    path: $dir/htpasswd"
config tls "$p_tls" "  tls:
    certificate: $dir/leaf.pem
    key: $dir/leaf.key" ""

: >"$pidfile"
for name in plain auth tls; do
  timeout 3h "$bin" serve "$dir/$name/config.yml" >"$dir/$name/log" 2>&1 &
  echo $! >>"$pidfile"
done

# --- wait until they answer -----------------------------------------------------------------------
wait_for() { # url curl-args...
  local url=$1
  shift
  for _ in $(seq 1 100); do
    code=$(curl -s -o /dev/null -w '%{http_code}' "$@" "$url" || true)
    [[ $code == 200 || $code == 401 ]] && return 0
    sleep 0.1
  done
  stop
  die "registry at $url did not come up; log: $(tail -5 "$dir"/*/log)"
}
wait_for "http://127.0.0.1:$p_plain/v2/"
wait_for "http://127.0.0.1:$p_auth/v2/"
wait_for "https://127.0.0.1:$p_tls/v2/" --cacert "$dir/ca.pem"

cat >"$state/registry.env" <<EOF
NSRUN_TEST_REGISTRY=127.0.0.1:$p_plain
NSRUN_TEST_REGISTRY_AUTH=127.0.0.1:$p_auth
NSRUN_TEST_REGISTRY_CREDS=$user:$pass
NSRUN_TEST_REGISTRY_TLS=127.0.0.1:$p_tls
NSRUN_TEST_REGISTRY_CA=$dir/ca.pem
EOF
chmod 644 "$state/registry.env"
echo "registries up: plain 127.0.0.1:$p_plain, auth 127.0.0.1:$p_auth, tls 127.0.0.1:$p_tls (env in $state/registry.env)"
