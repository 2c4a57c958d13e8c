# Two commands on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# Stamps record what was installed into the venv; they are redone when pyproject.toml changes.
BASE_STAMP := $(VENV)/.stamp-base
TEST_STAMP := $(VENV)/.stamp-test
SYS_STAMP  := .cache/.stamp-sysdeps

# The main job's defaults: override with `make run ARGS="model=ppocr_cls"`.
ARGS ?=
# pytest arguments: `make test PYTEST_ARGS="-m 'not slow'"`.
PYTEST_ARGS ?=

.PHONY: run test venv lint sysdeps clean ui

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(BASE_STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e .
	touch $@

$(TEST_STAMP): pyproject.toml $(BASE_STAMP)
	$(BIN)/python -m pip install --quiet -e '.[dev,torch,baselines]'
	touch $@

# System packages the targets need (cross compiler for aarch64); see scripts/install_system_deps.sh.
$(SYS_STAMP): scripts/install_system_deps.sh
	bash scripts/install_system_deps.sh
	mkdir -p $(dir $@) && touch $@

venv: $(BASE_STAMP)

sysdeps: $(SYS_STAMP)

run: $(BASE_STAMP)
	$(BIN)/python -m compile $(ARGS)

test: $(TEST_STAMP) $(SYS_STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: $(TEST_STAMP)
	$(BIN)/ruff check compile runner tests

ui: $(BASE_STAMP)
	$(BIN)/mlflow ui --backend-store-uri sqlite:///$(CURDIR)/mlflow.db

clean:
	rm -rf $(VENV) .cache .pytest_cache
