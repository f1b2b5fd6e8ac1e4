# make demo: set up .venv and run the whole pipeline on the generated sample.
# make test: set up .venv and run the test suite.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: setup demo test bench clean

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

bench: setup
	$(PY) benchmarks/download.py
	$(PY) benchmarks/query.py
	$(PY) benchmarks/extract.py
	$(PY) benchmarks/train.py

clean:
	rm -rf demo-output bench-output .pytest_cache
