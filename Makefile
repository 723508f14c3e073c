# One command to run the gateway, one to test it; each sets up what it needs, idempotently.
#   make run     venv + Docker engine + sandbox image, then the gateway on 127.0.0.1:8888
#   make test    the same setup (and Chromium, PostgreSQL), then `mypy --strict` and the whole suite in parallel (CI)
#   make bench   the same setup, then the benchmarks (bench/run.py; BENCH_ARGS=--quick for a smoke run)
# test and bench also register gVisor's runsc with the engine (ensure-docker.sh --runsc): their
# sandboxes run under both runtimes. `make run` leaves the engine as it is.

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
HOST   ?= 127.0.0.1
PORT   ?= 8888
PYTEST_ARGS ?=
ENGINE_ARGS ?=
# Test processes (pytest-xdist; 0: one process). More than the cores: most of a test is waiting
# for kernels and containers. Each test has its own gateway, port, data dir and container label.
TEST_WORKERS ?= 3

.PHONY: venv engine images browser postgres compose system setup run test typecheck bench clean

$(STAMP): pyproject.toml clients/python/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]' -e 'clients/python[mcp]'
	touch $(STAMP)

# matplotlib's font cache, which local sandboxes share (provisioners/local.py): built here, not by
# the first cell that plots (which would say so on its stderr when it takes over 5 s).
venv: $(STAMP)
	@$(BIN)/python -c "import matplotlib.font_manager"

engine:
	bash deploy/host/ensure-docker.sh $(ENGINE_ARGS)

images: engine venv
	bash images/build.sh
	bash images/full/build.sh

browser:
	bash deploy/host/ensure-browser.sh

postgres:
	bash deploy/host/ensure-postgres.sh install

compose:
	bash deploy/host/ensure-compose.sh

# What the tests need besides the venv, one after another (they share apt's lock); never the venv
# itself, which `setup` builds alongside (two makes building one venv break it).
system:
	@$(MAKE) --no-print-directory engine ENGINE_ARGS="$(ENGINE_ARGS)"
	bash images/build.sh
	@$(MAKE) --no-print-directory browser
	@$(MAKE) --no-print-directory postgres
	@$(MAKE) --no-print-directory compose

# The venv (pip) alongside the system parts: on a fresh machine both mostly wait on downloads.
# Then the images that need the venv (the full image's wheels come through its pip; the python
# image is built already, so its build only finds it up to date).
setup:
	@$(MAKE) --no-print-directory -j2 venv system ENGINE_ARGS="$(ENGINE_ARGS)"
	@$(MAKE) --no-print-directory images ENGINE_ARGS="$(ENGINE_ARGS)"

run: venv
	@bash deploy/host/ensure-docker.sh && bash images/build.sh \
	  || echo "warning: no Docker engine or image; the gateway will fall back to local processes"
	@bash images/full/build.sh >/dev/null 2>&1 \
	  || echo "warning: no code-gateway/full image: contexts in bash, R and JavaScript (E2B's code-interpreter-v1) will not start"
	$(BIN)/code-gateway --ip=$(HOST) --port=$(PORT)

test bench: ENGINE_ARGS = --runsc
test: setup typecheck
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --durations=15 $(PYTEST_ARGS)

typecheck: venv
	$(BIN)/python -m mypy --strict gateway/ clients/python/code_gateway_client/

bench: venv images
	$(BIN)/python -m bench.run $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .gateway-data .pytest_cache
