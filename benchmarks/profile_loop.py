"""Where the training loop's time goes: train.py itself (same flags, same loop), a fixed number of its last epoch's
steps timed and then profiled, through the loop's hooks (training.loop.Hook), so the loop measured is the one
that trains.

Asks what the first H100 run left open (benchmarks/results/gpu-h100-20261127/): the fast recipe's loop ran at
37,000 img/s at batch 512 while the bench's step, compiled the same way, ran at 61,000. Earlier epochs run
unmeasured, so compilation and cuDNN's autotuning stay out. In the last epoch, after its first few steps:
STEPS whole loop iterations timed with the profiler off (the img/s to set beside the bench's step), then as many
under torch.profiler (where the time goes), then the epoch's end (6-pass TTA evaluation, checkpoint, logs) timed
apart: it is not a step, and counted in it once made the loop look slower than it steps.

    python benchmarks/profile_loop.py OUT_DIR TRAIN_FLAGS...     # TRAIN_FLAGS: train.py's, --epochs 2 or more

Writes OUT_DIR/profile.json (the figures), then OUT_DIR/profile.txt (the same in words, and the top operators by
device and by host time), each the moment the epoch's end is timed. Device busy counts each kernel once
(training/profiling.py). No trace: one epoch's is tens of MB, past what a device call brings back.
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

from batchscale.atomic import write_json_atomic
from batchscale.cli import run_train
from batchscale.training import profiling
from batchscale.training.loop import Hook, Trainer


STEPS, SKIP = 20, 5  # iterations in each window; the epoch's first few (its plan drawn, the loader warm) run unmeasured


def table(events: Any, key: str) -> str:
    try:
        return events.table(sort_by=key, row_limit=25)
    except (AttributeError, KeyError, ValueError):  # torch versions before the device_* names
        return events.table(sort_by=key.replace("device", "cuda"), row_limit=25)


def windows(remaining: int, steps: int = STEPS, skip: int = SKIP) -> tuple[int, int, int]:
    """(steps skipped, steps timed unprofiled, steps profiled) in an epoch of `remaining` steps: the full plan where
    the epoch is long enough, else what fits (an epoch of 5 steps: 1, 2, 2)."""
    skip = min(skip, remaining // 3)
    timed = min(steps, (remaining - skip) // 2)
    return skip, timed, min(steps, remaining - skip - timed)


class LastEpochProfile(Hook):
    """Times a fixed number of the last epoch's loop iterations, then profiles as many, then times its end."""

    def __init__(self, out: Path, steps: int = STEPS, skip: int = SKIP) -> None:
        self.out, self.steps, self.skip = out, steps, skip
        self.plan: list[tuple[str, int, int]] = []  # (window, first iteration, end), in the last epoch only
        self.seen = 0
        self.open: tuple[str, int, int, float] | None = None  # the window under way: name, first, end, its clock
        self.prof: Any = None
        self.figures: dict[str, Any] = {}

    def sync(self, trainer: Trainer) -> float:
        if trainer.backend.device.type == "cuda":
            torch.cuda.synchronize(trainer.backend.device)
        return time.perf_counter()

    @contextlib.contextmanager
    def epoch(self, trainer: Trainer) -> Iterator[None]:
        if trainer.state.epoch + 1 < trainer.config.epochs:
            yield
            return
        skip, timed, profiled = windows(trainer.batches.epoch_images // trainer.batches.global_batch - trainer.state.epoch_step, self.steps,
                                        self.skip)
        self.plan = [("timed", skip, skip + timed), ("profiled", skip + timed, skip + timed + profiled)]
        self.seen = 0
        yield
        self.write(trainer)

    def update(self, trainer: Trainer, step: int) -> Any:
        if self.plan:
            self.boundary(trainer, epoch_end=False)
            self.seen += 1
        return record_function("batchscale.update")

    def boundary(self, trainer: Trainer, epoch_end: bool) -> None:
        """At the start of an update (`seen` iterations done) or at the epoch's end: closes the window that ends
        here (the epoch's end closes any), opens the one that starts here. Windows are whole iterations."""
        if self.open is not None and (epoch_end or self.open[2] == self.seen):
            name, first, _, clock = self.open
            seconds = self.sync(trainer) - clock
            if self.prof is not None:
                self.prof.stop()
            steps, batch = self.seen - first, trainer.batches.global_batch
            self.figures[name] = {"steps": steps, "images": steps * batch, "seconds": seconds,
                                  "images_per_sec": steps * batch / seconds if seconds > 0 else None}
            self.open = None
            write_json_atomic(self.out / "profile.json", self.figures)  # a time box that cuts the run keeps it
        if epoch_end:
            return
        for name, first, end in self.plan:
            if first == self.seen < end and name not in self.figures:
                if name == "profiled":
                    cuda = trainer.backend.device.type == "cuda"
                    self.prof = profile(activities=[ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else []))
                    self.prof.start()
                self.open = (name, first, end, self.sync(trainer))

    @contextlib.contextmanager
    def end_epoch(self, trainer: Trainer) -> Iterator[None]:
        if not self.plan:
            with record_function("batchscale.end_epoch"):
                yield
            return
        self.boundary(trainer, epoch_end=True)
        start = self.sync(trainer)
        yield
        self.figures["epoch_end_seconds"] = self.sync(trainer) - start

    def write(self, trainer: Trainer) -> None:
        cuda = trainer.backend.device.type == "cuda"
        batch = trainer.batches.global_batch
        record = trainer.state.history[-1] if trainer.state.history else {}
        figures: dict[str, Any] = {"epoch": trainer.state.epoch, "global_batch": batch, **self.figures,
                                   "epoch_images_per_sec_recorded": record.get("images_per_sec")}
        lines = [f"epoch {trainer.state.epoch}, global batch {batch}: the loop, measured over whole iterations "
                 "(the epoch's end apart)"]
        if "timed" in figures:
            t = figures["timed"]
            lines.append(f"timed, profiler off: {t['steps']} steps, {t['images']} images in {t['seconds']:.3f} s, "
                         f"{t['images_per_sec']:,.0f} img/s")
        prof = self.prof
        if "profiled" in figures and prof is not None:
            p = figures["profiled"]
            events = prof.key_averages()
            host = {e.key: e.cpu_time_total / 1e3 for e in events if e.key == "batchscale.update"}
            busy = profiling.busy_us(prof.events()) / 1e3 if cuda else None
            p.update({"host_update_ms_per_step": host.get("batchscale.update", 0.0) / p["steps"],
                      "device_busy_ms_per_step": busy / p["steps"] if busy is not None else None,
                      "device_busy_fraction": busy / 1e3 / p["seconds"] if busy is not None else None})
            lines += [
                f"profiled: {p['steps']} steps, {p['images']} images in {p['seconds']:.3f} s, "
                f"{p['images_per_sec']:,.0f} img/s (profiler on)",
                f"host in our update (the step and its bookkeeping): {p['host_update_ms_per_step']:.3f} ms a step",
                f"device busy (each kernel once): {busy:.1f} ms, {p['device_busy_ms_per_step']:.3f} ms a step "
                f"({p['device_busy_fraction']:.0%} of the window)" if busy is not None else "device busy: (CPU run)",
            ]
        lines.append(f"the epoch's end (evaluation, checkpoint, logs), apart: {figures.get('epoch_end_seconds', 0):.3f} s")
        write_json_atomic(self.out / "profile.json", figures)
        if "profiled" in figures and prof is not None:
            events = prof.key_averages()
            lines += ["", "by device time:", table(events, "self_device_time_total" if cuda else "self_cpu_time_total"),
                      "", "by host time:", table(events, "cpu_time_total")]
        (self.out / "profile.txt").write_text("\n".join(lines) + "\n")
        print("\n".join(lines[:6]), flush=True)


def main(out: Path, argv: list[str]) -> int:
    out.mkdir(parents=True, exist_ok=True)
    return run_train(argv, "profile_loop.py", hooks=[LastEpochProfile(out)])


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit("usage: python benchmarks/profile_loop.py OUT_DIR TRAIN_FLAGS...")
    sys.exit(main(Path(sys.argv[1]), sys.argv[2:]))
