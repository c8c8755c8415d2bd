# Every workflow of the project is a target; `make` alone lists them.
.DEFAULT_GOAL := help
SHELL := /bin/bash

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_PINS := torch==2.14.1 torchvision==0.29.1

DATA_DIR ?=
WORK_DIR ?= $(CURDIR)/work
SYNTHETIC_DIR ?= $(CURDIR)/data/synthetic
N_TRAIN ?= 48
N_TEST ?= 16
SEED ?= 0
PROFILE ?= demo
# The CPU demo trains fold 0 of 4 with the T1 foraminal and one T2 model; on a GPU use
# PROFILE=full FOLDS='[0, 1, 2, 3]' PRESETS='["fo", "sp1", "sp2", "su"]'.
FOLDS ?= [0]
PRESETS ?= ["fo", "sp1"]
TRAIN_OVERRIDES ?= {}
NOTEBOOKS := $(sort $(wildcard notebooks/0*.py))

# `make demo` without DATA_DIR generates and uses the synthetic data; with DATA_DIR it uses that folder.
ifeq ($(strip $(DATA_DIR)),)
DEMO_DATA := $(SYNTHETIC_DIR)
DEMO_DEPS := data
else
DEMO_DATA := $(abspath $(DATA_DIR))
DEMO_DEPS := install
endif

.PHONY: help install data demo test test-fast lint format notebooks clean

help: ## List the targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z_-]+:.*## / {printf "  \033[36m%-12s\033[0m %s\n", $$1, $$2}' $(MAKEFILE_LIST)

install: $(VENV)/.installed ## Create .venv with pinned torch and the package (editable) plus dev tools

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet $(TORCH_PINS)
	$(VENV)/bin/pip install --quiet -e '.[dev]' $(TORCH_PINS)
	touch $@

data: install ## Write the synthetic competition dataset to SYNTHETIC_DIR (N_TRAIN, N_TEST, SEED)
	@if [ -f $(SYNTHETIC_DIR)/train.csv ]; then echo "$(SYNTHETIC_DIR) exists (make clean to redo)"; \
	else $(PY) -m kaggle_utils.synthetic $(SYNTHETIC_DIR) --train $(N_TRAIN) --test $(N_TEST) --seed $(SEED); fi

demo: $(DEMO_DEPS) ## Run the four notebooks headless on DATA_DIR (default: the synthetic data) into WORK_DIR
	$(PY) -m kaggle_utils.runner $(NOTEBOOKS) --out $(WORK_DIR)/executed \
		--set DATA_DIR=$(DEMO_DATA) --set WORK_DIR=$(WORK_DIR) --set PROFILE=$(PROFILE) \
		--set 'FOLDS=$(FOLDS)' --set 'PRESETS=$(PRESETS)' --set 'TRAIN_OVERRIDES=$(TRAIN_OVERRIDES)'
	@echo "submission: $(WORK_DIR)/submission.csv   scores: $(WORK_DIR)/cv.json   pictures: $(WORK_DIR)/figures"

test: install ## Run the test suite (unit tests and every notebook on a tiny synthetic dataset)
	$(PY) -m pytest

lint: install ## ruff lint and format check
	$(VENV)/bin/ruff check kaggle_utils tests notebooks
	$(VENV)/bin/ruff format --check kaggle_utils tests notebooks

format: install ## ruff fix and format
	$(VENV)/bin/ruff check --fix kaggle_utils tests notebooks
	$(VENV)/bin/ruff format kaggle_utils tests notebooks

notebooks: install ## Regenerate the .ipynb twin of every notebooks/*.py (the .py is the source)
	$(VENV)/bin/jupytext --sync $(NOTEBOOKS)

clean: ## Remove WORK_DIR (outputs) and the synthetic data
	rm -rf $(WORK_DIR) $(SYNTHETIC_DIR)
