#!/usr/bin/env bash
# Commit-ready copy of a study that is still running (or stopped): a consistent one-file snapshot of its store,
# and its target-value pool (one small safetensors file per request), so that a later session, possibly on a
# new machine, continues without optimising any target value again (`make study` seeds the pool from it).
#   scripts/study_snapshot.sh RUNNING_STORE WORKDIR   # defaults: the ones `make study` uses
#   REPORT=1 scripts/study_snapshot.sh ...             # also the report of the snapshot (docs/results/cpu-study/:
#                                                      # its header says how many runs are finished); the store's
#                                                      # rows as CSV are exported once, when the grid is complete
set -euo pipefail
cd "$(dirname "$0")/.."
STORE=${1:-docs/results/cpu-study.db}
WORK=${2:-study-work}
BIN=${BIN:-.venv/bin}
if [ "$STORE" != docs/results/cpu-study.db ]; then
    "$BIN/editdecay" status --store "$STORE" --snapshot docs/results/cpu-study.db.tmp >/dev/null
    mv docs/results/cpu-study.db.tmp docs/results/cpu-study.db
fi
if [ -d "$WORK/targets" ]; then
    mkdir -p docs/results/cpu-study-targets
    # only finished entries: the pool writes each file atomically (temporary name, then rename)
    find "$WORK/targets" -maxdepth 1 -name 'z-*.safetensors' -exec cp -n {} docs/results/cpu-study-targets/ \;
fi
if [ -n "${REPORT:-}" ]; then
    "$BIN/editdecay" analyze frequency --store docs/results/cpu-study.db >/dev/null
    "$BIN/editdecay" report docs/results/cpu-study.db --out docs/results/cpu-study >/dev/null
fi
"$BIN/editdecay" status --store docs/results/cpu-study.db | head -12
echo "target values kept: $(ls docs/results/cpu-study-targets 2>/dev/null | wc -l)"
