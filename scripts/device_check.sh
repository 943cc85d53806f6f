#!/usr/bin/env bash
# Device check (issue 12, part 6): edit (100 edits), LoRA (100 steps) and evaluate on SmolLM2 and on a random
# Llama-2-7B-shaped model, writing edits/s, fine-tuning tokens/s and peak GPU memory to
# benchmarks/results/device_check.json. Arguments go to benchmarks/device_check.py (--tiny: CPU-sized shapes).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
[ -x "$PY" ] || PY=python
exec "$PY" benchmarks/device_check.py "$@"
