# Quick start: `make demo` (whole pipeline on the embedded phantom data set) and `make test`.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp
DEMO_OUT ?= demo_out
DEMO_ARGS ?=

.PHONY: install demo test test-slow test-interop bench clean

install: $(STAMP)

# (Re)install when pyproject.toml changes; idempotent otherwise.
$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev,dicom,clip]'
	@touch $(STAMP)

demo: $(STAMP)
	$(PY) -m mammosae_jax.demo --out $(DEMO_OUT) $(DEMO_ARGS)

test: $(STAMP)
	$(PY) -m pytest

test-slow: $(STAMP)
	$(PY) -m pytest -m slow

# The real SAELens in its own venv (it pins other transformers than ours): CPU torch first, or pip
# pulls a multi-GB CUDA build. The tests run in our venv and call SAELens through that one.
INTEROP_VENV := .venv-interop
INTEROP_STAMP := $(INTEROP_VENV)/.installed-stamp
SAE_LENS_VERSION ?= 6.54.12

$(INTEROP_STAMP): Makefile
	@test -x $(INTEROP_VENV)/bin/python || $(PYTHON) -m venv $(INTEROP_VENV)
	$(INTEROP_VENV)/bin/python -m pip install -q torch==2.13.0
	$(INTEROP_VENV)/bin/python -m pip install -q sae-lens==$(SAE_LENS_VERSION)
	@touch $(INTEROP_STAMP)

test-interop: $(STAMP) $(INTEROP_STAMP)
	MAMMOSAE_INTEROP_PYTHON=$(INTEROP_VENV)/bin/python $(PY) -m pytest -m interop tests/interop

bench: $(STAMP)
	$(PY) -m benchmarks.run_all

clean:
	rm -rf $(DEMO_OUT) bench_out .pytest_cache
