# pvtbuild: `make demo` builds a small dataset, `make test` runs the tests.
# Each first runs `make setup` when it has not run yet (guarded by .setup-stamp).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PVT := $(VENV)/bin/pvtbuild
APT_PACKAGES := libfluidsynth3 fluid-soundfont-gm timgm6mb-soundfont musescore-general-soundfont-small
DEMO_OUT ?= demo-out
WORKERS ?= 2
SCHEDULER_PORT ?= 8786

.PHONY: setup test demo demo-manifest bench gpu-check lint clean cluster cluster-stop

setup: .setup-stamp

.setup-stamp: pyproject.toml
	bash scripts/setup.sh "$(PYTHON)" "$(VENV)" "$(APT_PACKAGES)"
	touch $@

test: .setup-stamp
	$(PY) -m pytest -q

demo: .setup-stamp
	$(PVT) run pipelines/demo.yaml --out $(DEMO_OUT)
	$(PVT) inspect $(DEMO_OUT)/dataset --verify

# Rebuild manifests/demo.jsonl, the committed clip selection of examples/midi (same config and seed:
# same bytes; commit it when the select rules or pipelines/demo.yaml change).
demo-manifest: .setup-stamp
	tmp=$$(mktemp -d) && $(PVT) select --pipeline pipelines/demo.yaml --midi examples/midi --out $$tmp \
		--manifest manifests/demo.jsonl --scheduler sync; rc=$$?; rm -rf $$tmp; exit $$rc

# ruff (pyproject's [tool.ruff]: style, sorted absolute imports at the top) and the import graph:
# no cycle, no private name imported across modules (scripts/check_imports.py).
lint: .setup-stamp
	$(VENV)/bin/ruff check src tests bench scripts
	$(PY) scripts/check_imports.py

bench: .setup-stamp
	$(PY) bench/run_all.py

# Every CUDA path in one table (bench/gpu_check.py): prepares .gpucheck/ (clips, wheels), then runs the check.
# On a machine without CUDA the GPU rows say "no CUDA"; on a GPU machine carry .gpucheck and run
# `python3 bench/gpu_check.py` there.
gpu-check: .setup-stamp
	$(PY) bench/gpu_check.py --prepare
	$(PY) bench/gpu_check.py

# A dask scheduler + WORKERS workers on 127.0.0.1 in the background (logs, pids: .cluster/; see docs/cluster.md).
# e.g. make cluster WORKERS=4 SCHEDULER_PORT=9786 WORKER_RESOURCES=GPU=1
cluster: .setup-stamp
	bash scripts/cluster.sh start $(WORKERS) $(SCHEDULER_PORT)

cluster-stop:
	bash scripts/cluster.sh stop

clean:
	rm -rf $(DEMO_OUT) .pytest_cache
