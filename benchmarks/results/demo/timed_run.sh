#!/bin/bash
# The four commands of `make demo` after set-up, timed, with statistics and target values computed from
# scratch: run from a checkout of the commit in timing.json, with EDITDECAY_HOME holding only the converted
# models (models/ and gguf/ from `make setup`), e.g.
#   mkdir -p /tmp/demo-home && ln -s ~/.cache/editdecay/models ~/.cache/editdecay/gguf /tmp/demo-home/
#   EDITDECAY_HOME=/tmp/demo-home bash benchmarks/results/demo/timed_run.sh
set -e
cd "$(git rev-parse --show-toplevel)"
BIN=${BIN:-.venv/bin}
rm -rf demo-out
start=$(date +%s.%N)
$BIN/editdecay run configs/demo.yaml --store demo-out/results.db --workdir demo-out/work --workers 2 --order critical-path
t_run=$(date +%s.%N)
$BIN/editdecay analyze frequency --store demo-out/results.db
$BIN/editdecay report demo-out/results.db --out demo-out/report
$BIN/editdecay report demo-out/results.db --format text
end=$(date +%s.%N)
echo "DEMO_WALL run=$(echo "$t_run - $start" | bc) total=$(echo "$end - $start" | bc)"
