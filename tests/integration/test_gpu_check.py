"""The GPU check's dry run on the CPU: every part runs in order and leaves its JSON; partial data stops it at once."""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def check(out: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    full = {**{k: v for k, v in os.environ.items() if not k.startswith("BATCHSCALE_")}, "OUT": str(out),
            "PYTHON": sys.executable, "OMP_NUM_THREADS": "1", **env}
    return subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), *args], capture_output=True, text=True,
                          env=full, timeout=500)


def test_dry_run_runs_every_part_and_leaves_each_parts_json(tmp_path):
    bundle = tmp_path.parent / "bundle.tar.gz"
    result = check(tmp_path, "--dry-run", GPU_CHECK_BUNDLE=str(bundle))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    status = json.loads((tmp_path / "status.json").read_text())
    horovod_built = (Path(sys.executable).parent / "horovodrun").exists()  # the original's path
    # In order of value: the speed probe (graphs skipped: a dry run compiles nothing), then the earlier parts.
    assert list(status) == ["env", "sweep-eager", "sweep-compiled", "profile-step", "profile", "grouped", "fast94",
                            "bench-b256", "fast", "torchrun", "fp16", *(["horovod"] if horovod_built else []), "benches"]
    if horovod_built:
        horovod = json.loads((tmp_path / "horovod.json").read_text())
        assert horovod["backend"] == "horovod" and horovod["config"]["fp16_allreduce"]
    assert all(s["exit_code"] == 0 and not s["timed_out"] for s in status.values())
    env = json.loads((tmp_path / "environment.json").read_text())
    assert env["data"].startswith("real (1280 train") and "python_headers" in env and "compile" in env
    bench = json.loads((tmp_path / "bench-b256.json").read_text())
    assert bench["complete"] and bench["headline"]["model"] == "resnet18"
    assert json.loads((tmp_path / "fast" / "summary.json").read_text())["epochs_completed"] == 2
    bf16, resumed = (json.loads((tmp_path / f"torchrun-{n}.json").read_text()) for n in ("bf16", "resumed-fp16"))
    assert bf16["backend"] == "torch" and bf16["config"]["bf16_allreduce"] and bf16["epochs_completed"] == 1
    assert resumed["epochs_completed"] == 2 and sorted(c["setting"] for c in resumed["changes"]) == [
        "--bf16-allreduce", "--epochs", "--fp16-allreduce"]
    profile = (tmp_path / "profile.txt").read_text()
    assert "epoch 2: 2 steps of global batch 500" in profile  # fast94's last epoch alone: 1280 images / 500
    assert "host in our update" in profile and "aten::convolution" in profile
    for name in ("sweep-eager.json", "sweep-compiled.json"):
        sweep = json.loads((tmp_path / name).read_text())
        assert sweep["complete"] and sorted(sweep["batches"]) == ["16", "32"]
        assert all(b["batch_norm"] == "train mode" and len(b["timing"]["rounds"]) == 1 for b in sweep["batches"].values())
    steps = json.loads((tmp_path / "profile-step.json").read_text())["batches"]
    assert sorted(steps) == ["16", "32"] and steps["16"]["kernels_per_step"] > 0
    grouped = json.loads((tmp_path / "grouped.json").read_text())
    assert grouped["decision"] in ("grouped", "sequential") and grouped["groups"] == 4
    fast94 = json.loads((tmp_path / "fast94" / "summary.json").read_text())
    assert fast94["config"]["recipe"] == "fast94" and fast94["config"]["tta"] == "flip-translate"
    assert fast94["epochs_completed"] == 2
    for name in ("bench-b128.json", "bench-b512.json", "torchrun-bench.json", "fp16.json"):
        assert (tmp_path / name).is_file(), name
    assert not list(tmp_path.rglob("*.pth.tar*"))  # checkpoints stay out of what comes back
    with tarfile.open(bundle) as tar:  # the device call's one file holds every part's results
        names = set(tar.getnames())
    assert {f"{tmp_path.name}/status.json", f"{tmp_path.name}/fast/summary.json", f"{tmp_path.name}/fp16.json"} <= names


def test_partial_data_stops_the_check_with_one_line(tmp_path, tiny_cifar):
    partial = tmp_path / "partial"
    (partial / "cifar-10-batches-py").mkdir(parents=True)
    shutil.copy(tiny_cifar / "cifar-10-batches-py" / "test_batch", partial / "cifar-10-batches-py")
    result = check(tmp_path / "out", GPU_CHECK_DATA=str(partial), PARTS="env bench-b256")
    assert result.returncode == 2
    assert "incomplete: missing data_batch_1, data_batch_2" in result.stdout + result.stderr
    assert not (tmp_path / "out" / "bench-b256.json").exists()


def benchmark_script(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_loop_profile_measures_a_fixed_number_of_steps_and_the_epochs_end_apart(tmp_path, tiny_cifar):
    """A spy hook after the profiler's sees, in the last epoch of 20 steps, exactly the 4 updates the profile says
    it profiled run under the profiler, and the epoch's end (evaluation, checkpoint, logs) outside it; the images
    the figures count are those steps' images."""
    from torch._C._autograd import _profiler_enabled

    from batchscale.config import Config
    from batchscale.training.loop import Hook, train

    class Spy(Hook):
        def __init__(self) -> None:
            self.profiled_updates: dict[int, int] = {}
            self.profiled_ends: list[bool] = []

        def update(self, trainer, step):
            epoch = trainer.state.epoch + 1
            self.profiled_updates[epoch] = self.profiled_updates.get(epoch, 0) + int(_profiler_enabled())
            return contextlib.nullcontext()

        def end_epoch(self, trainer):
            self.profiled_ends.append(_profiler_enabled())
            return contextlib.nullcontext()

    profile_loop = benchmark_script("profile_loop")
    spy = Spy()
    config = Config(train_dir=str(tiny_cifar), val_dir=str(tiny_cifar), log_dir=str(tmp_path / "run"), epochs=2,
                    batch_size=16, width=2, no_cuda=True, progress=False, download=False, tracker=())
    train(config, hooks=[profile_loop.LastEpochProfile(tmp_path, steps=4, skip=2), spy])
    assert spy.profiled_updates == {1: 0, 2: 4} and spy.profiled_ends == [False, False]
    figures = json.loads((tmp_path / "profile.json").read_text())
    assert figures["timed"]["steps"] == figures["profiled"]["steps"] == 4  # 320 images / 16: 20 steps an epoch
    assert figures["timed"]["images"] == figures["profiled"]["images"] == 4 * 16
    assert figures["epoch_end_seconds"] > 0
    text = (tmp_path / "profile.txt").read_text()
    assert "timed, profiler off: 4 steps, 64 images" in text and "the epoch's end (evaluation" in text
