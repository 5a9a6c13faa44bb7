#!/usr/bin/env bash
# Installs Horovod into a venv, built against the torch already there, with MPI and Gloo, and with NCCL GPU
# operations when asked (--gpu, or HOROVOD_GPU=1).
# Usage: scripts/install_horovod.sh [PYTHON] [--gpu] [--no-mpi] [--wheel DIR]
#   (default .venv/bin/python; `make horovod` runs it)
# --no-mpi builds with Gloo only (for a machine without MPI: run it with `horovodrun --gloo`).
# --wheel DIR builds a wheel into DIR, beside the wheels of its dependencies, instead of installing: to carry
#   to a machine without network and install there with `pip install --no-index --find-links DIR horovod`.
# A second run with the same request is a no-op; a CPU-only install is rebuilt when GPUs are asked for.
#
# --gpu needs nvcc of torch's CUDA major version (torch.version.cuda) on PATH. NCCL: Horovod reads
# HOROVOD_NCCL_HOME, or HOROVOD_NCCL_INCLUDE + HOROVOD_NCCL_LIB (not NCCL_HOME); without them the NCCL that
# torch's pip wheel ships (nvidia/nccl, which has only libnccl.so.2) is used through a libnccl.so link and
# HOROVOD_NCCL_LINK=SHARED. Kernels are built for HOROVOD_BUILD_CUDA_CC_LIST (default 90: H100/H200). No GPU
# needs to be visible to build: this is how the build is proven on a machine with nvcc and no GPU.
set -euo pipefail
PY=.venv/bin/python
WANT_GPU="${HOROVOD_GPU:-0}"
MPI=1
WHEEL_DIR=""
while [ $# -gt 0 ]; do
  case "$1" in
    --gpu) WANT_GPU=1 ;;
    --no-mpi) MPI=0 ;;
    --wheel) WHEEL_DIR="$2"; shift ;;
    *) PY="$1" ;;
  esac
  shift
done
VERSION=0.28.1
BIN="$(dirname "$PY")"
say() { echo "install_horovod: $*"; }
die() { echo "install_horovod: $*" >&2; exit 1; }

built="$("$BIN/horovodrun" --check-build 2>/dev/null || true)"
if [ -z "$WHEEL_DIR" ] && grep -q '\[X\] MPI' <<<"$built" && "$PY" -c "import horovod.torch" 2>/dev/null; then
  if [ "$WANT_GPU" = 0 ] || grep -q '\[X\] NCCL' <<<"$built"; then
    say "Horovod $VERSION already installed ($(grep -q '\[X\] NCCL' <<<"$built" && echo "with NCCL GPU operations" || echo CPU-only))"
    exit 0
  fi
  say "the installed Horovod has no NCCL GPU operations and --gpu asks for them: rebuilding"
fi

if [ "$MPI" = 1 ] && { ! command -v mpicxx >/dev/null || ! command -v mpirun >/dev/null; }; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q openmpi-bin libopenmpi-dev
  else
    die "Horovod needs MPI: install Debian's openmpi-bin and libopenmpi-dev (sudo apt-get install openmpi-bin libopenmpi-dev), then rerun"
  fi
fi

read -r TORCH_VERSION TORCH_CUDA < <("$PY" -c "import torch; print(torch.__version__.split('+')[0], torch.version.cuda or 'none')")
# Horovod 0.28.1 says C++14; torch's headers need C++17 from 2.1 and C++20 from 2.14.
STD=$("$PY" -c "v=tuple(int(x) for x in '$TORCH_VERSION'.split('.')[:2]); print(20 if v >= (2, 14) else 17 if v >= (2, 1) else 14)")
NVCC_CUDA=$(command -v nvcc >/dev/null && nvcc --version | sed -n 's/.*release \([0-9]*\.[0-9]*\).*/\1/p' || echo none)
HAS_GPU=$("$PY" -c "import torch; print(int(torch.cuda.is_available()))")

