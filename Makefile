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

.PHONY: setup test demo bench lint clean cluster cluster-stop

setup: .setup-stamp

.setup-stamp: pyproject.toml
	bash scripts/setup.sh "$(PYTHON)" "$(VENV)" "$(APT_PACKAGES)"
	touch $@

test: .setup-stamp
	$(PY) -m pytest -q

demo: .setup-stamp
	$(PVT) run pipelines/demo.yaml --out $(DEMO_OUT)
	$(PVT) inspect $(DEMO_OUT)/dataset --verify

bench: .setup-stamp
	$(PY) bench/run_all.py

cluster: .setup-stamp
	bash scripts/cluster.sh start $(WORKERS) $(SCHEDULER_PORT)

cluster-stop:
	bash scripts/cluster.sh stop

clean:
	rm -rf $(DEMO_OUT) .pytest_cache
