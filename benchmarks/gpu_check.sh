#!/usr/bin/env bash
# The GPU check: the one command of a device call (parts, time boxes, where results go: benchmarks/gpu_check.py).
#
# The device gets only the working tree (64 MiB a call), so the real CIFAR-10 comes in three calls while the
# machine stays warm (../shared/cifar10/README.md; .cifar-a/b/c are git-ignored):
#   here, once:  ../shared/cifar10/stage_for_device.sh
#   call 1: carry [".cifar-a"], command "true"
#   call 2: carry [".cifar-b"], command "true"
#   call 3: carry [".cifar-c"], command "bash benchmarks/gpu_check.sh", timeout_s 570
# Call 3 unpacks the data into data/ (each file checked against SHA256SUMS), runs the probe (at most 480 s, its
# parts in order of value) and leaves two files in $OUT: gpu-check.tar.gz (every part's results, repacked after
# each part, so a cut call keeps what finished) and status.json. Unpack the archive into
# benchmarks/results/gpu-<device>-<date>/. Without data/ the benches use synthetic images and the training parts
# are skipped; a partial data/ stops the check at its first part with one line.
# --dry-run runs every part on the CPU, tiny and eager, without the device's time boxes (make test).
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
py="${PYTHON:-python3}"
if [[ " $* " != *" --dry-run "* && -f .cifar-c/unpack.py && ! -f data/cifar-10-batches-py/test_batch ]]; then
    "$py" .cifar-c/unpack.py data || exit 2
fi
exec "$py" benchmarks/gpu_check.py "$@"
