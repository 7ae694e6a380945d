# Two commands matter: `make demo` and `make test`. Both set up .venv first when needed.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
DEMO   := build/demo

.PHONY: setup test demo bench bench-gpu gpu-wheels clean help

help:
	@echo "make demo   - set up, generate a sample SA-V split, run the MA-V job on it (CPU)"
	@echo "make test   - set up, run the whole test suite"
	@echo "make bench  - CPU benchmarks (reader, matters, pipeline, loaders); ratios to same-run baselines"
	@echo "make bench-gpu - VideoMaMa stages, GroupNorm kernels, compile counts (tiny config on CPU; ARGS=--full ... on a GPU)"
	@echo "make gpu-wheels - wheels for benchmarks/gpu_device.sh on the lent GPU machine"

setup: $(STAMP)

$(STAMP): requirements.lock requirements-sam2.lock pyproject.toml
	$(PYTHON) -m venv $(VENV)
	# torch first and pinned: an unpinned torch pulls a multi-GB CUDA build.
	$(VENV)/bin/pip install --quiet torch==2.13.0
	$(VENV)/bin/pip install --quiet -r requirements.lock
	# the sam2 extra (SAM2-Matte): complete pinned list, no resolver (sam2 asks for torchvision and a build torch)
	SAM2_BUILD_CUDA=0 $(VENV)/bin/pip install --quiet --no-deps --no-build-isolation -r requirements-sam2.lock
	$(VENV)/bin/pip install --quiet --no-deps --no-build-isolation -e .
	$(PY) -c "from models.sam2_matte.config import require_sam2; require_sam2()"
	# pymatting (the closed-form matter) compiles its numba kernels when imported, into a cache next to
	# its sources: once here (~70 s on 2 cores), as pip compiles .pyc, not in the first run or test that uses it
	$(PY) -c "import pymatting"
	touch $(STAMP)

# TEST_WORKERS: test files run at a time (xdist workers, each with its own job server and Ray sessions);
# 2 by default: 7m42s on this 2-core machine against ~12 min in one process (TEST_WORKERS=1)
TEST_WORKERS ?= 2
XDIST := $(if $(filter-out 1,$(TEST_WORKERS)),-n $(TEST_WORKERS) --dist loadfile,)
# PYTEST_ARGS: more pytest options, e.g. PYTEST_ARGS="--durations=0" or PYTEST_ARGS="tests/test_executor.py"
test: setup
	$(PY) -m pytest -q $(XDIST) --durations=15 $(PYTEST_ARGS)

demo: setup
	$(PY) -m pipeline.demo --workdir $(DEMO)

bench: setup
	$(PY) -m benchmarks.all

# CPU default: the tiny config through every path the GPU run measures (on a GPU: ARGS="--full ...",
# or benchmarks/gpu_device.sh); torch.compile with the eager backend here (inductor's C++ builds are slow)
BENCH_GPU_ARGS ?= --batch 2 --pad-batch --fused-group-norm --channels-last --stage-timing --kernels --profile \
	--compile --eager-first --compile-backend eager --compile-parts decoder --mixed --mixed-long-side 256
bench-gpu: setup
	$(PY) -m benchmarks.gpu_matter $(if $(ARGS),$(ARGS),$(BENCH_GPU_ARGS))

# wheels the device machine lacks (it has torch 2.11 + Triton, no registry): carry .gpu_wheels, run benchmarks/gpu_device.sh
gpu-wheels: setup
	$(VENV)/bin/pip download --quiet --no-deps -d .gpu_wheels diffusers==0.42.1
	$(VENV)/bin/pip download --quiet --no-deps --only-binary=:all: --platform manylinux2014_x86_64 \
		--python-version 3.12 -d .gpu_wheels safetensors==0.8.0

clean:
	rm -rf $(VENV) build
