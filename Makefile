# lndmailbox: every entry point a developer, an operator and CI use.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: all venv test lint bench demo protos protos-check itest clean

all: test

# The virtual environment is made, and the package installed with its dev tools, on first use
# and again whenever pyproject.toml changes.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check lndmailbox tests bench itest
	$(BIN)/ruff format --check lndmailbox tests bench itest
	$(BIN)/mypy

bench: $(STAMP)
	$(BIN)/python -m bench $(BENCH_ARGS)

demo: $(STAMP)
	$(BIN)/python -m lndmailbox.demo $(DEMO_ARGS)

# Regenerates lndmailbox/lnrpc/ from protos/ (committed; CI checks it is fresh).
protos: $(STAMP)
	$(BIN)/python scripts/gen_protos.py

protos-check: $(STAMP)
	$(BIN)/python scripts/gen_protos.py --check

# Real lnd and btcd on a regtest network; builds them once into ~/.cache/lndmailbox-itest.
itest: $(STAMP)
	$(BIN)/python -m pytest -q itest

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis
