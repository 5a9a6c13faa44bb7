"""The GPU check: one device call, its parts in order of value, each in its own time box, each leaving its
JSON the moment it has it, and everything packed into one archive after each part (a device call brings back
at most 8 files; a cut call still brings back every finished part).

The speed probe (issues 21, 31), the default on a GPU: at most 480 s in all (GPU_CHECK_SECONDS), every figure a
train-mode step, each compiled size static and compiled afresh, as training compiles its one shape:

  part            box   what it leaves
  env              40 s environment.json: GPU, versions, whether torch.compile works here, whether the data is whole
  sweep-compiled   90 s sweep-compiled.json: the compiled step (forward, loss and metrics one graph) at batch 512,
                        500 (fast94's), 256, 1024 (benchmarks/step_sweep.py): device (CUDA events) and host-issue
                        ms per step, 5 rounds each, median and min; graphs compiled and peak memory per size
  fast94          100 s fast94/: --recipe fast94 (cifar10-zoo's 94% ResNet-18, 26 epochs), compiled; summary.json's
                        test accuracy and time_to_accuracy (training seconds to 94%)
  profile          45 s profile.json, profile.txt: train.py's own loop (the fast94 recipe, compiled, 2 epochs), in its
                        last epoch 20 steps timed, 20 profiled, and the epoch's end apart (benchmarks/profile_loop.py)
  bench-b256       45 s bench-b256.json: the compiled step at batch 256 against the original's pipeline (fp32
                        DataLoader, a host sync per step) on the same model and on the original's
  grouped          35 s grouped.json: one ResNet-18's step, 4 in sequence, and one with groups=4 in every
                        convolution (benchmarks/grouped_conv.py), on device time: whether a study packs its trials
  sweep-eager      25 s sweep-eager.json: the eager step at the same sizes and 128
  graphs           60 s graphs.json: the same as CUDA graphs (--compile-mode reduce-overhead) at 512 and 256, with
                        the count of graphs CUDA graphs declined to record (0: all recorded)
  profile-step     40 s profile-step.json: 10 compiled steps at 512 and 256 under torch.profiler
                        (benchmarks/profile_step.py): kernels per step, device busy, top kernels, layout copies

Earlier parts, run when PARTS names them (passed on an H100, 2026-11-27): fast (130 s: the old fast recipe),
torchrun (90 s), fp16 (60 s), horovod (90 s, from wheels carried in .horovod-wheels/,
scripts/build_horovod_carry.sh), benches (110 s: bench at 512, 128, torchrun). Seen on an H100: compiling a step
costs about 30-50 s the first time; the parts share one inductor cache in the scratch folder, so a graph compiled
once (same shape) loads after; the env part took 28 s. status.json holds each part's exit code, seconds, CPU
seconds and whether it ran out of time. Checkpoints go to a scratch folder, never to the results.

Where results go: with OUT set (a device call's folder) into a scratch results folder, packed after each part
into $OUT/gpu-check.tar.gz (or GPU_CHECK_BUNDLE), status.json copied beside it: two files. GPU_CHECK_DIR names a
results folder to keep (the archive still made); with neither OUT nor GPU_CHECK_DIR, benchmarks/results/gpu-DATE.

    bash benchmarks/gpu_check.sh             # on the device: stages data/ if carried (see gpu_check.sh), runs
    bash benchmarks/gpu_check.sh --dry-run   # the probe on the CPU, tiny and eager (make test), no time boxes
                                             # there (a hang bound only), so load cannot fail it; PARTS adds others
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# In order of value: a lent GPU leaves about 8 minutes after its start and the data's staging.
PROBE = {"env": 40, "sweep-compiled": 90, "fast94": 100, "profile": 45, "bench-b256": 45, "grouped": 35,
         "sweep-eager": 25, "graphs": 60, "profile-step": 40}
BUDGET = 480  # seconds for the whole probe: its boxes add up to this, and no part runs past it
EARLIER = {"fast": 130, "torchrun": 90, "fp16": 60, "horovod": 90, "benches": 110}
BOXES = {**PROBE, **EARLIER}
DRY_BOUND = 900  # a dry run's parts have no device box, only this bound on a hang (each takes seconds idle)
BUNDLE = "gpu-check.tar.gz"
WHEELS = ROOT / ".horovod-wheels"


def plan(parts: list[str], dry_run: bool, budget: float = BUDGET) -> list[tuple[str, float]]:
    """The parts to run, in order of value (the probe's, then the earlier ones'), each with its time box: on a
    GPU its own box, cut to what is left of the budget; in a dry run the hang bound alone."""
    chosen = [name for name in BOXES if name in parts]
    if dry_run:
        return [(name, DRY_BOUND) for name in chosen]
    out, left = [], budget
    for name in chosen:
        box = min(BOXES[name], left)
        out.append((name, box))
        left -= box
    return out


def places() -> tuple[Path, Path | None, Path | None, bool]:
    """(results folder, archive, folder that comes back, whether the results folder is scratch). A device call
    brings back at most 8 files, so with OUT set the results go to a scratch folder and OUT gets their archive and
    status.json alone."""
    env = os.environ
    out = Path(env["OUT"]).resolve() if env.get("OUT") else None
    if env.get("GPU_CHECK_DIR"):
        results = Path(env["GPU_CHECK_DIR"]).resolve()
    elif out is not None:
        results = Path(tempfile.mkdtemp(prefix="gpu-check-results-")) / "gpu-check"
    else:
        results = ROOT / "benchmarks" / "results" / f"gpu-{time.strftime('%Y%m%d')}"
    bundle = Path(env["GPU_CHECK_BUNDLE"]).resolve() if env.get("GPU_CHECK_BUNDLE") else (
        out / BUNDLE if out is not None else None)
    return results, bundle, out, out is not None and not env.get("GPU_CHECK_DIR")


class Check:
    def __init__(self, out: Path, dry_run: bool, bundle: Path | None = None, back: Path | None = None,
                 temporary: bool = False) -> None:
        self.out, self.dry, self.bundle, self.back, self.temporary = out, dry_run, bundle, back, temporary
        self.py = os.environ.get("PYTHON", sys.executable)
        self.scratch = Path(tempfile.mkdtemp(prefix="gpu-check-"))
        self.data = Path(os.environ.get("GPU_CHECK_DATA") or (self.scratch / "data" if dry_run else ROOT / "data"))
        self.status: dict[str, dict] = {}
        self.boxes: dict[str, float] = {}
        self.env = {**os.environ, "PYTHONPATH": f"{ROOT / 'src'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
                    "TORCHINDUCTOR_CACHE_DIR": str(self.scratch / "compile-cache")}  # one cache for every part
        small = ["--width", "4", "--no-cuda"] if dry_run else ["--width", "64"]
        self.train_flags = small
        self.bench_flags = (["--steps", "2", "--rounds", "1", "--warmup", "1", "--baseline-steps", "1", *small] if dry_run
                            else ["--steps", "20", "--rounds", "5", "--warmup", "5", "--baseline-steps", "15"])
        self.epochs = 2 if dry_run else 30  # 15 reached 91.8% on an H100
        self.sweep_flags = (["--steps", "2", "--rounds", "1", "--warmup", "1", *small] if dry_run
                            else ["--steps", "20", "--rounds", "5", "--warmup", "5"])
        # The goal's size first, then fast94's (the loop's profile beside it), then bench-b256's (its graph then
        # loads from the cache): a box that cuts a sweep keeps the sizes it finished. The eager one adds 128.
        self.sizes = ("16,32", "16,32", "16,32") if dry_run else ("512,500,256,1024", "512,256", "512,500,256,1024,128")
        self.batch = (lambda b: 16) if dry_run else (lambda b: b)  # the dry run's batches: tiny, every command the same
        self.compile: list[str] = []
        self.real = dry_run

    def run(self, name: str, steps: list[list[str] | tuple[list[str], Path, Path]]) -> int:
        """Runs a part's commands one after another inside its time box. A step given as (command, source,
        target) copies source into the results as target when the command succeeds."""
        start, cpu = time.monotonic(), children_cpu()
        box = self.boxes.get(name, DRY_BOUND if self.dry else BOXES[name])
        deadline = start + box
        code, timed_out = 0, False
        print(f"== {name} (at most {box:.0f} s{', a hang bound: no device box in a dry run' if self.dry else ''})",
              flush=True)
        with open(self.out / f"{name}.log", "w") as log:
            for step in steps:
                command, copy = (step[0], step[1:]) if isinstance(step, tuple) else (step, ())
                log.write(f"$ {' '.join(command)}\n")
                log.flush()
                process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, env=self.env,
                                           start_new_session=True)
                try:
                    code = process.wait(timeout=max(1.0, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    os.killpg(process.pid, signal.SIGKILL)  # the whole group: torchrun's workers too
                    process.wait()
                    code, timed_out = 124, True
                if code:
                    break
                if copy:
                    shutil.copy(copy[0], copy[1])
        self.status[name] = {"exit_code": code, "seconds": round(time.monotonic() - start, 1),
                             "cpu_seconds": round(children_cpu() - cpu, 1), "timed_out": timed_out, "box": box}
        (self.out / "status.json").write_text(json.dumps(self.status, indent=2) + "\n")
        self.pack()
        tail = (self.out / f"{name}.log").read_text().strip().splitlines()[-4:]
        print("\n".join(tail), flush=True)
        return code

    def pack(self) -> None:
        """Everything finished so far into the one archive (replaced atomically, so a cut call still has the last
        one), status.json beside it in the folder that comes back."""
        if self.bundle:
            partial = Path(str(self.bundle) + ".partial")
            with tarfile.open(partial, "w:gz") as tar:
                tar.add(self.out, arcname=self.out.name)
            partial.replace(self.bundle)
        if self.back is not None and self.back != self.out and (self.out / "status.json").exists():
            shutil.copy(self.out / "status.json", self.back / "status.json")

    def horovod(self) -> list | None:
        """The original's launcher on this device: Horovod from carried wheels (or the one installed, dry run)."""
        horovodrun = Path(self.py).parent / "horovodrun"
        steps: list = []
        if WHEELS.is_dir():
            steps.append([self.py, "-m", "pip", "install", "--quiet", "--no-index", "--find-links", str(WHEELS), "horovod"])
        elif not horovodrun.exists():
            print("== horovod: skipped (no .horovod-wheels/ carried and no Horovod installed)", flush=True)
            return None
        run = self.scratch / "horovod"
        steps += [[str(horovodrun), "--check-build"],
                  ([str(horovodrun), "--gloo", "-np", "1", "-H", "localhost:1", self.py,
                    *self.train(run, "--epochs", "1", "--batch-size", str(self.batch(512)), "--fp16-allreduce")[1:]],
                   run / "summary.json", self.out / "horovod.json")]
        return steps

    def script(self, name: str, *args: str) -> list[str]:
        return [self.py, str(ROOT / "benchmarks" / name), *args]

    def steps_of(self, name: str) -> list | None:
        """The commands of a part, or None (said why) where it cannot run here."""
        data = ["--data", "real" if self.real else "synthetic", "--train-dir", str(self.data)]
        sweep = [*self.sweep_flags, *data]
        small = ["--width", "4", "--no-cuda"] if self.dry else []
        # The dry run's data is smaller than the recipe's batch of 500.
        fast94 = ["--recipe", "fast94", *self.compile, *(["--batch-size", "64", "--val-batch-size", "50"] if self.dry else [])]
        torchrun = [self.py, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "1"]
        if name == "env":
            return [[self.py, str(ROOT / "benchmarks" / "gpu_env.py"), str(self.out), str(self.data),
                     *(["--dry-run"] if self.dry else [])]]
        if name == "sweep-eager" and not self.compile:
            print("== sweep-eager: skipped (sweep-compiled ran eager here: the same command)", flush=True)
            return None
        if name in ("sweep-eager", "sweep-compiled"):
            compiled = name == "sweep-compiled"
            return [self.script("step_sweep.py", str(self.out / f"{name}.json"), "--batch-sizes",
                                self.sizes[0 if compiled else 2], *sweep, *(self.compile if compiled else []))]
        if name == "graphs":
            if not self.compile:
                print("== graphs: skipped (CUDA graphs come through torch.compile: a dry run, or no compiler)", flush=True)
                return None
            return [self.script("step_sweep.py", str(self.out / "graphs.json"), "--batch-sizes", self.sizes[1], *sweep,
                                *self.compile, "--compile-mode", "reduce-overhead")]
        if name == "profile-step":
            return [self.script("profile_step.py", str(self.out / "profile-step.json"), "--batch-sizes",
                                "16,32" if self.dry else "512,256", *small, *(["--steps", "2"] if self.dry else []),
                                *self.compile)]
        if name in ("profile", "fast94", "fast") and not self.real:
            print(f"== {name}: skipped (no real data staged: see gpu_check.sh)", flush=True)
            return None
        if name == "profile":
            run = self.train(self.scratch / "profile", "--epochs", "1" if self.dry else "2", *fast94)
            return [[self.py, str(ROOT / "benchmarks" / "profile_loop.py"), str(self.out), *run[2:]]]
        if name == "fast94":
            return [self.train(self.out / "fast94", *fast94, *(["--epochs", "1"] if self.dry else []))]
        if name == "bench-b256":
            return [self.bench("bench-b256", self.batch(256))]
        if name == "grouped":
            return [self.script("grouped_conv.py", str(self.out / "grouped.json"), "--batch-size",
                                "8" if self.dry else "256",
                                *(["--width", "2", "--no-cuda", "--rounds", "1", "--steps", "2"] if self.dry else []))]
        if name == "fast":
            # Compiled bf16 channels_last, batch 512, one-cycle LR 0.04 -> 0.4 over 2 epochs then down, label
            # smoothing 0.1: time_to_accuracy says which thresholds it reached, and when.
            return [self.train(self.out / "fast", "--epochs", str(self.epochs), "--batch-size", str(self.batch(512)),
                               "--base-lr", "0.4", "--warmup-epochs", "2", "--warmup-start-lr", "0.04", "--lr-schedule",
                               "onecycle", "--label-smoothing", "0.1", *self.compile)]
        if name == "torchrun":
            wire = self.scratch / "wire"
            common = ("--batch-size", str(self.batch(512)), "--lr-schedule", "step")
            return [
                ([*torchrun, *self.train(wire, "--epochs", "1", *common, "--bf16-allreduce")[1:]],
                 wire / "summary.json", self.out / "torchrun-bf16.json"),
                # A resume on this device: one more epoch from the checkpoint, now with the fp16 wire format.
                ([*torchrun, *self.train(wire, "--epochs", "2", *common, "--fp16-allreduce")[1:]],
                 wire / "summary.json", self.out / "torchrun-resumed-fp16.json"),
            ]
        if name == "fp16":
            fp16 = self.scratch / "fp16"
            return [(self.train(fp16, "--epochs", "1", "--batch-size", str(self.batch(512)), "--precision", "fp16"),
                     fp16 / "summary.json", self.out / "fp16.json")]
        if name == "horovod":
            return self.horovod()
        if name == "benches":
            return [self.bench("bench-b512", self.batch(512), "--no-baseline"),
                    self.bench("bench-b128", self.batch(128), "--no-baseline"),
                    [*torchrun, *self.bench("torchrun-bench", self.batch(256), "--no-baseline")[1:]]]
        raise ValueError(f"unknown part {name!r}")

    def bench(self, name: str, batch: int, *extra: str) -> list[str]:
        return [self.py, "-m", "batchscale.cli", "bench", "--batch-size", str(batch), "--data", "real" if self.real else
                "synthetic", "--train-dir", str(self.data), *self.bench_flags, *self.compile,
                "--output", str(self.out / f"{name}.json"), *extra]

    def train(self, log_dir: Path, *extra: str) -> list[str]:
        return [self.py, str(ROOT / "train.py"), "--train-dir", str(self.data), "--val-dir", str(self.data),
                "--log-dir", str(log_dir), "--checkpoint-format", str(self.scratch / log_dir.name / "checkpoint-{epoch}.pth.tar"),
                "--keep-checkpoints", "1", "--no-progress", "--no-download", *self.train_flags, *extra]

    def main(self, parts: list[str]) -> int:
        self.out.mkdir(parents=True, exist_ok=True)
        if self.dry and not self.data.exists():
            # 320 training images (5 x 64) and 100 test images in the real format: an epoch of 5 steps at batch 64
            subprocess.run([self.py, str(ROOT / "benchmarks" / "gpu_env.py"), "--synthetic", str(self.data), "64", "100"],
                           check=True, env=self.env)
        begun = time.monotonic()
        budget = float(os.environ.get("GPU_CHECK_SECONDS", BUDGET))
        self.boxes = dict(plan(parts, self.dry, budget))
        facts_read, stopped = False, 0
        for name in self.boxes:
            if name != "env" and not facts_read:
                self.after_env()  # what the env part found (this call's, or an earlier call's file)
                facts_read = True
            left = budget - (time.monotonic() - begun)
            if not self.dry:
                if left < 5:
                    print(f"== {name}: not run (the check's {budget:.0f} s are spent)", flush=True)
                    self.status[name] = {"exit_code": None, "seconds": 0, "timed_out": True, "box": 0, "not_run": True}
                    continue
                self.boxes[name] = min(self.boxes[name], left)  # the time between parts comes out of the last
            steps = self.steps_of(name)
            if steps is None:
                continue
            if self.run(name, steps) == 2 and name == "env":
                stopped = 2  # incomplete data: its one line is in env.log and was printed
                break
        (self.out / "status.json").write_text(json.dumps(self.status, indent=2) + "\n")
        self.pack()
        shutil.rmtree(self.scratch, ignore_errors=True)
        if self.temporary and self.bundle and self.bundle.exists():
            shutil.rmtree(self.out.parent, ignore_errors=True)  # all of it is in the archive
        print(json.dumps(self.status, indent=2))
        if self.bundle:
            print(f"results: {self.bundle} (unpack: tar xzf {self.bundle.name}; folder {self.out.name}/)", flush=True)
        return stopped or (0 if all(s["exit_code"] == 0 for s in self.status.values()) else 1)

    def after_env(self) -> None:
        facts = json.loads((self.out / "environment.json").read_text()) if (self.out / "environment.json").exists() else {}
        self.real = self.real or str(facts.get("data", "")).startswith("real")
        if facts.get("compile", {}).get("ok") and not self.dry:
            self.compile = ["--compile"]
        else:
            print("note: eager steps (torch.compile unavailable here, or a dry run); see environment.json", flush=True)


def children_cpu() -> float:
    """CPU seconds of this process's finished children (each part's commands), user and system."""
    import resource

    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


if __name__ == "__main__":
    dry = "--dry-run" in sys.argv
    results, bundle, back, temporary = places()
    parts = os.environ.get("PARTS", " ".join(PROBE)).split()
    sys.exit(Check(results, dry, bundle, back, temporary).main(parts))
