# Every target installs what it needs: a venv from requirements-dev.txt on first use.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
CONFIG ?= configs/default.yaml
export TF_CPP_MIN_LOG_LEVEL := 2

.PHONY: setup browser ingest split train infer evaluate run report demo smoke test test-fast bench clean-store

$(VENV)/.installed: requirements.txt requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -r requirements-dev.txt
	touch $@

setup: $(VENV)/.installed

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

test: setup browser
	$(PY) -m pytest -q

test-fast: setup
	$(PY) -m pytest -q -m "not slow and not browser"

bench: setup browser
	$(PY) bench/run_all.py

clean-store:
	rm -rf artifacts/objects artifacts/manifests artifacts/runs artifacts/cache artifacts/tmp artifacts/lineage.json artifacts/lock
