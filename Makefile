# Two commands matter: `make demo` and `make test`. Both set up .venv first when needed.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
DEMO   := build/demo

.PHONY: setup test demo bench bench-gpu clean help

help:
	@echo "make demo   - set up, generate a sample SA-V split, run the MA-V job on it (CPU)"
	@echo "make test   - set up, run the whole test suite"
	@echo "make bench  - CPU benchmarks (reader, matters, pipeline, loaders); ratios to same-run baselines"
	@echo "make bench-gpu - VideoMaMa stage timings (tiny config on CPU; pass ARGS=--full on a GPU)"

setup: $(STAMP)

$(STAMP): requirements.lock pyproject.toml
	$(PYTHON) -m venv $(VENV)
	# torch first and pinned: an unpinned torch pulls a multi-GB CUDA build.
	$(VENV)/bin/pip install --quiet torch==2.13.0
	$(VENV)/bin/pip install --quiet -r requirements.lock
	$(VENV)/bin/pip install --quiet --no-deps --no-build-isolation -e .
	touch $(STAMP)

test: setup
	$(PY) -m pytest -q

demo: setup
	$(PY) -m pipeline.demo --workdir $(DEMO)

bench: setup
	$(PY) -m benchmarks.all

bench-gpu: setup
	$(PY) -m benchmarks.gpu_matter $(ARGS)

clean:
	rm -rf $(VENV) build
