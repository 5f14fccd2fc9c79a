# Two commands on a fresh machine:  make run  (all notebooks, default profile)  and  make test.
# Each bootstraps what it needs: the virtual environment (.venv) and the data sets (data/).
PYTHON  ?= $(shell command -v python3.11 || command -v python3)
VENV    := .venv
PY      := $(VENV)/bin/python
PROFILE ?= cpu
NOTEBOOKS := $(wildcard *.ipynb)

.PHONY: run test unit nbval bench data venv clean-venv help

help:
	@echo "make run [PROFILE=smoke|cpu|gpu]  execute every notebook (default cpu) -> models/, results/"
	@echo "make test                          unit tests + nbval over every notebook (KD_PROFILE=smoke)"
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
	$(PY) -m kd_utils run-notebooks --profile $(PROFILE)

test: venv data
	KD_PROFILE=smoke $(PY) -m pytest -q tests $(if $(NOTEBOOKS),--nbval-lax --nbval-current-env $(NOTEBOOKS))

bench: venv data
	$(PY) -m kd_utils.bench $(if $(QUICK),--quick)

unit: venv
	$(PY) -m pytest -q tests

clean-venv:
	rm -rf $(VENV)
