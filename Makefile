# lndmailbox: every entry point a developer, an operator and CI use.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
SOURCES := lndmailbox support/simnet tests bench itest scripts

.PHONY: all venv test test-long lint bench bench-lnd demo protos protos-check itest itest-long clean

all: test

# The virtual environment is made, and the package installed with its dev tools, on first use
# and again whenever pyproject.toml changes.
# simnet (the stand-in lnd, and the demo) is a package of its own, outside lndmailbox's wheel.
$(STAMP): pyproject.toml support/pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]' -e ./support
	touch $(STAMP)

venv: $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest -q

# The full forms of the heavy scenarios whose CI forms `make test` runs (long outages,
# big floods): too slow for every CI run, for a release or after touching their code.
test-long: $(STAMP)
	$(BIN)/python -m pytest -q -m long

lint: $(STAMP)
	$(BIN)/ruff check $(SOURCES)
	$(BIN)/ruff format --check $(SOURCES)
	$(BIN)/mypy
	$(BIN)/lint-imports

bench: $(STAMP)
	$(BIN)/python -m bench $(BENCH_ARGS)

# Ingest against the itest's real lnd 0.21 and 0.20 (regtest, the LSP's onion-message rate
# limits raised, lnd's signer doing the ECDH), as multiples of lnd's default ceiling; the
# binaries come from the itest's cache (itest/build.py), built there on first use.
bench-lnd: $(STAMP)
	$(BIN)/python -m bench.lnd $(BENCH_LND_ARGS)

demo: $(STAMP)
	$(BIN)/python -m simnet.demo $(DEMO_ARGS)

# Regenerates lndmailbox/lnd/lnrpc/ from protos/ (committed; CI checks it is fresh).
protos: $(STAMP)
	$(BIN)/python scripts/gen_protos.py

protos-check: $(STAMP)
	$(BIN)/python scripts/gen_protos.py --check

# Real lnd and btcd on a regtest network; builds them once into ~/.cache/lndmailbox-itest.
# ITEST_ARGS narrows the run, e.g. `make itest ITEST_ARGS='-k lsps'`.
ITEST_ARGS ?=
itest: $(STAMP)
	$(BIN)/python -m pytest -q itest $(ITEST_ARGS)

# The itest's slow measurements of lnd itself (how soon it drops a silently frozen peer:
# up to 90 s, and 270 s over 127.0.0.1, per generation), printed; not in CI: run them when
# the lnd versions change (itest/build.py) or a default that rests on them does.
itest-long: $(STAMP)
	$(BIN)/python -m pytest -q -s -m long itest

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis
