# Everything runs inside a local virtual environment, created and filled on first use.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
export PYTHONUNBUFFERED := 1

.PHONY: help setup run lab test check-recorded coverage bench gpu-check sample clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/'

# uv (from PyPI) fetches and unpacks the ~3 GB of torch wheels in parallel and precompiles the
# bytecode (so that every notebook kernel imports torch fast): about 70 s on a fresh machine,
# against about 3 minutes with pip.
UV     := $(VENV)/bin/uv pip install --quiet --compile-bytecode --python $(PY)

$(VENV)/.runtime: requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet uv
	$(UV) -r requirements.txt
	$(UV) --no-deps -e .
	touch $@

$(VENV)/.dev: requirements-dev.txt $(VENV)/.runtime
	$(UV) -r requirements-dev.txt
	touch $@

setup: $(VENV)/.dev  ## create .venv and install everything (quick when already done)

run: $(VENV)/.runtime  ## the main job on the bundled corpus and backbone
	$(PY) -m helpers run

lab: $(VENV)/.runtime  ## open JupyterLab on the notebooks
	$(VENV)/bin/jupyter lab notebooks/

test: $(VENV)/.dev  ## the test suite (unit tests + notebooks in SMOKE mode)
	$(PY) -m pytest

check-recorded: $(VENV)/.dev  ## recompute the figures recorded with the bundled corpus and backbone (CI runs it)
	$(PY) -m pytest -m recorded

# notebook kernels and subprocesses are not counted, so the notebooks' SMOKE runs are left out
coverage: $(VENV)/.dev  ## line coverage of helpers/ by the test suite (in one process)
	$(PY) -m coverage run --source=helpers -m pytest -n 0 -q -k "not smoke_mode"
	$(PY) -m coverage report

bench: $(VENV)/.runtime  ## measure the methods (bundled default + wav2vec2-base timing + loader), write results/
	$(PY) -m helpers bench --jobs 2
	$(PY) -m helpers bench --timing-only --backbone random:wav2vec2-base
	$(PY) -m helpers bench --loader-only

# On a GPU machine the Python already there is used (with .venv when it exists): its torch
# build matches the driver, and gpu-check names any package it lacks instead of failing.
GPU_PY := $(if $(wildcard $(PY)),$(PY),$(PYTHON))

gpu-check:  ## prove the GPU path on a CUDA machine (about 8 min), write results/gpu/<device>/
	$(GPU_PY) -m helpers gpu-check

sample: $(VENV)/.runtime  ## regenerate the bundled corpus in data_sample/ (needs espeak-ng)
	$(PY) -m helpers make-sample

clean:  ## remove the environment and generated results (keeps results/reference)
	rm -rf $(VENV) .pytest_cache
	find results -mindepth 1 -maxdepth 1 ! -name reference -exec rm -rf {} +
