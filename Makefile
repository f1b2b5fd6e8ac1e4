# make demo: set up .venv and run the whole pipeline on the generated sample.
# make test: set up .venv and run the test suite.
# make serve: the search service and its page on the index make demo built (http://127.0.0.1:8000/).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: setup demo test serve bench clean

$(VENV)/.installed: setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[test]"
	touch $@

setup: $(VENV)/.installed

demo: setup
	$(PY) -m demo --out demo-output

test: setup
	$(PY) -m pytest -q

# the demo's index: index.h5 with ImageNet weights, index-random.h5 for its smoke run
SERVE_INDEX ?= $(firstword $(wildcard demo-output/index.h5 demo-output/index-random.h5) demo-output/index.h5)
SERVE_ARGS ?=

serve: setup
	@test -f "$(SERVE_INDEX)" || { echo "no index at $(SERVE_INDEX): run make demo first (or make serve SERVE_INDEX=PATH)"; exit 2; }
	$(PY) -m retrieval.serve --index $(SERVE_INDEX) $(SERVE_ARGS)

bench: setup
	$(PY) benchmarks/download.py
	$(PY) benchmarks/query.py
	$(PY) benchmarks/extract.py
	$(PY) benchmarks/train.py
	$(PY) benchmarks/serve.py
	$(PY) benchmarks/memory.py
	$(PY) benchmarks/finetune.py
	$(PY) benchmarks/ann.py     # about 25 minutes on 2 cores

clean:
	rm -rf demo-output bench-output .pytest_cache
