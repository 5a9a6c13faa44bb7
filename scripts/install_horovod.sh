#!/usr/bin/env bash
# Installs Horovod into the project's venv, built against the torch already there, with MPI and Gloo.
# Usage: scripts/install_horovod.sh [PYTHON]   (default .venv/bin/python; `make horovod` runs it)
# A second run is a no-op. GPU clusters: put a CUDA toolkit matching torch.version.cuda on PATH (nvcc)
# and NCCL where the compiler finds it; the build then adds NCCL GPU operations (HOROVOD_GPU_OPERATIONS=NCCL).
set -euo pipefail
PY="${1:-.venv/bin/python}"
VERSION=0.28.1
BIN="$(dirname "$PY")"

if "$BIN/horovodrun" --check-build 2>/dev/null | grep -q '\[X\] MPI' && "$PY" -c "import horovod.torch" 2>/dev/null; then
  echo "Horovod $VERSION already installed with PyTorch and MPI"; exit 0
fi

if ! command -v mpicxx >/dev/null || ! command -v mpirun >/dev/null; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q openmpi-bin libopenmpi-dev
  else
    echo "Horovod needs MPI: install Debian's openmpi-bin and libopenmpi-dev (sudo apt-get install openmpi-bin libopenmpi-dev), then rerun" >&2
    exit 1
  fi
fi

read -r TORCH_VERSION TORCH_CUDA < <("$PY" -c "import torch; print(torch.__version__.split('+')[0], torch.version.cuda or 'none')")
# Horovod 0.28.1 says C++14; torch's headers need C++17 from 2.1 and C++20 from 2.14.
STD=$("$PY" -c "v=tuple(int(x) for x in '$TORCH_VERSION'.split('.')[:2]); print(20 if v >= (2, 14) else 17 if v >= (2, 1) else 14)")
NVCC_CUDA=$(command -v nvcc >/dev/null && nvcc --version | sed -n 's/.*release \([0-9]*\.[0-9]*\).*/\1/p' || echo none)
GPU=0
if [ "$TORCH_CUDA" != none ] && [ "${NVCC_CUDA%%.*}" = "${TORCH_CUDA%%.*}" ] && "$PY" -c "import torch,sys; sys.exit(not torch.cuda.is_available())"; then
  GPU=1
fi

work="$(mktemp -d)"; trap 'rm -rf "$work"' EXIT
"$PY" -m pip download --quiet --no-deps --no-binary :all: "horovod==$VERSION" -d "$work" 2>&1 | { grep -v "is ignored" || true; }
tar xzf "$work/horovod-$VERSION.tar.gz" -C "$work"
src="$work/horovod-$VERSION"
sed -i "s/set(CMAKE_CXX_STANDARD 14)/set(CMAKE_CXX_STANDARD $STD)/" "$src/CMakeLists.txt" "$src/horovod/torch/CMakeLists.txt"
if [ "$GPU" = 0 ]; then
  # A CUDA build of torch on a machine without a usable GPU toolkit: build the CPU extension.
  sed -i 's/print(True if ((torch.version.cuda is not None) and (CUDA_HOME is not None)) else False)/print(False)/' \
    "$src/cmake/Modules/FindPytorch.cmake"
  unset HOROVOD_GPU_OPERATIONS
else
  export HOROVOD_GPU_OPERATIONS=NCCL
fi
echo "building Horovod $VERSION for torch $TORCH_VERSION (C++$STD, $([ $GPU = 1 ] && echo "CUDA $TORCH_CUDA + NCCL" || echo CPU)); about 5 minutes"
HOROVOD_WITH_PYTORCH=1 HOROVOD_WITH_MPI=1 HOROVOD_WITH_GLOO=1 HOROVOD_WITHOUT_TENSORFLOW=1 HOROVOD_WITHOUT_MXNET=1 \
  MAKEFLAGS="-j$(nproc)" "$PY" -m pip install --quiet --no-build-isolation --no-cache-dir "$src" 2>&1 | { grep -v "is ignored" || true; }
"$BIN/horovodrun" --check-build
"$BIN/horovodrun" --check-build | grep -q '\[X\] PyTorch' || { echo "Horovod built without PyTorch support" >&2; exit 1; }
