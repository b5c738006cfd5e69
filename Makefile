# Two commands do everything, each doing its own set-up (venv, packages, data):
#   make test                      unit tests + every notebook under nbmake (small defaults)
#   make reproduce [PROFILE=...]   every notebook through papermill with a profile (default: fmnist)
# Other targets: make setup | data | lint | lab | clean

PROFILE ?= fmnist
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
INSTALLED := $(VENV)/.reft-installed

.PHONY: setup data test reproduce lint lab clean

setup: $(INSTALLED) data

$(INSTALLED): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

# Fashion-MNIST offline: Debian's dataset-fashion-mnist package (apt, as root or with sudo) when the
# data are not already in $$REFT_DATA (default ~/.cache/reft); reft.data unpacks and verifies them.
data: $(INSTALLED)
	@$(PY) -m reft.data fashion-mnist >/dev/null 2>&1 || { \
	  sudo=$$([ "$$(id -u)" = 0 ] || echo sudo); \
	  echo "Installing Fashion-MNIST from Debian's dataset-fashion-mnist package"; \
	  $$sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$sudo apt-get install -y -qq dataset-fashion-mnist; }
	$(PY) -m reft.data fashion-mnist

test: setup
	REFT_OUTPUT=$$(mktemp -d) $(PY) -m pytest tests --nbmake notebooks --nbmake-timeout=900 -p no:cacheprovider

reproduce: setup
	$(PY) -m reft.reproduce --profile $(PROFILE)

lint: $(INSTALLED)
	$(VENV)/bin/ruff check reft tests notebooks
	$(VENV)/bin/ruff format --check reft tests notebooks

lab: setup
	$(VENV)/bin/jupyter lab notebooks

clean:
	rm -rf results/smoke figures/smoke results/interactive figures/interactive .pytest_cache
