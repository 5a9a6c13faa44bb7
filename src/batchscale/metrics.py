"""What a run reports: tqdm bars, TensorBoard scalars, metrics.jsonl and summary.json (rank 0 only)."""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from tqdm import tqdm

from .config import Config, global_batch
from .state import RunClock
from .errors import OutputError
from .rundir import STOPPED, write_error
from .atomic import write_json_atomic, write_text_atomic
from .trackers import RUN_ID_FILES, Tracker, open_trackers

THRESHOLDS = (0.90, 0.93, 0.94, 0.95)
REFRESH_SECONDS = 1.0
BAR_FORMAT = "{l_bar}{bar}| {n_fmt}/{total_fmt} [{elapsed}, {rate_fmt}{postfix}]"
LOG_POINTS = 20
COST_SKIP, COST_STEPS = 3, 10


@contextlib.contextmanager
def writing(folder: Path) -> Iterator[None]:
    """Any failed write of the run's logs (TensorBoard's included) becomes one line naming the folder."""
    try:
        yield
    except OSError as err:
        raise write_error(folder / "metrics.jsonl", err, "the run's logs", "--log-dir") from None


def quiet_tensorboard_threads() -> None:
    """TensorBoard's writer thread re-raises its error in the training thread at the next write, where it becomes
    one line; printing its traceback from the thread too would bury that line. Installed by the first RunLog that
    writes (not on import: importing batchscale changes nothing global), once."""
    global _threads_quieted
    if _threads_quieted:
        return
    _threads_quieted = True
    default = threading.excepthook

    def hook(args: threading.ExceptHookArgs) -> None:
        if type(args.thread).__name__ == "_AsyncWriterThread" and issubclass(args.exc_type, OSError):
            return
        default(args)

    threading.excepthook = hook


_threads_quieted = False


@dataclass(frozen=True)
class Logging:
    """The part of the configuration the run's log reads: where it writes, whether it draws bars, whether a fresh
    start replaces an earlier run's tracker runs, and the settings each tracker records."""

    log_dir: str
    progress: bool
    resume: bool
    tracker: tuple[str, ...]
    settings: dict[str, Any]  # Config.to_dict(): read, never changed

    @classmethod
    def of(cls, config: Config) -> "Logging":
        return cls(config.log_dir, config.progress, config.resume, config.tracker, config.to_dict())


