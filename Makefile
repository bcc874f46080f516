# Everything runs inside .venv, created on first use. Two commands matter on a fresh machine:
#   make demo   a small study on the bundled digits data, then its report
#   make test   the whole test suite (sets up the venv and packages first)
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: demo test test-fast bench lint venv clean chromium

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch/torchvision pinned to the pair that installs from local disk on our machines
	$(PY) -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install -q -e '.[dev,postgres,dashboard]'
	touch $(STAMP)

# Headless Chromium for the report's HTML test (Debian's package; CI runs as root).
chromium:
	@command -v chromium >/dev/null || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
	  || echo "warning: could not install chromium; the report's HTML test skips (and fails under CI)"

demo: $(STAMP)
	$(PY) -m autoall.cli demo

test: $(STAMP) chromium
	$(PY) -m pytest -q

test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow and not postgres"

bench: $(STAMP)
	$(PY) bench/run_all.py

lint: $(STAMP)
	$(VENV)/bin/ruff check autoall tests bench
	$(VENV)/bin/ruff format --check autoall tests bench
	$(VENV)/bin/mypy autoall

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
