# graft: every real job is a target. `make demo` and `make test` set themselves up on a fresh machine.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
GRAFT  := $(VENV)/bin/graft
# CI and this machine install torch from local wheels; pip (not uv/poetry) finds them.
TORCH_PINS ?= torch==2.14.1 torchvision==0.29.1
NPROC_PER_NODE ?= 1
# The recipes chain: build -> embed -> train -> eval -> export, with these paths (data_pipeline/, train/, eval/).
#   Sentinel-2: make dataset-s2 embed train-s2-image train-s2-pixel eval-s2 export
#   NAIP:       make dataset-naip embed DATASET=runs/dataset-naip train-naip-image train-naip-pixel eval-naip \
#               export RUN=runs/naip-image
# embed: a dataset folder (out_dir of a data_pipeline/ recipe), and the training recipe whose clip: tower to cache
DATASET ?= runs/dataset-s2
TRAIN_CONFIG ?= train/sentinel2_image.yaml
# export: a run folder (run_dir of a train/ recipe) and the open_clip local-dir: folder to write
RUN ?= runs/s2-image
EXPORT ?= $(RUN)-export
TORCHRUN = $(VENV)/bin/torchrun --standalone --nproc_per_node=$(NPROC_PER_NODE) -m graft.cli train

BROWSER_PKGS ?= chromium chromium-driver

.PHONY: setup browser demo demo-ms test test-all lint dataset-naip dataset-s2 embed train-s2-image train-s2-pixel \
	train-naip-image train-naip-pixel eval-s2 eval-naip export bench clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet $(TORCH_PINS)
	$(VENV)/bin/pip install --quiet -e '.[dev,ray,sam,hf,map,benchmarks]'
	touch $@

setup: $(VENV)/.installed  ## build .venv and install graft with dev+ray+sam+hf+map+benchmarks extras

demo: $(VENV)/.installed  ## the whole job on the embedded synthetic world (CPU, minutes) -> runs/demo/report.md
	$(GRAFT) demo --out runs/demo

demo-ms: $(VENV)/.installed  ## multispectral demo: RGB vs RGB+NIR encoders on classes alike in RGB -> runs/demo-ms/report.md
	$(GRAFT) demo --multispectral --quick --out runs/demo-ms

# The map page's browser test drives Debian's headless Chromium (no browser download). Fast when installed.
browser:  ## install chromium + chromedriver from Debian if missing (root or sudo)
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || { \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $(BROWSER_PKGS); }

test: $(VENV)/.installed browser  ## the CI suite (fast, CPU only)
	$(PY) -m pytest -q -m "not heavy" tests

test-all: $(VENV)/.installed browser  ## everything, including tests marked heavy
	$(PY) -m pytest -q tests

lint: $(VENV)/.installed  ## ruff, and the import layers (python -m graft.dev.layers)
	$(VENV)/bin/ruff check src tests
	$(PY) -m graft.dev.layers

dataset-naip: $(VENV)/.installed  ## live NAIP build -> runs/dataset-naip (needs Earth Engine + Flickr credentials)
	$(GRAFT) build data_pipeline/naip.yaml

dataset-s2: $(VENV)/.installed  ## live Sentinel-2 build -> runs/dataset-s2
	$(GRAFT) build data_pipeline/sentinel2.yaml

embed: $(VENV)/.installed  ## cache ground embeddings of DATASET (default runs/dataset-s2) with TRAIN_CONFIG's clip tower
	$(GRAFT) embed $(DATASET) --config $(TRAIN_CONFIG)

train-s2-image: $(VENV)/.installed  ## image-level on runs/dataset-s2 -> runs/s2-image; NPROC_PER_NODE=8 for a GPU node
	$(TORCHRUN) train/sentinel2_image.yaml --resume latest

train-s2-pixel: $(VENV)/.installed  ## pixel-level on runs/dataset-s2 -> runs/s2-pixel
	$(TORCHRUN) train/sentinel2_pixel.yaml --resume latest

train-naip-image: $(VENV)/.installed  ## image-level on runs/dataset-naip -> runs/naip-image
	$(TORCHRUN) train/naip_image.yaml --resume latest

train-naip-pixel: $(VENV)/.installed  ## pixel-level on runs/dataset-naip -> runs/naip-pixel
	$(TORCHRUN) train/naip_pixel.yaml --resume latest

eval-s2: $(VENV)/.installed  ## runs/s2-image + runs/s2-pixel on EuroSAT, BigEarthNet (data/benchmarks; eval/README.md) -> runs/eval-s2
	$(GRAFT) eval eval/sentinel2_suite.yaml

eval-naip: $(VENV)/.installed  ## runs/naip-image + runs/naip-pixel on UC Merced, AID, RESISC45 -> runs/eval-naip
	$(GRAFT) eval eval/naip_suite.yaml

export: $(VENV)/.installed  ## RUN (default runs/s2-image) -> EXPORT (default RUN-export), an open_clip local-dir: folder
	$(GRAFT) export $(RUN) $(EXPORT)

bench: $(VENV)/.installed  ## speed/memory ratios -> bench/results.json, bench/results.md
	$(PY) -m bench.run

clean:
	rm -rf runs .pytest_cache
