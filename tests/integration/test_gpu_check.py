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

import pytest

ROOT = Path(__file__).resolve().parents[2]


def benchmark_script(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def check(out: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    full = {**{k: v for k, v in os.environ.items() if not k.startswith(("BATCHSCALE_", "GPU_CHECK_"))},
            "OUT": str(out), "PYTHON": sys.executable, "OMP_NUM_THREADS": "1", **env}
    return subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), *args], capture_output=True, text=True,
                          env=full, timeout=1800)  # a hang bound: about 90 s on 2 loaded cores


def gpu_check():
    return benchmark_script("gpu_check")


def test_dry_run_of_the_probe_brings_back_one_archive_with_every_parts_results(tmp_path):
    """What a device call does by default (OUT set): every part of the probe runs, in order of value, with no device
    time box in a dry run; OUT gets the archive and status.json alone (a call brings back 8 files at most), and the
    archive holds every part's results."""
    out = tmp_path / "out"
    out.mkdir()
    parts = gpu_check().PROBE
    result = check(out, "--dry-run", PARTS=" ".join(parts))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert sorted(p.name for p in out.iterdir()) == ["gpu-check.tar.gz", "status.json"]
    with tarfile.open(out / "gpu-check.tar.gz") as tar:
        tar.extractall(tmp_path / "back", **({"filter": "data"} if hasattr(tarfile, "data_filter") else {}))
    got = tmp_path / "back" / "gpu-check"
    status = json.loads((got / "status.json").read_text())
    assert status == json.loads((out / "status.json").read_text())
    # graphs and sweep-eager skipped: a dry run compiles nothing, so the compiled sweep already ran eager
    assert list(status) == ["env", "sweep-compiled", "fast94", "profile", "bench-b256", "grouped", "profile-step"]
    assert all(s["exit_code"] == 0 and not s["timed_out"] for s in status.values())
    env = json.loads((got / "environment.json").read_text())
    assert env["data"].startswith("real (320 train") and "python_headers" in env and "compile" in env
    bench = json.loads((got / "bench-b256.json").read_text())
    assert bench["complete"] and bench["headline"]["model"] == "resnet18"
    figures = json.loads((got / "profile.json").read_text())
    assert figures["epoch"] == 1 and figures["timed"]["steps"] == figures["profiled"]["steps"] == 2  # of 5: 1, 2, 2
    assert "aten::convolution" in (got / "profile.txt").read_text()
    sweep = json.loads((got / "sweep-compiled.json").read_text())
    assert sweep["complete"] and sorted(sweep["batches"]) == ["16", "32"]
    assert all(b["batch_norm"] == "train mode" and len(b["timing"]["rounds"]) == 1 for b in sweep["batches"].values())
    steps = json.loads((got / "profile-step.json").read_text())["batches"]
    assert sorted(steps) == ["16", "32"] and steps["16"]["kernels_per_step"] > 0
    grouped = json.loads((got / "grouped.json").read_text())
    assert grouped["decision"] in ("grouped", "sequential") and grouped["groups"] == 4
    fast94 = json.loads((got / "fast94" / "summary.json").read_text())
    assert fast94["config"]["recipe"] == "fast94" and fast94["config"]["tta"] == "flip-translate"
    assert fast94["epochs_completed"] == 1
    assert not list(got.rglob("*.pth.tar*"))  # checkpoints stay out of what comes back


