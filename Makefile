# Quick start: `make demo` (whole pipeline on the embedded phantom data set) and `make test`.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp
DEMO_OUT ?= demo_out
DEMO_ARGS ?=

.PHONY: install demo test test-slow bench clean

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

bench: $(STAMP)
	$(PY) -m benchmarks.run_all

clean:
	rm -rf $(DEMO_OUT) bench_out .pytest_cache
