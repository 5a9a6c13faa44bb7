#!/usr/bin/env bash
# The GPU check, in one device call of at most 8 minutes: the bench at batch 128/256/512 (ours against
# the original's pipeline) and one training run to 94% test accuracy with our fastest recipe.
# Results (JSON, logs) go to $OUT (default: benchmarks/results/gpu-<date>).
#
# Data: the device machine gets only the working tree (64 MiB a call) and no network. Stage the real
# CIFAR-10 first (see ../shared/cifar10/README.md), in three calls while the machine stays warm:
#   ../shared/cifar10/stage_for_device.sh && printf '/.cifar-a/\n/.cifar-b/\n/.cifar-c/\n' >> .git/info/exclude
#   call 1: carry .cifar-a, "true";  call 2: carry .cifar-b, "true"
#   call 3: carry .cifar-c, "python3 .cifar-c/unpack.py data && bash benchmarks/gpu_check.sh"
# Without data/cifar-10-batches-py the bench runs on synthetic images and the accuracy run is skipped.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-benchmarks/results/gpu-$(date +%Y%m%d)}"
mkdir -p "$OUT"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
PY="${PYTHON:-python3}"
DATA=synthetic
[ -f data/cifar-10-batches-py/test_batch ] && DATA=real

{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  "$PY" -c "import torch, torchvision; print('torch', torch.__version__, 'torchvision', torchvision.__version__, 'cuda', torch.version.cuda)"
} > "$OUT/environment.txt" 2>&1
cat "$OUT/environment.txt"

for batch in 128 256 512; do
  timeout 100 "$PY" -m batchscale.cli bench --batch-size "$batch" --data "$DATA" --train-dir data \
    --steps 30 --rounds 2 --baseline-steps 15 --compile --output "$OUT/bench-b$batch.json" 2>&1 | tail -8 | tee "$OUT/bench-b$batch.txt"
done

# Fastest recipe for 94%: compiled bf16 channels_last, batch 512, 15 epochs of one-cycle LR
# (linear warmup from 0.04 to 0.4 over 2 epochs, then straight down), Nesterov, label smoothing 0.1.
if [ "$DATA" = real ]; then
  timeout 200 "$PY" train.py --train-dir data --val-dir data --log-dir "$OUT/fast94" --epochs 15 --batch-size 512 \
    --base-lr 0.4 --warmup-epochs 2 --warmup-start-lr 0.04 --lr-schedule onecycle --label-smoothing 0.1 \
    --compile --no-progress --no-download 2>&1 | tail -20 | tee "$OUT/fast94.txt"
  cp "$OUT/fast94/summary.json" "$OUT/fast94-summary.json" 2>/dev/null
  rm -f "$OUT"/fast94/checkpoint-*.pth.tar
fi
ls -la "$OUT"