@pytest.mark.parametrize("device", [False, True])
def test_every_parts_commands_are_ones_their_programs_accept(tmp_path, device):
    """The parts a dry run leaves out (the earlier ones, run when PARTS names them; graphs and sweep-eager), and
    every part as a GPU with a compiler and real data would run it: each command must parse and validate as its
    program's (train.py's, the bench's, a sweep's) without running, so a renamed flag is found before device time."""
    from batchscale.cli import bench_parser, train_config
    from batchscale.flags import build
    from batchscale.training.bench import BenchConfig

    module = gpu_check()
    checker = module.Check(tmp_path, dry_run=not device)
    shutil.rmtree(checker.scratch)
    checker.compile, checker.real = ["--compile"], True  # as on a GPU with a compiler and the data staged
    seen = set()
    for name in module.BOXES if device else module.EARLIER:
        for step in checker.steps_of(name) or []:
            command = [str(a) for a in (step[0] if isinstance(step, tuple) else step)]
            scripts = [i for i, a in enumerate(command) if a.endswith((".py", "batchscale.cli"))]
            at = scripts[0] if scripts else 0
            program, args = Path(command[at]).name, command[at + 1:]
            if program in ("train.py", "profile_loop.py"):  # train.py, alone or under torchrun or horovodrun
                train_config(args[1:] if program == "profile_loop.py" else args).validate()
            elif program == "batchscale.cli":
                assert args[0] == "bench"
                build(BenchConfig, bench_parser().parse_args(args[1:])).validate()
            elif program == "step_sweep.py":
                sizes = args.index("--batch-sizes")
                assert all(int(b) > 0 for b in args[sizes + 1].split(","))
                build(BenchConfig, bench_parser().parse_args(args[1:sizes] + args[sizes + 2:])).validate()
            elif program in ("gpu_env.py", "profile_step.py", "grouped_conv.py"):
                assert Path(command[at]).is_file()
            elif not (command[1:3] == ["-m", "pip"] or "--check-build" in command):
                raise AssertionError(f"{name}: a command this test does not know: {command[:4]}")
            seen.add(name)
    expected = set(module.BOXES) - {"horovod"} if device else {"fast", "torchrun", "fp16", "benches"}
    assert expected <= seen


def test_the_probe_fits_its_budget_in_order_of_value():
    """A lent GPU leaves about 8 minutes: the probe's boxes add up to at most 480 s, the headline figures first
    (the compiled step, then 94%, then the loop beside the step); a smaller budget cuts the boxes, never overruns."""
    module = gpu_check()
    plan = module.plan(list(module.PROBE), dry_run=False)
    names = [name for name, _ in plan]
    assert sum(box for _, box in plan) <= 480 and names[0] == "env"
    assert names.index("sweep-compiled") < names.index("fast94") < names.index("profile") < names.index("profile-step")
    assert sum(box for _, box in module.plan(list(module.PROBE), dry_run=False, budget=200)) <= 200
    assert {box for _, box in module.plan(list(module.BOXES), dry_run=True)} == {module.DRY_BOUND}  # no device box


def test_a_part_cut_by_its_box_leaves_what_it_wrote(tmp_path):
    """A part that writes its result, then hangs, is killed at its box: the result is in the archive that comes
    back, and status.json says it ran out of time."""
    module = gpu_check()
    results, back = tmp_path / "results", tmp_path / "back"
    results.mkdir()
    back.mkdir()
    checker = module.Check(results, dry_run=False, bundle=back / module.BUNDLE, back=back)
    shutil.rmtree(checker.scratch)
    checker.boxes = {"profile": 10}
    code = checker.run("profile", [["bash", "-c", f"echo '{{\"timed\": 1}}' > {results}/profile.json; exec sleep 600"]])
    assert code == 124
    status = json.loads((back / "status.json").read_text())
    assert status["profile"]["timed_out"] and status["profile"]["exit_code"] == 124
    with tarfile.open(back / module.BUNDLE) as tar:
        assert json.load(tar.extractfile("results/profile.json")) == {"timed": 1}


def test_partial_data_stops_the_check_with_one_line(tmp_path, tiny_cifar):
    partial = tmp_path / "partial"
    (partial / "cifar-10-batches-py").mkdir(parents=True)
    shutil.copy(tiny_cifar / "cifar-10-batches-py" / "test_batch", partial / "cifar-10-batches-py")
    (tmp_path / "out").mkdir()
    result = check(tmp_path / "out", GPU_CHECK_DATA=str(partial), PARTS="env bench-b256")
    assert result.returncode == 2
    assert "incomplete: missing data_batch_1, data_batch_2" in result.stdout + result.stderr
    assert list(json.loads((tmp_path / "out" / "status.json").read_text())) == ["env"]  # bench-b256 never ran


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
