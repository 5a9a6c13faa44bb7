# Two commands: `make train` and `make test` (`make test-fast` for the inner loop). Each sets up .venv once; a second run installs nothing.
SHELL := bash
.SHELLFLAGS := -eo pipefail -c
PYTHON ?= python3
# pip on this kind of machine warns once per local index folder it skips; keep its real errors.
QUIET_PIP = { grep -v "is ignored" || true; }
VENV := .venv
PY := $(VENV)/bin/python
ARGS ?=
SHARED_CIFAR := ../shared/cifar10

.PHONY: train test test-fast setup dev horovod data clean

# TORCH_INDEX=https://download.pytorch.org/whl/cpu make train: a CPU-only torch (about 1 GB instead of 5-6 GB).
TORCH_INDEX ?=

$(VENV)/.installed: pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	if [ -n "$(TORCH_INDEX)" ]; then $(PY) -m pip install --quiet --disable-pip-version-check -c constraints.txt --index-url $(TORCH_INDEX) torch torchvision 2>&1 | $(QUIET_PIP); fi
	$(PY) -m pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[plots]' 2>&1 | $(QUIET_PIP)
	$(PY) -c "import batchscale, torch, torchvision, matplotlib"
	touch $@

$(VENV)/.installed-dev: $(VENV)/.installed
	$(PY) -m pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[dev]' 2>&1 | $(QUIET_PIP)
	$(PY) -c "import pytest, xdist, matplotlib, submitit, mlflow, wandb"
	touch $@

setup: $(VENV)/.installed
dev: $(VENV)/.installed-dev

# Horovod 0.28.1 from source against the installed torch, with MPI and Gloo (about 5 minutes, once).
$(VENV)/.installed-horovod: $(VENV)/.installed scripts/install_horovod.sh
	scripts/install_horovod.sh $(PY)
	touch $@

# HOROVOD_GPU=1 make horovod: with NCCL GPU operations (see scripts/install_horovod.sh); rebuilds a CPU-only one.
horovod: $(VENV)/.installed
	scripts/install_horovod.sh $(PY)
	touch $(VENV)/.installed-horovod

# Where an offline copy of CIFAR-10 sits beside the checkout (../shared/cifar10), use it instead of downloading.
data:
	@if [ ! -d data/cifar-10-batches-py ] && [ -x $(SHARED_CIFAR)/unpack.sh ]; then $(SHARED_CIFAR)/unpack.sh data; fi

train: setup data
	$(PY) train.py $(ARGS)

# The full gate (what CI runs): unit and integration tests, Horovod included. One pytest worker per core, each
# test file on one worker (its module fixtures built once): the tests' trainings run one thread each
# (OMP_NUM_THREADS=1), so a serial run leaves all but one core idle. The slowest tests are listed at the end.
test: dev $(VENV)/.installed-horovod
	$(PY) -m pytest -n auto --dist loadfile --durations 15 $(ARGS)

# The inner loop: unit tests only, no Horovod build, well under 2 minutes.
test-fast: dev
	$(PY) -m pytest tests/unit -q $(ARGS)

clean:
	rm -rf $(VENV) .pytest_cache
