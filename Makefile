# headline-signal: `make demo` and `make test` work on a fresh machine with Python and make.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
export OMP_NUM_THREADS ?= 1
export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER ?= 0
export TOKENIZERS_PARALLELISM ?= false
export HF_HUB_OFFLINE ?= 1
export TRANSFORMERS_OFFLINE ?= 1
export VLLM_NO_USAGE_STATS ?= 1
export RAY_USAGE_STATS_ENABLED ?= 0
export DO_NOT_TRACK ?= 1

.PHONY: setup tools test demo lint bench clean

setup:  ## the .venv (reused when it already matches requirements.lock)
	@bash scripts/setup_venv.sh

tools:  ## promtool and friends from Debian's packages, unpacked under .tools/ (no service started)
	@bash scripts/setup_tools.sh

test: setup tools  ## the whole suite: SQLite and PostgreSQL, real vLLM, Ray Serve, promtool
	$(PY) -m pytest -q $(PYTEST_ARGS)

demo: setup  ## the whole pipeline on the bundled real data with the tiny local model
	$(PY) -m services.pipeline.demo

lint: setup
	$(PY) -m ruff check services tests bench scripts deploy
	$(PY) -m ruff format --check services tests bench scripts deploy

bench: setup  ## every benchmark in bench/; figures go to docs/benchmarks.md
	@for script in bench/bench_*.py; do echo "== $$script"; $(PY) $$script || exit 1; done

clean:
	rm -rf var .pytest_cache .ruff_cache

.PHONY: lock-images
lock-images:  ## deploy/requirements/{gpu,service}.lock for the images' platform (uv; needs the registry)
	@bash scripts/lock_images.sh

.PHONY: images image-slim
images: tools  ## both images with buildah on a stand-in base, no Docker engine (docs/images.md; the GPU one downloads several GB)
	@bash scripts/build_images.sh service gpu

image-slim: tools  ## only the slim image (ingest, backtest), as tests/deploy/test_slim_image.py builds it
	@bash scripts/build_images.sh service
