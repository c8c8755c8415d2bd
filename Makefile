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
BENCH_STUDIES ?= 8
BENCH_FLAGS ?=
# make preflight: the recipe's presets (TRAIN_PRESETS, TRAIN_FOLDS, TRAIN_OVERRIDES) tried on this card first
PREFLIGHT_STUDIES ?= 1975
PREFLIGHT_FLAGS ?=
# make gpu-checks: every GPU check in one run (kaggle_utils/dev/gpu_checks.py); make gpu-kit: its wheels for offline use
GPU_CHECKS_OUT ?= $(WORK_DIR)/gpu_checks
GPU_PYTHON ?= 3.12
PROFILE ?= demo
# The CPU demo trains fold 0 of 4 with the T1 foraminal, one T2 and the axial model; on a GPU use
# PROFILE=full FOLDS='[0, 1, 2, 3]' PRESETS='[]' (every stage-2 preset).
FOLDS ?= [0]
PRESETS ?= ["fs", "sp1", "ax"]
TRAIN_OVERRIDES ?= {}
# The CPU demo predicts without the 9-rotation TTA (04 in a third of the time, its score about 0.015 worse);
# INFER_OVERRIDES='{}' restores it. Every other profile, and the kernel, uses all 9 rotations.
INFER_OVERRIDES ?= $(if $(filter demo,$(PROFILE)),{"tta_angles": [0]},{})
# make train-all: the solution's full recipe (every preset x 4 folds) from DATA_DIR (default: the synthetic data)
# The default list is presets.RECIPE_PRESETS (asked when used, so `make install` comes first).
TRAIN_PRESETS ?= $(shell $(PY) -m kaggle_utils.core.presets presets)
TRAIN_FOLDS ?= 0 1 2 3
TRAIN_PROFILE ?= auto
GPUS ?= 1
ROUNDS ?= 1
NOISY_THRESHOLD ?= 0.85
STAGE2_PRESETS = $(filter-out stage1_%,$(TRAIN_PRESETS))
TRAIN_LAUNCH = $(if $(filter 1,$(GPUS)),$(PY),$(VENV)/bin/torchrun --standalone --nproc_per_node=$(GPUS))
NOTEBOOKS := $(sort $(wildcard notebooks/0*.py))
# Round 2 (notebook 05) is its own step (`make denoise`): `make demo` runs notebooks 01-04.
DEMO_NOTEBOOKS := $(filter-out notebooks/05_denoise.py,$(NOTEBOOKS))
DENOISE_RUN ?= denoised

# `make demo` without DATA_DIR generates and uses the synthetic data; with DATA_DIR it uses that folder.
ifeq ($(strip $(DATA_DIR)),)
DEMO_DATA := $(SYNTHETIC_DIR)
DEMO_DEPS := data
else
DEMO_DATA := $(abspath $(DATA_DIR))
DEMO_DEPS := install
endif

.PHONY: help install data demo train-all denoise test lint format notebooks clean sync sync-code sync-weights submit \
	kernel-push kernel-follow kernel-output competition-submit wheels bench-preprocess bench-infer bench-train \
	test-kaggle-image preflight gpu-checks gpu-kit

help: ## List the targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z_-]+:.*## / {printf "  \033[36m%-18s\033[0m %s\n", $$1, $$2}' $(MAKEFILE_LIST)

install: $(VENV)/.installed ## Create .venv with pinned torch and the package (editable) plus dev tools

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet $(TORCH_PINS)
	$(VENV)/bin/pip install --quiet -e '.[dev]' $(TORCH_PINS)
	touch $@

data: install ## Write the synthetic competition dataset to SYNTHETIC_DIR (N_TRAIN, N_TEST, SEED)
	@if [ -f $(SYNTHETIC_DIR)/train.csv ]; then echo "$(SYNTHETIC_DIR) exists (make clean to redo)"; \
	else $(PY) -m kaggle_utils.dev.synthetic $(SYNTHETIC_DIR) --train $(N_TRAIN) --test $(N_TEST) --seed $(SEED); fi

# The notebooks' parameters, as make demo and make denoise give them to the headless runner
NOTEBOOK_PARAMS = --set DATA_DIR=$(DEMO_DATA) --set WORK_DIR=$(WORK_DIR) --set PROFILE=$(PROFILE) \
	--set 'FOLDS=$(FOLDS)' --set 'PRESETS=$(PRESETS)' --set 'TRAIN_OVERRIDES=$(TRAIN_OVERRIDES)' \
	--set 'INFER_OVERRIDES=$(INFER_OVERRIDES)'