class RunLog:
    """Every output of a run. On ranks other than 0 each method does nothing.

    Every scalar goes to the trackers against the optimizer step, so epoch figures and the in-epoch LR and
    training loss line up on one axis. Where the run stands, and how fast it goes, it reads from the run's clock
    (never changes it): images seen against `total_images`, the run's length."""

    def __init__(self, config: Logging, enabled: bool, history: list[dict[str, Any]], global_batch: int,
                 clock: RunClock | None = None, total_images: int = 0, epoch_images: int = 0) -> None:
        self.enabled = enabled
        self.global_batch = global_batch
        self.show_bars = enabled and config.progress
        self.dir = Path(config.log_dir)
        self.settings = config.settings
        self.trackers: list[Tracker] = []
        self.clock = clock or RunClock()
        self.total_images = total_images
        # About LOG_POINTS points per epoch of the in-epoch curves, one each time the images seen pass another
        # LOG_POINTS-th of an epoch's: each costs one host sync.
        self.spacing = max(1, epoch_images // LOG_POINTS)
        self._last_refresh = 0.0
        self._mark = (0.0, 0)  # the epoch's loss sum and images at the last in-epoch point written
        self._points: list[tuple[int, float, Tensor, int]] = []  # (step, lr, loss sum, images) not yet written
        self._last_flush = 0.0
        self._timing: tuple[int, float | None, int] | None = None  # (step, time, images) the cost estimate counts from
        self._bar: tqdm | None = None
        if not enabled:
            return
        quiet_tensorboard_threads()
        with writing(self.dir):
            self.dir.mkdir(parents=True, exist_ok=True)
            if not config.resume:  # a fresh start is a new tracker run too, not the old one continued
                for name in RUN_ID_FILES:
                    (self.dir / name).unlink(missing_ok=True)
            self.trackers = open_trackers(config.tracker, self.dir, config.settings)
        # A resumed run rewrites the lines of the epochs its checkpoint holds, dropping any written after it.
        write_text_atomic(self.dir / "metrics.jsonl", "".join(json.dumps(record) + "\n" for record in history))

    def diverged(self, message: str, step: int, world_size: int, trial: dict[str, Any]) -> None:
        """diverged.json, in place of a summary: a study counts a diverged trial as a result (it missed its target),
        not a crash."""
        if self.enabled:
            write_json_atomic(self.dir / "diverged.json", {
                "message": message, "step": step, "global_batch": self.global_batch, "world_size": world_size,
                "trial": {**trial, "ended": "diverged"}, "config": self.settings})

    def stopped(self, message: str, step: int) -> None:
        """stopped.json: the stop's line, kept in the run folder, for a launcher that took its pipes with it (the next
        start says it). Best effort: the stop itself must not fail on it."""
        if self.enabled:
            with contextlib.suppress(OSError, OutputError):
                write_json_atomic(self.dir / STOPPED, {"message": message, "step": step, "at": time.time()})

    def say(self, message: str) -> None:
        if self.enabled:
            tqdm.write(message)

    def scalars(self, values: dict[str, float], step: int) -> None:
        with writing(self.dir):
            for tracker in self.trackers:
                tracker.scalars(values, step)

    def bar(self, total: int, desc: str, initial: int = 0) -> tqdm | None:
        """Starts an epoch's output (and its bar of `total` images, `initial` done, if bars are on)."""
        self._mark, self._points = (0.0, 0), []
        if not self.show_bars:
            return None
        # One time left on the bar, the whole run's (run_left, in the postfix): tqdm's own is only the epoch's.
        self._bar = tqdm(total=total, initial=initial, desc=desc, unit="img", leave=False, dynamic_ncols=True,
                         bar_format=BAR_FORMAT)
        return self._bar

    def flush_points(self) -> None:
        """Writes the in-epoch points kept so far, each the mean training loss since the one before: one host
        sync for all of them, at most once a second and at the epoch's end, so logging never stalls a fast step."""
        if not self._points:
            return
        sums = torch.stack([total for _, _, total, _ in self._points]).tolist()
        for (step, lr, _, seen), total in zip(self._points, sums):
            if seen > self._mark[1]:
                self.scalars({"train/lr": lr, "train/step_loss": (total - self._mark[0]) / (seen - self._mark[1])}, step)
            self._mark = (total, seen)
        self._points = []

    def end_bar(self) -> None:
        """Writes the epoch's last in-epoch points and closes its bar, so what is printed next starts on a line of
        its own."""
        if self.enabled:
            self.flush_points()
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def step(self, bar: tqdm | None, lr: float, taken: int, seen: int, loss_sum: Tensor, correct: Tensor) -> None:
        """After the clock's latest step (at `lr`, of `taken` images; `seen` of this rank's images in the epoch,
        `loss_sum` and `correct` over them): each time the epoch's images pass another `spacing`, a point of the LR
        and the training loss (written by `flush_points`); the bar's loss, accuracy and the whole run's time left
        at most once a second; once, the run's cost."""
        if not self.enabled:
            return
        step, images, into = self.clock.step, self.clock.images, self.clock.epoch_images
        self.estimate_cost(step, images)
        if into // self.spacing > (into - taken) // self.spacing:
            self._points.append((step, lr, loss_sum.detach().clone(), seen))  # on the device: no sync here
        now = time.perf_counter()
        if now - self._last_flush >= REFRESH_SECONDS:
            self._last_flush = now
            self.flush_points()
        if bar is None:
            return
        bar.update(taken)
        if now - self._last_refresh >= REFRESH_SECONDS and seen:
            self._last_refresh = now
            images_per_sec = bar.format_dict["rate"] or 0.0
            left = (self.total_images - images) / images_per_sec if images_per_sec and self.total_images else None
            bar.set_postfix(
                loss=f"{loss_sum.item() / seen:.3f}",
                acc=f"{correct.item() / seen:.3f}",
                # tqdm's smoothed recent rate, not the epoch's or the run's mean that the epoch and done lines give.
                recent_img_s=f"{images_per_sec:.0f}",
                **({"run_left": clock(left)} if left is not None else {}),
                refresh=False,
            )

    def estimate_cost(self, step: int, images: int) -> None:
        """After the first steps, one line: what the rest of the run's images will take at the rate they ran (the
        first COST_SKIP steps are left out: they pay for allocation and warm-up, several times a later step on a
        CPU)."""
        if self._timing is None:
            self._timing = (step + COST_SKIP, None, 0)
        first, start, first_images = self._timing
        if first < 0 or step < first:
            return
        if start is None:
            self._timing = (step, time.perf_counter(), images)
            return
        if step - first < COST_STEPS:
            return
        per_step = (time.perf_counter() - start) / (step - first)
        per_image = (images - first_images) / (step - first)  # the images of one step, as they ran
        left = round((self.total_images - images) / per_image)
        self._timing = (-1, 0.0, 0)
        if left > 0:
            self.say(f"cost: about {clock(per_step * left)} for the {left} steps left ({per_step:.3g} s/step over "
                     f"steps {first + 1}-{step}, epoch-end evaluations not counted); --train-subset N or --epochs "
                     "make it shorter")

    def epoch(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        epoch, step = record["epoch"], record["step"]
        values = {f"{key.split('_')[0]}/{key.split('_')[1]}": record[key] for key in
                  ("train_loss", "train_acc", "val_loss", "val_acc", "holdout_loss", "holdout_acc") if key in record}
        values.update({"train/epoch": epoch, "perf/images_per_sec": record["images_per_sec"],
                       "perf/epoch_seconds": record["epoch_seconds"]})
        if record.get("noise_scale") is not None:
            values["noise/b_simple"] = record["noise_scale"]
        with writing(self.dir):
            for tracker in self.trackers:
                tracker.scalars(values, step)
                tracker.flush()
            with open(self.dir / "metrics.jsonl", "a") as f:
                f.write(json.dumps(record) + "\n")
        tqdm.write(
            f"epoch {epoch:3d}  train loss {record['train_loss']:.4f} acc {record['train_acc']:.4f}  "
            f"val loss {record['val_loss']:.4f} acc {record['val_acc']:.4f}  "
            + (f"holdout acc {record['holdout_acc']:.4f}  " if "holdout_acc" in record else "")
            + f"{record['images_per_sec']:.0f} img/s mean  {record['epoch_seconds']:.1f} s  lr {record['lr']:.4g}"
            + self.time_left(record)
        )

    def time_left(self, record: dict[str, Any]) -> str:
        """The whole run's time left at the pace so far in images (evaluations included), for the lines without a
        bar."""
        seen = self.clock.images
        left = self.total_images - seen
        if left <= 0 or not seen:
            return ""
        return f"  ~{clock(left * record['wall_seconds'] / seen)} left"

    def finish(self, summary: dict[str, Any]) -> None:
        if not self.enabled:
            return
        with writing(self.dir):
            for tracker in self.trackers:
                tracker.finish(hparams(summary), hparam_metrics(summary))
                tracker.flush()
        write_json_atomic(self.dir / "summary.json", summary)  # last: its presence means the run is complete

    def close(self) -> None:
        """Leaves quietly even after a failed write: the error that matters was already raised."""
        with contextlib.suppress(OSError, OutputError):  # a stopped run keeps the points of its last steps
            self.end_bar()
        for tracker in self.trackers:
            with contextlib.suppress(OSError):
                tracker.close()
        self.trackers = []


def clock(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def closing_line(summary: dict[str, Any]) -> str:
    """The one line a finished run ends with."""
    held = summary.get("test_acc_at_best_holdout_epoch")
    # With a holdout, the held-out split picks the epoch: what is shown is the test accuracy there, not a best.
    best = ("" if summary.get("best_epoch") in (None, summary["epochs_completed"]) else
            f" (test acc at best held-out epoch {summary['best_epoch']}: {held:.4f})" if held is not None else
            f" (best {summary['best_val_acc']:.4f} at epoch {summary['best_epoch']})")
    final = f"test acc {summary['final_val_acc']:.4f}{best}, " if summary.get("final_val_acc") is not None else ""
    rate = f", {summary['images_per_sec']:.0f} img/s mean" if summary.get("images_per_sec") else ""
    return (f"done: {summary['epochs_completed']} epoch(s), {final}{clock(summary['train_seconds'])} training{rate}; "
            f"summary in {Path(summary['config']['log_dir']) / 'summary.json'}")


HPARAMS = ("batch_size", "batches_per_allreduce", "base_lr", "lr_scaling", "lr_schedule", "warmup_epochs", "wd",
           "momentum", "label_smoothing", "model", "width", "precision", "epochs", "seed", "use_adasum", "fp16_allreduce")


def hparams(summary: dict[str, Any]) -> dict[str, Any]:
    """What TensorBoard's HPARAMS tab compares across the runs of a sweep."""
    chosen = {k: summary["config"][k] for k in HPARAMS}
    chosen.update(workers=summary["world_size"], global_batch=summary["global_batch"], backend=summary["backend"])
    return {k: v if isinstance(v, (int, float, str, bool)) else str(v) for k, v in chosen.items()}


def hparam_metrics(summary: dict[str, Any]) -> dict[str, float]:
    target = summary.get("target") or {}
    return {
        "hparam/final_val_acc": summary["final_val_acc"] or 0.0,
        "hparam/best_val_acc": summary["best_val_acc"] or 0.0,
        "hparam/images_per_sec": summary["images_per_sec"] or 0.0,
        "hparam/train_seconds": summary["train_seconds"],
        "hparam/seconds_to_target": target.get("train_seconds", float("nan")),
    }


def steady_rate(history: list[dict[str, Any]]) -> float | None:
    later = history[1:] or history
    seconds = sum(r["epoch_seconds"] for r in later)
    return sum(r["images"] for r in later) / seconds if seconds else None


def summarize(
    config: Config, backend_name: str, world_size: int, history: list[dict[str, Any]], parameters: int,
    whole_epochs: int | None = None,
) -> dict[str, Any]:
    """summary.json: the numbers a batch-size study compares, all derived from the per-epoch records but
    `whole_epochs` (the run clock's; by default every record's epoch counts)."""
    train_seconds = sum(r["epoch_seconds"] for r in history)
    images = sum(r["images"] for r in history)
    reached: dict[str, Any] = {}
    judged = "holdout_acc" if config.holdout else "val_acc"  # the test set never picks anything when there is a holdout
    for threshold in sorted({*THRESHOLDS, config.target_accuracy}):
        hit = next((r for r in history if r[judged] >= threshold), None)
        if hit is not None:
            reached[f"{threshold:.2f}"] = {
                "epoch": hit["epoch"],
                "step": hit["step"],
                "train_seconds": hit["train_seconds"],
                "wall_seconds": hit["wall_seconds"],
            }
    best = max(history, key=lambda r: r[judged]) if history else None
    return {
        "config": config.to_dict(),
        "backend": backend_name,
        "world_size": world_size,
        "global_batch": global_batch(config.batch_size, config.batches_per_allreduce, world_size),
        "simulated_workers": config.simulate_workers > 1,
        "parameters": parameters,
        # Whole epochs: a trial that stops at its target or --max-steps ends inside its last one.
        "epochs_completed": len(history) if whole_epochs is None else whole_epochs,
        "steps_completed": history[-1]["step"] if history else 0,
        "final_val_acc": history[-1]["val_acc"] if history else None,
        "final_val_loss": history[-1]["val_loss"] if history else None,
        # The test accuracy of the epoch the target split picks: with a holdout, not the best test accuracy, and so
        # also under the name that says so (best_val_acc stays for the reports that read earlier runs).
        "best_val_acc": best["val_acc"] if best else None,
        "best_epoch": best["epoch"] if best else None,
        "test_acc_at_best_holdout_epoch": best["val_acc"] if best and config.holdout else None,
        "best_holdout_acc": best["holdout_acc"] if best and config.holdout else None,
        "train_seconds": train_seconds,
        "wall_seconds": history[-1]["wall_seconds"] if history else 0.0,
        "images_per_sec": images / train_seconds if train_seconds else None,
        # Without the first epoch, which also pays for allocator, cuDNN and communicator warm-up.
        "steady_images_per_sec": steady_rate(history),
        "time_to_accuracy": reached,
        "target_split": "holdout" if config.holdout else "test",
        "target_accuracy": config.target_accuracy,
        "target": reached.get(f"{config.target_accuracy:.2f}"),
        "noise_scale": history[-1].get("noise_scale") if history else None,
        "noise_scale_se": history[-1].get("noise_scale_se") if history else None,  # from the pairs' scatter
        "noise_scale_run": history[-1].get("noise_scale_run") if history else None,  # the run's average
        "noise_pairs": history[-1].get("noise_pairs", 0) if history else 0,
    }
