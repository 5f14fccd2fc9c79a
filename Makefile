# Two commands on a fresh machine:  make run  (all notebooks, default profile)  and  make test.
# Each bootstraps what it needs: the virtual environment (.venv) and the data sets (data/).
# make run replays the notebooks from their committed runs (results/runs/); FRESH=1 retrains them.
PYTHON  ?= $(shell command -v python3.11 || command -v python3)
VENV    := .venv
PY      := $(VENV)/bin/python
PROFILE ?= cpu
NOTEBOOKS := $(wildcard *.ipynb)

.PHONY: run test unit nbval bench bank data venv clean-venv help

help:
	@echo "make run [FRESH=1] [NOTEBOOKS=...] replay every notebook from its committed runs (FRESH=1: retrain them,"
	@echo "                                   replacing the committed notebook and runs)"
	@echo "make run PROFILE=smoke|gpu         execute every notebook with another profile -> results/<profile>/"
	@echo "make test                          unit tests + nbval (smoke execution; replay compared with the committed outputs)"
	@echo "make bank [LEAN=1]                 keep finished runs and cut-off states for the next session (results/runs/_bank/: commit it)"
	@echo "make data                          fetch and cache MNIST, Fashion-MNIST and CIFAR-10"
	@echo "make bench [QUICK=1]               speed figures -> results/benchmarks.json, BENCHMARKS.md"

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

data: venv
	$(PY) -m kd_utils fetch-data all

run: venv data
	$(PY) -m kd_utils run-notebooks --profile $(PROFILE) $(if $(FRESH),--mode fresh) \
	  $(if $(filter command line,$(origin NOTEBOOKS)),$(NOTEBOOKS))

# 1) unit tests and every notebook executed under the smoke profile (each cell must run);
# 2) every notebook whose runs are committed replayed under the cpu profile, each cell's output compared
#    with the committed one (tests/nbval_sanitize.cfg masks wall times, paths and progress bars).
test: venv data
	KD_PROFILE=smoke $(PY) -m pytest -q tests $(if $(NOTEBOOKS),--nbval-lax --nbval-current-env $(NOTEBOOKS))
	@replay="$$($(PY) -m kd_utils replayable --explain $(NOTEBOOKS))"; \
	if [ -z "$$replay" ]; then echo "[replay] no notebook has committed runs yet: replay comparison skipped"; \
	else KD_PROFILE=cpu KD_RUNS=replay KD_OUTPUT_ROOT="$(CURDIR)/results/replay" \
	  KD_REFERENCE_RUNS="$(CURDIR)/results/runs" $(PY) -m pytest -q -p no:cacheprovider --nbval --nbval-current-env \
	  --nbval-sanitize-with tests/nbval_sanitize.cfg $$replay; fi

bank: venv
	$(PY) -m kd_utils bank --profile $(PROFILE) $(if $(LEAN),--lean)

bench: venv data
	$(PY) -m benchmarks $(if $(QUICK),--quick)

unit: venv
	$(PY) -m pytest -q tests

clean-venv:
	rm -rf $(VENV)
