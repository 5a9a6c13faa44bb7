"""What a run shows and logs: one step axis for every scalar, in-epoch loss and LR, the cost up front, the closing
line, a finished run said to be complete, and a Ctrl-C heard at once and worded as a stop."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from launch import HANG_S

from batchscale.cli import main
from batchscale.stopping import StopRequest

ROOT = Path(__file__).resolve().parents[2]


def flags(data: Path, log_dir: Path, *extra: str) -> list[str]:
    return ["--train-dir", str(data), "--val-dir", str(data), "--log-dir", str(log_dir), "--no-download", "--no-cuda",
            "--width", "4", "--warmup-epochs", "0", "--no-progress", *extra]


@pytest.fixture(scope="module")
def ran(tiny_cifar, tmp_path_factory):
    """One epoch of 40 steps (batch 8 of 320 images), through the console entry point."""
    log_dir = tmp_path_factory.mktemp("run")
    lines: list[str] = []
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("builtins.print", lambda *a, **k: lines.append(" ".join(map(str, a))))
        rc = main(["train", *flags(tiny_cifar, log_dir, "--epochs", "1", "--batch-size", "8")])
    return rc, log_dir, lines


def test_every_scalar_is_on_the_optimizer_step_axis(ran):
    rc, log_dir, _ = ran
    assert rc == 0
    events = EventAccumulator(str(log_dir)).Reload()
    for tag in ("train/loss", "train/acc", "val/loss", "val/acc", "perf/images_per_sec", "train/epoch"):
        assert [e.step for e in events.Scalars(tag)] == [40], tag


def test_loss_and_lr_are_logged_inside_the_epoch_and_cover_it(ran):
    _, log_dir, _ = ran
    events = EventAccumulator(str(log_dir)).Reload()
    losses = events.Scalars("train/step_loss")
    assert [e.step for e in losses] == list(range(2, 41, 2))  # 20 points in a 40-step epoch
    assert [e.step for e in events.Scalars("train/lr")] == list(range(2, 41, 2))
    # Each point is the mean over the steps since the last: together they are the epoch's training loss.
    epoch_loss = json.loads((log_dir / "metrics.jsonl").read_text())["train_loss"]
    assert sum(e.value for e in losses) / len(losses) == pytest.approx(epoch_loss, rel=1e-5)


def test_a_finished_run_ends_with_one_closing_line(ran, capsys):
    _, log_dir, lines = ran
    summary = json.loads((log_dir / "summary.json").read_text())
    assert lines[-1].startswith("done: 1 epoch(s), test acc ") and str(log_dir / "summary.json") in lines[-1]
    assert f"{summary['final_val_acc']:.4f}" in lines[-1]


def test_cost_line_and_rerun_of_a_finished_run(tiny_cifar, tmp_path, capsys):
    args = ["train", *flags(tiny_cifar, tmp_path, "--epochs", "1", "--batch-size", "16")]
    assert main(args) == 0
    first = capsys.readouterr().out
    assert "40 steps in all" not in first and "20 steps in all" in first
    assert "cost: about 0:00:" in first and "steps left" in first
    assert main(args) == 0
    again = capsys.readouterr().out
    assert "already complete (1 epoch(s)" in again and "nothing to train" in again
    assert "cost:" not in again and again.strip().splitlines()[-1].startswith("done: 1 epoch(s)")


def test_a_stop_is_said_at_once_and_a_second_ctrl_c_aborts(capsys):
    stop = StopRequest(loud=True).install()
    try:
        signal.raise_signal(signal.SIGINT)
        assert stop.signal_name == "SIGINT"
        assert "SIGINT: stopping after this step and saving a checkpoint; Ctrl-C again" in capsys.readouterr().err
        with pytest.raises(KeyboardInterrupt):
            signal.raise_signal(signal.SIGINT)
    finally:
        stop.restore()


@pytest.mark.parametrize("loud,sig", [(False, signal.SIGINT), (True, signal.SIGTERM)])
def test_other_ranks_and_a_schedulers_signal_add_no_line(loud, sig, capsys):
    """Other ranks stay quiet; a SIGTERM's one line is the stop itself (a log, not a person waiting)."""
    stop = StopRequest(loud=loud).install()
    try:
        signal.raise_signal(sig)
    finally:
        stop.restore()
    assert stop.signal_name == signal.Signals(sig).name and capsys.readouterr().err == ""


def test_ctrl_c_closes_the_bar_and_is_worded_as_a_stop(tiny_cifar, tmp_path):
    args = [sys.executable, str(ROOT / "train.py"), *flags(tiny_cifar, tmp_path, "--epochs", "1", "--batch-size", "8")]
    args.remove("--no-progress")  # the bar is what the stop line must not be glued to
    result = subprocess.run(args, check=False, capture_output=True, text=True, timeout=HANG_S,
                            env={"PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1", "BATCHSCALE_FAULT": "step:3",
                                 "BATCHSCALE_FAULT_ACTION": "int", "PYTHONPATH": ":".join(sys.path)})
    assert result.returncode == 75, result.stderr[-2000:]
    screen = [line.split("\r")[-1] for line in result.stderr.split("\n")]  # what a terminal shows of each line
    heard = [line for line in screen if "stopping after this step" in line]
    stopped = [line for line in screen if "stopped by SIGINT" in line]
    assert len(heard) == 1 and len(stopped) == 1, result.stderr[-2000:]
    assert heard[0].startswith("SIGINT: stopping") and stopped[0].startswith("train.py: stopped by SIGINT after step")
    assert "error" not in stopped[0]


