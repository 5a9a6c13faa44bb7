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

# Which torch: the CUDA build where nvidia-smi lists a GPU, else the CPU-only one (about 1 GB instead of 5-6 GB)
# if download.pytorch.org answers; TORCH_INDEX=URL or TORCH_INDEX=default overrides (scripts/torch_index.sh).
# Each step says what it does in one plain line.
PIP_INSTALL = $(PY) -m pip install --quiet --disable-pip-version-check -c constraints.txt

$(VENV)/.installed: pyproject.toml constraints.txt
	@test -x $(PY) || { echo "setup: creating $(VENV) with $(PYTHON)"; $(PYTHON) -m venv $(VENV); }
	@if $(PY) -c "import torch" 2>/dev/null; then echo "setup: keeping the torch already in $(VENV)"; \
	elif index="$$(PYTHON=$(PY) scripts/torch_index.sh)" && [ -n "$$index" ]; then \
	  $(PIP_INSTALL) --index-url "$$index" torch torchvision 2>&1 | $(QUIET_PIP) \
	    || echo "setup: torch did not install from $$index; pip's default index is next (the CUDA build)"; \
	fi
	@echo "setup: installing batchscale with its dependencies into $(VENV) (the first time: minutes)"
	@$(PIP_INSTALL) -e '.[plots]' 2>&1 | $(QUIET_PIP)
	@$(PY) -c "import batchscale, torch, torchvision, matplotlib; print('setup: done:', torch.__version__, 'in $(VENV); source $(VENV)/bin/activate puts batchscale on PATH')"
	@touch $@

$(VENV)/.installed-dev: $(VENV)/.installed
	@echo "setup: installing the test tools and the optional trackers (the dev extras)"
	@$(PIP_INSTALL) -e '.[dev]' 2>&1 | $(QUIET_PIP)
	@$(PY) -c "import pytest, xdist, matplotlib, submitit, mlflow, wandb"
	@touch $@

setup: $(VENV)/.installed
dev: $(VENV)/.installed-dev

# Horovod 0.28.1 from source against the installed torch, with MPI and Gloo (about 5 minutes, once).
$(VENV)/.installed-horovod: $(VENV)/.installed scripts/install_horovod.sh
	@scripts/install_horovod.sh $(PY)
	@touch $@

# HOROVOD_GPU=1 make horovod: with NCCL GPU operations (see scripts/install_horovod.sh); rebuilds a CPU-only one.
horovod: $(VENV)/.installed
	@scripts/install_horovod.sh $(PY)
	@touch $(VENV)/.installed-horovod

# Where an offline copy of CIFAR-10 sits beside the checkout (../shared/cifar10), use it instead of downloading.
data:
	@if [ ! -d data/cifar-10-batches-py ] && [ -x $(SHARED_CIFAR)/unpack.sh ]; then $(SHARED_CIFAR)/unpack.sh data; fi

train: setup data
	$(PY) train.py $(ARGS)

# The full gate (what CI runs): unit and integration tests, Horovod included. One pytest worker per core, each
# test file on one worker (its module fixtures built once): the tests' trainings run one thread each
# (OMP_NUM_THREADS=1), so a serial run leaves all but one core idle. The longest files start first (their order is
# in tests/conftest.py; xdist's own would start them last). The slowest tests are listed at the end.
test: dev $(VENV)/.installed-horovod
	$(PY) -m pytest -n auto --dist loadfile --no-loadscope-reorder --durations 15 $(ARGS)

# The inner loop: unit tests only, no Horovod build, well under 2 minutes.
test-fast: dev
	$(PY) -m pytest tests/unit -q $(ARGS)

clean:
	rm -rf $(VENV) .pytest_cache