work="$(mktemp -d)"; trap 'rm -rf "$work"' EXIT
if [ "$WANT_GPU" = 1 ]; then
  [ "$TORCH_CUDA" != none ] || die "--gpu: this torch ($TORCH_VERSION) is a CPU build; install a CUDA build of torch first"
  [ "${NVCC_CUDA%%.*}" = "${TORCH_CUDA%%.*}" ] || \
    die "--gpu: torch was built with CUDA $TORCH_CUDA but nvcc is ${NVCC_CUDA}; put a CUDA ${TORCH_CUDA%%.*}.x toolkit's nvcc on PATH"
  if [ -z "${HOROVOD_NCCL_HOME:-}${HOROVOD_NCCL_INCLUDE:-}${HOROVOD_NCCL_LIB:-}" ]; then
    nccl="$("$PY" -c "import nvidia.nccl as n; print(list(n.__path__)[0])" 2>/dev/null)" || \
      die "--gpu: no NCCL found; set HOROVOD_NCCL_HOME (or HOROVOD_NCCL_INCLUDE and HOROVOD_NCCL_LIB) to an NCCL install"
    mkdir -p "$work/nccl-lib"
    ln -s "$nccl/lib/libnccl.so.2" "$work/nccl-lib/libnccl.so"  # the wheel has only the versioned name CMake skips
    export HOROVOD_NCCL_INCLUDE="$nccl/include" HOROVOD_NCCL_LIB="$work/nccl-lib" HOROVOD_NCCL_LINK=SHARED
    say "using the NCCL of torch's wheel: $nccl"
  fi
  # CMake finds the toolkit from nvcc's folder; nvcc is often a wrapper elsewhere, so ask nvcc where it lives.
  cuda_root="${CUDA_HOME:-$(realpath "$(nvcc --dryrun -x cu -c /dev/null -o /dev/null 2>&1 | sed -n 's/^#\$ TOP=//p' | head -1)")}"
  export CUDA_HOME="$cuda_root" CUDAToolkit_ROOT="$cuda_root" PATH="$cuda_root/bin:$PATH"
  export HOROVOD_GPU_OPERATIONS=NCCL HOROVOD_BUILD_CUDA_CC_LIST="${HOROVOD_BUILD_CUDA_CC_LIST:-90}"
  [ "$HAS_GPU" = 1 ] || say "no GPU visible here: building the NCCL operations anyway, as --gpu asks"
elif [ "$TORCH_CUDA" != none ] && [ "$NVCC_CUDA" != none ]; then
  say "building CPU-only$([ "$HAS_GPU" = 0 ] && echo " (no GPU visible)"); pass --gpu for NCCL GPU operations"
fi

"$PY" -m pip download --quiet --no-deps --no-binary :all: "horovod==$VERSION" -d "$work" 2>&1 | { grep -v "is ignored" || true; }
tar xzf "$work/horovod-$VERSION.tar.gz" -C "$work"
src="$work/horovod-$VERSION"
sed -i "s/set(CMAKE_CXX_STANDARD 14)/set(CMAKE_CXX_STANDARD $STD)/" "$src/CMakeLists.txt" "$src/horovod/torch/CMakeLists.txt"
# Its CUDA kernels ask for C++11, which CUDA 13's own headers reject.
sed -i "s/set(CMAKE_CUDA_STANDARD 11)/set(CMAKE_CUDA_STANDARD 17)/" "$src/horovod/common/ops/cuda/CMakeLists.txt"
if [ "$WANT_GPU" = 0 ]; then
  # A CUDA build of torch: build the CPU extension unless GPUs were asked for.
  sed -i 's/print(True if ((torch.version.cuda is not None) and (CUDA_HOME is not None)) else False)/print(False)/' \
    "$src/cmake/Modules/FindPytorch.cmake"
  unset HOROVOD_GPU_OPERATIONS
fi
what=$([ "$WANT_GPU" = 1 ] && echo "CUDA $TORCH_CUDA + NCCL, sm_${HOROVOD_BUILD_CUDA_CC_LIST}" || echo CPU)
what="$what, $([ "$MPI" = 1 ] && echo "MPI + Gloo" || echo "Gloo only")"
say "building Horovod $VERSION for torch $TORCH_VERSION (C++$STD, $what); about 5 minutes, more for CUDA"
if [ "$MPI" = 1 ]; then export HOROVOD_WITH_MPI=1; else export HOROVOD_WITHOUT_MPI=1; fi
export HOROVOD_WITH_PYTORCH=1 HOROVOD_WITH_GLOO=1 HOROVOD_WITHOUT_TENSORFLOW=1 HOROVOD_WITHOUT_MXNET=1 MAKEFLAGS="-j$(nproc)"
if [ -n "$WHEEL_DIR" ]; then
  mkdir -p "$WHEEL_DIR"
  "$PY" -m pip wheel --quiet --no-build-isolation --no-cache-dir --no-deps "$src" -w "$WHEEL_DIR" 2>&1 | { grep -v "is ignored" || true; }
  "$PY" -m pip download --quiet --only-binary :all: -d "$WHEEL_DIR" cloudpickle psutil pyyaml packaging "cffi>=1.4" \
    2>&1 | { grep -v "is ignored" || true; }
  say "wheels for $what in $WHEEL_DIR ($(du -sh "$WHEEL_DIR" | cut -f1)); install with: pip install --no-index --find-links $WHEEL_DIR horovod"
  exit 0
fi
"$PY" -m pip install --quiet --no-build-isolation --no-cache-dir "$src" 2>&1 | { grep -v "is ignored" || true; }
built="$("$BIN/horovodrun" --check-build)"
echo "$built"
grep -q '\[X\] PyTorch' <<<"$built" || die "Horovod built without PyTorch support; see the build output above"
if [ "$WANT_GPU" = 1 ]; then
  grep -q '\[X\] NCCL' <<<"$built" || die "--gpu asked for NCCL GPU operations but the build has none; see the output above"
fi
say "installed Horovod $VERSION: $what"
