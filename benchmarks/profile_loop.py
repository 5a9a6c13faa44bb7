"""Where the training loop's time goes: train.py itself (same flags, same loop), its last epoch under torch.profiler.

Asks what the first H100 run left open (benchmarks/results/gpu-h100-20261127/): the fast recipe's loop ran at
37,000 img/s at batch 512 while the bench's step, compiled the same way, ran at 61,000. Earlier epochs run
unprofiled, so compilation and cuDNN's autotuning stay out of the profile.

    python benchmarks/profile_loop.py OUT_DIR TRAIN_FLAGS...     # TRAIN_FLAGS: train.py's, --epochs 2 or more

Writes OUT_DIR/profile.txt (the epoch's host time per step in our update and at the epoch's end, the device's busy
time per step, the top operators by device and by host time). No trace: one epoch's is tens of MB, past what a
device call brings back.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch.profiler import ProfilerActivity, profile, record_function

from batchscale import trainer as core
from batchscale.cli import run_train


def device_time(event: Any) -> float:
    """Microseconds of device time an operator itself spent (the attribute's name changed across torch versions)."""
    return float(getattr(event, "self_device_time_total", getattr(event, "self_cuda_time_total", 0.0)))


def table(events: Any, key: str) -> str:
    try:
        return events.table(sort_by=key, row_limit=25)
    except (AttributeError, KeyError, ValueError):  # torch versions before the device_* names
        return events.table(sort_by=key.replace("device", "cuda"), row_limit=25)


def main(out: Path, argv: list[str]) -> int:
    out.mkdir(parents=True, exist_ok=True)
    train_epoch, update, end_epoch = core.Trainer.train_epoch, core.Trainer.update, core.Trainer.end_epoch

    def labelled(name: str, method: Any) -> Any:
        def call(self: core.Trainer, *args: Any) -> Any:
            with record_function(name):
                return method(self, *args)
        return call

    def profiled_epoch(self: core.Trainer) -> None:
        if self.state.epoch + 1 < self.config.epochs:
            return train_epoch(self)
        cuda = self.device.type == "cuda"
        steps = self.steps_per_epoch - self.state.epoch_step
        with profile(activities=[ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])) as prof:
            start = time.perf_counter()
            train_epoch(self)
            if cuda:
                torch.cuda.synchronize()
            wall = time.perf_counter() - start
        events = prof.key_averages()
        host = {e.key: e.cpu_time_total / 1e3 for e in events if e.key.startswith("batchscale.")}
        busy = sum(device_time(e) for e in events) / 1e3
        lines = [
            f"epoch {self.state.epoch}: {steps} steps of global batch {self.batches.global_batch} in {wall:.3f} s "
            f"(profiler on), {steps * self.batches.global_batch / wall:,.0f} img/s",
            f"host in our update (the step and its bookkeeping): {host.get('batchscale.update', 0):.1f} ms, "
            f"{host.get('batchscale.update', 0) / steps:.3f} ms a step",
            f"host in the epoch's end (evaluation, checkpoint, logs): {host.get('batchscale.end_epoch', 0):.1f} ms",
            f"device busy: {busy:.1f} ms, {busy / steps:.3f} ms a step ({busy / 1e3 / wall:.0%} of the epoch)" if cuda
            else "device busy: (CPU run)",
            "", "by device time:", table(events, "self_device_time_total" if cuda else "self_cpu_time_total"),
            "", "by host time:", table(events, "cpu_time_total"),
        ]
        (out / "profile.txt").write_text("\n".join(lines) + "\n")
        print("\n".join(lines[:4]), flush=True)

    core.Trainer.update = labelled("batchscale.update", update)  # type: ignore[method-assign]
    core.Trainer.end_epoch = labelled("batchscale.end_epoch", end_epoch)  # type: ignore[method-assign]
    core.Trainer.train_epoch = profiled_epoch  # type: ignore[method-assign]
    return run_train(argv, "profile_loop.py")


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit("usage: python benchmarks/profile_loop.py OUT_DIR TRAIN_FLAGS...")
    sys.exit(main(Path(sys.argv[1]), sys.argv[2:]))
