#!/bin/sh
# The whole suite under a competing CPU load (issue 19: no test may depend on how busy the
# machine is): two busy processes, one pinned to each of the first two cores, for as long as
# the suite runs, RUNS times in a row (default 2). Needs `make test` to have set up .venv.
# NICE (default 0) is the busy processes' nice value. At 0 they starve what vigil runs at nice
# 19 on purpose (merges, housekeeping, uploads get about 1.4 % of a core beside them), and the
# tests that wait for such work to finish can run out of time; recording is what they test.
# Exit 0 only when every run passed; the log of run N is in /tmp/vigil-under-load.N.log.
set -u
runs=${1:-2}
here=$(cd "$(dirname "$0")/.." && pwd)
busy() { nice -n "${NICE:-0}" taskset -c "$1" sh -c 'while :; do :; done' >/dev/null 2>&1 & echo $!; }
a=$(busy 0); b=$(busy 1)
trap 'kill $a $b 2>/dev/null' EXIT INT TERM
failed=0
i=1
while [ "$i" -le "$runs" ]; do
    log=/tmp/vigil-under-load.$i.log
    if (cd "$here" && PYTHONNODEBUGRANGES=1 .venv/bin/python -m pytest -n 2 -q -p no:cacheprovider >"$log" 2>&1); then
        echo "run $i: passed ($(tail -n 1 "$log"))"
    else
        echo "run $i: FAILED ($(tail -n 1 "$log")); see $log"
        grep -E '^(FAILED|ERROR) ' "$log"
        failed=1
    fi
    i=$((i + 1))
done
exit $failed