demo: $(DEMO_DEPS) ## Run the four notebooks headless on DATA_DIR (default: the synthetic data) into WORK_DIR
	$(PY) -m kaggle_utils.dev.runner $(DEMO_NOTEBOOKS) --out $(WORK_DIR)/executed $(NOTEBOOK_PARAMS)
	@echo "submission: $(WORK_DIR)/submission.csv   scores: $(WORK_DIR)/cv.json   pictures: $(WORK_DIR)/figures"

train-all: $(DEMO_DEPS) ## Preprocess, train TRAIN_PRESETS x TRAIN_FOLDS (GPUS=N: torchrun; ROUNDS=2: denoised round too); resumable
	$(PY) -m kaggle_utils.dev.runner notebooks/01_preprocess.py --out $(WORK_DIR)/executed \
		--set DATA_DIR=$(DEMO_DATA) --set WORK_DIR=$(WORK_DIR)
	$(TRAIN_LAUNCH) -m kaggle_utils.training.train --presets $(TRAIN_PRESETS) --folds $(TRAIN_FOLDS) \
		--profile $(TRAIN_PROFILE) --data-dir $(DEMO_DATA) --work-dir $(WORK_DIR) --overrides '$(TRAIN_OVERRIDES)'
ifeq ($(ROUNDS),2)
	$(PY) -m kaggle_utils.training.denoise --presets $(STAGE2_PRESETS) --threshold $(NOISY_THRESHOLD) \
		--profile $(TRAIN_PROFILE) --data-dir $(DEMO_DATA) --work-dir $(WORK_DIR) --overrides '$(TRAIN_OVERRIDES)'
	$(TRAIN_LAUNCH) -m kaggle_utils.training.train --presets $(STAGE2_PRESETS) --folds $(TRAIN_FOLDS) --run $(DENOISE_RUN) \
		--profile $(TRAIN_PROFILE) --data-dir $(DEMO_DATA) --work-dir $(WORK_DIR) --overrides '$(TRAIN_OVERRIDES)' \
		--set noisy_labels=$(WORK_DIR)/tables/noisy_labels.csv --set pseudo_labels=$(WORK_DIR)/tables/pseudo_labels.csv
endif

denoise: $(DEMO_DEPS) ## Round 2 from WORK_DIR's round-1 OOF (notebook 05: noisy labels out, pseudo labels in), then 04 on it
	$(PY) -m kaggle_utils.dev.runner notebooks/05_denoise.py notebooks/04_inference.py --out $(WORK_DIR)/$(DENOISE_RUN)/executed \
		$(NOTEBOOK_PARAMS) --set RUN=$(DENOISE_RUN)
	@echo "report: $(WORK_DIR)/$(DENOISE_RUN)/denoise.json   scores: $(WORK_DIR)/$(DENOISE_RUN)/cv.json"

test: install ## Run the test suite (unit tests and every notebook on a tiny synthetic dataset)
	$(PY) -m pytest

# make test-kaggle-image: the inference and kernel tests in a second environment close to Kaggle's GPU image (its
# May 2026 base): Python 3.12 and the image's numpy, pandas, timm and opencv; torch 2.10 as the image has it (the CUDA
# wheel, run on the CPU here). It downloads about 4 GB, so `make test` leaves it out.
KAGGLE_IMAGE_PYTHON ?= $(firstword $(wildcard $(HOME)/.pyenv/versions/3.12*/bin/python3.12) $(shell command -v python3.12))
KAGGLE_IMAGE_VENV ?= .venv-kaggle-image
KAGGLE_IMAGE_PINS := torch==2.10.0 torchvision==0.25.0 numpy==2.0.2 pandas==2.2.2 timm==1.0.26 \
	opencv-python-headless==4.13.0.92
KAGGLE_IMAGE_TESTS := tests/test_infer.py tests/dev/test_kaggle.py tests/test_wheels.py tests/test_models.py \
	tests/test_predictors.py tests/test_checkpoints.py tests/test_engine.py tests/test_dicom.py

test-kaggle-image: $(KAGGLE_IMAGE_VENV)/.installed ## The inference and kernel tests under Kaggle's Python 3.12, torch 2.10, numpy, pandas, timm
	$(KAGGLE_IMAGE_VENV)/bin/python -c 'import sys, torch, numpy, pandas, timm, cv2; print("python", sys.version.split()[0], "torch", torch.__version__, "numpy", numpy.__version__, "pandas", pandas.__version__, "timm", timm.__version__, "opencv", cv2.__version__)'
	$(KAGGLE_IMAGE_VENV)/bin/python -m pytest $(KAGGLE_IMAGE_TESTS)