def test_epoch_lines_carry_the_whole_runs_time_left(tiny_cifar, tmp_path, capsys):
    assert main(["train", *flags(tiny_cifar, tmp_path, "--epochs", "2", "--batch-size", "32")]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("epoch ")]
    assert len(lines) == 2
    assert lines[0].rstrip().endswith(" left") and "~0:" in lines[0]  # a bar-less run still sees the run's end coming
    assert not lines[1].rstrip().endswith(" left")


class _NoSync:
    """An epoch's loss sum that fails if read on the host: a step may only keep a copy on the device."""

    def __init__(self, value: float) -> None:
        self.value = value

    def detach(self) -> "_NoSync":
        return self

    def clone(self):
        import torch

        return torch.tensor(self.value)

    def item(self) -> float:
        raise AssertionError("a host sync inside the step loop")


def test_in_epoch_points_cost_no_host_sync_per_step(tmp_path, monkeypatch):
    from batchscale import metrics
    from batchscale.config import Config
    from batchscale.state import RunClock

    monkeypatch.setattr(metrics, "REFRESH_SECONDS", 1e9)  # no timed flush: only the epoch's end writes
    clock = RunClock()
    log = metrics.RunLog(metrics.Logging.of(Config(log_dir=str(tmp_path), progress=False)), True, [], 32, clock,
                         total_images=40 * 32, epoch_images=40 * 32)
    log.bar(40 * 32, "epoch 1/1")
    for step in range(1, 41):
        clock.advance(32)
        log.step(None, 0.1, 32, 32 * step, _NoSync(2.0 * step), None)  # loss 2.0 per image, summed
    log.end_bar()
    log.close()
    losses = EventAccumulator(str(tmp_path)).Reload().Scalars("train/step_loss")
    assert [e.step for e in losses] == list(range(2, 41, 2))
    assert all(e.value == pytest.approx(2.0 / 32) for e in losses)


class _Clock:
    """A perf_counter the test sets, so a rate is what the test says it is."""

    def __init__(self) -> None:
        self.now = 1000.0

    def perf_counter(self) -> float:
        return self.now


class _BarSpy:
    def __init__(self, images_per_sec: float) -> None:
        self.format_dict = {"rate": images_per_sec}  # the bar counts images
        self.postfix: dict[str, str] = {}

    def update(self, n: int) -> None:
        pass

    def set_postfix(self, refresh: bool = True, **values: str) -> None:
        self.postfix = values


def quiet_log(folder: Path, total_steps: int, global_batch: int = 32):
    """A run log of `total_steps` steps of `global_batch` images, on a clock the test advances."""
    from batchscale.metrics import Logging, RunLog
    from batchscale.state import RunClock

    clock = RunClock()
    log = RunLog(Logging(str(folder), True, True, (), {}), True, [], global_batch, clock,
                 total_images=total_steps * global_batch, epoch_images=10 * global_batch)
    return log, clock


def test_the_bar_names_its_recent_rate_apart_from_the_means_and_shows_one_time_left(tmp_path, monkeypatch, capsys):
    import torch

    from batchscale import metrics

    clock = _Clock()
    monkeypatch.setattr(metrics, "time", clock)
    log, run = quiet_log(tmp_path, total_steps=100)
    for _ in range(20):
        run.advance(32)
    spy = _BarSpy(images_per_sec=128.0)
    log.step(spy, 0.1, 32, 640, torch.tensor(640.0), torch.tensor(320.0))
    # 128 img/s; 80 steps of 32 images left of 100: 2,560 images at 128 a second, 20 s.
    assert spy.postfix["recent_img_s"] == "128" and "img_s" not in spy.postfix
    assert spy.postfix["run_left"] == "0:00:20"
    bar = log.bar(10, "epoch 1/10")
    shown = capsys.readouterr().err
    log.end_bar()
    assert "epoch 1/10" in shown and "<" not in shown  # tqdm's epoch-only time left is not shown beside run_left
    assert bar is not None and "{remaining}" not in bar.bar_format


def test_a_sweep_estimates_its_time_left_from_the_first_timed_steps_of_a_run(tmp_path, monkeypatch, capsys):
    from batchscale import metrics
    from batchscale.study.sweep import Progress

    clock = _Clock()
    monkeypatch.setattr(metrics, "time", clock)
    log, _ = quiet_log(tmp_path / "log", total_steps=100)
    for step in range(1, 15):  # 0.5 s a step
        clock.now = 1000.0 + 0.5 * step
        log.estimate_cost(step, 32 * step)
    cost = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("cost:"))
    for name in ("a", "b"):
        (tmp_path / "sweep" / name).mkdir(parents=True)
    (tmp_path / "sweep" / "a" / "train.log").write_text(f"batchscale: ...\n{cost}\n")
    lines: list[str] = []
    progress = Progress(tmp_path / "sweep", {"a": 2.0, "b": 2.0}, lambda d: False, lambda d: 0.0,
                        lambda line, end="\n": lines.append(line))
    progress.running = {"a"}
    progress.show(final=True)
    # Run a: 100 steps at 0.5 s, 50 s for its 2 epochs. Nothing recorded yet, 4 epochs left, one run at a time: 100 s.
    assert lines[-1].endswith("1 running, 1 queued, 0 failed, 0 diverged; epoch 0/4, ~0:01:40 left")
    (tmp_path / "sweep" / "a" / "train.log").write_text("batchscale: ...\n")
    progress.show(final=True)
    assert lines[-1].endswith("~estimating left")  # no step timed yet: nothing to go on
