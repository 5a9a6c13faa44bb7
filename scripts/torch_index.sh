#!/usr/bin/env bash
# Where `make setup` installs torch from: prints the index URL on stdout (nothing: pip's default index, whose Linux
# torch is the CUDA build, 5-6 GB with its libraries) and says on stderr, in one line, what it chose and why.
#   TORCH_INDEX unset: the CUDA build where nvidia-smi lists a GPU; else the CPU-only wheels of TORCH_CPU_INDEX
#     (default https://download.pytorch.org/whl/cpu, about 1 GB), if that index answers; else pip's default, said.
#   TORCH_INDEX=URL: that index. TORCH_INDEX=default: pip's default index (a CUDA build on a machine without a GPU,
#     e.g. a login node whose venv the GPU nodes share).
# PYTHON (default python3) probes the index: it answers within 10 s or counts as unreachable.
set -euo pipefail
CPU_INDEX="${TORCH_CPU_INDEX:-https://download.pytorch.org/whl/cpu}"
say() { echo "setup: $*" >&2; }

case "${TORCH_INDEX:-}" in
  "") ;;
  default)
    say "torch from pip's default index (TORCH_INDEX=default)"
    exit 0 ;;
  *)
    say "torch from $TORCH_INDEX (TORCH_INDEX)"
    echo "$TORCH_INDEX"
    exit 0 ;;
esac

if command -v nvidia-smi >/dev/null && nvidia-smi -L 2>/dev/null | grep -q '^GPU '; then
  say "a GPU is visible (nvidia-smi -L): torch with CUDA from pip's default index;" \
      "TORCH_INDEX=$CPU_INDEX make setup installs the CPU-only build instead"
  exit 0
fi

# The index's torch page, as pip would ask for it; DNS that never answers is cut off by `timeout`.
probe='import sys, urllib.request; urllib.request.urlopen(sys.argv[1].rstrip("/") + "/torch/", timeout=10).read(1)'
if timeout 20 "${PYTHON:-python3}" -c "$probe" "$CPU_INDEX" >/dev/null 2>&1; then
  say "no GPU visible (nvidia-smi lists none): the CPU-only torch from $CPU_INDEX (about 1 GB instead of 5-6 GB" \
      "with CUDA); TORCH_INDEX=default make setup installs the CUDA build"
  echo "$CPU_INDEX"
else
  say "no GPU visible, but $CPU_INDEX does not answer: torch from pip's default index (the CUDA build, 5-6 GB);" \
      "TORCH_INDEX=URL make setup names another index"
fi
