#!/usr/bin/env bash
# Builds the confinement tests' in-sandbox probe (tests/probe/probe.c) as a static binary.
# Usage: scripts/build-probe.sh [OUT]   (default: target/probe/probe); prints the path.
# Tests find it through NSRUN_TEST_PROBE:  export NSRUN_TEST_PROBE=$(scripts/build-probe.sh)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
out=${1:-$root/target/probe/probe}
src=$root/tests/probe/probe.c
mkdir -p "$(dirname "$out")"
if [ ! -x "$out" ] || [ "$src" -nt "$out" ]; then
  cc=${CC:-gcc}
  "$cc" -static -O2 -Wall -Wextra -Werror -o "$out.tmp.$$" "$src"
  mv "$out.tmp.$$" "$out"
fi
chmod 755 "$out"
echo "$out"
