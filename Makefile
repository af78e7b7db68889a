# `make app` and `make test` each do all of their own set-up (idempotent, quick when done).
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
REQ_HASH := $(shell cat requirements.txt pyproject.toml | sha1sum | cut -c1-12)
STAMP := $(VENV)/.installed-$(REQ_HASH)
PORT ?= 8501
SEED ?= 0

.PHONY: setup app test test-fast chromium viewer sample-data sample-runs bench clean-venv

$(STAMP): requirements.txt pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt
	$(PY) -m pip install -q --no-deps --no-build-isolation -e .
	@rm -f $(VENV)/.installed-*
	@touch $(STAMP)

setup: $(STAMP)

app: setup viewer
	$(PY) -m streamlit run serve.py --server.address 127.0.0.1 --server.port $(PORT)

# Debian's chromium for the browser tests (never `playwright install`: no downloads here).
chromium:
	@command -v chromium >/dev/null 2>&1 || { \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq chromium >/dev/null; }

# The Slide page's deep-zoom viewer (OpenSeadragon, pinned in ui/slide_viewer/package-lock.json), installed
# once with npm into ui/slide_viewer/node_modules and served from there: works offline afterwards.
VIEWER_JS := ui/slide_viewer/node_modules/openseadragon/build/openseadragon/openseadragon.min.js
$(VIEWER_JS): ui/slide_viewer/package.json ui/slide_viewer/package-lock.json
	@command -v npm >/dev/null 2>&1 || { \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq npm >/dev/null; }
	cd ui/slide_viewer && npm ci --no-audit --no-fund --silent
	@touch $@

viewer: $(VIEWER_JS)

test: setup chromium viewer
	$(PY) -m pytest -q

test-fast: setup
	$(PY) -m pytest -q -m "not slow and not browser"

# Regenerate the shipped datasets deterministically.
sample-data: setup
	$(PY) -m interp_core make-data synthetic-he --out sample_data/data/synthetic-he --seed $(SEED) --quiet
	$(PY) -m interp_core make-data synthetic-he-biased --out sample_data/data/synthetic-he-biased --seed $(SEED) --quiet
	$(PY) -m interp_core make-data synthetic-he-bgbias --out sample_data/data/synthetic-he-bgbias --seed $(SEED) --quiet
	$(PY) -m interp_core make-data ihc --out sample_data/data/ihc --seed $(SEED) --quiet
	$(PY) -c "from interp_core.slides.wsi import write_sample_slide; write_sample_slide('sample_data/slides/ihc.tiff')"
	$(PY) -c "from interp_core.data.synthetic_wsi import write_sample_wsi; write_sample_wsi('sample_data/slides/synthetic-he.tiff')"

# Retrain the shipped runs with the project's own commands (see bench/ship_runs.sh).
sample-runs: setup
	bash bench/ship_runs.sh

clean-venv:
	rm -rf $(VENV)
