# Two set-up commands: `make test` and `make demo`. Both create .venv on first use.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.kinema-installed

.PHONY: install test demo clean

install: $(STAMP)

# torch is pinned first: 2.13.0 has a local CPU wheel; an unpinned torch would pull CUDA packages.
# fvd (in test too): the Kinetics-400 I3D; the test extra adds jax and flax (CPU wheels) for the I3D parity test.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[test,text,fvd]'
	touch $(STAMP)

# The linter first (ruff, configured in pyproject.toml), then every test; `pytest -m "not slow"` is the edit loop.
test: install
	$(VENV)/bin/ruff check src tests benchmarks
	$(PY) -m pytest -q

# Trains the tiny16 preset on Moving Digits for DEMO_MINUTES of wall-clock, samples 16 videos, scores them with the
# digit oracle, samples the shipped pretrained model beside them and writes runs/demo/index.html.
# A previous demo is moved to runs/demo-previous.
DEMO_MINUTES ?= 10
demo: install
	@if [ -d runs/demo ]; then rm -rf runs/demo-previous && mv runs/demo runs/demo-previous && echo "moved the previous demo to runs/demo-previous"; fi
	$(VENV)/bin/kinema info
	$(VENV)/bin/kinema train --preset tiny16 --name demo train.time_limit_minutes=$(DEMO_MINUTES) train.sample_every=0
	$(VENV)/bin/kinema sample runs/demo --num 16 --out runs/demo/samples.gif --out runs/demo/samples.mp4 --out runs/demo/samples.npz
	$(VENV)/bin/kinema eval runs/demo --samples runs/demo/samples.npz --num 16 --out runs/demo/eval --quiet
	$(VENV)/bin/kinema sample moving-digits --num 16 --out runs/demo/pretrained.gif
	$(VENV)/bin/kinema report runs/demo --samples runs/demo/samples.gif \
		--extra "Shipped pretrained model (kinema sample moving-digits)=runs/demo/pretrained.gif"
	@echo "open runs/demo/index.html"

clean:
	rm -rf $(VENV) build src/*.egg-info .pytest_cache
