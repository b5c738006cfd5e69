# Two commands do everything, each doing its own set-up (venv, packages, data):
#   make test                      unit tests + every notebook under nbmake (small defaults)
#   make reproduce [PROFILE=...]   every notebook through papermill with a profile (default: fmnist);
#                                  ARGS="--resume" continues interrupted runs, ARGS="--only 03" one notebook
# Other targets: make setup | data | browser | lint | lab | clean

PROFILE ?= fmnist
ARGS ?=
LAB_IP ?= 127.0.0.1
LAB_PORT ?= 8888
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
EXTRAS ?= dev,flower,export
INSTALLED := $(VENV)/.reft-installed
# Flower: no telemetry, no update checks, no runtime installs, a private home; tests run in a
# loopback-only network namespace where the machine allows one (scripts/loopback.sh).
FLWR_ENV := FLWR_TELEMETRY_ENABLED=0 FLWR_DISABLE_UPDATE_CHECK=1 FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1

.PHONY: setup data browser test reproduce lint lab clean

setup: $(INSTALLED) data

$(INSTALLED): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -e '.[$(EXTRAS)]'
	touch $@

# Fashion-MNIST offline: Debian's dataset-fashion-mnist package (apt, as root or with sudo) when the
# data are not already in $$REFT_DATA (default ~/.cache/reft); reft.data unpacks and verifies them.
data: $(INSTALLED)
	@$(PY) -m reft.data fashion-mnist >/dev/null 2>&1 || { \
	  sudo=$$([ "$$(id -u)" = 0 ] || echo sudo); \
	  echo "Installing Fashion-MNIST from Debian's dataset-fashion-mnist package"; \
	  $$sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$sudo apt-get install -y -qq dataset-fashion-mnist; }
	$(PY) -m reft.data fashion-mnist

# The browser test (tests/test_browser.py: JupyterLab in headless Chromium through Selenium) needs Chromium and
# chromedriver: Debian's chromium and chromium-driver packages (apt, as root or with sudo) when they are missing.
browser:
	@command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1 || { \
	  sudo=$$([ "$$(id -u)" = 0 ] || echo sudo); \
	  echo "Installing Chromium and chromedriver from Debian's chromium and chromium-driver packages"; \
	  $$sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$sudo apt-get install -y -qq chromium chromium-driver; }

# Two pytest-xdist workers with one torch thread each (OMP_NUM_THREADS=1, the notebooks' kernels too): two
# processes of two threads each on two cores slow torch's small ops several times over. Flower's processes
# stay on one worker (tests/conftest.py). TEST_WORKERS=0 runs everything in one process.
TEST_WORKERS ?= 2
test: setup browser
	$(FLWR_ENV) OMP_NUM_THREADS=1 FLWR_HOME=$$(mktemp -d) REFT_OUTPUT=$$(mktemp -d) PATH="$(abspath $(VENV))/bin:$$PATH" \
	  scripts/loopback.sh $(PY) -m pytest tests --nbmake notebooks --nbmake-timeout=900 -m "not slow" \
	  -p no:cacheprovider --durations=15 -n $(TEST_WORKERS) --dist loadgroup

reproduce: setup
	$(FLWR_ENV) FLWR_HOME=$$(mktemp -d) PATH="$(abspath $(VENV))/bin:$$PATH" \
	  scripts/loopback.sh $(PY) -m reft.reproduce --profile $(PROFILE) $(ARGS)

lint: $(INSTALLED)
	$(VENV)/bin/ruff check reft tests notebooks scripts
	$(VENV)/bin/ruff format --check reft tests notebooks scripts

# JupyterLab on notebooks/, headless (no browser; it prints the URL with its token), as root too.
# On a remote machine: make lab LAB_IP=0.0.0.0 (or keep 127.0.0.1 and tunnel: ssh -L 8888:localhost:8888 host).
lab: setup
	$(VENV)/bin/jupyter lab notebooks --no-browser --ip=$(LAB_IP) --port=$(LAB_PORT) \
	  $$([ "$$(id -u)" = 0 ] && echo --allow-root)

clean:
	rm -rf results/smoke figures/smoke results/interactive figures/interactive .pytest_cache
