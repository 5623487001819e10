# graft: every real job is a target. `make demo` and `make test` set themselves up on a fresh machine.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
GRAFT  := $(VENV)/bin/graft
# CI and this machine install torch from local wheels; pip (not uv/poetry) finds them.
TORCH_PINS ?= torch==2.14.1 torchvision==0.29.1
NPROC_PER_NODE ?= 1
DATASET ?= runs/dataset-s2

.PHONY: setup demo test test-all lint dataset-naip dataset-s2 embed train-image train-pixel eval bench clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet $(TORCH_PINS)
	$(VENV)/bin/pip install --quiet -e '.[dev,ray,sam]'
	touch $@

setup: $(VENV)/.installed  ## build .venv and install graft with dev+ray+sam extras

demo: $(VENV)/.installed  ## the whole job on the embedded synthetic world (CPU, minutes) -> runs/demo/report.md
	$(GRAFT) demo --out runs/demo

test: $(VENV)/.installed  ## the CI suite (fast, CPU only)
	$(PY) -m pytest -q -m "not heavy" tests

test-all: $(VENV)/.installed  ## everything, including tests marked heavy
	$(PY) -m pytest -q tests

lint: $(VENV)/.installed  ## ruff, and the import layers (python -m graft.dev.layers)
	$(VENV)/bin/ruff check src tests
	$(PY) -m graft.dev.layers

dataset-naip: $(VENV)/.installed  ## live NAIP build (needs Earth Engine + Flickr credentials; see README)
	$(GRAFT) build data_pipeline/naip.yaml

dataset-s2: $(VENV)/.installed  ## live Sentinel-2 build
	$(GRAFT) build data_pipeline/sentinel2.yaml

embed: $(VENV)/.installed  ## cache ground embeddings for DATASET
	$(GRAFT) embed $(DATASET) --config train/image_level.yaml

train-image: $(VENV)/.installed  ## image-level training; NPROC_PER_NODE=8 for a GPU node
	$(VENV)/bin/torchrun --standalone --nproc_per_node=$(NPROC_PER_NODE) -m graft.cli train train/image_level.yaml --resume latest

train-pixel: $(VENV)/.installed
	$(VENV)/bin/torchrun --standalone --nproc_per_node=$(NPROC_PER_NODE) -m graft.cli train train/pixel_level.yaml --resume latest

eval: $(VENV)/.installed  ## zero-shot benchmark suite (datasets under data/benchmarks; see eval/README.md)
	$(GRAFT) eval eval/sentinel2_suite.yaml

bench: $(VENV)/.installed  ## speed/memory ratios -> bench/results.json, bench/results.md
	$(PY) -m bench.run

clean:
	rm -rf runs .pytest_cache