$(KAGGLE_IMAGE_VENV)/.installed: pyproject.toml
	@test -n '$(KAGGLE_IMAGE_PYTHON)' || { echo "no python3.12 found: set KAGGLE_IMAGE_PYTHON=/path/to/python3.12"; exit 1; }
	$(KAGGLE_IMAGE_PYTHON) -m venv $(KAGGLE_IMAGE_VENV)
	$(KAGGLE_IMAGE_VENV)/bin/pip install --quiet --upgrade pip
	$(KAGGLE_IMAGE_VENV)/bin/pip install --quiet $(KAGGLE_IMAGE_PINS)
	$(KAGGLE_IMAGE_VENV)/bin/pip install --quiet -e '.[dev]' $(KAGGLE_IMAGE_PINS)
	touch $@

preflight: install ## Before train-all: every preset's steps on this GPU (memory, ms, recipe hours, overrides that fit), inference, one e2e pass
	$(PY) -m kaggle_utils.dev.preflight --presets $(TRAIN_PRESETS) --folds $(TRAIN_FOLDS) --studies $(PREFLIGHT_STUDIES) \
		--overrides '$(TRAIN_OVERRIDES)' --out '$(WORK_DIR)/preflight' $(PREFLIGHT_FLAGS)

gpu-checks: install ## On a GPU: pytest -m gpu, preflight, bench-infer, bench-train in ~8 min (H100) -> GPU_CHECKS_OUT
	$(PY) -m kaggle_utils.dev.gpu_checks run --out '$(GPU_CHECKS_OUT)'

gpu-kit: install ## Where pip works: wheels (GPU_PYTHON) of what a CUDA + PyTorch image lacks, into .gpu/ for gpu-checks
	$(PY) -m kaggle_utils.dev.gpu_checks kit --python $(GPU_PYTHON) --platforms $(WHEELS_PLATFORMS)

bench-preprocess: install ## Time stage-1/2 preprocessing against the plain way on BENCH_STUDIES synthetic studies
	$(PY) -m kaggle_utils.dev.bench_preprocess --studies $(BENCH_STUDIES)

bench-infer: install ## Time inference per study (WORK_DIR/models, else small models; BENCH_FLAGS=--build-models) + T4 projection
	$(PY) -m kaggle_utils.dev.bench_infer --studies $(BENCH_STUDIES) --work-dir '$(WORK_DIR)' $(BENCH_FLAGS)

bench-train: install ## ms per training step of every preset vs the seed's settings, and the loader overhead (BENCH_FLAGS)
	$(PY) -m kaggle_utils.dev.bench_train $(BENCH_FLAGS)

lint: install ## ruff lint and format check
	$(VENV)/bin/ruff check kaggle_utils tests notebooks
	$(VENV)/bin/ruff format --check kaggle_utils tests notebooks

format: install ## ruff fix and format
	$(VENV)/bin/ruff check --fix kaggle_utils tests notebooks
	$(VENV)/bin/ruff format kaggle_utils tests notebooks

notebooks: install ## Regenerate the .ipynb twin of every notebooks/*.py (the .py is the source)
	$(VENV)/bin/jupytext --sync $(NOTEBOOKS)

