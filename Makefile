# Every target installs what it needs: a venv from requirements-dev.txt on first use (with TensorFlow's CUDA
# build instead of the CPU one where a GPU is found: see GPU below).
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
CONFIG ?= configs/default.yaml
export TF_CPP_MIN_LOG_LEVEL := 2

.PHONY: setup browser ingest split train infer evaluate run report demo smoke test test-fast bench clean-store

# Which TensorFlow build: GPU=1 the CUDA one (requirements-gpu.txt), GPU=0 the CPU one (requirements.txt);
# unset, the CUDA one where `nvidia-smi -L` lists a GPU. The stamp names the build, so switching rebuilds
# the venv: tensorflow and tensorflow-cpu install the same package folder and cannot be swapped in place.
ifeq ($(origin GPU),undefined)
GPU := $(shell nvidia-smi -L >/dev/null 2>&1 && echo 1 || echo 0)
endif
ifeq ($(filter $(GPU),0 1),)
$(error GPU=$(GPU): use GPU=1 for the CUDA build of TensorFlow, GPU=0 for the CPU build, or leave it unset)
endif
BUILD     := $(if $(filter 1,$(GPU)),gpu,cpu)
OTHER     := $(if $(filter 1,$(GPU)),cpu,gpu)
RUNTIME   := $(if $(filter 1,$(GPU)),requirements-gpu.txt,requirements.txt)
INSTALLED := $(VENV)/.installed-$(BUILD)

# A venv made before the stamp named its build (.installed) holds the CPU build: it is kept, not reinstalled.
# The dev tools are requirements-dev.txt less its `-r requirements.txt`, which would bring tensorflow-cpu.
$(INSTALLED): $(RUNTIME) requirements-dev.txt
	@if [ -e $(VENV)/.installed-$(OTHER) ]; then echo "switching to the $(BUILD) build of TensorFlow: a new $(VENV)"; \
	  rm -rf $(VENV); fi
	@if [ $(BUILD) = cpu ] && [ -e $(VENV)/.installed ] && [ ! $(VENV)/.installed -ot requirements.txt ] && \
	  [ ! $(VENV)/.installed -ot requirements-dev.txt ]; then mv $(VENV)/.installed $@; \
	else set -ex; rm -f $(VENV)/.installed $@; $(PYTHON) -m venv $(VENV); \
	  $(VENV)/bin/pip install -q --upgrade pip; \
	  grep -v '^-r requirements.txt' requirements-dev.txt > $(VENV)/requirements-dev-tools.txt; \
	  $(VENV)/bin/pip install -q -r $(RUNTIME) -r $(VENV)/requirements-dev-tools.txt; \
	  touch $@; fi

setup: $(INSTALLED)

# Debian's Chromium for the report's browser test (skipped with a reason where it cannot be had).
browser:
	@command -v chromium >/dev/null 2>&1 || { command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ] && \
	  (apt-get install -y -q chromium >/dev/null 2>&1 || (apt-get update -q >/dev/null && \
	   apt-get install -y -q chromium >/dev/null)) ; } || echo "no chromium: the browser test will be skipped"

ingest split train infer evaluate: setup
	$(PY) pipeline.py $@ --config $(CONFIG)

run: setup
	$(PY) pipeline.py run --config $(CONFIG)

report: setup
	$(PY) pipeline.py report predictions:latest --config $(CONFIG)

# The whole job on real Fashion-MNIST photos, offline: ingest → split → train → infer → evaluate,
# then a head-only model, and a model fine-tuned on a quarter of the training images (a second split
# whose 60 train images per class come first in the same seeded shuffle, so the full split's test images
# stay unseen), all three predicting the full split's test images; the report draws each model's AP per
# epoch as one line, and shows the head-only model's predictions side by side.
DEMO := --config configs/demo.yaml
demo: setup
	$(PY) pipeline.py demo-data --out data/fashion-mnist --per-class 300
	$(PY) pipeline.py run $(DEMO)
	$(PY) pipeline.py alias predictions:latest fine-tuned $(DEMO)
	$(PY) pipeline.py alias split:latest full $(DEMO)
	$(PY) pipeline.py train $(DEMO) --set train.input=split:full --set train.epochs_finetune=0 --alias head-only -q
	$(PY) pipeline.py infer $(DEMO) --set infer.model=model:head-only --set infer.split=split:full --alias head-only -q
	$(PY) pipeline.py split $(DEMO) --set 'split.per_class={train: 60, val: 30, test: 30}' --alias quarter -q
	$(PY) pipeline.py train $(DEMO) --set train.input=split:quarter --alias quarter -q
	$(PY) pipeline.py infer $(DEMO) --set infer.model=model:quarter --set infer.split=split:full --alias quarter -q
	$(PY) pipeline.py report predictions:fine-tuned predictions:head-only predictions:quarter \
	  --compare predictions:head-only $(DEMO) --out reports/demo.html

# What CI runs end to end: tiny generated images, one short epoch per phase.
smoke: setup
	$(PY) pipeline.py demo-data --source synthetic --out build/smoke-data --per-class 12
	$(PY) pipeline.py run --config configs/smoke.yaml

# One worker per core, a test file at a time on one worker (its module fixtures are built once).
test: setup browser
	$(PY) -m pytest -q -n auto --dist loadfile

test-fast: setup
	$(PY) -m pytest -q -m "not slow and not browser"

bench: setup browser
	$(PY) bench/run_all.py

clean-store:
	rm -rf artifacts/objects artifacts/manifests artifacts/runs artifacts/cache artifacts/tmp artifacts/lineage.json artifacts/lock
