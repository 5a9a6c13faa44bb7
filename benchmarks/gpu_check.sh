#!/usr/bin/env bash
# The GPU check (details, parts and time boxes: benchmarks/gpu_check.py). Results go to $OUT.
#
# Data: the device gets only the working tree (64 MiB a call). Stage the real CIFAR-10 first, in three calls
# while the machine stays warm (../shared/cifar10/README.md):
#   ../shared/cifar10/stage_for_device.sh && printf '/.cifar-a/\n/.cifar-b/\n/.cifar-c/\n' >> .git/info/exclude
#   call 1: carry .cifar-a, "true";  call 2: carry .cifar-b, "true"
#   call 3: carry .cifar-c, "python3 .cifar-c/unpack.py data && bash benchmarks/gpu_check.sh"
# Without data/cifar-10-batches-py the benches use synthetic images and the fast recipe is skipped; a partial
# folder stops the check at its first part with one line. --dry-run runs every part on the CPU (make test).
set -uo pipefail
cd "$(dirname "$0")/.."
exec "${PYTHON:-python3}" benchmarks/gpu_check.py "$@"
