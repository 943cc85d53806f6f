#!/bin/bash
# The four commands of `make demo` after set-up, timed, with statistics and target values computed from
# scratch; then timing.json (commit, machine, wall times, each stage's wall and CPU seconds) and the report
# (findings, tables, figures) are written beside this script. Run from a clean checkout, with EDITDECAY_HOME
# holding only the converted models (models/ and gguf/ from `make setup`), e.g.
#   mkdir -p /tmp/demo-home && ln -s ~/.cache/editdecay/models ~/.cache/editdecay/gguf /tmp/demo-home/
#   EDITDECAY_HOME=/tmp/demo-home bash benchmarks/results/demo/timed_run.sh "idle (nothing else running)"
set -e
cd "$(git rev-parse --show-toplevel)"
BIN=${BIN:-.venv/bin}
HERE=benchmarks/results/demo
rm -rf demo-out
start=$(date +%s.%N)
$BIN/editdecay run configs/demo.yaml --store demo-out/results.db --workdir demo-out/work --workers 2 --order critical-path
t_run=$(date +%s.%N)
$BIN/editdecay analyze frequency --store demo-out/results.db
$BIN/editdecay report demo-out/results.db --out demo-out/report
$BIN/editdecay report demo-out/results.db --format text
end=$(date +%s.%N)
echo "DEMO_WALL run=$(echo "$t_run - $start" | bc) total=$(echo "$end - $start" | bc)"
rm -rf "$HERE/figures" "$HERE/tables"
cp -r demo-out/report/figures demo-out/report/tables demo-out/report/report.md demo-out/report/report.html \
    demo-out/report/findings.json "$HERE/"
$BIN/python - "$HERE/timing.json" "$(echo "$t_run - $start" | bc)" "$(echo "$end - $start" | bc)" "${1:-}" <<'PY'
import json, os, sqlite3, subprocess, sys
from editdecay.util.env import library_versions, machine_info
out, grid_s, total_s, note = sys.argv[1], float(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
con = sqlite3.connect("demo-out/results.db")
stages = {sid: {"kind": kind, "seconds": round(s, 1), "cpu_seconds": None if c is None else round(c, 1)}
          for sid, kind, s, c in con.execute("SELECT stage_id, kind, seconds, cpu_seconds FROM stages ORDER BY started_at")}
commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
json.dump({"command": "benchmarks/results/demo/timed_run.sh (the four commands of `make demo` after set-up; "
           "statistics and target values computed from scratch)", "commit": commit, "note": note,
           "machine": machine_info(), "versions": library_versions(), "loadavg_after": os.getloadavg(),
           "grid_seconds": grid_s, "total_seconds": total_s, "stages": stages},
          open(out, "w"), indent=1)
PY
