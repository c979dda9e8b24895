# The README's commands. Each creates the virtual environment and builds the kernel
# image when they are missing.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
DISTS  := -e . $(foreach d,$(wildcard adapters/*/pyproject.toml),-e $(dir $(d)))
TESTS  := tests $(wildcard adapters/*/tests)

.PHONY: help venv image demo test unit bench clean

help:
	@echo "make demo    run the demo (creates the venv and builds the image if needed)"
	@echo "make test    every test, real Docker included"
	@echo "make unit    the tests that need no Docker"
	@echo "make image   build the kernel image if it is missing"
	@echo "make bench   benchmarks (prints a table, writes bench/results/)"

$(STAMP): pyproject.toml requirements-dev.txt $(wildcard adapters/*/pyproject.toml)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet $(DISTS) -r requirements-dev.txt
	@touch $@

venv: $(STAMP)

image: venv
	$(BIN)/enclave-tools image build --if-missing

demo: image
	$(BIN)/python examples/demo.py

test: image
	ENCLAVE_REQUIRE_DOCKER=1 $(BIN)/pytest $(TESTS) $(PYTEST_ARGS)

unit: venv
	$(BIN)/pytest tests/unit $(wildcard adapters/*/tests/unit_tests) $(PYTEST_ARGS)

bench: image
	$(BIN)/python bench/run.py

clean:
	rm -rf $(VENV) .pytest_cache build
