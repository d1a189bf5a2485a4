# One-command set-up, run and test. Every target installs what it needs first.
#   make run    generate a small default dataset and execute the notebooks into runs/
#   make test   run the whole test suite (pytest + nbval on notebooks/)
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.trajlab-installed
# magvit2-pytorch imports torchvision (transforms, VGG16 definitions) at import
# time. torchvision 0.16.2 is the newest whose Python code imports beside the
# CPU build of torch 2.13 (newer ones register fake kernels for C ops that do
# not load); its compiled ops stay unused. Both go in with --no-deps so that
# pip keeps the CPU torch; their other requirements are the [magvit] extra.
MAGVIT_NODEPS := magvit2-pytorch==0.5.1 torchvision==0.16.2

.PHONY: setup run test test-fast browser-deps bench clean

setup: $(STAMP)

# torch is pinned to the CPU build for the test set-up; the package itself
# accepts a range (pyproject.toml is the single source of dependencies).
$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[dev]'
	$(PY) -m pip install -q --no-deps $(MAGVIT_NODEPS)
	$(PY) -m ipykernel install --sys-prefix --name python3 >/dev/null
	touch $(STAMP)

# Debian's Chromium for the JupyterLab browser test (needs root or an
# existing /usr/bin/chromium; the test is skipped, not failed, without it
# unless TRAJLAB_REQUIRE_BROWSER=1, which CI sets).
browser-deps:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	  else echo "chromium not found and not root: browser test will be skipped"; fi; }

run: setup
	$(VENV)/bin/trajlab run notebooks/01_explore_trajectories.ipynb
	$(VENV)/bin/trajlab run notebooks/02_generate_dataset.ipynb
	$(VENV)/bin/trajlab run notebooks/03_validate_dataset.ipynb
	$(VENV)/bin/trajlab run notebooks/04_classify.ipynb
	$(VENV)/bin/trajlab run notebooks/05_forecast.ipynb
	$(VENV)/bin/trajlab run notebooks/06_tokenize.ipynb

test: setup browser-deps
	$(PY) -m pytest tests --nbval-lax --nbval-current-env notebooks -q

test-fast: setup
	$(PY) -m pytest tests -q -m "not slow and not browser and not dask"

bench: setup
	$(PY) bench/bench_generate.py

clean:
	rm -rf $(VENV) build *.egg-info
