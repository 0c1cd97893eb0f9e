#!/usr/bin/env bash
# Start-up times of several commands measured round-robin: run 1 of every command, then run 2
# of every command, and so on, so that the load of a shared machine hits every row alike (one
# hyperfine row after another does not: a build starting mid-way sinks whichever row runs then).
#
#   scripts/bench-interleaved.sh [--runs N] NAME 'CMD' NAME 'CMD' ...
#
# Prints a Markdown table: median, 25th percentile, min (ms) and the ratio of each median to the
# first row's. Commands run through `sh -c` with stdin, stdout and stderr on /dev/null; a command
# that fails once is reported and the script exits 1.
set -euo pipefail
runs=30
if [[ ${1:-} == --runs ]]; then
  runs=$2
  shift 2
fi
(($# >= 2 && $# % 2 == 0)) || { sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//'; exit 2; }
exec python3 - "$runs" "$@" <<'PY'
import statistics, subprocess, sys, time
runs = int(sys.argv[1])
rows = list(zip(sys.argv[2::2], sys.argv[3::2]))
times = {name: [] for name, _ in rows}
for name, cmd in rows:  # warm-up, not counted
    subprocess.run(["sh", "-c", cmd], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
for _ in range(runs):
    for name, cmd in rows:
        t = time.monotonic()
        r = subprocess.run(["sh", "-c", cmd], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        dt = (time.monotonic() - t) * 1e3
        if r.returncode != 0:
            sys.exit(f"bench-interleaved: {name!r} failed ({r.returncode}): {r.stderr.decode()[-300:]}")
        times[name].append(dt)
first = statistics.median(times[rows[0][0]])
print(f"| command ({runs} runs, interleaved) | median (ms) | p25 | min | ratio to {rows[0][0]} |")
print("|---|---|---|---|---|")
for name, _ in rows:
    t = sorted(times[name])
    med = statistics.median(t)
    print(f"| {name} | {med:.2f} | {t[len(t) // 4]:.2f} | {t[0]:.2f} | {med / first:.2f} |")
PY
