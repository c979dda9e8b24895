# The README's commands. Each creates the virtual environment and builds the kernel
# image when they are missing.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
ADAPTERS := $(patsubst %/pyproject.toml,%,$(wildcard adapters/*/pyproject.toml))
DISTS  := -e . $(foreach a,$(ADAPTERS),-e $(a))
# Each distribution's tests run from its own directory (each has its own conftest).
JUNIT  ?= build/junit

.PHONY: help venv lint image bootstrap-tool demo test test-gvisor unit test-adapters-lowest bench clean

help:
	@echo "make demo    run the demo (creates the venv and builds the image if needed)"
	@echo "make test    every test, real Docker included"
	@echo "make test-gvisor  the tests marked gvisor, every sandbox on runsc (deploy/gvisor/register-runsc.sh)"
	@echo "make unit    the tests that need no Docker"
	@echo "make lint    ruff check, ruff format --check and mypy (pyproject.toml)"
	@echo "make test-adapters-lowest  the adapters' unit tests at their oldest supported versions"
	@echo "make image   build the kernel image if it is missing"
	@echo "make bench   benchmarks (prints a table, writes bench/results/)"

$(STAMP): pyproject.toml requirements-dev.txt $(wildcard adapters/*/pyproject.toml)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet $(DISTS) -r requirements-dev.txt
	@touch $@

venv: $(STAMP)

# One configuration (pyproject.toml) for the core and both adapters; mypy's files are listed there.
lint: venv
	$(BIN)/ruff check . && $(BIN)/ruff format --check . && $(BIN)/mypy

# The base comes from python:3.12-slim (local, or pulled where a registry answers), else it
# is made from Debian packages: only then, and only if neither tool is installed, install one.
image: venv
	@if ! command -v mmdebstrap >/dev/null && ! command -v debootstrap >/dev/null \
	  && $(BIN)/python -c 'import sys; from enclave_tools.image import needs_bootstrap; sys.exit(not needs_bootstrap())'; \
	then $(MAKE) --no-print-directory bootstrap-tool; fi
	$(BIN)/enclave-tools image build --if-missing

# mmdebstrap: apt resolves and dpkg skips fsyncs, so it is the faster of the two; uidmap
# lets it run unprivileged. Installed as root, or with sudo when it needs no password.
BOOTSTRAP_PACKAGES := mmdebstrap uidmap
bootstrap-tool:
	@if [ "$$(id -u)" = 0 ]; then as_root=""; \
	elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then as_root="sudo -n"; \
	else as_root=none; fi; \
	if [ "$$as_root" = none ] || ! command -v apt-get >/dev/null; then \
	  echo "No registry answered and python:3.12-slim is not local, so the kernel image's base is"; \
	  echo "made from Debian packages, which needs mmdebstrap or debootstrap. Install one:"; \
	  echo "  sudo apt-get install $(BOOTSTRAP_PACKAGES)   (works unprivileged)"; \
	  echo "  sudo apt-get install debootstrap          (then build as root)"; \
	  echo "or load a python:3.12-slim image (docker load -i FILE), then run make again."; \
	  exit 1; \
	fi; \
	echo "+ $${as_root:+$$as_root }apt-get update -qq"; \
	$$as_root apt-get update -qq; \
	echo "+ $${as_root:+$$as_root }env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(BOOTSTRAP_PACKAGES)"; \
	$$as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(BOOTSTRAP_PACKAGES) >/dev/null

demo: image
	$(BIN)/python examples/demo.py

test: image
	@mkdir -p $(dir $(JUNIT))
	ENCLAVE_REQUIRE_DOCKER=1 $(BIN)/pytest tests --junitxml=$(JUNIT)-core.xml $(PYTEST_ARGS)
	@set -e; for a in $(ADAPTERS); do \
	  echo "== $$a"; \
	  (cd $$a && ENCLAVE_REQUIRE_DOCKER=1 $(CURDIR)/$(BIN)/pytest tests \
	    --junitxml=$(CURDIR)/$(JUNIT)-$$(basename $$a).xml $(PYTEST_ARGS)); \
	done
	@echo "== cookbooks"
	ENCLAVE_REQUIRE_DOCKER=1 $(BIN)/pytest --nbmake cookbooks -p no:cacheprovider \
	  --junitxml=$(JUNIT)-cookbooks.xml $(PYTEST_ARGS)

# The tests marked gvisor again, with every sandbox on gVisor's runsc (register it first with
# deploy/gvisor/register-runsc.sh). ENCLAVE_RUNTIME is read by tests/conftest.py.
test-gvisor: image
	@mkdir -p $(dir $(JUNIT))
	ENCLAVE_REQUIRE_DOCKER=1 ENCLAVE_RUNTIME=runsc $(BIN)/pytest -m gvisor tests \
	  --junitxml=$(JUNIT)-gvisor.xml $(PYTEST_ARGS)

unit: venv
	$(BIN)/pytest tests/unit $(PYTEST_ARGS)
	@set -e; for a in $(ADAPTERS); do (cd $$a && $(CURDIR)/$(BIN)/pytest tests/unit_tests $(PYTEST_ARGS)); done

# The adapters' unit tests (no Docker) at the oldest versions each supports: a throwaway
# venv per adapter with the pins of its lowest.txt (its framework's lower bound, and test
# dependencies from the same time).
LOWEST := build/lowest
test-adapters-lowest:
	@set -e; for a in $(ADAPTERS); do \
	  env=$(LOWEST)/$$(basename $$a); rm -rf $$env; \
	  $(PYTHON) -m venv $$env; \
	  $$env/bin/pip install --quiet -e . -e $$a -r $$a/lowest.txt; \
	  echo "== $$a at its lowest versions"; \
	  (cd $$a && $(CURDIR)/$$env/bin/pytest tests/unit_tests -p no:cacheprovider $(PYTEST_ARGS)); \
	done

bench: image
	$(BIN)/python bench/run.py

clean:
	rm -rf $(VENV) .pytest_cache build
