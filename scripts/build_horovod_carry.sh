#!/usr/bin/env bash
# Builds Horovod wheels for the GPU machine (Python 3.12, torch 2.11 + CUDA 13, NCCL operations for sm_90,
# Gloo only since it has no MPI) into .horovod-wheels/ (about 22 MB), on this machine: nvcc 13 is here, no
# GPU is needed. Carry the folder in a call of its own (it and one .cifar-* part exceed 64 MiB together):
#   run(carry=[".horovod-wheels"], command="true")
# and benchmarks/gpu_check.py installs it there and runs the original's path (horovodrun --gloo -np 1).
# About 5 minutes. Usage: scripts/build_horovod_carry.sh [PYTHON3.12] [TORCH_SPEC]
set -euo pipefail
cd "$(dirname "$0")/.."
# A pyenv shim named python3.12 can exist and still refuse to run: try it before trusting it.
PY312="${1:-$(python3.12 -c 'import sys; print(sys.executable)' 2>/dev/null || echo /root/.pyenv/versions/3.12.1/bin/python)}"
TORCH="${2:-torch==2.11.*}"
venv="$(mktemp -d)/venv"
"$PY312" -m venv "$venv"
"$venv/bin/pip" install --quiet --disable-pip-version-check "$TORCH" numpy 2>&1 | { grep -v "is ignored" || true; }
rm -rf .horovod-wheels
scripts/install_horovod.sh "$venv/bin/python" --gpu --no-mpi --wheel .horovod-wheels
"$venv/bin/pip" install --quiet --no-index --find-links .horovod-wheels horovod 2>&1 | { grep -v "is ignored" || true; }
"$venv/bin/horovodrun" --check-build | grep -q '\[X\] NCCL' && echo "checked: the wheels install and have NCCL operations"
rm -rf "$(dirname "$venv")"
