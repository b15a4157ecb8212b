# mlmc: set up, run and build the executable book, and test it. Thin wrappers around the `mlmc` command.
#   make book    set up .venv, execute every chapter (default profile, then smoke for the runs page), build the HTML
#                into _build/html
#   make test    set up .venv, run the tests and nbval on the executed chapters
# The repository behind the launch/download buttons: MLMC_REPO_URL=https://github.com/OWNER/REPO make book
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
BIN := $(VENV)/bin
# Setup reruns only when pyproject.toml changes: the stamp's name carries the file's hash.
STAMP := $(VENV)/.mlmc-setup-$(shell sha256sum pyproject.toml | cut -c1-12)
SMOKE_DIR ?= $(or $(TMPDIR),/tmp)/mlmc-smoke
PYTEST_ARGS ?= --durations=25  # the slowest tests, so every CI log shows where its time budget goes
NBVAL := --nbval --nbval-current-env --nbval-sanitize-with tests/nbval_sanitize.cfg

export OMP_NUM_THREADS ?= 1
export MLMC_CACHE ?= $(HOME)/.cache/mlmc
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: setup book build student test smoke gpu-check lint

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install torch==2.13.0
	$(BIN)/python -m pip install -e ".[dev]"
	rm -f $(VENV)/.mlmc-setup-*
	touch $@

book: setup
	$(BIN)/mlmc run all --profile default
	$(MAKE) --no-print-directory smoke
	$(BIN)/mlmc build --smoke-dir $(SMOKE_DIR)/chapters

# Build from the committed chapters only (the runs page shows smoke runtimes if `make smoke` left them).
build: setup
	$(BIN)/mlmc build $(if $(wildcard $(SMOKE_DIR)/chapters),--smoke-dir $(SMOKE_DIR)/chapters)

# The student edition: the same book without the cells tagged `solution`, into _build/student/html.
student: setup
	$(BIN)/mlmc build --edition student

# Unit, contract and book-build tests, plus nbval re-executing every committed book/chapters/*.ipynb.
test: setup
	$(BIN)/python -m pytest -p no:cacheprovider tests book/chapters $(NBVAL) $(PYTEST_ARGS)

# Every chapter with the smoke profile into $(SMOKE_DIR); book/chapters/ and results/ stay untouched.
smoke: setup
	rm -rf $(SMOKE_DIR)
	MLMC_RESULTS=$(SMOKE_DIR)/results $(BIN)/mlmc run all --profile smoke --out $(SMOKE_DIR)/chapters

# Every chapter's smoke path on cuda against the CPU smoke run (needs a GPU; <= 10 min); writes book/device_checks.json.
gpu-check: setup
	$(BIN)/mlmc gpu-check

lint: setup
	$(BIN)/ruff check lib tests notebooks
	$(BIN)/ruff format --check lib tests
