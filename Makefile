# The two commands of the README: `make demo` (main job) and `make test`.
# Each creates .venv/ from uv.lock on first use (uv itself is installed with pip if absent).
SHELL := /bin/bash
PYTHON ?= python3
# the interpreter uv builds .venv with: any Python 3.11 it finds (CompressAI 1.2.8 ships cp311 wheels)
UV_PYTHON ?= 3.11
# uv from PATH, else the uv Python package (installed with pip on first use).
UV := $(shell command -v uv 2>/dev/null || echo "$(PYTHON) -m uv")
VENV := .venv
export NO_ALBUMENTATIONS_UPDATE := 1
export WANDB_MODE ?= offline
export WANDB_SILENT := true

.PHONY: venv test test-fast demo bench clean

$(VENV)/.synced: pyproject.toml uv.lock
	@$(UV) --version >/dev/null 2>&1 || $(PYTHON) -m pip install --quiet "uv>=0.5" || $(PYTHON) -m pip install --quiet --user "uv>=0.5"
	$(UV) sync --frozen --python $(UV_PYTHON)
	@touch $@

venv: $(VENV)/.synced

test: venv  ## full test suite, slow tests included (what CI runs)
	$(VENV)/bin/python -m pytest -q

test-fast: venv  ## skip the slow real-data runs
	$(VENV)/bin/python -m pytest -q -m "not slow"

demo: venv  ## main job: strategy comparison on a generated (synthetic) fundus-like set, CPU, a few minutes
	$(VENV)/bin/finetune-kit compare --demo --output_dir runs/demo

clean:
	rm -rf $(VENV) .pytest_cache