# --- Kaggle (needs the CLI: `pip install -e '.[kaggle]'`, and credentials) ---------------------------------
# The owner of every dataset and of the kernel is set here only; the committed metadata says {owner}.
# Each step is a command of kaggle_utils/dev/kaggle.py, which judges the CLI by what it prints, not by its exit status.
KAGGLE ?= kaggle
KAGGLE_USER ?= $(shell $(PY) -m kaggle_utils.dev.kaggle_auth 2>/dev/null)
KAGGLE_BUILD ?= $(CURDIR)/build/kaggle
KAGGLE_OUTPUT ?= $(KAGGLE_BUILD)/output
MSG ?=
KAGGLE_POLL ?= 30
KERNEL_TIMEOUT ?= 43200
KERNEL_VERSION ?=
DELETE_OLD_WEIGHTS ?=
COMPETITION_SUBMIT ?=
# What the submission kernel may install offline (only where Kaggle's image lacks it or has it too old), at the
# versions installed here, for every Python Kaggle's image has had (3.11; 3.12 since December 2025; 3.13 on Colab).
# Platforms up to glibc 2.34: Kaggle's image is Ubuntu 22.04 (glibc 2.35).
WHEELS ?= timm pydicom kornia kornia-rs pylibjpeg pylibjpeg-libjpeg pylibjpeg-openjpeg pylibjpeg-rle pyjpegls
WHEELS_PYTHONS ?= 3.11 3.12 3.13
WHEELS_PLATFORMS := manylinux2014_x86_64 manylinux_2_17_x86_64 manylinux_2_28_x86_64 manylinux_2_31_x86_64 manylinux_2_34_x86_64
PIP ?= $(PY) -m pip
GIT_COMMIT = $(shell git rev-parse --short HEAD 2>/dev/null || echo no-git)$(if $(shell git status --porcelain 2>/dev/null),-dirty)
VERSION_NOTE = $(strip $(GIT_COMMIT) $(MSG))
KAGGLE_STEP = $(PY) -m kaggle_utils.dev.kaggle
KAGGLE_ARGS = --owner '$(KAGGLE_USER)' --build '$(KAGGLE_BUILD)' --cli '$(KAGGLE)'
WAIT_ARGS = --poll $(KAGGLE_POLL) --run-timeout $(KERNEL_TIMEOUT)
OUTPUT_ARGS = --output '$(KAGGLE_OUTPUT)'
SUBMIT_ARGS = --message "$(VERSION_NOTE)" $(if $(KERNEL_VERSION),--version $(KERNEL_VERSION))

sync: sync-code sync-weights ## Publish the code and the weights datasets (each a new version, or created the first time)

sync-code: ## Publish kaggle_utils (without dev/) as the code dataset: the everyday change (version note: commit id, MSG)
	@$(KAGGLE_STEP) publish code $(KAGGLE_ARGS) --message "$(VERSION_NOTE)"

sync-weights: ## Publish WORK_DIR/models in fp16 as the weights dataset (DELETE_OLD_WEIGHTS=1: delete its older versions)
	@$(KAGGLE_STEP) publish weights $(KAGGLE_ARGS) --message "$(VERSION_NOTE)" --models '$(WORK_DIR)/models' \
		$(if $(filter 1,$(DELETE_OLD_WEIGHTS)),--delete-old-versions)

submit: ## Push the kernel (notebook 04), follow its run, fetch its log and submission.csv; COMPETITION_SUBMIT=1 submits it
	@$(KAGGLE_STEP) submit $(KAGGLE_ARGS) $(WAIT_ARGS) $(OUTPUT_ARGS) $(SUBMIT_ARGS) $(if $(filter 1,$(COMPETITION_SUBMIT)),--to-competition)

kernel-push: ## Once our datasets' newest versions are ready, push notebook 04 as the kernel (Kaggle runs it)
	@$(KAGGLE_STEP) kernel-push $(KAGGLE_ARGS) $(WAIT_ARGS)

kernel-follow: ## Follow the kernel's latest run until it completes or fails (on failure: the end of its log)
	@$(KAGGLE_STEP) kernel-follow $(KAGGLE_ARGS) $(WAIT_ARGS) $(OUTPUT_ARGS)

kernel-output: ## Fetch the log and submission.csv of the kernel's latest run into KAGGLE_OUTPUT
	@$(KAGGLE_STEP) kernel-output $(KAGGLE_ARGS) $(OUTPUT_ARGS)

competition-submit: ## Submit the pushed kernel version (or KERNEL_VERSION=N) to the competition (late submission)
	@$(KAGGLE_STEP) competition-submit $(KAGGLE_ARGS) $(SUBMIT_ARGS)

wheels: ## pip download WHEELS as installed here for WHEELS_PYTHONS and publish them as the wheels dataset
	@$(KAGGLE_STEP) check --cli '$(KAGGLE)'
	@set -eo pipefail; pins=$$($(KAGGLE_STEP) pins $(WHEELS)); echo "pins: $$pins"; \
	for python in $(WHEELS_PYTHONS); do \
		$(PIP) download --dest '$(KAGGLE_BUILD)/downloads' --no-deps --only-binary=:all: --python-version $$python \
			$(addprefix --platform ,$(WHEELS_PLATFORMS)) $$pins; \
	done
	@$(KAGGLE_STEP) publish wheels $(KAGGLE_ARGS) --message "$(VERSION_NOTE)" \
		--downloads '$(KAGGLE_BUILD)/downloads' --packages $(WHEELS)

clean: ## Remove WORK_DIR (outputs) and the synthetic data
	rm -rf $(WORK_DIR) $(SYNTHETIC_DIR)
