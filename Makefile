# Every target that runs something creates .venv and installs into it first when needed.
# `make test` runs the whole suite on $(PYTHON) and the fast suite on each other Python the
# package claims (3.11-3.13): 3.12 with the lowest versions pyproject.toml allows
# (.ci/oldest.txt), 3.13 with the newest; each in its own .venv-3.X, made when needed.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cksum pyproject.toml | cut -d' ' -f1)
OTHER_PYTHONS ?= 3.12 3.13

.PHONY: setup demo test test-fast test-pythons bench lint clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test,bench]'
	rm -f $(VENV)/.installed-*
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(BIN)/ava-detector demo --out demo_output

test: $(STAMP)
	$(BIN)/pytest -q
	$(MAKE) --no-print-directory test-pythons

test-fast: $(STAMP)
	$(BIN)/pytest -q -m "not slow"

test-pythons:
	for version in $(OTHER_PYTHONS); do .ci/python-matrix $$version || exit 1; done

bench: $(STAMP)
	for script in benchmarks/*.py; do echo "== $$script"; $(BIN)/python $$script || exit 1; done

lint: $(STAMP)
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) $(VENV)-3.* demo_output .pytest_cache .ruff_cache
