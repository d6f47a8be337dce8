#!/usr/bin/env bash
# Commits each run of a running `sqdf compare` as it finishes, so a machine that goes
# away without warning loses at most the run under way (docs/maintaining.md).
#
#   nohup bench/commit_finished_runs.sh results/compare-paper >> /tmp/commit-runs.log 2>&1 &
#
# A run is finished when its folder has an eval.json; only its records are committed
# (.gitignore leaves out weights and images), with the comparison's compare.log. The loop
# ends when no `sqdf compare` process is left; a run that finishes in its last 30 s is
# committed by hand.
set -uo pipefail
OUT=${1:?usage: bench/commit_finished_runs.sh RESULTS_FOLDER}
cd "$(git rev-parse --show-toplevel)"
while pgrep -f "sqdf compare" >/dev/null; do
  for d in "$OUT"/runs/*/; do
    run=$(basename "$d")
    [ -f "$d/eval.json" ] || continue
    git ls-files --error-unmatch "$d/eval.json" >/dev/null 2>&1 && continue
    sleep 20 # compare.log gets the run's line after the run's process exits
    git add "$d" "$OUT/compare.log"
    git commit -qm "$OUT: $run" -- "$d" "$OUT/compare.log" && echo "$(date +%T) committed $run"
  done
  sleep 30
done
