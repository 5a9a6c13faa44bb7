"""Where the training loop's time goes: train.py itself (same flags, same loop), its last epoch under torch.profiler,
through the loop's hooks (training.loop.Hook), so the loop profiled is the one that trains.

Asks what the first H100 run left open (benchmarks/results/gpu-h100-20261127/): the fast recipe's loop ran at
37,000 img/s at batch 512 while the bench's step, compiled the same way, ran at 61,000. Earlier epochs run
unprofiled, so compilation and cuDNN's autotuning stay out of the profile.

    python benchmarks/profile_loop.py OUT_DIR TRAIN_FLAGS...     # TRAIN_FLAGS: train.py's, --epochs 2 or more

Writes OUT_DIR/profile.txt (the epoch's host time per step in our update and at the epoch's end, the device's busy
time per step, the top operators by device and by host time). No trace: one epoch's is tens of MB, past what a
device call brings back.
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch.profiler import ProfilerActivity, profile, record_function

from batchscale.cli import run_train
from batchscale.training.loop import Hook, Trainer


def device_time(event: Any) -> float:
    """Microseconds of device time an operator itself spent (the attribute's name changed across torch versions)."""
    return float(getattr(event, "self_device_time_total", getattr(event, "self_cuda_time_total", 0.0)))


def table(events: Any, key: str) -> str:
    try:
        return events.table(sort_by=key, row_limit=25)
    except (AttributeError, KeyError, ValueError):  # torch versions before the device_* names
        return events.table(sort_by=key.replace("device", "cuda"), row_limit=25)


class LastEpochProfile(Hook):
    """Labels each update and each epoch's end; profiles the last epoch (the loop's seam, no patching)."""

    def __init__(self, out: Path) -> None:
        self.out = out

    def update(self, trainer: Trainer, step: int) -> Any:
        return record_function("batchscale.update")

    def end_epoch(self, trainer: Trainer) -> Any:
        return record_function("batchscale.end_epoch")

    @contextlib.contextmanager
    def epoch(self, trainer: Trainer) -> Iterator[None]:
        if trainer.state.epoch + 1 < trainer.config.epochs:
            yield
            return
        cuda = trainer.backend.device.type == "cuda"
        before = trainer.state.clock.step
        with profile(activities=[ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])) as prof:
            start = time.perf_counter()
            yield
            if cuda:
                torch.cuda.synchronize()
            wall = time.perf_counter() - start
        self.write(trainer, prof.key_averages(), trainer.state.clock.step - before, wall, cuda)

    def write(self, trainer: Trainer, events: Any, steps: int, wall: float, cuda: bool) -> None:
        host = {e.key: e.cpu_time_total / 1e3 for e in events if e.key.startswith("batchscale.")}
        busy = sum(device_time(e) for e in events) / 1e3
        batch = trainer.batches.global_batch
        lines = [
            f"epoch {trainer.state.epoch}: {steps} steps of global batch {batch} in {wall:.3f} s "
            f"(profiler on), {steps * batch / wall:,.0f} img/s",
            f"host in our update (the step and its bookkeeping): {host.get('batchscale.update', 0):.1f} ms, "
            f"{host.get('batchscale.update', 0) / steps:.3f} ms a step",
            f"host in the epoch's end (evaluation, checkpoint, logs): {host.get('batchscale.end_epoch', 0):.1f} ms",
            f"device busy: {busy:.1f} ms, {busy / steps:.3f} ms a step ({busy / 1e3 / wall:.0%} of the epoch)" if cuda
            else "device busy: (CPU run)",
            "", "by device time:", table(events, "self_device_time_total" if cuda else "self_cpu_time_total"),
            "", "by host time:", table(events, "cpu_time_total"),
        ]
        (self.out / "profile.txt").write_text("\n".join(lines) + "\n")
        print("\n".join(lines[:4]), flush=True)


def main(out: Path, argv: list[str]) -> int:
    out.mkdir(parents=True, exist_ok=True)
    return run_train(argv, "profile_loop.py", hooks=[LastEpochProfile(out)])


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit("usage: python benchmarks/profile_loop.py OUT_DIR TRAIN_FLAGS...")
    sys.exit(main(Path(sys.argv[1]), sys.argv[2:]))
