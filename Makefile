# Two commands for a fresh machine: `make demo` and `make test`. Everything else is a detail.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
BIN := $(VENV)/bin
# torch first, so the rest of the install is satisfied by it. 2.13.0 is a CPU wheel on this
# machine's disk; elsewhere pick your build, e.g. `make TORCH="torch --index-url ..." install`.
TORCH ?= torch==2.13.0
PIP := $(PY) -m pip install --quiet --disable-pip-version-check

.PHONY: install demo test fuzz load bench lint clean

$(VENV)/.installed: pyproject.toml Makefile
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) --upgrade pip
	$(PIP) "$(TORCH)"
	$(PIP) -e ".[test]"
	touch $@

install: $(VENV)/.installed

demo: install
	$(BIN)/adapterhub init
	$(BIN)/adapterhub generate --base "What is the capital of France?" --max-tokens 32

test: install
	$(BIN)/pytest -q -p no:cacheprovider

lint: install
	$(BIN)/ruff check adapterhub server tui tests bench

clean:
	rm -rf $(VENV) .tmp .pytest_cache
