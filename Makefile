# Every target that runs something creates .venv and installs into it first when needed.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cksum pyproject.toml | cut -d' ' -f1)

# The other interpreters pyproject.toml claims; `make test` runs the fast suite on each, in its
# own .venv-3.X, 3.12 against the lowest allowed releases (.ci/constraints-lowest.txt) and 3.13
# against the newest. The full suite runs on $(PYTHON) (3.11) in .venv.
OTHER_PYTHONS := 3.12 3.13
CI_LOWEST := 3.12
CKSUM := $(shell cat pyproject.toml .ci/constraints-lowest.txt | cksum | cut -d' ' -f1)
# Tests run on 2 workers (pytest-xdist), each test module on one worker (its module fixtures
# made once). PYTEST_WORKERS=0: in process.
PYTEST_WORKERS ?= 2
PYTEST_ARGS := -q -n $(PYTEST_WORKERS) --dist loadfile

.PRECIOUS: .venv-%/.installed-$(CKSUM)
.PHONY: setup demo test test-full test-fast test-fast-% bench lint clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test,bench]'
	rm -f $(VENV)/.installed-*
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(BIN)/ava-detector demo --out demo_output

test: test-full $(addprefix test-fast-,$(OTHER_PYTHONS))

test-full: $(STAMP)
	$(BIN)/pytest $(PYTEST_ARGS)

.venv-%/.installed-$(CKSUM): pyproject.toml .ci/constraints-lowest.txt
	python=$$(.ci/find-python $*) && { test -x .venv-$*/bin/python || $$python -m venv .venv-$*; }
	.venv-$*/bin/python -m pip install --quiet --upgrade pip
	.venv-$*/bin/python -m pip install --quiet -e '.[test]' \
	  $(if $(filter $*,$(CI_LOWEST)),-c .ci/constraints-lowest.txt)
	rm -f .venv-$*/.installed-*
	touch $@

test-fast-%: .venv-%/.installed-$(CKSUM)
	@echo "== fast suite on $$(.venv-$*/bin/python -c 'import sys, av, tensorflow as tf; \
	  print(sys.version.split()[0], "av", av.__version__, "tensorflow", tf.__version__)')"
	.venv-$*/bin/pytest $(PYTEST_ARGS) -m "not slow"

test-fast: $(STAMP)
	$(BIN)/pytest $(PYTEST_ARGS) -m "not slow"

bench: $(STAMP)
	for script in benchmarks/*.py; do echo "== $$script"; $(BIN)/python $$script || exit 1; done

lint: $(STAMP)
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) .venv-3.* demo_output .pytest_cache .ruff_cache
